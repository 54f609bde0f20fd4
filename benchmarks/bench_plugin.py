#!/usr/bin/env python3
"""Benchmark the graph-driver plugin (issue 6): ``docker load`` against overlay2, and 32
concurrent clients.

    sudo .venv/bin/python benchmarks/bench_plugin.py [--parts load,concurrency] [--runs 5]
        [--data /var/tmp/lcow-bench] [--clients 32] [--calls 1000] [--out FILE.json]

Part ``load`` — ``docker load`` of a one-layer image whose layer is D1 (the Debian minbase
rootfs, ``DIR/d1.tar``; see ``datasets.py``), packed once into ``DIR/d1-image.tar``
(``docker save`` layout, layer stored uncompressed). Two dockerd 20.10 run side by side, started
as the end-to-end tests start them (SPEC §9.8, everything in a temporary directory under
``/var/tmp``, the same disk as the data): one on ``lcow plugin serve`` (host backend), one on
overlay2. Each repetition loads the image into both, in an order alternating per repetition,
each load preceded by ``sync`` and timed wall-clock from spawning ``/usr/bin/docker load`` to its
exit; after it, ``docker rmi`` and ``sync`` (untimed). Reported: medians, min and max over
``--runs``, the ratio of the medians and the median of the per-repetition ratios. Target: lcow
<= 1.2x overlay2.

Part ``concurrency`` — ``--clients`` threads (in a separate process, so that they do not share
the server's interpreter) send ``--calls`` calls in all to a plugin served in this process over
the host backend, each on its own connection, through a mix of Create, ApplyDiff, Get, Put,
Exists, GetMetadata, Status, Changes, DiffSize, Diff and Remove on their own layers and Gets and
Puts on one shared layer; a quarter of the clients keep one Get of the shared layer. Every client
keeps its own expected count per layer. Afterwards: errors must be 0 and the driver's count of
every layer must equal the expected one exactly; then the kept Gets are Put back and Cleanup
runs. Reported: calls/s, latency percentiles per method.

Part ``upload`` — ApplyDiff throughput: ``lcow plugin serve`` (host backend) as its own
process, one tar of ``--upload-mib`` MiB (4 KiB and 4 MiB files) streamed from a file as dockerd
streams it (chunked, 1 MiB writes): ``--runs`` uploads one after the other, then four at once.
Reported: seconds and MB/s per upload, the four's total.

Part ``restarts`` — reliability campaign (benchmarks/RELIABILITY.md): dockerd 20.10 on the
plugin runs a container that appends a numbered line to a file every 200 ms (a fresh open and a
held descriptor, each synced); the plugin is restarted ``--restarts`` times (SIGTERM, start
again). After each: ``docker exec`` reads the file (every line before, without a gap, and none
gone since the last read), Get answers the same directory, the mounts below the data root and
the storage daemon are the same. At the end the file read through the container and through
the host directory must be identical, ``docker cp`` must land in the filesystem the container
sees, the kernel log must hold no lost write, and ``rm -f`` plus dockerd's stop must leave
nothing mounted.

Part ``stalls`` — reliability campaign: ``--stalls`` ApplyDiff uploads that send headers and part
of a chunked body, then nothing (two more stall after 320 KiB, inside an upload slot), against
``lcow plugin serve --idle-timeout --stall-idle``; meanwhile a client calls Exists and Status on
fresh connections, and a slow upload keeps moving. Reported: the latencies, when each stalled
upload failed and how, the layer folders afterwards, the server's peak RSS, its shutdown.

The JSON (``--out``) holds every sample and the machine (CPUs, kernel, versions, load).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.plugin.client import PluginClient  # noqa: E402
from tests.plugin.dockerd import (  # noqa: E402
    WRITER,
    Daemon,
    PluginProcess,
    busybox_rootfs,
    kernel_log_lines,
    leftovers,
    mount_id,
    mounts_below,
    numbered,
    unique_name,
)

DEFAULT_DATA = Path("/var/tmp/lcow-bench")
IMAGE = "lcowbench/d1:1"


def log(message: str) -> None:
    print(f"[bench_plugin {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the image ---------------------------------------------------------------------------------


def d1_image(data: Path) -> Path:
    """``DIR/d1-image.tar``: a ``docker save`` archive with D1 as its one layer (cached)."""
    image = data / "d1-image.tar"
    layer = data / "d1.tar"
    if image.exists() and image.stat().st_mtime >= layer.stat().st_mtime:
        return image
    log(f"packing {layer} into {image}")
    digest = hashlib.sha256()
    with open(layer, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    diff_id = f"sha256:{digest.hexdigest()}"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "datasets.py d1"}],
        },
        separators=(",", ":"),
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_dir = digest.hexdigest()
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [IMAGE], "Layers": [f"{layer_dir}/layer.tar"]}]
    ).encode()
    part = image.with_suffix(".tar.part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, payload in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo(layer_dir)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        tf.add(layer, f"{layer_dir}/layer.tar")
    part.rename(image)
    return image


# -- docker load -------------------------------------------------------------------------------


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed_load(daemon: Daemon, image: Path) -> float:
    sync()
    started = time.monotonic()
    daemon.docker("load", "-i", str(image), timeout=900)
    elapsed = time.monotonic() - started
    daemon.docker("rmi", IMAGE)
    sync()
    return elapsed


def bench_load(data: Path, runs: int) -> dict[str, Any]:
    image = d1_image(data)
    base = Path(tempfile.mkdtemp(prefix="lcow-bench-plugin-", dir="/var/tmp"))
    plugin = PluginProcess(base, unique_name())
    daemons: list[Daemon] = []
    samples: dict[str, list[float]] = {"lcow": [], "overlay2": []}
    try:
        plugin.start()
        lcow = Daemon(base, "lcow", plugin.name)
        daemons.append(lcow)
        lcow.start()
        overlay2 = Daemon(base, "overlay2", "overlay2")
        daemons.append(overlay2)
        overlay2.start()
        pair = {"lcow": lcow, "overlay2": overlay2}
        log("warm-up: one load into each (page cache, containerd, plugin)")
        for daemon in pair.values():
            timed_load(daemon, image)
        for run in range(runs):
            order = ["lcow", "overlay2"] if run % 2 == 0 else ["overlay2", "lcow"]
            for name in order:
                seconds = timed_load(pair[name], image)
                samples[name].append(seconds)
                log(f"run {run + 1}/{runs} {name}: {seconds:.2f} s")
    finally:
        for daemon in daemons:
            daemon.stop()
        status = plugin.stop()
        left = leftovers(base, [plugin.socket])
        plugin_log = plugin.log()
        shutil.rmtree(base, ignore_errors=True)
    if status != 0 or left:
        raise SystemExit(f"plugin exit {status}, left behind: {left}\n{plugin_log}")
    lcow_median = statistics.median(samples["lcow"])
    overlay2_median = statistics.median(samples["overlay2"])
    paired = [a / b for a, b in zip(samples["lcow"], samples["overlay2"], strict=True)]
    return {
        "image": str(image),
        "image_bytes": image.stat().st_size,
        "samples": samples,
        "median": {"lcow": lcow_median, "overlay2": overlay2_median},
        "min": {k: min(v) for k, v in samples.items()},
        "max": {k: max(v) for k, v in samples.items()},
        "ratio_of_medians": lcow_median / overlay2_median,
        "median_paired_ratio": statistics.median(paired),
        "target": 1.2,
    }


# -- concurrency -------------------------------------------------------------------------------


def small_tar(index: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(f"client-{index}")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        for n in range(8):
            payload = f"client {index} file {n}\n".encode() * (n + 1)
            info = tarfile.TarInfo(f"client-{index}/f{n}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def client_main(socket_path: str, clients: int, calls: int, keep: int) -> None:
    """The client process: run the clients, print the results as JSON on stdout."""
    quotas = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        conn = PluginClient(socket_path)
        expected: Counter[str] = Counter()
        latencies: dict[str, list[float]] = defaultdict(list)
        errors: list[str] = []
        done = 0
        tar = small_tar(index)
        cycle = 0

        def call(method: str, payload: dict[str, Any] | None = None, body: bytes = b"") -> Any:
            nonlocal done
            started = time.monotonic()
            try:
                if method == "ApplyDiff":
                    assert payload is not None
                    reply = conn.apply_diff(payload["ID"], payload["Parent"], body)
                else:
                    reply = conn.call(f"GraphDriver.{method}", payload)
            except Exception as exc:
                errors.append(f"{method}: {type(exc).__name__}: {exc}")
                return None
            finally:
                latencies[method].append(time.monotonic() - started)
                done += 1
            if reply.status != 200:
                errors.append(f"{method}: HTTP {reply.status}: {reply.body[:200]!r}")
                return None
            if method == "Diff":
                return reply.body
            value = reply.json
            if "Err" in value:
                errors.append(f"{method} {payload}: {value['Err']}")
            return value

        barrier.wait()
        holding = index < keep
        while done < quotas[index]:
            own = f"c{index}-{cycle}"
            cycle += 1
            script: list[tuple[str, dict[str, Any], bytes]] = [
                ("Create", {"ID": own, "Parent": "shared"}, b""),
                ("ApplyDiff", {"ID": own, "Parent": "shared"}, tar),
                ("Get", {"ID": "shared"}, b""),
                ("Exists", {"ID": own}, b""),
                ("Get", {"ID": own}, b""),
                ("Changes", {"ID": own, "Parent": "shared"}, b""),
                ("DiffSize", {"ID": own, "Parent": "shared"}, b""),
                ("Diff", {"ID": own, "Parent": "shared"}, b""),
                ("GetMetadata", {"ID": own}, b""),
                ("Status", {}, b""),
                ("Put", {"ID": own}, b""),
                ("Put", {"ID": "shared"}, b""),
                ("Remove", {"ID": own}, b""),
            ]
            for method, payload, body in script:
                if done >= quotas[index]:
                    break
                if method == "Put" and payload["ID"] == "shared" and holding:
                    holding = False  # this client keeps one Get of the shared layer
                    continue
                value = call(method, payload, body)
                if value is None:
                    continue
                layer = payload.get("ID", "")
                if method == "Get":
                    expected[layer] += 1
                elif method == "Put":
                    expected[layer] = max(0, expected[layer] - 1)
                elif method == "Remove":
                    expected[layer] = 0  # Remove tears down every view of the layer
        conn.close()
        results[index] = {
            "expected": dict(expected),
            "latencies": dict(latencies),
            "errors": errors,
            "calls": done,
        }

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    json.dump({"elapsed": elapsed, "clients": results}, sys.stdout)


def bench_concurrency(clients: int, calls: int) -> dict[str, Any]:
    from lcow.graphdriver.driver import Driver
    from lcow.plugin.server import BackgroundServer, ServerConfig
    from lcow.plugin.state import open_default_driver

    base = Path(tempfile.mkdtemp(prefix="lcow-bench-conc-", dir="/var/tmp"))
    created: list[Driver] = []

    def factory(home: str, options: Any, uid_maps: Any, gid_maps: Any) -> Driver:
        driver = open_default_driver(home, options, uid_maps, gid_maps)
        created.append(driver)
        return driver

    keep = clients // 4
    config = ServerConfig(
        socket_path=base / "p.sock",
        state_root=base / "state",
        defaults=["lcow.backend=host"],
        workers=64,
        factory=factory,
    )
    try:
        with BackgroundServer(config):
            setup = PluginClient(str(config.socket_path))
            setup.ok("GraphDriver.Init", {"Home": str(base / "home")})
            setup.ok("GraphDriver.Create", {"ID": "shared"})
            reply = setup.apply_diff("shared", "", small_tar(-1))
            assert reply.status == 200 and "Size" in reply.json, reply
            argv = [
                sys.executable, __file__, "--client-mode", str(config.socket_path),
                "--clients", str(clients), "--calls", str(calls), "--keep", str(keep),
            ]  # fmt: skip
            log(f"{clients} clients, {calls} calls")
            proc = subprocess.run(argv, capture_output=True, check=True)
            report = json.loads(proc.stdout)
            driver = created[-1]
            expected: Counter[str] = Counter()
            for result in report["clients"]:
                expected.update(result["expected"])
            counts = {layer: driver.view_count(layer) for layer in expected}
            mismatched = {
                layer: (counts[layer], want)
                for layer, want in expected.items()
                if counts[layer] != want
            }
            shared_count = driver.view_count("shared")
            for _ in range(shared_count):
                setup.ok("GraphDriver.Put", {"ID": "shared"})
            released = driver.view_count("shared")
            setup.ok("GraphDriver.Cleanup")
            setup.close()
    finally:
        left = leftovers(base)
        shutil.rmtree(base, ignore_errors=True)
    errors = [e for r in report["clients"] for e in r["errors"]]
    latencies: dict[str, list[float]] = defaultdict(list)
    for result in report["clients"]:
        for method, values in result["latencies"].items():
            latencies[method].extend(values)
    total = sum(r["calls"] for r in report["clients"])

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "clients": clients,
        "calls": total,
        "elapsed": report["elapsed"],
        "calls_per_second": total / report["elapsed"],
        "errors": errors,
        "count_mismatches": mismatched,
        "shared_count": shared_count,
        "shared_expected": expected["shared"],
        "shared_after_puts": released,
        "leftovers": left,
        "per_method": {
            method: {
                "n": len(values),
                "p50_ms": pct(values, 0.5) * 1000,
                "p95_ms": pct(values, 0.95) * 1000,
                "max_ms": max(values) * 1000,
            }
            for method, values in sorted(latencies.items())
        },
    }


# -- a plugin server of its own --------------------------------------------------------------


class ServerProcess:
    """``lcow plugin serve`` from this tree's ``src`` (so an older checkout measures its own
    code), stderr to ``base/plugin.log``."""

    def __init__(self, base: Path, *options: str) -> None:
        self.base = base
        self.socket = base / "p.sock"
        self.log_path = base / "plugin.log"
        argv = [sys.executable, "-m", "lcow", "plugin", "serve", "--root", str(base / "state"),
                "--socket", str(self.socket), "--log-level", "warning", *options]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"plugin did not start: {self.log()}")
            time.sleep(0.05)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit status and the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        return status, time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


# -- upload throughput ---------------------------------------------------------------------------


def upload_tar(path: Path, mib: int) -> int:
    """A tar of about ``mib`` MiB: a quarter in 4 KiB files, the rest in 4 MiB ones."""
    big = os.urandom(4 << 20)
    small = big[: 4 << 10]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, count in (("s", small, (mib << 20) // 4 // len(small)),
                                  ("b", big, (mib << 20) * 3 // 4 // len(big))):  # fmt: skip
            for n in range(count):
                info = tarfile.TarInfo(f"{name}/{n:06d}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path.stat().st_size


def _upload(socket_path: Path, layer: str, tar: Path) -> float:
    client = PluginClient(str(socket_path), timeout=600)
    try:
        client.ok("GraphDriver.Create", {"ID": layer})
        started = time.monotonic()
        with open(tar, "rb") as f:
            chunks = iter(lambda: f.read(1 << 20), b"")
            method = f"GraphDriver.ApplyDiff?id={layer}&parent="
            reply = client.request(method, chunks, encode_chunked=True)
        elapsed = time.monotonic() - started
        assert reply.status == 200 and "Size" in reply.json, reply
        client.ok("GraphDriver.Remove", {"ID": layer})
        return elapsed
    finally:
        client.close()


def bench_upload(runs: int, mib: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="lcow-bench-upload-", dir="/var/tmp"))
    try:
        size = upload_tar(base / "layer.tar", mib)
        server = ServerProcess(base, "--backend", "host")
        try:
            setup = PluginClient(str(server.socket))
            setup.ok("GraphDriver.Init", {"Home": str(base / "home")})
            setup.close()
            _upload(server.socket, "warm", base / "layer.tar")
            sequential = []
            for run in range(runs):
                sequential.append(_upload(server.socket, f"u{run}", base / "layer.tar"))
                log(f"upload {run + 1}/{runs}: {sequential[-1]:.2f} s")
            times: list[float] = [0.0] * 4
            started = time.monotonic()
            threads = [
                threading.Thread(target=lambda i=i: times.__setitem__(
                    i, _upload(server.socket, f"p{i}", base / "layer.tar")))
                for i in range(4)
            ]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            parallel = time.monotonic() - started
        finally:
            status, _ = server.stop()
        left = leftovers(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    median = statistics.median(sequential)
    return {
        "tar_bytes": size,
        "sequential_s": sequential,
        "median_s": median,
        "median_mb_per_s": size / median / 1e6,
        "four_at_once_s": parallel,
        "four_at_once_mb_per_s": 4 * size / parallel / 1e6,
        "four_each_s": times,
        "server_exit": status,
        "leftovers": left,
    }


# -- restarts under a running container ------------------------------------------------------------


def _view_of(socket_path: Path, layer: str) -> str:
    client = PluginClient(str(socket_path))
    try:
        directory: str = client.ok("GraphDriver.Get", {"ID": layer})["Dir"]
        client.ok("GraphDriver.Put", {"ID": layer})
        return directory
    finally:
        client.close()


def _storage_daemon(views: Path) -> str | None:
    try:
        return (views / "qsd.pid").read_text()
    except FileNotFoundError:
        return None


def bench_restarts(restarts: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="lcow-bench-restarts-", dir="/var/tmp"))
    plugin = PluginProcess(base, unique_name())
    daemon: Daemon | None = None
    problems: list[str] = []
    rounds: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        plugin.start()
        daemon = Daemon(base, "lcow", plugin.name)
        daemon.start()
        daemon.docker("import", str(busybox_rootfs(base / "rootfs.tar")), "lcowbench/busybox:1")
        kernel_before = len(kernel_log_lines())
        container = daemon.out("run", "-d", "--pull", "never", "--network", "none", "--name",
                               "writer", "lcowbench/busybox:1", "sh", "-c", WRITER)  # fmt: skip
        layer = mount_id(daemon.dir / "root", plugin.name, container)
        home = Path(json.loads((plugin.state / "state.json").read_text())["Home"])
        views = home / "mounts"
        time.sleep(2)
        directory = _view_of(plugin.socket, layer)
        mounted = mounts_below(views)
        storage_daemon = _storage_daemon(views)
        seen = numbered(daemon.out("exec", "writer", "cat", "/srv/lines"))
        started = time.time()
        for n in range(restarts):
            begun = time.monotonic()
            status = plugin.stop()
            kept = mounts_below(views) == mounted
            time.sleep(0.5)  # the container writes while no plugin runs
            plugin.start()
            downtime = time.monotonic() - begun
            same_dir = _view_of(plugin.socket, layer) == directory
            same_mounts = kept and mounts_below(views) == mounted
            same_daemon = _storage_daemon(views) == storage_daemon
            time.sleep(1)
            proc = daemon.docker("exec", "writer", "cat", "/srv/lines", check=False)
            record: dict[str, Any] = {
                "restart": n + 1, "plugin_exit": status, "downtime_s": round(downtime, 2),
                "exec": proc.returncode == 0, "same_dir": same_dir,
                "same_mounts": same_mounts, "same_storage_daemon": same_daemon,
            }  # fmt: skip
            try:
                lines = numbered(proc.stdout.decode())
                record["lines"] = len(lines)
                record["earlier_lines_kept"] = lines[: len(seen)] == seen
                seen = lines
            except (AssertionError, ValueError) as exc:
                record["lines"] = f"not numbered: {exc}"[:200]
            bad = [k for k, v in record.items() if v is False or isinstance(v, str)]
            if bad or status != 0:
                problems.append(f"restart {n + 1}: {bad} exit {status}")
            rounds.append(record)
            log(f"restart {n + 1}/{restarts}: {record}")
        daemon.docker("exec", "writer", "touch", "/stop", check=False)
        time.sleep(1)

        def inside_file(name: str) -> str:
            proc = daemon.docker("exec", "writer", "cat", name, check=False) if daemon else None
            return proc.stdout.decode() if proc is not None and proc.returncode == 0 else ""

        def host_file(name: str) -> str:
            try:
                return Path(directory, name.lstrip("/")).read_text()
            except OSError as exc:
                return f"unreadable: {exc}"

        (base / "copied.txt").write_bytes(b"copied\n")
        daemon.docker("cp", str(base / "copied.txt"), "writer:/srv/copied.txt", check=False)
        cp_same_fs = host_file("/srv/copied.txt") == inside_file("/srv/copied.txt") == "copied\n"
        inside, held = inside_file("/srv/lines"), inside_file("/srv/held")
        on_host, held_on_host = host_file("/srv/lines"), host_file("/srv/held")
        try:
            final = numbered(inside)
        except (AssertionError, ValueError):
            final = []
            problems.append("the file read through docker exec is not numbered 1, 2, 3...")
        written = {t for _, t in final if t >= int(started)}
        silent_seconds = [t for t in range(int(started) + 1, int(time.time()) - 2)
                          if t not in written]  # fmt: skip
        lost = [line for line in kernel_log_lines()[kernel_before:]
                if "lost async page write" in line or "I/O error" in line]  # fmt: skip
        daemon.docker("rm", "-f", "writer")
        daemon.stop()
        left_mounted = mounts_below(views)
        daemon = None
        result = {
            "restarts": restarts,
            "lines_written": len(final),
            "lines_equal_inside_and_on_host": bool(inside)
            and inside == on_host == held == held_on_host,
            "seconds_without_a_line": silent_seconds,
            "kernel_lost_writes": lost,
            "docker_cp_same_filesystem": cp_same_fs,
            "mounted_after_rm_and_dockerd_stop": left_mounted,
            "downtime_s": {
                "median": statistics.median(r["downtime_s"] for r in rounds),
                "max": max(r["downtime_s"] for r in rounds),
            },
            "rounds": rounds,
        }
        if not result["lines_equal_inside_and_on_host"] or lost or not cp_same_fs:
            problems.append("final checks failed")
        if left_mounted:
            problems.append(f"left mounted: {left_mounted}")
    finally:
        if daemon is not None:
            daemon.stop()
        result["plugin_exit"] = plugin.stop()
        result["leftovers"] = leftovers(base, [plugin.socket])
        plugin_log = plugin.log()
        shutil.rmtree(base, ignore_errors=True)
    result["problems"] = problems
    if "Traceback" in plugin_log:
        problems.append("traceback in the plugin log")
    return result


# -- stalled uploads -------------------------------------------------------------------------------


def _stall(socket_path: Path, layer: str, body: bytes) -> socket.socket:
    head = (f"POST /GraphDriver.ApplyDiff?id={layer}&parent= HTTP/1.1\r\nHost: plugin\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    sock.sendall(head.encode() + body)
    return sock


def _reply(sock: socket.socket, timeout: float) -> tuple[int, dict[str, Any]]:
    sock.settimeout(timeout)
    data = b""
    while True:
        head, _, body = data.partition(b"\r\n\r\n")
        if _ and b"\n" in body:
            return int(head.split()[1]), json.loads(body)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed: {data[:200]!r}")
        data += chunk


def bench_stalls(count: int, idle: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="lcow-bench-stalls-", dir="/tmp"))  # short socket path
    stalled: dict[str, socket.socket] = {}
    result: dict[str, Any] = {}
    try:
        # --stall-idle 0: the server's own default (a checkout from before --idle-timeout).
        timeout = ["--idle-timeout", str(idle)] if idle else []
        server = ServerProcess(base, "--backend", "userspace", "--shutdown-timeout", "10", *timeout)
        idle = idle or 60.0
        client = PluginClient(str(server.socket))
        client.ok("GraphDriver.Init", {"Home": str(base / "home")})
        ids = [f"stalled-{i}" for i in range(count)] + ["in-slot-0", "in-slot-1", "moving"]
        for layer in ids:
            client.ok("GraphDriver.Create", {"ID": layer})
        client.close()
        header = tarfile.TarInfo("big")
        header.size = 1 << 20
        partial = b"1000\r\n" + header.tobuf(format=tarfile.USTAR_FORMAT) + b"x" * 1000
        files = io.BytesIO()
        with tarfile.open(fileobj=files, mode="w") as tf:
            for n in range(100):
                info = tarfile.TarInfo(f"f{n}")
                info.size = 4000
                tf.addfile(info, io.BytesIO(os.urandom(4000)))
        in_slot = b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n"
            for part in (files.getvalue()[i : i + 4096] for i in range(0, 320 << 10, 4096))
        )
        began = time.monotonic()
        for layer in ids[:count]:
            stalled[layer] = _stall(server.socket, layer, partial)
        for layer in ("in-slot-0", "in-slot-1"):
            stalled[layer] = _stall(server.socket, layer, in_slot)
        small = small_tar(0)
        moving: list[Any] = []

        def slowly() -> Any:
            for i in range(0, len(small), len(small) // 6 + 1):
                time.sleep(idle / 3)
                yield small[i : i + len(small) // 6 + 1]

        def upload() -> None:
            slow = PluginClient(str(server.socket), timeout=idle * 3)
            started = time.monotonic()
            try:
                reply = slow.request("GraphDriver.ApplyDiff?id=moving&parent=", slowly(),
                                     encode_chunked=True)  # fmt: skip
                moving.append((reply.status, reply.json, time.monotonic() - started))
            except Exception as exc:  # a server that starves it
                moving.append((None, f"{type(exc).__name__}: {exc}", time.monotonic() - started))
            finally:
                slow.close()

        uploader = threading.Thread(target=upload)
        uploader.start()
        latencies: dict[str, list[float]] = {"Exists": [], "Status": []}
        failures: list[str] = []
        while time.monotonic() - began < idle + 5:
            other = PluginClient(str(server.socket), timeout=10)
            for method, payload in (("Exists", {"ID": "stalled-0"}), ("Status", {})):
                started = time.monotonic()
                try:
                    other.ok(f"GraphDriver.{method}", payload)
                except Exception as exc:
                    failures.append(f"{method}: {type(exc).__name__}: {exc}")
                latencies[method].append(time.monotonic() - started)
            other.close()
            time.sleep(0.01)
        uploader.join()
        outcomes: dict[str, Any] = {}
        for layer, sock in stalled.items():
            try:
                status, answer = _reply(sock, idle + 30 if timeout else 1)
                outcomes[layer] = {"status": status, "err": answer.get("Err", ""),
                                   "names_layer": layer in answer.get("Err", "")}  # fmt: skip
            except (OSError, ValueError) as exc:
                outcomes[layer] = {"status": None, "error": str(exc)}
        folders = {layer: sorted(os.listdir(base / "home" / layer)) for layer in ids[:-1]}
        peak = server.peak_rss_mib()
        for sock in stalled.values():
            sock.close()
        stalled = {}
        exit_status, stop_s = server.stop()
        text = server.log_path.read_text(errors="replace")
        # How long each stalled upload lasted, as the server logged it.
        durations = [
            float(match[1]) / 1000
            for match in re.finditer(
                r"ApplyDiff id=(?:stalled|in-slot)-\d+ -> 408 .*\(([\d.]+) ms\)", text
            )
        ]

        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

        result = {
            "stalled": count + 2,
            "idle_timeout_s": idle if timeout else None,
            "latency_ms": {
                m: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v) * 1000}
                for m, v in latencies.items()
            },
            "call_failures": failures,
            "moving_upload": moving,
            "failed_408_naming_layer": sum(
                1 for o in outcomes.values() if o.get("status") == 408 and o.get("names_layer")
            ),
            "failed_after_s": {
                "n": len(durations),
                "min": min(durations, default=float("nan")),
                "max": max(durations, default=float("nan")),
            },
            "example_err": outcomes["stalled-0"].get("err"),
            "in_slot_err": outcomes["in-slot-0"].get("err"),
            "folders_untouched": all(f == ["layerchain.json"] for f in folders.values()),
            "peak_rss_mib": peak,
            "server_exit": exit_status,
            "server_stop_s": stop_s,
            "tracebacks_in_log": text.count("Traceback") + text.count("never retrieved"),
        }
    finally:
        for sock in stalled.values():
            sock.close()
        result["leftovers"] = leftovers(base)
        shutil.rmtree(base, ignore_errors=True)
    return result


# -- main --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dockerd": version(["dockerd", "--version"]),
        "commit": version(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "load": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="load,concurrency")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--upload-mib", type=int, default=256)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--stalls", type=int, default=70)
    parser.add_argument("--stall-idle", type=float, default=10.0)
    parser.add_argument("--keep", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--client-mode", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.client_mode:
        client_main(args.client_mode, args.clients, args.calls, args.keep)
        return 0
    result: dict[str, Any] = {"machine": machine()}
    parts = args.parts.split(",")
    if "load" in parts:
        load = bench_load(args.data, args.runs)
        result["load"] = load
        log(
            f"docker load D1: lcow {load['median']['lcow']:.2f} s, overlay2 "
            f"{load['median']['overlay2']:.2f} s, ratio {load['ratio_of_medians']:.2f} "
            f"(paired {load['median_paired_ratio']:.2f}; target <= 1.2)"
        )
    if "concurrency" in parts:
        conc = bench_concurrency(args.clients, args.calls)
        result["concurrency"] = conc
        log(
            f"{conc['clients']} clients, {conc['calls']} calls in {conc['elapsed']:.2f} s "
            f"({conc['calls_per_second']:.0f}/s): {len(conc['errors'])} errors, "
            f"{len(conc['count_mismatches'])} count mismatches, shared layer "
            f"{conc['shared_count']} (expected {conc['shared_expected']}), "
            f"{conc['shared_after_puts']} after Puts, leftovers {conc['leftovers']}"
        )
    if "upload" in parts:
        up = bench_upload(args.runs, args.upload_mib)
        result["upload"] = up
        log(
            f"ApplyDiff of {up['tar_bytes'] / 1e6:.0f} MB: median {up['median_s']:.2f} s "
            f"({up['median_mb_per_s']:.0f} MB/s); four at once {up['four_at_once_s']:.2f} s "
            f"({up['four_at_once_mb_per_s']:.0f} MB/s)"
        )
    if "restarts" in parts:
        restarts = bench_restarts(args.restarts)
        result["restarts"] = restarts
        log(f"{args.restarts} plugin restarts: problems {restarts['problems']}")
    if "stalls" in parts:
        stalls = bench_stalls(args.stalls, args.stall_idle)
        result["stalls"] = stalls
        log(f"{stalls['stalled']} stalled uploads: {json.dumps(stalls['latency_ms'])}, "
            f"peak RSS {stalls['peak_rss_mib']:.0f} MiB")  # fmt: skip
    result["machine"]["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    failed = "concurrency" in result and (
        result["concurrency"]["errors"] or result["concurrency"]["count_mismatches"]
    )
    failed = failed or bool(result.get("restarts", {}).get("problems"))
    if "stalls" in result:
        stalls = result["stalls"]
        failed = failed or bool(
            stalls["call_failures"]
            or stalls["failed_408_naming_layer"] != stalls["stalled"]
            or not stalls["folders_untouched"]
            or stalls["tracebacks_in_log"]
            or stalls["server_exit"] != 0
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
