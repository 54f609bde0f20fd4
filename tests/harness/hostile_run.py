"""Run the hostile corpus (:mod:`tests.harness.hostile`) through every sink and judge the result.

A *sink* is one way a tar becomes a layer: :class:`Tar2ext4Sink` (``tar2ext4`` with LCOW's
options), :class:`ApplyDiffSink` (``Driver.apply_diff`` on a fresh data root, userspace backend),
:class:`ImportSink` (``lcow import`` of a ``docker save`` tarball wrapping the layer, through the
command line), :class:`PluginSink` (``GraphDriver.ApplyDiff`` of the plugin server, the tar sent
as dockerd sends it: a chunked HTTP body on the unix socket), :class:`ExtractSink`
(``extract_archive`` of a host-backend view: the tarfile-based reader, judged against the case's
:attr:`~tests.harness.hostile.HostileCase.extract_expect`). All are listed in :data:`SINKS`.

For every case and sink :func:`run_case` checks:

* the outcome is the expected one: the error category (for the command line, its exit status)
  with a message naming the entry, or success;
* on success the image passes ``e2fsck -fn``, lcow's reader walks all of it, the case's property
  holds through the reader and, with ``mount=True``, through a read-only kernel mount;
* on failure nothing at all changed in the scratch tree (output directory, data root, the image
  tarball, a canary directory beside them), and on success only the sink's own outputs appeared —
  so nothing was written outside the data root and no partial layer is left;
* the peak RSS of the sink (``VmHWM``, reset before each sink) stays within the case's budget.

:func:`run_isolated` runs one case in a fresh interpreter (``python -m tests.harness.hostile_run``)
so RSS is measured per case, a crash or hang is caught, and address space is capped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lcow.errors import LcowError
from lcow.storage.locks import LOCK_FILES
from tests.harness.hostile import (
    ALL_CASES,
    Expect,
    HostileCase,
    MountProbe,
    ReaderProbe,
    uncompressed_stream,
)
from tests.harness.spawn import child_env, python_module

__all__ = [
    "HOST_SINKS",
    "SINKS",
    "ApplyDiffSink",
    "CaseReport",
    "ExtractSink",
    "ImportSink",
    "PluginFailure",
    "PluginSink",
    "Sink",
    "SinkReport",
    "Tar2ext4Sink",
    "compact_table",
    "markdown_table",
    "run_case",
    "run_isolated",
]

_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_LAYER_ID = "hostile"
#: Files a sink may leave behind whatever happens (the data root's advisory locks).
_ALWAYS_ALLOWED = LOCK_FILES
#: Images with more inodes than this are walked with the reader's lean scan.
_BIG = 100_000
#: Address-space cap of an isolated run: a runaway allocation fails instead of swapping.
_ADDRESS_SPACE = 6 << 30


class CliFailure(Exception):
    """A command-line sink exited non-zero."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PluginFailure(Exception):
    """The plugin answered ApplyDiff with ``{"Err": message}`` (the wire carries no error
    type, so only the message is judged)."""


# --------------------------------------------------------------------------------------------
# sinks


Operation = Callable[[], Path]


class Sink(Protocol):
    """One path from a tar to a layer image."""

    name: str

    def prepare(self, layer: Path, work: Path) -> tuple[Operation, list[str]]:
        """Set up under ``work`` (not measured), return the operation and, relative to ``work``,
        the paths it may create when it succeeds (directories include everything below).

        The operation returns the image it wrote; it raises on failure."""


_LCOW_OPTIONS = {"convert_whiteouts": True, "vhd_footer": True}


class Tar2ext4Sink:
    """``tar2ext4(layer, out/layer.vhd)`` with ApplyDiff's options (``-overlay -vhd``)."""

    name = "tar2ext4"

    def prepare(self, layer: Path, work: Path) -> tuple[Operation, list[str]]:
        from lcow.convert.options import ConvertOptions
        from lcow.convert.tar2ext4 import tar2ext4

        out = work / "out"
        out.mkdir()
        target = out / "layer.vhd"

        def operation() -> Path:
            tar2ext4(layer, target, ConvertOptions(**_LCOW_OPTIONS))  # type: ignore[arg-type]
            return target

        return operation, ["out/layer.vhd"]


