"""Part ``stalls`` of ``bench_plugin.py`` (a reliability campaign): stalled ApplyDiff uploads
against ``lcow plugin serve --idle-timeout`` while other calls and a slow upload go on.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import ServerProcess, small_tar

# isort: split
from tests.plugin.client import PluginClient
from tests.plugin.dockerd import leftovers

__all__ = ["bench_stalls"]


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


def bench_stalls(count: int, idle: float) -> dict[str, Any]:  # noqa: PLR0915 - one campaign in one try/finally that closes every stalled socket whatever step failed
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
