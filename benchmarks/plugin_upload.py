"""Part ``upload`` of ``bench_plugin.py``: ApplyDiff throughput of ``lcow plugin serve``, one upload
after the other and four at once.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import ServerProcess, log

# isort: split
from tests.plugin.client import PluginClient
from tests.plugin.dockerd import leftovers

__all__ = ["bench_upload", "upload_tar"]


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
