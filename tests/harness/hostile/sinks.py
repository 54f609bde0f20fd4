"""The sinks: each one way a tar becomes a layer, run on a hostile case by :mod:`.run`.

:class:`Tar2ext4Sink` (``tar2ext4`` with LCOW's options), :class:`ApplyDiffSink`
(``Driver.apply_diff`` on a fresh data root, userspace backend), :class:`ImportSink` (``lcow
import`` of a ``docker save`` tarball wrapping the layer, through the command line),
:class:`PluginSink` (``GraphDriver.ApplyDiff`` of the plugin server, the tar sent as dockerd sends
it: a chunked HTTP body on the unix socket), :class:`ExtractSink` (``extract_archive`` of a
host-backend view: the tarfile-based reader, judged against the case's
:attr:`~.case.HostileCase.extract_expect`). All are listed in :data:`SINKS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tests.harness.hostile.case import HostileCase
from tests.harness.hostile.corpus import uncompressed_stream
from tests.harness.hostile.expect import Expect
from tests.harness.hostile.probes import MountProbe
from tests.harness.hostile.reports import SinkReport

__all__ = [
    "HOST_SINKS",
    "SINKS",
    "ApplyDiffSink",
    "CliFailure",
    "ExtractSink",
    "ImportSink",
    "Operation",
    "PluginFailure",
    "PluginSink",
    "Sink",
    "Tar2ext4Sink",
    "write_docker_save",
]

_LAYER_ID = "hostile"


class CliFailure(Exception):
    """A command-line sink exited non-zero."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PluginFailure(Exception):
    """The plugin answered ApplyDiff with ``{"Err": message}`` (the wire carries no error
    type, so only the message is judged)."""


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
