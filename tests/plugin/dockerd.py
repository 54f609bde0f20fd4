"""Run dockerd 20.10 and the lcow plugin for end-to-end tests, leaving nothing behind (SPEC §9.8).

Everything lives in one temporary directory: dockerd's data root, exec root (its own
containerd), pid file and API socket, the plugin's state and logs, the docker CLI's config. Only
the plugin socket sits where dockerd looks for it, ``/run/docker/plugins/<unique name>.sock``.
Host networking is left alone (``--iptables=false --ip6tables=false --bridge=none
--ip-masq=false``; containers run with ``--network none``). Every process is stopped by its pid,
mounts below the directory are undone, and :func:`leftovers` says what is still there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers import SBIN_PATH
from tests.plugin.client import UnixHTTPConnection

__all__ = [
    "BUSYBOX",
    "DOCKER",
    "DOCKERD",
    "WRITER",
    "Daemon",
    "DockerError",
    "PluginProcess",
    "busybox_rootfs",
    "kernel_log_lines",
    "leftovers",
    "mount_id",
    "mounts_below",
    "numbered",
    "statically_linked",
    "unique_name",
    "unmount_below",
]

DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI; a newer one may come first on PATH
DOCKERD = shutil.which("dockerd", path=f"/usr/bin:{SBIN_PATH}") or "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh", "echo", "cat", "ls", "mkdir", "rm", "touch", "mv", "sleep", "true", "test", "date",
    "sync",
)  # fmt: skip
_REPO = Path(__file__).resolve().parents[2]


# A container that appends "<n> <epoch seconds>" to a file every 200 ms, through a fresh open
# (lines) and through a descriptor held since it started (held), each line synced to the disk so
# that a failed write-back shows at once. /stop ends the writing; the container stays up.
WRITER = (
    "exec 3>>/srv/held; i=0; while [ ! -e /stop ]; do i=$((i+1)); t=$(date +%s);"
    ' echo "$i $t" >> /srv/lines; echo "$i $t" >&3; sync -d /srv/lines /srv/held;'
    " sleep 0.2; done; exec sleep 3600"
)


def numbered(text: str) -> list[tuple[int, int]]:
    """The writer's lines as ``(n, epoch)``, checking they count 1, 2, 3... without a gap."""
    pairs = [(int(n), int(t)) for n, t in (line.split() for line in text.splitlines())]
    assert [n for n, _ in pairs] == list(range(1, len(pairs) + 1)), text[-2000:]
    return pairs


class DockerError(AssertionError):
    """A docker command failed."""


def unique_name() -> str:
    """A plugin name no other test session or real plugin uses."""
    return f"lcowtest-{os.getpid()}-{secrets.token_hex(3)}"


def busybox_rootfs(path: Path) -> Path:
    """A root filesystem tar around Debian's static busybox, with a few files to change."""
    fixed = 1_700_000_000

    def add(tf: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE,
            data: bytes = b"", mode: int = 0o644, target: str = "") -> None:  # fmt: skip
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, fixed, target
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(info, io.BytesIO(data) if info.size else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for directory in ("bin", "etc", "tmp", "root", "srv", "srv/old", "proc", "sys", "dev"):
            add(tf, directory, kind=tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755)
        add(tf, "bin/busybox", data=Path(BUSYBOX).read_bytes(), mode=0o755)
        for applet in APPLETS:
            add(tf, f"bin/{applet}", kind=tarfile.SYMTYPE, target="busybox")
        add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
        add(tf, "etc/group", data=b"root:x:0:\n")
        add(tf, "etc/motd", data=b"lcow e2e\n")
        add(tf, "srv/keep", data=b"keep\n")
        add(tf, "srv/old/a", data=b"a\n")
        add(tf, "srv/old/b", data=b"b\n")
    return path


def statically_linked(binary: Path) -> bool:
    """An ELF64 little-endian executable without a PT_INTERP program header."""
    data = binary.read_bytes()[:65536]
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    entsize = int.from_bytes(data[0x36:0x38], "little")
    count = int.from_bytes(data[0x38:0x3A], "little")
    types = [
        int.from_bytes(data[phoff + i * entsize : phoff + i * entsize + 4], "little")
        for i in range(count)
    ]
    return 3 not in types  # PT_INTERP: a dynamic loader is needed


def mounts_below(root: Path) -> list[tuple[str, str, str]]:
    """``(mount point, filesystem type, source)`` of every mount at or below ``root``."""
    prefix = os.fspath(root)
    found = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields = line.rstrip(b"\n").split(b" ")
            point = os.fsdecode(fields[4]).replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                tail = fields[fields.index(b"-") + 1 :]
                found.append((point, os.fsdecode(tail[0]), os.fsdecode(tail[1])))
    return found


def _mounts_below(root: Path) -> list[str]:
    return [point for point, _, _ in mounts_below(root)]


def kernel_log_lines() -> list[str]:
    """The kernel's ring buffer (``dmesg``), one message a line."""
    proc = subprocess.run(["dmesg"], capture_output=True, check=True)
    return proc.stdout.decode(errors="replace").splitlines()


def mount_id(daemon_root: Path, driver: str, container: str) -> str:
    """The layer id dockerd gave a container's writable layer (random, not the container's)."""
    record = daemon_root / "image" / driver / "layerdb" / "mounts" / container / "mount-id"
    return record.read_text()


def unmount_below(root: Path) -> None:
    """Undo every mount below ``root``, deepest first (dockerd may leave its data root bound)."""
    for _ in range(5):
        points = sorted(_mounts_below(root), key=len, reverse=True)
        if not points:
            return
        for point in points:
            umount = subprocess.run(["umount", point], check=False, capture_output=True)
            if umount.returncode != 0:
                subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


def _processes_using(root: Path) -> list[str]:
    """Live processes whose command line names ``root`` (zombies are dead and ignored)."""
    needle = os.fsencode(root)
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if needle not in (proc / "cmdline").read_bytes():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()[:200]!r}")
    return found


