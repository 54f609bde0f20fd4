"""The same layer tar gives the same ``layer.vhd`` bytes on every host and run (issue 16, part 2).

Every path that writes a ``layer.vhd`` runs twice as a process of its own, on two "hosts" that
differ in everything a conversion could pick up by accident: data root, working directory,
``TZ``, ``umask``, the C accelerators (``LCOW_NATIVE=1`` against the pure-Python code) and the
clock (the second run starts over a second later). The outputs must be byte-identical, and
the outside oracles must accept them: ``qemu-img info -f vpc`` sees the ext4 image's size,
``e2fsck -fn`` is clean, the footer checksum holds (computed here from the specification), the
unique id is the documented piece digest (computed here with ``hashlib``), ``veritysetup
verify`` accepts the verity layers and the kernel mounts the image.

Paths: ``lcow tar2ext4 -vhd`` (file and stdin input, with and without ``--dm-verity``),
``-only-vhd``, the driver's ApplyDiff through ``lcow apply-diff`` and through the graph-driver
plugin (``lcow plugin serve``, the body streamed as dockerd does), and ``lcow import`` of an
image with gzip and with zstd layers. The containerd snapshotter's Commit is covered by
``test_snapshot_commit_determinism.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from lcow.samples import write_sample_image, write_sample_layers
from tests.helpers import (
    assert_e2fsck_clean,
    in_ci,
    loop_mount,
    qemu_virtual_size,
    requires,
    veritysetup_verify,
)
from tests.plugin.client import PluginClient

pytestmark = requires("e2fsck", "qemu-img", "veritysetup")

FOOTER = 512
MiB = 1 << 20


@dataclass(frozen=True)
class Host:
    """One run's environment."""

    name: str
    native: str  # LCOW_NATIVE
    tz: str
    umask: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "LCOW_NATIVE": self.native, "TZ": self.tz, "LC_ALL": "C"}


HOSTS = (
    Host("a", "1", "UTC", 0o022),
    Host("b", "0", "Pacific/Chatham", 0o077),
)


@dataclass
class Output:
    """A written ``layer.vhd`` and what an oracle needs to judge it."""

    path: Path
    root_hash: str | None = None  # the verity root hash, for the verity layers


def _lcow(host: Host, cwd: Path, *args: str, stdin: Path | None = None) -> str:
    """``python -m lcow ARGS`` in ``host``'s environment; its stdout."""
    with open(stdin or os.devnull, "rb") as inp:
        proc = subprocess.run(
            [sys.executable, "-m", "lcow", *args],
            stdin=inp,
            capture_output=True,
            cwd=cwd,
            env=host.env(),
            umask=host.umask,
            check=False,
        )
    assert proc.returncode == 0, f"lcow {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode()


def _native_in_use(host: Host) -> bool:
    code = (
        "from lcow._util import native; "
        "print(all(native.load(m) is not None for m in ('_ext4pack', '_tarscan')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=host.env(), capture_output=True, check=True
    ).stdout
    return out.strip() == b"True"


def _plugin_apply(host: Host, base: Path, tars: dict[str, Path]) -> dict[str, Path]:
    """ApplyDiff through ``lcow plugin serve``, each tar into a new layer; stopped by SIGTERM."""
    sock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"dl-{os.getpid()}-{host.name}"
    if len(str(sock_dir)) > 60:
        sock_dir = Path("/tmp") / sock_dir.name
    sock_dir.mkdir()
    base.mkdir()
    socket = sock_dir / "p.sock"
    argv = [sys.executable, "-m", "lcow", "plugin", "serve", "--root", str(base / "state"),
            "--socket", str(socket), "--backend", "userspace"]  # fmt: skip
    log = base / "plugin.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            argv, cwd=base, env=host.env(), umask=host.umask,
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    client = PluginClient(str(socket))
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the plugin did not create its socket"
            time.sleep(0.05)
        home = base / "home"
        client.ok("GraphDriver.Init", {"Home": str(home), "Opts": None})
        out = {}
        for layer_id, tar in tars.items():
            client.ok("GraphDriver.Create", {"ID": layer_id, "Parent": "", "MountLabel": ""})
            reply = client.apply_diff(layer_id, "", tar.read_bytes())
            assert reply.status == 200 and "Err" not in reply.json, reply
            out[layer_id] = home / layer_id / "layer.vhd"
        return out
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(sock_dir, ignore_errors=True)


