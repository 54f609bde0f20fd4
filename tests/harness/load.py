"""Load: concurrent clients doing mixed driver operations, with exact counts and memory sampled.

Part 4 of the hardening issue. Each client runs cycles on a layer of its own over a shared base,
alternating two kinds:

* read-only: Create, ApplyDiff (a small tar; the size returned is checked), Get of the shared
  layer, Exists, Get (the view must show the tar), Changes, DiffSize, Diff (each checked against
  the tar), GetMetadata, Status, Put, Put of the shared layer, Remove;
* writable: CreateReadWrite, Get (a sandbox exported through qemu-storage-daemon and mounted), a
  file written into the view, Changes, DiffSize and Diff (which must show exactly that file,
  read while the sandbox is mounted), Put, Remove.

A quarter of the clients keep one Get of the shared layer. Every client tallies the Gets it
expects to be outstanding per layer (Get +1, Put -1, Remove 0); afterwards
``Driver.view_count`` must equal the sum of the tallies for every layer. Any exception, refusal
or wrong answer is an error. The same cycles run through the Python API (:class:`ApiOps`:
threads sharing one :class:`~lcow.graphdriver.driver.Driver`) and through the plugin socket
(:class:`SocketOps`: one connection per client to ``lcow plugin serve``).

:class:`RssSampler` samples a process's resident memory with the operations done so far;
:func:`memory_summary` turns the samples into the peak per quarter of the run and its growth
after the first (warm-up) quarter.
``benchmarks/bench_load.py`` runs 32 clients of 1,000 operations each;
``tests/hardening/test_load.py`` a CI-sized version.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = [
    "ApiOps",
    "ClientResult",
    "LoadResult",
    "Ops",
    "RssSampler",
    "SocketOps",
    "memory_summary",
    "plugin_server",
    "rss_kib",
    "run_api_load",
    "run_clients",
    "small_tar",
]

SHARED = "shared"
_T = TypeVar("_T")
_FAILED = object()


def small_tar(index: int) -> tuple[bytes, int, dict[str, bytes]]:
    """Client ``index``'s layer: a directory of 8 files. Returns the tar, the sum of its
    entries' sizes (ApplyDiff's answer) and the files by path."""
    files = {
        f"/client-{index}/f{n}": f"client {index} file {n}\n".encode() * (n + 1) for n in range(8)
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(f"client-{index}")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), sum(len(d) for d in files.values()), files


def _tar_names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        return {"/" + m.name.lstrip("/").removeprefix("./").rstrip("/") for m in tf}


class Ops(Protocol):
    """The driver operations a client uses, whatever carries them."""

    def create(self, layer_id: str, parent: str | None) -> None:
        """Create."""

    def create_rw(self, layer_id: str, parent: str | None) -> None:
        """CreateReadWrite (default size)."""

    def apply_diff(self, layer_id: str, parent: str | None, data: bytes) -> int:
        """ApplyDiff; the size."""
        ...

    def get(self, layer_id: str) -> str:
        """Get; the view's host directory."""
        ...

    def put(self, layer_id: str) -> None:
        """Put."""

    def exists(self, layer_id: str) -> bool:
        """Exists."""
        ...

    def changes(self, layer_id: str, parent: str | None) -> list[tuple[str, int]]:
        """Changes as (path, kind)."""
        ...

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        """DiffSize."""
        ...

    def diff(self, layer_id: str, parent: str | None) -> bytes:
        """Diff, read to the end."""
        ...

    def metadata(self, layer_id: str) -> dict[str, str]:
        """GetMetadata."""
        ...

    def status(self) -> list[list[str]]:
        """Status."""
        ...

    def remove(self, layer_id: str) -> None:
        """Remove."""

    def close(self) -> None:
        """Release the client's resources."""


