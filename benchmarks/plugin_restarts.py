"""Part ``restarts`` of ``bench_plugin.py`` (a reliability campaign): plugin restarts under a
container that keeps writing.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import log

# isort: split
from tests.plugin.client import PluginClient
from tests.plugin.dockerd import (
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

__all__ = ["bench_restarts"]


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


def bench_restarts(restarts: int) -> dict[str, Any]:  # noqa: PLR0915 - one campaign in one try/finally that stops dockerd and the plugin whatever step failed
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