def _convert_everything(host: Host, work: Path, inputs: Path) -> dict[str, Output]:
    """Every path that writes a ``layer.vhd``, run in ``host``'s environment below ``work``."""
    cwd = work / "cwd"
    cwd.mkdir(parents=True)
    base, whiteouts, replace = (inputs / n for n in ("layer-1-base.tar",
                                "layer-2-whiteouts.tar", "layer-3-replace.tar"))  # fmt: skip
    out: dict[str, Output] = {}

    def converted(label: str, *args: str, stdin: Path | None = None) -> Output:
        path = work / f"{label}.vhd"
        text = _lcow(host, cwd, "tar2ext4", *args, "-o", str(path), "--json", stdin=stdin)
        out[label] = Output(path, json.loads(text).get("root_hash"))
        return out[label]

    converted("tar2ext4-file", "-overlay", "-vhd", "-i", str(base))
    converted("tar2ext4-stdin", "-overlay", "-vhd", stdin=whiteouts)
    converted("tar2ext4-verity", "-overlay", "-vhd", "--dm-verity", "-i", str(replace))
    plain = work / "plain.ext4"
    _lcow(host, cwd, "tar2ext4", "-overlay", "-i", str(whiteouts), "-o", str(plain))
    only = work / "only-vhd.vhd"
    _lcow(host, cwd, "tar2ext4", "-only-vhd", "-i", str(plain), "-o", str(only))
    out["tar2ext4-only-vhd"] = Output(only)

    for verity in (False, True):
        root = work / ("apply-verity" if verity else "apply")
        opts = ["-o", "lcow.dmverity=true"] if verity else []
        for n, tar in enumerate((base, whiteouts), 1):
            _lcow(host, cwd, "--root", str(root), *opts, "create", f"L{n}")
            _lcow(host, cwd, "--root", str(root), *opts, "apply-diff", "-i", str(tar), f"L{n}")
            meta = json.loads((root / f"L{n}" / "lcow-layer.json").read_text())
            label = f"apply-diff{'-verity' if verity else ''}-L{n}"
            out[label] = Output(root / f"L{n}" / "layer.vhd", meta.get("root_hash"))

    plugin = _plugin_apply(host, work / "plugin", {"P2": whiteouts, "P3": replace})
    out.update({f"plugin-{lid}": Output(path) for lid, path in plugin.items()})

    tars = (base, whiteouts, replace)
    layer_of = {"sha256:" + _file_digest(tar): n for n, tar in enumerate(tars)}
    for compression in ("gzip", "zstd"):
        root = work / f"import-{compression}"
        _lcow(host, cwd, "--root", str(root), "import", str(inputs / f"image-{compression}.tar"))
        for folder in root.iterdir():
            if (folder / "layer.vhd").exists():
                diff_id = json.loads((folder / "lcow-layer.json").read_text())["diff_id"]
                out[f"import-{compression}-{layer_of[diff_id]}"] = Output(folder / "layer.vhd")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Output]]]:
    """Both hosts' outputs, the second run a little more than a second after the first."""
    inputs = tmp_path_factory.mktemp("inputs")
    write_sample_layers(inputs)
    for compression in ("gzip", "zstd"):
        write_sample_image(inputs / f"image-{compression}.tar", compression=compression)
    native = _native_in_use(HOSTS[0])
    if not native and in_ci():
        pytest.fail("the C accelerators are not built: the native path cannot be compared")
    assert not _native_in_use(HOSTS[1])  # LCOW_NATIVE=0: the pure-Python code
    results = {}
    for n, host in enumerate(HOSTS):
        if n:
            time.sleep(1.1)  # a footer timestamp in seconds would now differ
        results[host.name] = _convert_everything(host, tmp_path_factory.mktemp(host.name), inputs)
    yield results


LABELS = [
    "tar2ext4-file", "tar2ext4-stdin", "tar2ext4-verity", "tar2ext4-only-vhd",
    "apply-diff-L1", "apply-diff-L2", "apply-diff-verity-L1", "apply-diff-verity-L2",
    "plugin-P2", "plugin-P3",
    "import-gzip-0", "import-gzip-1", "import-gzip-2",
    "import-zstd-0", "import-zstd-1", "import-zstd-2",
]  # fmt: skip


