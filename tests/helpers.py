"""Shared test helpers: requirements, tar building, and the outside oracles.

* :func:`requires` / :func:`ensure`: a test that needs root, loop devices, working xattrs or a
  binary skips with a reason — unless ``CI=true``, where a missing requirement *fails* the test
  (the CI machine must have everything, a silent skip would hide a gap).
* :class:`TarEntry` / :func:`write_tar`: build a tar from a spec with Python's ``tarfile`` (PAX),
  names as ``bytes`` (non-UTF-8 allowed), nanosecond mtimes, ``SCHILY.xattr.*``, GNU PAX 1.0 sparse
  members and raw type bytes for malformed input.
* oracles we did not write: :func:`assert_e2fsck_clean` (``e2fsck -fn`` exits 0),
  :func:`loop_mount` (read-only, honouring a VHD footer / verity area with ``losetup --sizelimit``,
  always unmounted and detached), :func:`tar_diff` (``tar -df`` against the mount),
  :func:`qemu_virtual_size` and :func:`veritysetup_verify`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, NoReturn, cast

import pytest

from tests.harness.crash.rootstate import host_leftovers

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "SBIN_PATH",
    "TarEntry",
    "assert_e2fsck_clean",
    "ensure",
    "footer_size",
    "host_leftovers",
    "in_ci",
    "loop_mount",
    "missing",
    "qemu_virtual_size",
    "release_leftover_mounts",
    "requires",
    "run",
    "tar_diff",
    "tool",
    "veritysetup_verify",
    "write_tar",
]

SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
FOOTER = 512

# --------------------------------------------------------------------------------------------
# requirements


def in_ci() -> bool:
    """Whether missing requirements must fail instead of skip (``CI=true``)."""
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def missing(reason: str) -> NoReturn:
    """Skip the current test with ``reason``, or fail it when running under CI."""
    if in_ci():
        pytest.fail(f"CI=true and a requirement is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def tool(name: str) -> str | None:
    """Full path of a binary on PATH or in the sbin directories, or ``None``."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


@functools.cache
def _loop_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root for loop devices"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (loop driver missing)"
    losetup = tool("losetup")
    if losetup is None:
        return "losetup not found (util-linux)"
    probe = run([losetup, "--find"])
    if probe.returncode != 0:
        return f"losetup --find failed: {probe.stderr.strip()}"
    return None


@functools.cache
def _xattr_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root for trusted.* xattrs"
    with tempfile.NamedTemporaryFile() as probe:
        for name in ("user.lcowtest", "trusted.lcowtest", "security.lcowtest"):
            try:
                os.setxattr(probe.name, name, b"1")
            except OSError as exc:
                return f"{tempfile.gettempdir()} does not support {name} xattrs: {exc.strerror}"
    return None


@functools.cache
def _host_problem() -> str | None:
    """What the host backend lacks here (root, loop, overlayfs, qemu-storage-daemon)."""
    from lcow.backends.host import check_prerequisites
    from lcow.errors import NotSupported

    try:
        check_prerequisites()
    except NotSupported as exc:
        return str(exc)
    if tool("qemu-storage-daemon") is None:
        return "qemu-storage-daemon not found (Debian: qemu-system-common)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    return None


@functools.cache
def _vm_problem() -> str | None:
    """What the vm backend lacks here (QEMU, the assets of ``lcow uvm build``)."""
    from lcow.backends.vm import check_prerequisites, parse_vm_options
    from lcow.errors import NotSupported

    try:
        check_prerequisites(parse_vm_options({}, root="/nonexistent"))
    except NotSupported as exc:
        return str(exc)
    return None


# What the containerd tests run: Debian's containerd 1.6 with its runc shim and ctr client, and
# Debian's docker-registry with skopeo to push the images they pull.
_CONTAINERD_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
}
_REGISTRY_TOOLS = {"docker-registry": "docker-registry", "skopeo": "skopeo"}


