"""End to end: Debian's dockerd 20.10 on the lcow plugin (host backend), against overlay2.

One dockerd (``--experimental --storage-driver <unique plugin name>``) runs on ``lcow plugin
serve`` for the module; an overlay2 dockerd and a second lcow pair are started where a test
compares. Images come from a busybox rootfs tar built here. Each test runs what SPEC §9.6 lists
for a docker command and checks the result the way a user would, and where overlay2 can say
what is right (``docker diff``, ``save``/``load`` digests), that it gives the same. Everything
lives in one temporary directory; at the end no process, mount or socket may be left.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import requires
from tests.plugin.client import PluginClient
from tests.plugin.dockerd import (
    BUSYBOX,
    DOCKER,
    WRITER,
    Daemon,
    PluginProcess,
    busybox_rootfs,
    kernel_log_lines,
    leftovers,
    mount_id,
    mounts_below,
    numbered,
    statically_linked,
    unique_name,
)

pytestmark = [requires("root", "host", "dockerd", "busybox"), pytest.mark.timeout(900)]

BASE = "lcowe2e/base:1"
RUN = ("run", "--pull", "never", "--network", "none")
# The same actions in both drivers' containers: add, modify, delete, delete a tree, rename.
ACTIONS = (
    "mkdir -p /new/dir && echo x > /new/dir/f && echo more >> /etc/motd && rm /etc/group"
    " && rm -r /srv/old && mv /srv/keep /srv/kept && touch /tmp/t"
)


class Env:
    """The module's directory, rootfs and the plugins and daemons started in it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.rootfs = busybox_rootfs(base / "rootfs.tar")
        self.plugins: list[PluginProcess] = []
        self.daemons: list[Daemon] = []

    def plugin(self) -> PluginProcess:
        plugin = PluginProcess(self.base, unique_name())
        self.plugins.append(plugin)
        plugin.start()
        return plugin

    def daemon(self, label: str, driver: str) -> Daemon:
        daemon = Daemon(self.base, label, driver)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def lcow_pair(self, label: str) -> tuple[PluginProcess, Daemon]:
        plugin = self.plugin()
        return plugin, self.daemon(label, plugin.name)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if not Path(DOCKER).exists():
        pytest.fail(f"{DOCKER} (Debian's docker.io CLI) is missing")
    if not statically_linked(Path(BUSYBOX)):
        pytest.fail(f"{BUSYBOX} is dynamically linked: install busybox-static")
    base = Path(tempfile.mkdtemp(prefix="lcow-e2e-", dir="/tmp"))
    made = Env(base)
    try:
        yield made
    finally:
        statuses = {}
        for daemon in made.daemons:
            daemon.stop()
        for plugin in made.plugins:
            statuses[plugin.name] = plugin.stop()
        left = leftovers(base, [p.socket for p in made.plugins])
        logs = {p.name: p.log() for p in made.plugins}
        shutil.rmtree(base, ignore_errors=True)
        assert left == [], left
        assert all(s == 0 for s in statuses.values()), (statuses, logs)


@pytest.fixture(scope="module")
def lcow(env: Env) -> tuple[PluginProcess, Daemon]:
    plugin, daemon = env.lcow_pair("lcow")
    daemon.docker("import", str(env.rootfs), BASE)
    return plugin, daemon


@pytest.fixture(scope="module")
def overlay2(env: Env) -> Daemon:
    daemon = env.daemon("overlay2", "overlay2")
    daemon.docker("import", str(env.rootfs), BASE)
    return daemon


def home(plugin: PluginProcess) -> Path:
    return Path(json.loads((plugin.state / "state.json").read_text())["Home"])


def layer_folders(plugin: PluginProcess) -> set[str]:
    """The layers' folders (not those of removed layers the plugin is still deleting, renamed
    to ``-removing`` names: see ``Driver.remove``)."""
    return {
        p.parent.name
        for p in home(plugin).glob("*/layerchain.json")
        if not p.parent.name.endswith("-removing")
    }