class ApplyDiffSink:
    """``Driver.apply_diff`` into a layer made by ``create`` on a fresh data root."""

    name = "apply_diff"

    def prepare(self, layer: Path, work: Path) -> tuple[Operation, list[str]]:
        from lcow.graphdriver.driver import Driver

        driver = Driver(work / "root", ["lcow.backend=userspace"])
        driver.create(_LAYER_ID)

        def operation() -> Path:
            driver.apply_diff(_LAYER_ID, None, layer)
            return work / "root" / _LAYER_ID / "layer.vhd"

        return operation, [f"root/{_LAYER_ID}/layer.vhd", f"root/{_LAYER_ID}/lcow-layer.json"]


class ImportSink:
    """``lcow --root ROOT --json import image.tar``, the layer wrapped in a ``docker save``
    tarball (stored as it is in the corpus: plain or gzip)."""

    name = "import"

    def prepare(self, layer: Path, work: Path) -> tuple[Operation, list[str]]:
        from lcow.graphdriver.driver import Driver
        from lcow.images.chainid import layer_id

        image = work / "input" / "image.tar"
        image.parent.mkdir()
        diff_id = write_docker_save(image, layer)
        root = work / "root"
        Driver(root, ["lcow.backend=userspace"])  # the data root exists before, as in real use
        lid = layer_id(diff_id)

        def operation() -> Path:
            from lcow.cli.main import main

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(["--root", str(root), "--json", "import", str(image)])
            if status != 0:
                raise CliFailure(status, err.getvalue().strip())
            return root / lid / "layer.vhd"

        return operation, [f"root/{lid}"]


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the plugin's unix socket, as dockerd speaks it."""

    def __init__(self, path: str) -> None:
        super().__init__("plugin", timeout=600)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


class PluginSink:
    """``GraphDriver.ApplyDiff`` of ``lcow plugin serve`` (userspace backend), after Init and
    Create over the same socket; the tar streamed as a chunked body."""

    name = "plugin"

    def prepare(self, layer: Path, work: Path) -> tuple[Operation, list[str]]:
        from lcow.plugin.server import BackgroundServer, ServerConfig

        sockets = Path(tempfile.mkdtemp(prefix="lcowh-", dir="/tmp"))  # short: 107-byte limit
        socket_path = sockets / "p.sock"
        server = BackgroundServer(
            ServerConfig(socket_path=socket_path, defaults=["lcow.backend=userspace"])
        )
        server.start()
        root = work / "root"
        _plugin_call(socket_path, "GraphDriver.Init", {"Home": str(root), "Opts": None})
        _plugin_call(socket_path, "GraphDriver.Create", {"ID": _LAYER_ID, "Parent": ""})

        def operation() -> Path:
            try:
                with open(layer, "rb") as body:
                    reply = _plugin_request(
                        socket_path,
                        f"/GraphDriver.ApplyDiff?id={_LAYER_ID}&parent=",
                        iter(lambda: body.read(64 << 10), b""),
                    )
            finally:
                server.stop()
                shutil.rmtree(sockets, ignore_errors=True)
            if "Err" in reply:
                raise PluginFailure(str(reply["Err"]))
            return root / _LAYER_ID / "layer.vhd"

        return operation, [f"root/{_LAYER_ID}/layer.vhd", f"root/{_LAYER_ID}/lcow-layer.json"]


def _plugin_request(socket_path: Path, url: str, body: Iterator[bytes] | bytes) -> dict[str, Any]:
    connection = _UnixHTTPConnection(str(socket_path))
    try:
        connection.request(
            "POST", url, body=body, encode_chunked=not isinstance(body, bytes),
            headers={"Accept": "application/vnd.docker.plugins.v1.2+json"},
        )  # fmt: skip
        reply = connection.getresponse()
        data: dict[str, Any] = json.loads(reply.read() or b"{}")
        return data
    finally:
        connection.close()


def _plugin_call(socket_path: Path, method: str, payload: dict[str, Any]) -> None:
    reply = _plugin_request(socket_path, f"/{method}", json.dumps(payload).encode() + b"\n")
    if "Err" in reply:
        raise RuntimeError(f"{method}: {reply['Err']}")