def leftovers(root: Path, sockets: Sequence[Path] = ()) -> list[str]:
    """What a run must not leave: mounts and processes under ``root``, plugin sockets."""
    found = [f"mount {p}" for p in _mounts_below(root)]
    found += [f"process {p}" for p in _processes_using(root)]
    found += [f"socket {s}" for s in sockets if s.exists()]
    return found


def _kill_by_pid(pids: Sequence[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            if _is_zombie(pid):
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            if not _is_zombie(pid):
                os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class PluginProcess:
    """``lcow plugin serve`` as a separate process (``--backend host`` by default)."""

    def __init__(self, base: Path, name: str, *, shutdown_timeout: float = 20) -> None:
        self.base = base
        self.name = name
        self.state = base / f"plugin-{name}"
        self.socket = Path("/run/docker/plugins") / f"{name}.sock"
        self.shutdown_timeout = shutdown_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.base / f"plugin-{self.name}.{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        argv = [sys.executable, "-m", "lcow", "plugin", "serve", "--root", str(self.state),
                "--name", self.name, "--shutdown-timeout", str(self.shutdown_timeout)]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=_REPO, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"plugin did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM and wait (Cleanup runs); the exit status."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(self.shutdown_timeout + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.proc = None
        return status

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""


class Daemon:
    """A dockerd started per SPEC §9.8 in ``base/<label>``, and the docker CLI pointed at it."""

    def __init__(self, base: Path, label: str, storage_driver: str) -> None:
        self.dir = base / label
        self.storage_driver = storage_driver
        self.socket = self.dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env = {
            **os.environ,
            "PATH": f"/usr/bin:/usr/sbin:/bin:/sbin:{os.environ.get('PATH', '')}",
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.dir / "cli"),
            "DOCKER_BUILDKIT": "0",
        }

    @property
    def log_path(self) -> Path:
        return self.dir / f"dockerd.{self.starts}.log"

    def start(self, timeout: float = 60) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        argv = [
            DOCKERD, "--experimental",
            "--data-root", str(self.dir / "root"), "--exec-root", str(self.dir / "exec"),
            "--pidfile", str(self.dir / "dockerd.pid"), "-H", f"unix://{self.socket}",
            "--storage-driver", self.storage_driver,
            "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"dockerd did not start:\n{self.log()}")
            time.sleep(0.1)

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        conn = UnixHTTPConnection(str(self.socket), timeout=5)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM dockerd by pid (it stops its containerd), then anything left under its
        directory; undo its mounts."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        stray = [int(p.split(":", 1)[0]) for p in _processes_using(self.dir)]
        _kill_by_pid(stray, 10)
        unmount_below(self.dir)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""

    def docker(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``/usr/bin/docker ARGS`` against this daemon."""
        proc = subprocess.run(
            [DOCKER, *args],
            input=input,
            capture_output=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise DockerError(
                f"docker {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-3000:]!r}\nstderr: {proc.stderr[-3000:]!r}\n"
                f"--- dockerd log\n{self.log()[-3000:]}"
            )
        return proc

    def out(self, *args: str, input: bytes | None = None) -> str:
        """A docker command's stdout, decoded and stripped."""
        return self.docker(*args, input=input).stdout.decode().strip()

    def inspect(self, ref: str) -> Any:
        return json.loads(self.out("image", "inspect", ref))[0]