def removing_folders(plugin: PluginProcess) -> list[str]:
    return [p.name for p in home(plugin).iterdir() if p.name.endswith("-removing")]


def test_info_shows_the_plugin(lcow: tuple[PluginProcess, Daemon]) -> None:
    plugin, daemon = lcow
    info = json.loads(daemon.out("info", "--format", "{{json .}}"))
    assert info["Driver"] == plugin.name
    assert ["LCOW", ""] in info["DriverStatus"]
    assert ["Backend", "host"] in info["DriverStatus"]


def test_import_and_run(lcow: tuple[PluginProcess, Daemon]) -> None:
    plugin, daemon = lcow
    layers = daemon.inspect(BASE)["RootFS"]["Layers"]
    assert layers == ["sha256:" + hashlib.sha256(Path(plugin.base / "rootfs.tar").read_bytes())
                      .hexdigest()]  # fmt: skip
    assert any((home(plugin) / name / "layer.vhd").is_file() for name in layer_folders(plugin))
    assert daemon.out(*RUN, "--rm", BASE, "echo", "hello") == "hello"
    assert daemon.out(*RUN, "--rm", BASE, "cat", "/etc/motd") == "lcow e2e"


def test_diff_matches_overlay2(lcow: tuple[PluginProcess, Daemon], overlay2: Daemon) -> None:
    outputs = []
    for daemon in (lcow[1], overlay2):
        daemon.docker(*RUN, "--name", "changer", BASE, "sh", "-c", ACTIONS)
        outputs.append(sorted(daemon.out("diff", "changer").splitlines()))
        daemon.docker("rm", "changer")
    assert outputs[0] == outputs[1]
    assert "A /new/dir/f" in outputs[0] and "D /etc/group" in outputs[0]


def test_commit_save_load_give_overlay2s_digests(
    env: Env, lcow: tuple[PluginProcess, Daemon], overlay2: Daemon
) -> None:
    _, daemon = lcow
    daemon.docker(*RUN, "--name", "committer", BASE, "sh", "-c", ACTIONS)
    daemon.docker("commit", "committer", "lcowe2e/committed:1")
    daemon.docker("rm", "committer")
    ours = daemon.inspect("lcowe2e/committed:1")
    assert len(ours["RootFS"]["Layers"]) == 2
    saved = env.base / "from-lcow.tar"
    daemon.docker("save", "-o", str(saved), "lcowe2e/committed:1")
    # overlay2 loads what lcow saved (docker checks every layer against its diff ID)...
    overlay2.docker("load", "-i", str(saved))
    theirs = overlay2.inspect("lcowe2e/committed:1")
    assert (theirs["Id"], theirs["RootFS"]) == (ours["Id"], ours["RootFS"])
    resaved = env.base / "from-overlay2.tar"
    overlay2.docker("save", "-o", str(resaved), "lcowe2e/committed:1")
    # ...and both save byte-identical layers, whose digests are the diff IDs.
    assert layer_digests(saved) == layer_digests(resaved) == ours["RootFS"]["Layers"]
    # A second lcow daemon loads overlay2's save into the same image.
    _, second = env.lcow_pair("lcow-second")
    second.docker("load", "-i", str(resaved))
    again = second.inspect("lcowe2e/committed:1")
    assert (again["Id"], again["RootFS"]) == (ours["Id"], ours["RootFS"])
    assert second.out(*RUN, "--rm", "lcowe2e/committed:1", "cat", "/new/dir/f", "/etc/motd") == (
        "x\nlcow e2e\nmore"
    )


def layer_digests(saved: Path) -> list[str]:
    """``sha256:<hex>`` of each layer tar of a ``docker save`` archive, bottom-up."""
    with tarfile.open(saved) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        digests = []
        for name in manifest[0]["Layers"]:
            member = tf.extractfile(name)
            assert member is not None
            digest = hashlib.sha256()
            while block := member.read(1 << 20):
                digest.update(block)
            digests.append(f"sha256:{digest.hexdigest()}")
        return digests