def _count_tree(top: Path) -> int:
    """Entries below ``top``, walked without recursion (trees may be 1,000+ levels deep)."""
    count, stack = 0, [os.fsencode(top)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


class ExtractSink:
    """``extract_archive`` of a host-backend view (the tarfile-based reader of
    :mod:`lcow.backends.untar`, as ``docker cp`` reaches it through the plugin): a fresh
    writable layer (``create_read_write``), ``get``, the tar extracted at ``/``, then checked
    through the live view and ``put``. Needs root, loop devices, overlayfs, FUSE and
    qemu-storage-daemon.

    Docker's ``Untar`` writes entries as it reads them, so a failure leaves the entries before
    it in the view (its sandbox) — the only change allowed on failure. What a case expects of
    this sink is :attr:`HostileCase.extract_expect` (see there for where it differs).
    """

    name = "extract_archive"
    #: The view's own content may hold what came before a failing entry (Docker's semantics).
    partial_on_failure = True

    def __init__(self) -> None:
        self._driver: Any = None

    def prepare(self, layer: Path, work: Path) -> tuple[Operation, list[str]]:
        from lcow.backends.taroptions import TarOptions
        from lcow.graphdriver.driver import Driver

        driver = Driver(work / "root", ["lcow.backend=host"])
        driver.create_read_write(_LAYER_ID, None)
        view = driver.get(_LAYER_ID)
        self._driver = driver

        def operation() -> Path:
            try:
                with open(layer, "rb") as stream:
                    view.extract_archive("/", stream, TarOptions())
            except BaseException:
                self.release()
                raise
            return Path(view.path)  # still mounted: verify() checks it, release() puts it

        return operation, ["root"]

    def expectation(self, hostile: HostileCase) -> Expect:
        """What this sink must do with ``hostile``."""
        return hostile.extract_expect

    def verify(self, hostile: HostileCase, image: Path, report: SinkReport) -> None:
        """The case's property through the mounted view (the kernel is the oracle), then Put."""
        try:
            report.entries = _count_tree(image)
            self.expectation(hostile).verify(MountProbe(image))
        except AssertionError as exc:
            report.problems.append(f"view: {exc}")
        except OSError as exc:
            report.problems.append(f"view: {type(exc).__name__}: {exc}")
        finally:
            self.release()

    def release(self) -> None:
        """Put the view, then stop what the host backend keeps running (mounts, daemon);
        idempotent, and run by :func:`run_sink` whatever happened."""
        driver, self._driver = self._driver, None
        if driver is None:
            return
        try:
            driver.put(_LAYER_ID)
        finally:
            driver.cleanup()


#: Every sink, by name.
SINKS: dict[str, Sink] = {
    sink.name: sink
    for sink in (Tar2ext4Sink(), ApplyDiffSink(), ImportSink(), PluginSink(), ExtractSink())
}
#: Sinks that need more than root and loop devices (the host backend's daemons and mounts).
HOST_SINKS = frozenset({"extract_archive"})


def write_docker_save(image: Path, layer: Path) -> str:
    """Write a one-layer ``docker save`` tarball around ``layer`` (as stored); return its diff
    ID (the digest of the uncompressed tar; of the stored bytes if it does not decompress)."""
    digest = hashlib.sha256()
    try:
        for chunk in uncompressed_stream(layer):
            digest.update(chunk)
    except (OSError, EOFError, ValueError):
        digest = hashlib.sha256(layer.read_bytes())
    diff_id = "sha256:" + digest.hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = hashlib.sha256(diff_id.encode()).hexdigest() + "/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["hostile:latest"], "Layers": [layer_name]}]
    ).encode()
    with tarfile.open(image, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(layer_name)
        info.size = layer.stat().st_size
        with open(layer, "rb") as fh:
            tf.addfile(info, fh)
    return diff_id


# --------------------------------------------------------------------------------------------
# judging


@dataclass
class SinkReport:
    """What one sink did with one case.

    Attributes:
        sink: the sink's name.
        expected: what this sink had to do (``ok`` or an error class), when it differs from
            the case's own expectation; empty otherwise.
        outcome: ``ok``, the error class, ``exit N`` (command line), or ``crash``/``timeout``.
        message: the error message (first line), empty on success.
        seconds: wall time of the operation.
        rss_mib: peak RSS during the operation, MiB (the process baseline included).
        image_digest: digest of the ext4 part of the image, on success.
        entries: entries the reader walked, on success.
        problems: everything that went against the expectation (empty: the case passed).
    """

    sink: str
    outcome: str = ""
    message: str = ""
    seconds: float = 0.0
    rss_mib: float = 0.0
    image_digest: str = ""
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    expected: str = ""

    @property
    def passed(self) -> bool:
        """No problems."""
        return not self.problems


@dataclass
class CaseReport:
    """A case through every sink."""

    case: str
    expected: str
    sinks: list[SinkReport]

    @property
    def passed(self) -> bool:
        """Every sink passed, and successful sinks wrote identical images."""
        return all(s.passed for s in self.sinks) and not self.mismatch

    @property
    def mismatch(self) -> bool:
        """Two successful sinks produced different ext4 images (sinks that write no image,
        such as ``extract_archive``, have no digest)."""
        digests = {s.image_digest for s in self.sinks if s.image_digest}
        return len(digests) > 1

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict."""
        sinks = [asdict(s) for s in self.sinks]
        return {"case": self.case, "expected": self.expected, "sinks": sinks}

    @classmethod
    def from_json(cls, value: dict[str, object]) -> CaseReport:
        """The inverse of :meth:`to_json`."""
        sinks = [SinkReport(**s) for s in value["sinks"]]  # type: ignore[attr-defined]
        return cls(str(value["case"]), str(value["expected"]), sinks)


Snapshot = dict[str, tuple[str, int, int, int]]


def snapshot(top: Path) -> Snapshot:
    """Every path under ``top``: kind, mode, size and (for non-directories) mtime."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        # A view still mounted (extract_archive) is judged by its sink, not walked here.
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, 0, 0)
            else:
                kind = "link" if stat.S_ISLNK(st.st_mode) else "file"
                out[rel] = (kind, st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _allowed(rel: str, allowed: Sequence[str]) -> bool:
    if os.path.basename(rel) in _ALWAYS_ALLOWED:
        return True
    return any(rel == a or rel.startswith(a + "/") for a in allowed)


def changes(before: Snapshot, after: Snapshot, allowed: Sequence[str]) -> list[str]:
    """Paths added, removed or modified, except ``allowed`` ones."""
    out = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel) != after.get(rel) and not _allowed(rel, allowed):
            what = "added" if rel not in before else "removed" if rel not in after else "changed"
            out.append(f"{rel} {what}")
    return out


