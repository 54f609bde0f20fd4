"""Part ``concurrency`` of ``bench_plugin.py``: 32 clients (in a process of their own, started as
``bench_plugin.py --client-mode``) against a plugin served in this process; every view count
checked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import log, small_tar

# isort: split
from tests.plugin.client import PluginClient
from tests.plugin.dockerd import leftovers

__all__ = ["bench_concurrency", "client_main"]

# The client process: bench_plugin.py --client-mode runs client_main.
ENTRY = Path(__file__).with_name("bench_plugin.py")


def client_main(socket_path: str, clients: int, calls: int, keep: int) -> None:  # noqa: PLR0915 - the client process: the per-client closure shares the barrier, quotas and results
    """The client process: run the clients, print the results as JSON on stdout."""
    quotas = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:  # noqa: PLR0915 - one client's scripted call cycle and the view counts it expects, kept in one loop
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
                sys.executable, str(ENTRY), "--client-mode", str(config.socket_path),
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