def test_rmi_removes_the_layers(lcow: tuple[PluginProcess, Daemon]) -> None:
    plugin, daemon = lcow
    before = layer_folders(plugin)
    daemon.docker(*RUN, "--name", "doomed", BASE, "sh", "-c", "echo gone > /gone")
    daemon.docker("commit", "doomed", "lcowe2e/doomed:1")
    daemon.docker("rm", "doomed")
    assert len(layer_folders(plugin) - before) == 1
    daemon.docker("rmi", "lcowe2e/doomed:1")
    assert layer_folders(plugin) == before
    deadline = time.monotonic() + 30  # their files go right after each Remove answered
    while removing_folders(plugin) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert removing_folders(plugin) == []


def test_export_and_cp(env: Env, lcow: tuple[PluginProcess, Daemon]) -> None:
    _, daemon = lcow
    daemon.docker(*RUN, "--name", "files", BASE, "sh", "-c", "echo inside > /root/note")
    try:
        exported = daemon.docker("export", "files").stdout
        with tarfile.open(fileobj=io.BytesIO(exported)) as tf:
            names = tf.getnames()
            note = tf.extractfile("root/note")
            assert note is not None and note.read() == b"inside\n"
        assert "bin/busybox" in names and ".dockerenv" in names
        daemon.docker("cp", "files:/root/note", str(env.base / "note.out"))
        assert (env.base / "note.out").read_bytes() == b"inside\n"
        (env.base / "in.txt").write_bytes(b"copied in\n")
        daemon.docker("cp", str(env.base / "in.txt"), "files:/tmp/in.txt")
        daemon.docker("start", "files")  # cp into a stopped container: read it back on start
        daemon.docker("wait", "files")
        daemon.docker("cp", "files:/tmp/in.txt", str(env.base / "back.txt"))
        assert (env.base / "back.txt").read_bytes() == b"copied in\n"
    finally:
        daemon.docker("rm", "-f", "files")


def test_classic_build_with_run_and_copy(env: Env, lcow: tuple[PluginProcess, Daemon]) -> None:
    _, daemon = lcow
    context = env.base / "context"
    context.mkdir()
    (context / "file.txt").write_text("from the context\n")
    (context / "Dockerfile").write_text(
        f"FROM {BASE}\nRUN mkdir /built && echo ran > /built/run.txt\nCOPY file.txt /built/\n"
    )
    daemon.docker("build", "-t", "lcowe2e/built:1", str(context))
    assert daemon.out(*RUN, "--rm", "lcowe2e/built:1", "cat", "/built/run.txt",
                      "/built/file.txt") == "ran\nfrom the context"  # fmt: skip
    assert len(daemon.inspect("lcowe2e/built:1")["RootFS"]["Layers"]) == 3


def test_dockerd_restart(lcow: tuple[PluginProcess, Daemon]) -> None:
    plugin, daemon = lcow
    daemon.docker("create", "--network", "none", "--name", "survivor", BASE, "cat", "/etc/motd")
    daemon.stop()
    assert "GraphDriver.Cleanup -> 200" in plugin.log()
    daemon.start()
    assert daemon.out("start", "-a", "survivor") == "lcow e2e"
    assert daemon.out(*RUN, "--rm", BASE, "echo", "after restart") == "after restart"
    daemon.docker("rm", "survivor")


def test_plugin_restart_under_a_running_dockerd(lcow: tuple[PluginProcess, Daemon]) -> None:
    plugin, daemon = lcow
    assert plugin.stop() == 0
    assert not plugin.socket.exists()
    plugin.start()
    assert daemon.out(*RUN, "--rm", BASE, "echo", "after plugin restart") == (
        "after plugin restart"
    )
    images = daemon.out("images", "--format", "{{.Repository}}:{{.Tag}}").splitlines()
    assert BASE in images
    log = plugin.log()
    assert "restored Init from" in log
    assert "POST /GraphDriver.Init" not in log  # dockerd does not call Init again
    assert "Traceback" not in log