def _tools_problem(tools: Mapping[str, str]) -> str | None:
    """The first of ``tools`` (binary: Debian package) that is not installed."""
    for binary, package in tools.items():
        if tool(binary) is None:
            return f"{binary} not found (Debian: {package})"
    return None


def _problem(need: str) -> str | None:  # noqa: PLR0911 - one answer per kind of requirement, a flat dispatch
    if need == "root":
        return None if os.geteuid() == 0 else "needs root"
    if need == "loop":
        return _loop_problem()
    if need == "xattrs":
        return _xattr_problem()
    if need == "host":
        return _host_problem()
    if need == "vm":
        return _vm_problem()
    if need == "containerd":
        return _tools_problem(_CONTAINERD_TOOLS)
    if need == "registry":
        return _tools_problem(_REGISTRY_TOOLS)
    if tool(need) is None:
        return f"{need} not found"
    return None


def requires(*needs: str) -> pytest.MarkDecorator:
    """Mark a test (or module via ``pytestmark``) as needing each of ``needs``.

    ``needs`` are ``"root"``, ``"loop"`` (root and a working loop driver), ``"xattrs"`` (root and
    user/trusted/security xattrs on the temp directory), ``"host"`` (all the host backend
    needs: root, loop, overlayfs, FUSE, qemu-storage-daemon), ``"containerd"`` (containerd, ctr,
    its runc shim and runc), ``"registry"`` (docker-registry and skopeo) or binary names
    (``"e2fsck"``, ``"qemu-img"``...). Checked in ``conftest.pytest_runtest_setup``: skip, or
    fail under CI.
    """
    return pytest.mark.requires(*needs)


def ensure(*needs: str) -> None:
    """Check requirements inside a test or fixture (same skip/fail rule as :func:`requires`)."""
    for need in needs:
        problem = _problem(need)
        if problem is not None:
            missing(problem)


# --------------------------------------------------------------------------------------------
# processes


