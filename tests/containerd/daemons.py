"""Debian's docker-registry and containerd 1.6, started for a test and stopped without a trace.

:class:`Registry` serves plain HTTP on a free loopback port from a temporary storage directory.
:class:`Containerd` runs with its own root, state, gRPC socket and ``ctr`` namespace, CRI
disabled, optionally with a proxy snapshotter ``lcow`` (``[proxy_plugins.lcow]``). Both are
stopped by the pid they were started with. :meth:`Containerd.close` also deletes the tasks and
containers of its namespace, kills by pid whatever still names its directory (a shim) or sits
in its namespace's cgroups (a container whose shim died), undoes mounts below its directory,
removes the directory and fails if anything survived.

Host paths containerd 1.6 uses whatever its config says: shims listen on
``/run/containerd/s/<hash of address, namespace and id>`` (removed when a shim exits), runc keeps
its state in ``/run/containerd/runc/<namespace>`` and containers get the cgroup
``/<namespace>/<id>``. A unique namespace per daemon keeps concurrent test sessions apart there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.helpers import SBIN_PATH
from tests.plugin.dockerd import mounts_below, unmount_below

__all__ = [
    "CTR",
    "Containerd",
    "ContainerdFactory",
    "CtrError",
    "ProxyContainerdFactory",
    "Registry",
    "free_port",
    "short_dir",
]

CTR = "/usr/bin/ctr"  # Debian's 1.6 client; another one may come first on PATH
CONTAINERD = shutil.which("containerd", path=f"/usr/bin:{SBIN_PATH}") or "/usr/bin/containerd"
REGISTRY = shutil.which("docker-registry", path=f"/usr/bin:{SBIN_PATH}") or "docker-registry"
CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNC_ROOT = Path("/run/containerd/runc")  # the runc shim's --root, one folder per namespace
SHIM_SOCKETS = Path("/run/containerd/s")
# ctr commands that create I/O fifos (by default in the host's /run/containerd/fifo, and left
# there by a detached run): these get --fifo-dir below the daemon's directory.
_FIFO_COMMANDS = (("run",), ("tasks", "start"), ("tasks", "exec"))
_ENV = {**os.environ, "PATH": f"/usr/bin:/usr/sbin:/bin:/sbin:{os.environ.get('PATH', '')}"}


class CtrError(AssertionError):
    """A ``ctr`` command failed."""


class ContainerdFactory(Protocol):
    """The ``containerd`` fixture: start a daemon, with the ``lcow`` proxy snapshotter on
    ``proxy`` if given; the fixture closes it after the test."""

    def __call__(self, proxy: Path | None = None) -> Containerd: ...


class ProxyContainerdFactory(Protocol):
    """The ``containerd_with_proxy`` fixture: a daemon whose ``lcow`` snapshotter is the proxy
    listening on ``socket``."""

    def __call__(self, socket: Path) -> Containerd: ...


def short_dir(prefix: str) -> Path:
    """A new directory short enough for unix sockets below it (paths are limited to 107
    bytes): in the temp directory when that is short, else in /tmp."""
    parent = tempfile.gettempdir()
    if len(parent) > 40:
        parent = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _stop(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM ``proc`` (by its pid), SIGKILL after ``grace`` seconds; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _kill_pids(pids: Sequence[int], grace: float = 10) -> None:
    """SIGTERM each of ``pids``, SIGKILL the ones still alive after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and not _is_zombie(pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if not _is_zombie(pid):
                os.kill(pid, signal.SIGKILL)


def processes_naming(path: Path) -> list[int]:
    """Live processes (not this one) whose command line contains ``path``."""
    needle = os.fsencode(path)
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes()
            if pid != os.getpid() and needle in argv and not _is_zombie(pid):
                found.append(pid)
    return found


def _log_tail(path: Path, size: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


class Registry:
    """``docker-registry serve`` on ``127.0.0.1:<free port>``, storage in ``base/data``.

    Plain HTTP by default; ``tls`` (certificate and key PEM files) serves HTTPS; ``htpasswd``
    (a bcrypt htpasswd file) requires Basic auth with its users; ``token`` (the ``realm``,
    ``service``, ``issuer`` and ``rootcertbundle`` of distribution's ``auth.token`` section)
    requires Bearer tokens from that realm.
    """

    def __init__(
        self,
        base: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        htpasswd: Path | None = None,
        token: dict[str, str] | None = None,
    ) -> None:
        self.dir = base
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls = tls
        self.htpasswd = htpasswd
        self.token = token

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the host part of image references pushed here."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "registry.log"

    def start(self, timeout: float = 30) -> Registry:
        """Start the registry and wait until ``/v2/`` answers 200 (a taken port is retried)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = free_port()
            config = self.dir / "config.yml"
            # JSON is YAML: no YAML writer needed.
            config.write_text(json.dumps(self._config(), indent=1))
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [REGISTRY, "serve", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_ENV,
                    start_new_session=True,
                )
            if self._wait(timeout):
                return self
        raise AssertionError(f"docker-registry did not start:\n{_log_tail(self.log_path)}")

    def _config(self) -> dict[str, object]:
        http: dict[str, object] = {"addr": self.address}
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.dir / "data")},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        if self.htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "lcow-tests", "path": str(self.htpasswd)}}
        elif self.token is not None:
            config["auth"] = {"token": self.token}
        return config

    @property
    def storage(self) -> Path:
        """The filesystem driver's root (``docker/registry/v2/blobs/sha256/<2>/<hex>/data``)."""
        return self.dir / "data"

    def _wait(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._answers():
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _answers(self) -> bool:
        scheme = "http" if self.tls is None else "https"
        # Readiness only: the test's CA is checked by the clients under test, not here.
        context = None if self.tls is None else ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.address}/v2/", timeout=2, context=context
            ) as answer:
                return bool(answer.status == 200)
        except urllib.error.HTTPError as exc:
            asks_login = self.htpasswd is not None or self.token is not None
            return exc.code == 401 and asks_login  # up, and asking for a login
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM the registry by its pid (SIGKILL after 10 s)."""
        if self.proc is not None:
            _stop(self.proc, 10)
            self.proc = None

    def log(self) -> str:
        return _log_tail(self.log_path)


class Containerd:
    """A containerd with everything in ``base`` (a short directory, for the sockets).

    Attributes:
        dir: ``config.toml``, ``root/``, ``state/``, ``containerd.sock`` and the logs.
        address: the gRPC socket (``ctr --address``; the ttrpc one is ``<address>.ttrpc``).
        namespace: the ``ctr -n`` namespace of :meth:`ctr` (unique per daemon).
        proxy: the socket of the ``lcow`` proxy snapshotter, if one was configured.
    """

    def __init__(self, base: Path, *, proxy: Path | None = None, namespace: str = "") -> None:
        self.dir = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = base / "containerd.sock"
        self.namespace = namespace or f"lcowtest-{secrets.token_hex(4)}"
        self.proxy = proxy
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.answered = False  # it started once: close() may restart it to clear up

    @property
    def log_path(self) -> Path:
        return self.dir / f"containerd.{self.starts}.log"

    def config(self) -> str:
        """The ``config.toml`` (version 2) this daemon runs with."""

        def q(value: object) -> str:  # a TOML basic string (JSON's escapes are TOML's)
            return json.dumps(str(value))

        lines = [
            "version = 2",
            f"root = {q(self.root)}",
            f"state = {q(self.state)}",
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f"  address = {q(self.address)}",
            "[ttrpc]",
            f"  address = {q(str(self.address) + '.ttrpc')}",
            # Where "opt" plugins install; the default is the host's /opt/containerd.
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {q(self.root / 'opt')}",
        ]
        if self.proxy is not None:
            lines += [
                "[proxy_plugins.lcow]",
                '  type = "snapshot"',
                f"  address = {q(self.proxy)}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60) -> Containerd:
        """Start containerd and wait until ``ctr version`` answers on its socket."""
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.toml"
        config.write_text(self.config())
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_ENV,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.address.exists() and self.ctr("version", check=False).returncode == 0:
                self.answered = True
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"containerd did not start:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, grace: float = 30) -> int:
        """SIGTERM containerd by its pid (SIGKILL after ``grace`` seconds); its exit status.
        Shims and their containers keep running, as after a real daemon restart."""
        if self.proc is None:
            return 0
        status = _stop(self.proc, grace)
        self.proc = None
        return status

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ctr(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``/usr/bin/ctr --address SOCK -n NAMESPACE ARGS``.

        Raises:
            CtrError: (with ``check``) ctr exited non-zero; the message has its stdout, stderr
                and the tail of containerd's log.
        """
        argv = [CTR, "--address", str(self.address), "-n", self.namespace, *self._fifos(args)]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            env=_ENV,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CtrError(
                f"ctr {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}\n"
                f"--- containerd log\n{self.log()[-3000:]}"
            )
        return proc

    def _fifos(self, args: Sequence[str]) -> list[str]:
        for command in _FIFO_COMMANDS:
            if tuple(args[: len(command)]) == command and "--fifo-dir" not in args:
                n = len(command)
                return [*args[:n], "--fifo-dir", str(self.dir / "fifo"), *args[n:]]
        return list(args)

    def shim_socket(self, container: str) -> Path:
        """Where the runc shim of ``container`` listens (containerd 1.6 hashes its own
        address, the namespace and the id into a name below the host's /run/containerd/s)."""
        key = os.path.join(self.address, self.namespace, container)
        return SHIM_SOCKETS / hashlib.sha256(key.encode()).hexdigest()

    def ids(self, *args: str) -> list[str]:
        """The ids a ``ctr ... ls -q`` prints (e.g. ``ids("tasks", "ls")``)."""
        return self.ctr(*args, "-q").stdout.split()

    def log(self) -> str:
        return _log_tail(self.log_path)

    def clear(self) -> None:
        """Kill and delete every task of the namespace, then delete its containers."""
        for task in self.ids("tasks", "ls"):
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
            deadline = time.monotonic() + 30
            while self.ctr("tasks", "delete", task, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    self.ctr("tasks", "delete", "--force", task, check=False)
                    break
                time.sleep(0.1)
        for container in self.ids("containers", "ls"):
            self.ctr("containers", "rm", container, check=False)
            # A shim that was killed could not remove its socket.
            with contextlib.suppress(FileNotFoundError):
                self.shim_socket(container).unlink()

    def _cgroups(self) -> list[Path]:
        """This namespace's cgroup directories (one per v1 hierarchy, or the v2 one)."""
        return [p for p in CGROUP_ROOT.glob(f"*/{self.namespace}") if p.is_dir()] + [
            p for p in [CGROUP_ROOT / self.namespace] if p.is_dir()
        ]

    def _sweep_cgroups(self) -> None:
        """Kill by pid what still runs in the namespace's cgroups, then remove them."""
        pids: set[int] = set()
        for group in self._cgroups():
            for procs in group.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(line) for line in procs.read_text().split())
        _kill_pids(sorted(pids), grace=5)
        for group in self._cgroups():
            for sub in sorted((p for p in group.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()

    def leftovers(self) -> list[str]:
        """Processes naming the directory, mounts below it, the namespace's cgroups."""
        found = [f"process {pid}" for pid in processes_naming(self.dir)]
        found += [f"mount {point} ({kind})" for point, kind, _ in mounts_below(self.dir)]
        found += [f"cgroup {group}" for group in self._cgroups()]
        if (RUNC_ROOT / self.namespace).exists():
            found.append(f"runc state {RUNC_ROOT / self.namespace}")
        return found

    def close(self) -> None:
        """Leave nothing: tasks and containers deleted (containerd restarted for that if it
        was stopped), containerd stopped, stray shims and container processes killed by pid,
        mounts below the directory undone, the directory removed.

        Raises:
            AssertionError: something survived all that, or containerd could not be restarted
                to clear what it runs.
        """
        problems = []
        try:
            if not self.running and self.answered:
                self.start()
            if self.running:
                self.clear()
        except AssertionError as exc:
            problems.append(f"clearing the namespace failed: {exc}")
        finally:
            self.stop()
            _kill_pids(processes_naming(self.dir))
            self._sweep_cgroups()
            unmount_below(self.dir)
            with contextlib.suppress(OSError):  # empty once every container is deleted
                (RUNC_ROOT / self.namespace).rmdir()
            left = self.leftovers()
            if not left:
                shutil.rmtree(self.dir, ignore_errors=True)
        if left:
            problems.append("containerd left behind:\n  " + "\n  ".join(left))
        if problems:
            raise AssertionError("\n".join(problems))