class ApiOps:
    """:class:`Ops` on a shared :class:`~lcow.graphdriver.driver.Driver` (Python API)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def create(self, layer_id: str, parent: str | None) -> None:
        self.driver.create(layer_id, parent)

    def create_rw(self, layer_id: str, parent: str | None) -> None:
        self.driver.create_read_write(layer_id, parent, None)

    def apply_diff(self, layer_id: str, parent: str | None, data: bytes) -> int:
        return int(self.driver.apply_diff(layer_id, parent, io.BytesIO(data)))

    def get(self, layer_id: str) -> str:
        return str(self.driver.get(layer_id).path)

    def put(self, layer_id: str) -> None:
        self.driver.put(layer_id)

    def exists(self, layer_id: str) -> bool:
        return bool(self.driver.exists(layer_id))

    def changes(self, layer_id: str, parent: str | None) -> list[tuple[str, int]]:
        return [(c.path, int(c.kind)) for c in self.driver.changes(layer_id, parent)]

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        return int(self.driver.diff_size(layer_id, parent))

    def diff(self, layer_id: str, parent: str | None) -> bytes:
        stream = self.driver.diff(layer_id, parent)
        try:
            return bytes(stream.read())
        finally:
            stream.close()

    def metadata(self, layer_id: str) -> dict[str, str]:
        return dict(self.driver.get_metadata(layer_id))

    def status(self) -> list[list[str]]:
        return [list(pair) for pair in self.driver.status()]

    def remove(self, layer_id: str) -> None:
        self.driver.remove(layer_id)

    def close(self) -> None:
        return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("plugin", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class PluginError(Exception):
    """The plugin answered with an error."""


class SocketOps:
    """:class:`Ops` over the plugin protocol on a unix socket, one kept-alive connection, as
    dockerd calls it (JSON bodies; ApplyDiff's tar chunked)."""

    ACCEPT = "application/vnd.docker.plugins.v1.2+json"

    def __init__(self, path: str | os.PathLike[str], timeout: float = 300.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    def _request(
        self, method: str, body: bytes | Iterator[bytes], chunked: bool = False
    ) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = _UnixConnection(self.path, self.timeout)
        headers = {"Accept": self.ACCEPT}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        try:
            self._conn.request(
                "POST", "/" + method, body=body, headers=headers, encode_chunked=chunked
            )
            response = self._conn.getresponse()
            return response.status, response.read()
        except BaseException:
            self.close()
            raise

    def call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        """A JSON call; its answer, or :class:`PluginError`."""
        status, data = self._request(
            f"GraphDriver.{method}", json.dumps(payload or {}).encode() + b"\n"
        )
        value = json.loads(data) if data else {}
        if status != 200 or (isinstance(value, dict) and value.get("Err")):
            raise PluginError(f"{method}: HTTP {status}: {data[:300]!r}")
        return value

    def create(self, layer_id: str, parent: str | None) -> None:
        self.call("Create", {"ID": layer_id, "Parent": parent or ""})

    def create_rw(self, layer_id: str, parent: str | None) -> None:
        self.call("CreateReadWrite", {"ID": layer_id, "Parent": parent or ""})

    def apply_diff(self, layer_id: str, parent: str | None, data: bytes) -> int:
        parts = iter([data[i : i + 65536] for i in range(0, len(data), 65536)])
        status, body = self._request(
            f"GraphDriver.ApplyDiff?id={layer_id}&parent={parent or ''}", parts, chunked=True
        )
        value = json.loads(body)
        if status != 200 or "Size" not in value:
            raise PluginError(f"ApplyDiff: HTTP {status}: {body[:300]!r}")
        return int(value["Size"])

    def get(self, layer_id: str) -> str:
        return str(self.call("Get", {"ID": layer_id, "MountLabel": ""})["Dir"])

    def put(self, layer_id: str) -> None:
        self.call("Put", {"ID": layer_id})

    def exists(self, layer_id: str) -> bool:
        return bool(self.call("Exists", {"ID": layer_id})["Exists"])

    def changes(self, layer_id: str, parent: str | None) -> list[tuple[str, int]]:
        value = self.call("Changes", {"ID": layer_id, "Parent": parent or ""})
        return [(c["Path"], int(c["Kind"])) for c in value["Changes"] or []]

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        return int(self.call("DiffSize", {"ID": layer_id, "Parent": parent or ""})["Size"])

    def diff(self, layer_id: str, parent: str | None) -> bytes:
        payload = json.dumps({"ID": layer_id, "Parent": parent or ""}).encode() + b"\n"
        status, data = self._request("GraphDriver.Diff", payload)
        if status != 200:
            raise PluginError(f"Diff: HTTP {status}: {data[:300]!r}")
        return data

    def metadata(self, layer_id: str) -> dict[str, str]:
        return dict(self.call("GetMetadata", {"ID": layer_id})["Metadata"])

    def status(self) -> list[list[str]]:
        return [list(p) for p in self.call("Status")["Status"]]

    def remove(self, layer_id: str) -> None:
        self.call("Remove", {"ID": layer_id})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- one client --------------------------------------------------------------------------------


@dataclass
class ClientResult:
    """What one client did and expects."""

    index: int
    done: int = 0
    expected: Counter[str] = field(default_factory=Counter)  # outstanding Gets per layer
    errors: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def call(self, name: str, func: Callable[[], _T]) -> _T | object:
        """Run one operation, timing it; an exception is an error (returns ``_FAILED``)."""
        started = time.monotonic()
        try:
            return func()
        except Exception as exc:
            self.errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            return _FAILED
        finally:
            self.latencies[name].append(time.monotonic() - started)
            self.done += 1

    def check(self, ok: bool, what: str) -> None:
        """A wrong answer is an error too."""
        if not ok:
            self.errors.append(what)


class _Client:
    """One client's cycles (see the module docstring)."""

    def __init__(self, ops: Ops, result: ClientResult, quota: int, keep_shared: bool) -> None:
        self.ops = ops
        self.result = result
        self.quota = quota
        self.holding = keep_shared
        self.tar, self.tar_size, files = small_tar(result.index)
        self.tar_paths = {f"/client-{result.index}", *files}

    def step(self, name: str, func: Callable[[], _T]) -> _T | object:
        """One operation, unless the quota is used up (then ``_FAILED``)."""
        if self.result.done >= self.quota:
            return _FAILED
        return self.result.call(name, func)

    def got(self, layer: str, path: object) -> bool:
        """Count a Get that answered."""
        if isinstance(path, str):
            self.result.expected[layer] += 1
            return True
        return False

    def put(self, layer: str) -> None:
        """Put, counted when it succeeded."""
        if self.step("Put", lambda: self.ops.put(layer)) is not _FAILED:
            self.result.expected[layer] = max(0, self.result.expected[layer] - 1)

    def writable(self, own: str, cycle: int) -> None:
        """CreateReadWrite, Get, a write into the view, Changes/DiffSize/Diff of it, Put."""
        ops, result = self.ops, self.result
        if self.step("CreateReadWrite", lambda: ops.create_rw(own, SHARED)) is _FAILED:
            return
        path = self.step("Get", lambda: ops.get(own))
        if not self.got(own, path):
            return
        name = f"w-{result.index}-{cycle}"
        data = f"{own}\n".encode() * 100
        try:
            with open(os.path.join(str(path), name), "wb") as f:
                f.write(data)
        except OSError as exc:
            result.errors.append(f"write into the view of {own}: {exc!r}")
        changes = self.step("Changes", lambda: ops.changes(own, SHARED))
        if isinstance(changes, list):
            result.check(set(changes) == {("/" + name, 1)}, f"Changes {own}: {changes}")
        size = self.step("DiffSize", lambda: ops.diff_size(own, SHARED))
        if isinstance(size, int):
            result.check(size == len(data), f"DiffSize {own}: {size} != {len(data)}")
        tar = self.step("Diff", lambda: ops.diff(own, SHARED))
        if isinstance(tar, bytes):
            names = _tar_names(tar)
            result.check(names == {"/" + name}, f"Diff {own}: {sorted(names)[:5]}")
        self.put(own)

    def read_only(self, own: str) -> None:
        """Create, ApplyDiff, Gets, queries, Puts."""
        ops, result, index = self.ops, self.result, self.result.index
        if self.step("Create", lambda: ops.create(own, SHARED)) is _FAILED:
            return
        size = self.step("ApplyDiff", lambda: ops.apply_diff(own, SHARED, self.tar))
        if isinstance(size, int):
            result.check(size == self.tar_size, f"ApplyDiff {own}: {size} != {self.tar_size}")
        self.got(SHARED, self.step("Get", lambda: ops.get(SHARED)))
        exists = self.step("Exists", lambda: ops.exists(own))
        result.check(exists is not False, f"Exists {own}: false")
        path = self.step("Get", lambda: ops.get(own))
        if self.got(own, path):
            result.check(
                os.path.isdir(os.path.join(str(path), f"client-{index}")),
                f"Get {own}: the view {path} lacks client-{index}",
            )
        changes = self.step("Changes", lambda: ops.changes(own, SHARED))
        if isinstance(changes, list):
            result.check({p for p, _ in changes} == self.tar_paths, f"Changes {own}: {changes[:4]}")
        size = self.step("DiffSize", lambda: ops.diff_size(own, SHARED))
        if isinstance(size, int):
            result.check(size == self.tar_size, f"DiffSize {own}: {size} != {self.tar_size}")
        tar = self.step("Diff", lambda: ops.diff(own, SHARED))
        if isinstance(tar, bytes):
            result.check(_tar_names(tar) == self.tar_paths, f"Diff {own}: wrong names")
        meta = self.step("GetMetadata", lambda: ops.metadata(own))
        if isinstance(meta, dict):
            result.check(meta.get("dir", "").endswith("/" + own), f"GetMetadata: {meta}")
        status = self.step("Status", ops.status)
        if isinstance(status, list):
            result.check(bool(status) and status[0] == ["LCOW", ""], f"Status: {status}")
        self.put(own)
        if self.holding:
            self.holding = False  # keep this Get of the shared layer to the end
        else:
            self.put(SHARED)

    def run(self) -> None:
        """Cycles until the quota is used up, alternating read-only and writable ones."""
        cycle = 0
        while self.result.done < self.quota:
            own = f"c{self.result.index}-{cycle}"
            if cycle % 2:
                self.writable(own, cycle)
            else:
                self.read_only(own)
            cycle += 1
            self.remove(own)

    def remove(self, own: str) -> None:
        """Remove, which tears down every view of the layer."""
        if self.step("Remove", lambda: self.ops.remove(own)) is not _FAILED:
            self.result.expected[own] = 0


def run_client(ops: Ops, result: ClientResult, quota: int, keep_shared: bool) -> None:
    """Run cycles on ``ops`` until ``quota`` operations are done (see the module docstring)."""
    _Client(ops, result, quota, keep_shared).run()


def run_clients(
    make_ops: Callable[[int], Ops], results: list[ClientResult], ops_each: int, keep: int
) -> tuple[list[ClientResult], float]:
    """One thread per result object (made by the caller, so a sampler can watch them), each
    with its own :class:`Ops` and ``ops_each`` operations, the first ``keep`` keeping a Get of
    the shared layer; returns the results and the seconds."""
    barrier = threading.Barrier(len(results))

    def body(result: ClientResult) -> None:
        ops = make_ops(result.index)
        try:
            barrier.wait()
            run_client(ops, result, ops_each, result.index < keep)
        except Exception as exc:
            result.errors.append(f"client {result.index} crashed: {exc!r}")
        finally:
            ops.close()

    threads = [threading.Thread(target=body, args=(r,), name=f"client-{r.index}") for r in results]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - started


# -- memory ------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (``VmRSS``) in KiB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class RssSampler:
    """Samples ``(seconds, RSS KiB, operations done)`` of a process every ``interval``."""

    def __init__(self, pid: int, progress: Callable[[], int], interval: float = 0.5) -> None:
        self.pid = pid
        self.progress = progress
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()

    def _sample(self) -> None:
        self.samples.append(
            (round(time.monotonic() - self._started, 3), rss_kib(self.pid), self.progress())
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def memory_summary(samples: Sequence[tuple[float, int, int]], total_ops: int) -> dict[str, Any]:
    """MiB: before the load, the peak within each quarter of the operations, the peak, and the
    last sample (clients done); ``growth`` is the last quarter's peak minus the second's (the
    first quarter is warm-up: threads, arenas, caches). ``flat`` when that growth is at most
    10 % of the second quarter's peak or 16 MiB, whichever is more."""
    if not samples:
        return {}
    quarters: list[float] = []
    for q in range(4):
        low, high = total_ops * q / 4, total_ops * (q + 1) / 4
        inside = [
            kib for _, kib, done in samples if low <= done < high or (q == 3 and done >= high)
        ]
        quarters.append(round(max(inside) / 1024, 1) if inside else 0.0)
    growth = round(quarters[3] - quarters[1], 1)
    return {
        "before": round(samples[0][1] / 1024, 1),
        "quarters": quarters,
        "peak": round(max(kib for _, kib, _ in samples) / 1024, 1),
        "end": round(samples[-1][1] / 1024, 1),
        "growth": growth,
        "flat": growth <= max(16.0, quarters[1] * 0.1),
        "samples": len(samples),
    }


# -- whole runs --------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One load run."""

    transport: str  # "api" or "plugin"
    clients: int
    ops_each: int
    ops: int
    seconds: float
    errors: list[str]
    count_mismatches: dict[str, tuple[int, int]]  # layer → (driver's count, clients' sum)
    shared_count: int
    memory: dict[str, Any]
    samples: list[tuple[float, int, int]]
    latencies: dict[str, dict[str, float]]
    load: list[float]

    def to_json(self) -> dict[str, Any]:
        """Everything, samples included."""
        return {
            "transport": self.transport,
            "clients": self.clients,
            "ops_each": self.ops_each,
            "ops": self.ops,
            "seconds": round(self.seconds, 2),
            "ops_per_second": round(self.ops / self.seconds, 1) if self.seconds else 0,
            "errors": self.errors,
            "count_mismatches": self.count_mismatches,
            "shared_count": self.shared_count,
            "memory_mib": self.memory,
            "latency_ms": self.latencies,
            "load": self.load,
            "rss_samples": self.samples,
        }


def _percentiles(results: list[ClientResult]) -> dict[str, dict[str, float]]:
    merged: dict[str, list[float]] = defaultdict(list)
    for result in results:
        for name, values in result.latencies.items():
            merged[name].extend(values)
    out = {}
    for name, values in sorted(merged.items()):
        ordered = sorted(values)
        out[name] = {
            "n": len(ordered),
            "p50": round(ordered[len(ordered) // 2] * 1000, 2),
            "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 2),
            "max": round(ordered[-1] * 1000, 2),
        }
    return out


def prepare_shared(ops: Ops) -> None:
    """The shared base layer every client's layers sit on."""
    ops.create(SHARED, None)
    ops.apply_diff(SHARED, None, small_tar(-1)[0])


def compare_counts(
    results: list[ClientResult], count: Callable[[str], int]
) -> tuple[dict[str, tuple[int, int]], int]:
    """Layers whose driver count differs from the clients' tallies; the shared count."""
    expected: Counter[str] = Counter()
    for result in results:
        expected.update(result.expected)
    expected[SHARED] += 0
    mismatches = {}
    for layer in sorted(expected):
        got = count(layer)
        if got != expected[layer]:
            mismatches[layer] = (got, expected[layer])
    return mismatches, count(SHARED)


def run_api_load(
    home: Path, clients: int, ops_each: int, keep: int, interval: float = 0.5
) -> LoadResult:
    """``clients`` threads sharing one host-backend Driver on ``home``; counts compared, the kept
    Gets put back and Cleanup run before returning."""
    from lcow.graphdriver.driver import Driver

    load = list(os.getloadavg())
    driver = Driver(home, ["lcow.backend=host"])
    prepare_shared(ApiOps(driver))
    pending = [ClientResult(i) for i in range(clients)]
    with RssSampler(os.getpid(), lambda: sum(r.done for r in pending), interval) as sampler:
        results, seconds = run_clients(lambda _i: ApiOps(driver), pending, ops_each, keep)
    mismatches, shared = compare_counts(results, driver.view_count)
    for _ in range(driver.view_count(SHARED)):
        driver.put(SHARED)
    driver.cleanup()
    return LoadResult(
        "api", clients, ops_each, sum(r.done for r in results), seconds,
        [e for r in results for e in r.errors], mismatches, shared,
        memory_summary(sampler.samples, clients * ops_each), sampler.samples,
        _percentiles(results), load + list(os.getloadavg()),
    )  # fmt: skip


@contextlib.contextmanager
def plugin_server(state: Path, sock: Path, workers: int = 64) -> Iterator[subprocess.Popen[bytes]]:
    """``lcow plugin serve`` (host backend) as its own process on ``sock``; stopped with SIGTERM
    (its shutdown runs Cleanup)."""
    log = open(state.parent / "plugin.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "lcow", "plugin", "serve", "--root", str(state),
         "--socket", str(sock), "--backend", "host", "--workers", str(workers),
         "--shutdown-timeout", "30", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"plugin did not start: {(state.parent / 'plugin.log').read_text()[-3000:]}"
                )
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def run_plugin_load(
    base: Path, clients: int, ops_each: int, keep: int, interval: float = 0.5
) -> tuple[LoadResult, int | None]:
    """The same cycles through ``lcow plugin serve``: memory is the server's; counts are read
    from the data root's mount table with a Driver of this process (host counts are kept in
    the data root); then the kept Gets are put back, Cleanup runs and the server stops.
    Returns the result and the server's exit status."""
    from lcow.graphdriver.driver import Driver

    load = list(os.getloadavg())
    state, sock, home = base / "state", base / "plugin.sock", base / "home"
    with plugin_server(state, sock) as server:
        setup = SocketOps(sock)
        setup.call("Init", {"Home": str(home), "Opts": [], "UIDMaps": None, "GIDMaps": None})
        prepare_shared(setup)
        pending = [ClientResult(i) for i in range(clients)]
        with RssSampler(server.pid, lambda: sum(r.done for r in pending), interval) as sampler:
            results, seconds = run_clients(lambda _i: SocketOps(sock), pending, ops_each, keep)
        observer = Driver(home, ["lcow.backend=host"])
        mismatches, shared = compare_counts(results, observer.view_count)
        for _ in range(shared):
            setup.put(SHARED)
        setup.call("Cleanup")
        setup.close()
    result = LoadResult(
        "plugin", clients, ops_each, sum(r.done for r in results), seconds,
        [e for r in results for e in r.errors], mismatches, shared,
        memory_summary(sampler.samples, clients * ops_each), sampler.samples,
        _percentiles(results), load + list(os.getloadavg()),
    )  # fmt: skip
    return result, server.returncode


def main(argv: Sequence[str]) -> int:
    """``python -m tests.harness.load api HOME CLIENTS OPS KEEP``: an API load in a process of
    its own (so its memory is the load's alone); prints the result as JSON."""
    if len(argv) != 5 or argv[0] != "api":
        print("usage: python -m tests.harness.load api HOME CLIENTS OPS KEEP", file=sys.stderr)
        return 2
    result = run_api_load(Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]))
    json.dump(result.to_json(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