def run(
    argv: Sequence[str | os.PathLike[str]], *, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command without raising; text output decoded with ``surrogateescape``."""
    env = {**os.environ, "LC_ALL": "C", "PATH": os.environ.get("PATH", "") + ":" + SBIN_PATH}
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        input=input,
        capture_output=True,
        check=False,
        env=env,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "surrogateescape"),
        proc.stderr.decode("utf-8", "surrogateescape"),
    )


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )


# --------------------------------------------------------------------------------------------
# tar building


@dataclass
class TarEntry:
    """One tar member to write.

    Attributes:
        name: path in the archive (``bytes`` may be non-UTF-8; a ``str`` is encoded as UTF-8).
        kind: ``file``, ``dir``, ``symlink``, ``hardlink``, ``fifo``, ``chr``, ``blk``, ``sparse``,
            or ``raw`` (write ``type`` verbatim, e.g. ``b"V"``).
        data: file content (``file``/``raw``).
        mode: permission bits.
        uid, gid: numeric owner.
        mtime_ns: modification time in nanoseconds (PAX ``mtime`` keeps all nine digits).
        target: symlink target or hard-link target.
        major, minor: device numbers.
        xattrs: written as ``SCHILY.xattr.<name>``.
        sparse: for ``sparse``: ``(offset, data)`` segments; ``size`` is the logical size.
        size: logical size of a sparse file.
        type: raw tar type byte for ``raw``.
        pax: extra PAX records (override the generated ones).
    """

    name: str | bytes
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 1_600_000_000_123_456_789
    target: str | bytes = ""
    major: int = 0
    minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    sparse: Sequence[tuple[int, bytes]] = ()
    size: int = 0
    type: bytes = b"0"
    pax: Mapping[str, str] = field(default_factory=dict)


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "sparse": tarfile.REGTYPE,
}


def _str(name: str | bytes) -> str:
    return os.fsdecode(name) if isinstance(name, bytes) else name


def pax_time(ns: int) -> str:
    """Format nanoseconds as a PAX decimal time (``-1.5`` is one and a half seconds before 1970)."""
    sign = "-" if ns < 0 else ""
    seconds, nanos = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{seconds}.{nanos:09d}"


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out


def _tarinfo(entry: TarEntry) -> tuple[tarfile.TarInfo, bytes]:
    name = _str(entry.name)
    payload = entry.data
    pax: dict[str, str] = {"mtime": pax_time(entry.mtime_ns)}
    if entry.kind == "sparse":
        segments = [(off, len(d)) for off, d in entry.sparse]
        if not segments or segments[-1][0] + segments[-1][1] < entry.size:
            segments.append((entry.size, 0))
        text = "\n".join([str(len(segments))] + [f"{o}\n{n}" for o, n in segments]) + "\n"
        raw = text.encode() + b"\0" * (-len(text) % 512)
        payload = raw + b"".join(d for _, d in entry.sparse)
        path = PurePosixPath(name)
        pax.update(
            {
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": name,
                "GNU.sparse.realsize": str(entry.size),
            }
        )
        name = str(path.parent / "GNUSparseFile.0" / path.name)
    info = tarfile.TarInfo(name)
    info.type = entry.type if entry.kind == "raw" else _TYPES[entry.kind]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime_ns // 1_000_000_000
    info.linkname = _str(entry.target)
    info.devmajor, info.devminor = entry.major, entry.minor
    for key, value in entry.xattrs.items():
        pax[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
    pax.update(entry.pax)
    info.pax_headers = pax
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) or entry.kind == "raw":
        info.size = len(payload)
    return info, payload


def write_tar(path: Path, entries: Sequence[TarEntry]) -> Path:
    """Write ``entries`` to ``path`` as a PAX tar (UTF-8 names, ``surrogateescape`` for bytes)."""
    with tarfile.open(
        path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tf:
        for entry in entries:
            info, payload = _tarinfo(entry)
            tf.addfile(info, cast(IO[bytes], _Bytes(payload)) if info.size else None)
    return path


# --------------------------------------------------------------------------------------------
# oracles


def assert_e2fsck_clean(image: Path) -> None:
    """``e2fsck -fn`` must exit 0 on ``image`` (a footer or verity area after it is ignored)."""
    ensure("e2fsck")
    proc = run(["e2fsck", "-fn", image])
    assert proc.returncode == 0, f"e2fsck -fn found problems:\n{_describe(proc)}"


def footer_size(image: Path) -> int:
    """512 when ``image`` ends with a VHD footer (``conectix`` cookie), else 0."""
    with open(image, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < FOOTER:
            return 0
        f.seek(-FOOTER, os.SEEK_END)
        return FOOTER if f.read(8) == b"conectix" else 0


@contextlib.contextmanager
def loop_mount(image: Path, mountpoint: Path, *, size: int | None = None) -> Iterator[Path]:
    """Mount ``image`` read-only on ``mountpoint`` through a read-only loop device.

    ``size`` limits the loop device (the ext4 size when a verity area follows it); by default a
    VHD footer is cut off (file size - 512). The mount is always undone and the loop device always
    detached, also when the body or the mount fails.
    """
    ensure("loop", "mount", "umount", "losetup")
    if size is None:
        size = image.stat().st_size - footer_size(image)
    mountpoint.mkdir(parents=True, exist_ok=True)
    attach = run(["losetup", "--find", "--show", "--read-only", "--sizelimit", str(size), image])
    assert attach.returncode == 0, f"losetup failed:\n{_describe(attach)}"
    device = attach.stdout.strip()
    _ACTIVE[device] = None
    try:
        mounted = run(["mount", "-t", "ext4", "-o", "ro", device, mountpoint])
        assert mounted.returncode == 0, f"mount failed:\n{_describe(mounted)}\n{_dmesg_tail()}"
        _ACTIVE[device] = mountpoint
        try:
            yield mountpoint
        finally:
            _umount(mountpoint)
            _ACTIVE[device] = None
    finally:
        run(["losetup", "--detach", device])
        _ACTIVE.pop(device, None)


# Loop devices (and their mount points) attached by loop_mount and not yet released: a timeout
# firing inside a ``finally`` could skip the cleanup, so the session sweeps them at the end.
_ACTIVE: dict[str, Path | None] = {}


def _umount(mountpoint: Path) -> None:
    if run(["umount", mountpoint]).returncode != 0:
        run(["umount", "--lazy", mountpoint])


def release_leftover_mounts() -> list[str]:
    """Unmount and detach whatever :func:`loop_mount` left behind; return the devices."""
    released = []
    for device, mountpoint in list(_ACTIVE.items()):
        if mountpoint is not None:
            _umount(mountpoint)
        run(["losetup", "--detach", device])
        _ACTIVE.pop(device, None)
        released.append(device)
    return released


def _dmesg_tail() -> str:
    proc = run(["dmesg"])
    return "--- dmesg (tail)\n" + "\n".join(proc.stdout.splitlines()[-15:])


def tar_diff(tar: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """``tar --numeric-owner --xattrs -df TAR`` in ``root``: exit 0 means no differences.

    GNU tar compares type, mode, owner, size, mtime (with nanoseconds), content, link targets,
    hard links and device numbers; it does *not* compare xattrs (use the tree walk for those).
    """
    ensure("tar")
    return run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root, "-df", tar])


def assert_tar_diff_clean(tar: Path, root: Path) -> None:
    """:func:`tar_diff` must report no differences."""
    proc = tar_diff(tar, root)
    assert proc.returncode == 0, f"tar -df reports differences:\n{_describe(proc)}"


def qemu_virtual_size(image: Path) -> int:
    """``virtual-size`` reported by ``qemu-img info -f vpc --output=json``."""
    ensure("qemu-img")
    proc = run(["qemu-img", "info", "-f", "vpc", "--output=json", image])
    assert proc.returncode == 0, _describe(proc)
    return int(json.loads(proc.stdout)["virtual-size"])


def veritysetup_verify(image: Path, root_hash: str, hash_offset: int) -> None:
    """``veritysetup verify IMG IMG ROOT --hash-offset=OFF`` must exit 0."""
    proc = veritysetup_run(image, root_hash, hash_offset)
    assert proc.returncode == 0, f"veritysetup rejected the image:\n{_describe(proc)}"


def veritysetup_run(
    image: Path, root_hash: str, hash_offset: int
) -> subprocess.CompletedProcess[str]:
    """Run ``veritysetup verify`` on an image whose hash area starts at ``hash_offset``."""
    ensure("veritysetup")
    return run(["veritysetup", "verify", image, image, root_hash, f"--hash-offset={hash_offset}"])


def settled_mounts(below: Path, timeout: float = 30) -> list[tuple[str, str]]:
    """The mounts below ``below`` once none is left or ``timeout`` seconds passed: a removed
    layer's idle disks are released in the background after Remove answers."""
    from lcow.backends.host import kernel

    deadline = time.monotonic() + timeout
    while (left := list(kernel.mounts_below(below))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def diff_files(driver: Driver, layer: str, parent: str | None = None) -> dict[str, bytes]:
    """The regular files of ``layer``'s Diff (against ``parent``): name -> bytes."""
    with driver.diff(layer, parent) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        found = {}
        for member in tar:
            data = tar.extractfile(member) if member.isfile() else None
            if data is not None:
                found[member.name] = data.read()
        return found


_LOCK_HOLDER = """
import sys
from pathlib import Path
from lcow.storage.locks import LayerLocks
with LayerLocks(Path(sys.argv[1])).hold(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
"""


class LockHeldElsewhere:
    """Another process holding ``key`` in the :class:`~lcow.storage.locks.LayerLocks` of
    ``root`` (a data root) from construction until :meth:`release`; use it as a context
    manager, which kills it if still holding."""

    def __init__(self, root: Path, key: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCK_HOLDER, str(root), key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "held\n", "the holder did not take the lock"

    def release(self) -> None:
        """Let the holder drop the lock and exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)

    def __enter__(self) -> LockHeldElsewhere:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
