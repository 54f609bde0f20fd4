"""What the parts of ``bench_plugin.py`` share.

The repository's ``src`` and root on ``sys.path`` (so that ``tests.plugin`` imports and an older
checkout measures its own code), the progress log, a small layer tar, and ``lcow plugin serve``
run as a process of its own.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

__all__ = ["REPO", "ServerProcess", "log", "small_tar"]

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]


def log(message: str) -> None:
    print(f"[bench_plugin {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