@pytest.mark.parametrize("label", LABELS)
def test_same_tar_same_bytes_on_every_host(runs: dict[str, dict[str, Output]], label: str) -> None:
    a, b = runs["a"][label].path, runs["b"][label].path
    assert a != b
    assert a.stat().st_size == b.stat().st_size
    assert _first_difference(a, b) is None


def test_every_path_was_compared(runs: dict[str, dict[str, Output]]) -> None:
    assert sorted(runs["a"]) == sorted(runs["b"]) == sorted(LABELS)


def test_paths_agree_with_each_other(runs: dict[str, dict[str, Output]]) -> None:
    """One tar, one image, whichever path converted it (same options: whiteouts on)."""
    digest = {label: _file_digest(out.path) for label, out in runs["a"].items()}
    assert digest["tar2ext4-file"] == digest["apply-diff-L1"] == digest["import-gzip-0"]
    assert digest["tar2ext4-stdin"] == digest["apply-diff-L2"] == digest["plugin-P2"]
    assert digest["tar2ext4-stdin"] == digest["tar2ext4-only-vhd"] == digest["import-zstd-1"]


@pytest.mark.parametrize("label", LABELS)
def test_oracles_accept_the_image(runs: dict[str, dict[str, Output]], label: str) -> None:
    out = runs["a"][label]
    data_size = out.path.stat().st_size - FOOTER
    raw = _footer(out.path)
    assert raw[:8] == b"conectix"
    assert struct.unpack_from(">I", raw, 64)[0] == ~(sum(raw[:64]) + sum(raw[68:])) & 0xFFFFFFFF
    assert struct.unpack_from(">I", raw, 24)[0] == 0  # timestamp: the fixed VHD epoch
    assert (raw[28:32], raw[32:36], raw[36:40]) == (b"win ", b"\x00\x0a\x00\x00", b"Wi2k")
    assert raw[68:84] == _piece_digest(out.path, data_size)
    assert qemu_virtual_size(out.path) >= _ext4_size(out.path)
    assert_e2fsck_clean(out.path)
    if out.root_hash is not None:
        veritysetup_verify(out.path, out.root_hash, _ext4_size(out.path))
        uuid = _read(out.path, _ext4_size(out.path) + 16, 16)
        assert uuid == bytes.fromhex(out.root_hash)[:16]


@requires("loop")
@pytest.mark.parametrize("label", ["tar2ext4-file", "apply-diff-verity-L2", "import-zstd-2"])
def test_kernel_mounts_the_image(
    runs: dict[str, dict[str, Output]], label: str, tmp_path: Path
) -> None:
    out = runs["a"][label]
    with loop_mount(out.path, tmp_path / "mnt", size=_ext4_size(out.path)) as mnt:
        assert any(mnt.iterdir())


def _first_difference(a: Path, b: Path) -> int | None:
    with a.open("rb") as fa, b.open("rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                n = next(i for i in range(min(len(x), len(y)) + 1) if x[i : i + 1] != y[i : i + 1])
                return offset + n
            if not x:
                return None
            offset += len(x)


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def _footer(path: Path) -> bytes:
    return _read(path, path.stat().st_size - FOOTER, FOOTER)


def _ext4_size(path: Path) -> int:
    """Blocks count x block size from the ext4 superblock (the image before any verity area)."""
    sb = _read(path, 1024, 1024)
    blocks: int = struct.unpack_from("<I", sb, 4)[0]
    log_block_size: int = struct.unpack_from("<I", sb, 24)[0]
    return blocks * (1024 << log_block_size)


def _piece_digest(path: Path, size: int) -> bytes:
    """XXH3-128 over the XXH3-128 of each 1 MiB piece of the first ``size`` bytes (docs/)."""
    digests = []
    with path.open("rb") as f:
        done = 0
        while done < size:
            piece = f.read(min(MiB, size - done))
            digests.append(xxhash.xxh3_128(piece).digest())
            done += len(piece)
    return xxhash.xxh3_128(b"".join(digests)).digest()
