"""The guest agent built natively, and a running instance of it, for host-side tests and fuzzing.

The protocol and file-operation sources of ``src/lcow/backends/vm/agent`` compile on the host
(everything but the guest-only ``init.c``, ``disks.c`` and ``mkfs.c``, which mount, format and
boot); a small ``main`` (:file:`hostserve.c` here, or the libFuzzer entry point of
``fuzz/agent``) serves frames on descriptors given to it, with view roots confined below a
directory. Sanitizers (AddressSanitizer, UndefinedBehaviorSanitizer) are used when the compiler
has them; a sanitizer report makes the process exit with :data:`SANITIZER_EXIT`.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import lcow.backends.vm

__all__ = [
    "AGENT_SOURCES",
    "GUEST_ONLY",
    "HOSTSERVE",
    "SANITIZER_ENV",
    "SANITIZER_EXIT",
    "AgentProcess",
    "build",
    "host_units",
    "sanitizer_flags",
]

AGENT_SOURCES = Path(lcow.backends.vm.__file__).resolve().parent / "agent"
#: What only the guest may run: PID 1's boot, disks and mounts, mkfs.
GUEST_ONLY = frozenset({"init.c", "disks.c", "mkfs.c"})
HOSTSERVE = Path(__file__).resolve().parent / "hostserve.c"
SANITIZER_EXIT = 86
SANITIZER_ENV = {
    "ASAN_OPTIONS": f"exitcode={SANITIZER_EXIT}:detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": f"halt_on_error=1:print_stacktrace=1:exitcode={SANITIZER_EXIT}",
}
_WARNINGS = ("-Wall", "-Wextra", "-Werror")
_GCC_ONLY = ("-Wno-format-truncation",)  # (the build's flag; clang does not know it)


def host_units() -> list[Path]:
    """The agent's ``.c`` files that build and run on the host."""
    units = sorted(p for p in AGENT_SOURCES.glob("*.c") if p.name not in GUEST_ONLY)
    missing = GUEST_ONLY - {p.name for p in AGENT_SOURCES.glob("*.c")}
    assert not missing, f"guest-only sources renamed? {sorted(missing)}"
    return units


@functools.cache
def sanitizer_flags(cc: str) -> tuple[str, ...]:
    """``-fsanitize=address,undefined`` (no recovery) when ``cc`` can link it, else nothing."""
    flags = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("int main(void) { return 0; }\n")
        done = subprocess.run(
            [cc, *flags, "-o", str(probe.with_suffix("")), str(probe)],
            capture_output=True, check=False,
        )  # fmt: skip
    return flags if done.returncode == 0 else ()


def build(out: Path, main: Path = HOSTSERVE, *, cc: str = "gcc", flags: Sequence[str] = ()) -> Path:
    """Compile the host units with ``main`` into ``out`` (debug info, sanitizers if any).

    Raises:
        AssertionError: the compiler failed (its output is the message).
    """
    compiler = shutil.which(cc)
    assert compiler is not None, f"{cc} not found"
    argv = [
        compiler, "-g", "-O1", "-fno-omit-frame-pointer", *_WARNINGS,
        *(_GCC_ONLY if "clang" not in Path(compiler).name else ()),
        *sanitizer_flags(compiler), *flags, f"-I{AGENT_SOURCES}",
        "-o", str(out), str(main), *map(str, host_units()),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stderr}"
    return out


class AgentProcess:
    """A running ``hostserve``: ``serve`` one descriptor, or ``accept`` on a listening socket.

    Args:
        binary: the built ``hostserve``.
        views: the directory view roots are resolved below.
        mode: ``"serve"`` or ``"accept"``.
        fd: the descriptor handed to the process (closed here once it has it).
        log: where its standard error goes.
    """

    def __init__(self, binary: Path, views: Path, mode: str, fd: int, log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [str(binary), str(views), mode, str(fd)],
                pass_fds=(fd,), stdin=subprocess.DEVNULL, stderr=err,
                env={**os.environ, **SANITIZER_ENV},
            )  # fmt: skip
        os.close(fd)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def wait(self, timeout: float = 30) -> int:
        """Its exit status, once it has exited."""
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Terminate it if it still runs."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def stderr(self) -> str:
        """What it wrote to standard error."""
        return self.log.read_text(errors="replace")

    def assert_clean(self) -> None:
        """No sanitizer report, and no exit by a signal other than the SIGTERM of :meth:`stop`."""
        text = self.stderr()
        assert "Sanitizer" not in text and "runtime error" not in text, text[-6000:]
        code = self.proc.returncode
        assert code in (0, -signal.SIGTERM), f"hostserve exited with {code}:\n{text[-3000:]}"
