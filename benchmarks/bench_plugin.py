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

The JSON (``--out``) holds every sample and the machine (CPUs, kernel, versions, load).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
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
from tests.plugin.dockerd import Daemon, PluginProcess, leftovers, unique_name  # noqa: E402

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
    result["machine"]["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    failed = "concurrency" in result and (
        result["concurrency"]["errors"] or result["concurrency"]["count_mismatches"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