def _rss_reset() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _rss_peak_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def e2fsck(image: Path) -> str | None:
    """``e2fsck -fn``: ``None`` when clean (or e2fsck is missing), else its complaint."""
    binary = _tool("e2fsck")
    if binary is None:
        return None
    proc = subprocess.run([binary, "-fn", str(image)], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return f"e2fsck -fn exit {proc.returncode}: " + " | ".join(lines[-6:])


def image_digest(path: Path, size: int) -> str:
    """SHA-256 of the first ``size`` bytes, reading only data regions (the images are sparse)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            digest.update(b"@%d:" % start)
            while start < end:
                chunk = os.pread(fd, min(1 << 20, end - start), start)
                if not chunk:
                    break
                digest.update(chunk)
                start += len(chunk)
            pos = end
        digest.update(b"#%d" % size)
    finally:
        os.close(fd)
    return digest.hexdigest()


@contextlib.contextmanager
def kernel_mount(image: Path, mountpoint: Path, size: int) -> Iterator[Path]:
    """Mount ``image``'s first ``size`` bytes read-only through a read-only loop device."""
    losetup, mount, umount = _tool("losetup"), _tool("mount"), _tool("umount")
    assert losetup and mount and umount, "losetup/mount/umount missing"
    attach = subprocess.run(
        [losetup, "--find", "--show", "--read-only", "--sizelimit", str(size), str(image)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    device = attach.stdout.strip()
    try:
        mountpoint.mkdir(exist_ok=True)
        subprocess.run(
            [mount, "-t", "ext4", "-o", "ro", device, str(mountpoint)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        try:
            yield mountpoint
        finally:
            if subprocess.run([umount, str(mountpoint)], check=False).returncode:
                subprocess.run([umount, "--lazy", str(mountpoint)], check=False)
    finally:
        subprocess.run([losetup, "--detach", device], check=False)


def _verify_image(
    hostile: HostileCase, image: Path, report: SinkReport, scratch: Path, mount: bool
) -> None:
    """e2fsck, a full reader walk, the case's property (reader, then kernel)."""
    from lcow.formats.ext4.reader import Ext4Reader

    if not image.is_file():
        report.problems.append(f"{image.name} missing after success")
        return
    complaint = e2fsck(image)
    if complaint:
        report.problems.append(complaint)
    try:
        with Ext4Reader.open(image) as reader:
            ext4_size = reader.superblock.s_blocks_count * reader.block_size
            # every entry with its xattrs and link target; the lean scan for huge images
            big = reader.superblock.s_inodes_count > _BIG
            walk = reader.scan() if big else reader.walk()
            report.entries = sum(1 for _ in walk)
            hostile.expect.verify(ReaderProbe(reader))
        report.image_digest = image_digest(image, ext4_size)
    except AssertionError as exc:
        report.problems.append(f"reader: {exc}")
        return
    except LcowError as exc:
        report.problems.append(f"reader: {type(exc).__name__}: {exc}")
        return
    if mount:
        try:
            with kernel_mount(image, scratch / "mnt", ext4_size) as where:
                hostile.expect.verify(MountProbe(where))
        except AssertionError as exc:
            report.problems.append(f"kernel mount: {exc}")
        except subprocess.CalledProcessError as exc:
            report.problems.append(f"kernel mount failed: {exc.stderr.strip()}")


def _expectation(hostile: HostileCase, sink: Sink) -> Expect:
    special = getattr(sink, "expectation", None)
    return hostile.expect if special is None else special(hostile)


def _judge_error(expect: Expect, exc: BaseException, report: SinkReport) -> None:
    from lcow.cli.status import exit_status_for

    message = str(exc).splitlines()[0] if str(exc) else ""
    report.message = message
    if isinstance(exc, CliFailure):
        report.outcome = f"exit {exc.status}"
        if expect.error is None:
            report.problems.append(f"expected success, got exit {exc.status}: {message}")
            return
        want = exit_status_for(expect.error("probe"))
        if exc.status != want:
            report.problems.append(f"expected exit {int(want)}, got {exc.status}: {message}")
            return
        if not message.startswith("lcow: "):
            report.problems.append(f"message does not start with 'lcow: ': {message!r}")
    elif isinstance(exc, PluginFailure):
        report.outcome = "Err"
        if expect.error is None:
            report.problems.append(f"expected success, got Err: {message}")
            return
    else:
        report.outcome = type(exc).__name__
        if not isinstance(exc, LcowError):
            report.problems.append(f"crash: {type(exc).__name__}: {message}")
            return
        if expect.error is None:
            report.problems.append(f"expected success, got {report.outcome}: {message}")
            return
        if not isinstance(exc, expect.error):
            report.problems.append(f"expected {expect.error.__name__}, got {report.outcome}")
            return
    for name in expect.names:
        if name not in message:
            report.problems.append(f"message does not name {name!r}: {message!r}")


def run_sink(
    hostile: HostileCase, layer: Path, sink: Sink, scratch: Path, *, mount: bool = False
) -> SinkReport:
    """Run one case through one sink in this process (see the module docstring)."""
    report = SinkReport(sink.name)
    expect = _expectation(hostile, sink)
    if expect is not hostile.expect:
        report.expected = expect.outcome
    work = scratch / sink.name
    work.mkdir()
    canary = work / "canary"
    canary.mkdir()
    (canary / "keep").write_bytes(b"canary\n")
    operation, allowed = sink.prepare(layer, work)
    before = snapshot(work)
    _rss_reset()
    started = time.monotonic()
    image: Path | None = None
    try:
        image = operation()
    except (Exception, MemoryError) as exc:
        _judge_error(expect, exc, report)
        if not getattr(sink, "partial_on_failure", False):
            allowed = []  # a failure may leave nothing behind at all
    try:
        _judge_result(hostile, expect, sink, image, report, work, mount, before, allowed, started)
    finally:
        release = getattr(sink, "release", None)
        if release is not None:
            release()
    shutil.rmtree(work, ignore_errors=True)
    return report


def _judge_result(
    hostile: HostileCase,
    expect: Expect,
    sink: Sink,
    image: Path | None,
    report: SinkReport,
    work: Path,
    mount: bool,
    before: Snapshot,
    allowed: Sequence[str],
    started: float,
) -> None:
    report.seconds = time.monotonic() - started
    report.rss_mib = round(_rss_peak_mib(), 1)
    left = changes(before, snapshot(work), allowed)
    if left:
        report.problems.append("left behind: " + ", ".join(left[:5]))
    if report.rss_mib > hostile.rss_mib:
        report.problems.append(f"peak RSS {report.rss_mib} MiB over {hostile.rss_mib} MiB")
    if image is not None:
        report.outcome = "ok"
        verify = getattr(sink, "verify", None)
        if expect.error is not None:
            report.problems.append(f"expected {expect.outcome}, got success")
            if verify is not None:
                verify(hostile, image, SinkReport(sink.name))  # releases what it holds
        elif verify is not None:
            verify(hostile, image, report)
        else:
            _verify_image(hostile, image, report, work, mount)


def run_case(
    hostile: HostileCase,
    layer: Path,
    scratch: Path,
    sinks: Sequence[str] = tuple(SINKS),
    *,
    mount: bool = False,
) -> CaseReport:
    """Run one case through ``sinks`` in this process, each in its own part of ``scratch``."""
    reports = [run_sink(hostile, layer, SINKS[s], scratch, mount=mount) for s in sinks]
    return CaseReport(hostile.name, hostile.expect.outcome, reports)


def run_isolated(
    name: str,
    layer: Path,
    sinks: Sequence[str] = tuple(SINKS),
    *,
    mount: bool | Collection[str] = False,
    timeout: float = 900,
) -> CaseReport:
    """:func:`run_case` with each sink in a fresh interpreter (so the peak RSS is that sink's
    alone); a crash, kill or timeout becomes a failed report. ``mount``: kernel checks for
    every sink (``True``) or for the sinks named."""
    reports = [
        _run_sink_isolated(
            name, layer, sink, mount is True or (mount is not False and sink in mount), timeout
        )
        for sink in sinks
    ]
    return CaseReport(name, ALL_CASES[name].expect.outcome, reports)


def _run_sink_isolated(
    name: str, layer: Path, sink: str, mount: bool, timeout: float
) -> SinkReport:
    with tempfile.TemporaryDirectory(prefix=f"lcow-hostile-{name}-") as scratch:
        argv = python_module(
            "tests.harness.hostile_run", "--worker", name,
            "--input", str(layer), "--scratch", scratch, "--sinks", sink,
        )  # fmt: skip
        if mount:
            argv.append("--mount")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False,
                env=child_env(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            bad = SinkReport(sink, "timeout", f"no result after {timeout} s", timeout)
            bad.problems.append("timeout")
            return bad
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("{"):
                return CaseReport.from_json(json.loads(line)).sinks[0]
        bad = SinkReport(sink, "crash", (proc.stderr.strip().splitlines() or ["?"])[-1])
        bad.seconds = time.monotonic() - started
        bad.problems.append(f"worker exit {proc.returncode}: {proc.stderr[-2000:]}")
        return bad


# --------------------------------------------------------------------------------------------
# reporting


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:90]


def markdown_table(reports: Sequence[CaseReport]) -> str:
    """One row per case and sink: expected, outcome, message, seconds, RSS, verdict."""
    lines = [
        "| case | sink | expected | outcome | message / check | s | peak RSS MiB | verdict |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for rep in reports:
        for s in rep.sinks:
            checked = "e2fsck clean" if s.image_digest else "checked in the view"
            note = s.message or (f"{s.entries} entries, {checked}" if s.outcome == "ok" else "")
            verdict = "pass" if s.passed else "**FAIL**: " + "; ".join(s.problems)
            lines.append(
                f"| {rep.case} | {s.sink} | {s.expected or rep.expected} | {s.outcome} | "
                f"{_cell(note)} | "
                f"{s.seconds:.2f} | {s.rss_mib:.0f} | {_cell(verdict)} |"
            )
        if rep.mismatch:
            lines.append(f"| {rep.case} | all | | | images differ between sinks | | | **FAIL** |")
    return "\n".join(lines)


def compact_table(reports: Sequence[CaseReport]) -> str:
    """One row per case: the expectation, each sink's outcome, the worst time and peak RSS."""
    sinks = list(dict.fromkeys(s.sink for r in reports for s in r.sinks))
    lines = [
        "| case | expected | " + " | ".join(sinks) + " | max s | max RSS MiB | verdict |",
        "|---|---|" + "---|" * len(sinks) + "---:|---:|---|",
    ]
    for rep in reports:
        by_sink = {s.sink: s for s in rep.sinks}
        cells = [by_sink[name].outcome if name in by_sink else "-" for name in sinks]
        slowest = max((s.seconds for s in rep.sinks), default=0.0)
        rss = max((s.rss_mib for s in rep.sinks), default=0.0)
        verdict = "pass" if rep.passed else "**FAIL**"
        lines.append(
            f"| {rep.case} | {rep.expected} | {' | '.join(cells)} | {slowest:.2f} | {rss:.0f} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.hostile_run")
    parser.add_argument("--worker", required=True, metavar="CASE")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--scratch", required=True, type=Path)
    parser.add_argument("--sinks", default=",".join(SINKS))
    parser.add_argument("--mount", action="store_true")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE, _ADDRESS_SPACE))
    report = run_case(
        ALL_CASES[args.worker],
        args.input,
        args.scratch,
        [s for s in args.sinks.split(",") if s],
        mount=args.mount,
    )
    print(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
