"""What the containerd snapshotter's Commit guarantees about ``layer.vhd`` bytes (issue 16 part 2).

Commit converts the driver's Diff of the sandbox (the tar of its own content) into
``layer.vhd``. That tar is a function of the sandbox's content alone: names sorted, numeric
owners, mtimes only (no atime or ctime), xattrs sorted; the conversion of a tar is
byte-for-byte reproducible (``test_deterministic_layers.py``). So a sandbox holding the same
content — names, data, modes, owners, mtimes — commits to the same bytes on every host and run.

What containerd's applier cannot give it (docs/deterministic-layers.md): our mounts are bind
mounts, so containerd applies a layer tar through the overlay with its generic applier, which
removes whited-out paths; overlayfs then creates the 0/0 whiteout device itself, stamped with
the time of the removal. Those mtimes reach the exported ``.wh.`` members and so the image:
a layer that deletes something commits to different bytes on each run. (Directories created
without a tar entry of their own are stamped with the time too.)

Both runs below are processes of their own on the host backend, differing as in the other
test (data root, working directory, TZ, umask, LCOW_NATIVE, a second apart). They unpack the
same tar into a prepared snapshot as containerd's applier does (owners, modes and times of
every entry restored, directories' times last), commit, then make a second layer that adds a
file and deletes one. The base layers must be identical; the second layers' Diffs must be
identical except for the whiteout's mtime.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from lcow.graphdriver.driver import Driver
from tests.helpers import TarEntry, assert_e2fsck_clean, host_leftovers, requires, write_tar

pytestmark = requires("host", "mke2fs", "e2fsck")

T0 = 1_650_000_000_000_000_000

# Runs in its own process: argv = data root, layer tar. Prints the two committed layers' ids.
_COMMIT_SCRIPT = r"""
import json, os, sys, tarfile, time
from pathlib import Path
from lcow.graphdriver.driver import Driver
from lcow.snapshots.snapshotter import Snapshotter

root, tar = Path(sys.argv[1]), sys.argv[2]

def unpack(tar, dest):
    # containerd's applier: owners, modes and times of every entry; directories' times last
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
        tf.extractall(dest, numeric_owner=True, filter="fully_trusted")
    for m in members:  # tarfile leaves symlink times alone; containerd sets them (lutimes)
        if m.issym():
            os.utime(dest / m.name, ns=(int(m.mtime * 1e9),) * 2, follow_symlinks=False)

sn = Snapshotter(Driver(root, ["lcow.backend=host"]))
try:
    src = Path(sn.prepare("ns/1/extract-base", None, {})[0].source)
    unpack(tar, src)
    sn.commit("ns/2/base", "ns/1/extract-base", {})
    src = Path(sn.prepare("ns/3/extract-top", "ns/2/base", {})[0].source)
    os.remove(src / "etc/gone")  # overlayfs makes the whiteout, stamped now
    (src / "etc/added").write_text("new\n")
    os.chmod(src / "etc/added", 0o644)  # the tar's mode, not the umask's
    os.utime(src / "etc/added", ns=(T0, T0))
    os.utime(src / "etc", ns=(T0, T0))  # the layer tar's own entry for etc/, restored last
    sn.commit("ns/4/top", "ns/3/extract-top", {})
    print(json.dumps({"base": sn.stat("ns/2/base").id, "top": sn.stat("ns/4/top").id}))
finally:
    sn.close()
""".replace("T0", str(T0))


def _base_tar(path: Path) -> Path:
    t = T0
    return write_tar(
        path,
        [
            TarEntry("etc/", kind="dir", mode=0o755, mtime_ns=t + 9),
            TarEntry("etc/os-release", data=b"ID=lcow\n", mtime_ns=t + 1),
            TarEntry("etc/gone", data=b"bye\n", mode=0o600, uid=7, gid=8, mtime_ns=t + 2),
            TarEntry("etc/link", kind="symlink", target="os-release", mtime_ns=t + 3),
            TarEntry("etc/hard", kind="hardlink", target="etc/os-release", mtime_ns=t + 1),
            TarEntry("usr/", kind="dir", mode=0o755, mtime_ns=t + 8),
            TarEntry("usr/bin/", kind="dir", mode=0o711, uid=1000, gid=1000, mtime_ns=t + 7),
            TarEntry("usr/bin/tool", data=b"#!/bin/sh\n" * 999, mode=0o4755, mtime_ns=t + 4),
            TarEntry("usr/bin/pipe", kind="fifo", mode=0o640, mtime_ns=t + 5),
            TarEntry("var/", kind="dir", mode=0o1777, mtime_ns=t + 6),
        ],
    )


def _commit(name: str, native: str, tz: str, umask: int, work: Path, tar: Path) -> dict[str, Path]:
    root = work / name / "root"
    cwd = work / name / "cwd"
    cwd.mkdir(parents=True)
    env = {**os.environ, "LCOW_NATIVE": native, "TZ": tz}
    proc = subprocess.run(
        [sys.executable, "-c", _COMMIT_SCRIPT, str(root), str(tar)],
        cwd=cwd, env=env, umask=umask, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)
    return {kind: root / layer_id for kind, layer_id in ids.items()}


#: One Diff member: type, mode, uid, gid, mtime, link target, sorted PAX records, data.
_Member = tuple[bytes, int, int, int, float, str, list[tuple[str, str]], bytes]


def _members(folder: Path) -> dict[str, _Member]:
    """The layer's Diff, member by member (everything tar records, data included)."""
    driver = Driver(folder.parent, ["lcow.backend=userspace"])
    parent = json.loads((folder / "layerchain.json").read_text())
    stream = driver.diff(folder.name, Path(parent[0]).name if parent else None)
    try:
        data = stream.read()
    finally:
        stream.close()
    out: dict[str, _Member] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            member = tf.extractfile(m) if m.isfile() else None
            body = member.read() if member is not None else b""
            out[m.name] = (m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname,
                           sorted(m.pax_headers.items()), body)  # fmt: skip
    return out


def test_commit_of_the_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    tar = _base_tar(tmp_path / "base.tar")
    try:
        a = _commit("a", "1", "UTC", 0o022, tmp_path, tar)
        time.sleep(1.1)
        b = _commit("b", "0", "Pacific/Chatham", 0o077, tmp_path, tar)

        # the base: same content in the sandbox, same bytes
        base_a, base_b = a["base"] / "layer.vhd", b["base"] / "layer.vhd"
        assert base_a.read_bytes() == base_b.read_bytes()
        assert_e2fsck_clean(base_a)
        assert set(_members(a["base"])) >= {"etc", "etc/gone", "usr/bin/tool", "var"}

        # the second layer: the same except the whiteout overlayfs stamped when it was made
        top_a, top_b = _members(a["top"]), _members(b["top"])
        assert set(top_a) == set(top_b) == {"etc", "etc/.wh.gone", "etc/added"}
        for name in top_a:
            if name != "etc/.wh.gone":
                assert top_a[name] == top_b[name], name
        whiteout_a, whiteout_b = top_a["etc/.wh.gone"], top_b["etc/.wh.gone"]
        assert whiteout_a[:4] == whiteout_b[:4] == (b"0", 0o600, 0, 0)  # only times can differ
        assert abs(whiteout_a[4] - time.time()) < 600  # the removal's time, not the tar's
        assert_e2fsck_clean(a["top"] / "layer.vhd")
    finally:
        for name in ("a", "b"):
            if (tmp_path / name / "root").exists():
                Driver(tmp_path / name / "root", ["lcow.backend=host"]).cleanup()
        assert host_leftovers(tmp_path) == []