def wait_for_lines(daemon: Daemon, name: str, more_than: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = len(numbered(daemon.out("exec", name, "cat", "/srv/lines")))
        if count > more_than or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def view_of(plugin: PluginProcess, layer_id: str) -> str:
    """Get and Put the layer as dockerd would: the directory Get gives."""
    client = PluginClient(str(plugin.socket))
    try:
        directory: str = client.ok("GraphDriver.Get", {"ID": layer_id})["Dir"]
        client.ok("GraphDriver.Put", {"ID": layer_id})
    finally:
        client.close()
    return directory


def lost_writes(lines: list[str]) -> list[str]:
    return [line for line in lines if "lost async page write" in line or "I/O error" in line]


def test_a_plugin_restart_under_a_running_container_keeps_its_writes(
    env: Env, lcow: tuple[PluginProcess, Daemon]
) -> None:
    plugin, daemon = lcow
    kernel_before = len(kernel_log_lines())
    container = daemon.out(*RUN, "-d", "--name", "writer", BASE, "sh", "-c", WRITER)
    layer = mount_id(daemon.dir / "root", plugin.name, container)
    views = home(plugin) / "mounts"
    try:
        before = wait_for_lines(daemon, "writer", 5)
        directory = view_of(plugin, layer)
        mounted = mounts_below(views)
        storage_daemon = (views / "qsd.pid").read_text()
        assert directory in [point for point, _, _ in mounted]
        stopped_at = time.time()
        assert plugin.stop() == 0
        # Stopping the plugin leaves what dockerd holds alone: the same mounts, the storage
        # daemon serving the sandbox, the container writing.
        assert mounts_below(views) == mounted
        assert (views / "qsd.pid").read_text() == storage_daemon
        time.sleep(1)
        plugin.start()
        restarted_at = time.time()
        # The restarted plugin adopts them: Get answers the same directory, nothing is mounted
        # a second time, the same storage daemon runs.
        assert view_of(plugin, layer) == directory
        assert mounts_below(views) == mounted
        assert (views / "qsd.pid").read_text() == storage_daemon
        assert "restored Init from" in plugin.log()
        after = wait_for_lines(daemon, "writer", before + 10)
        # docker cp goes into the filesystem the container sees.
        (env.base / "copied.txt").write_bytes(b"copied during the run\n")
        daemon.docker("cp", str(env.base / "copied.txt"), "writer:/srv/copied.txt")
        assert daemon.out("exec", "writer", "cat", "/srv/copied.txt") == "copied during the run"
        assert Path(directory, "srv", "copied.txt").read_text() == "copied during the run\n"
        daemon.docker("exec", "writer", "touch", "/stop")
        time.sleep(1)
        inside = daemon.out("exec", "writer", "cat", "/srv/lines") + "\n"
        held = daemon.out("exec", "writer", "cat", "/srv/held") + "\n"
        assert mounts_below(views) == mounted
        on_host = Path(directory, "srv", "lines").read_text()
        assert Path(directory, "srv", "held").read_text() == held
        assert on_host == inside == held
        lines = numbered(inside)
        assert len(lines) > after
        # Lines were written all the while the plugin was down.
        written = {t for _, t in lines}
        assert all(t in written for t in range(int(stopped_at) + 1, int(restarted_at)))
        assert lost_writes(kernel_log_lines()[kernel_before:]) == []
    finally:
        daemon.docker("rm", "-f", "writer", check=False)
    # dockerd's own stop (Put, then Cleanup) releases everything the container had.
    daemon.stop()
    left = [m for m in mounts_below(views)]
    daemon.start()
    assert left == []
    assert not (views / "qsd.pid").exists()
