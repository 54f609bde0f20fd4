#!/usr/bin/env python3
"""Build the guest agent's libFuzzer target (``fuzz_agent_frames.c``) and run it.

    .venv/bin/python fuzz/agent/run.py -max_total_time=600        # ten minutes
    .venv/bin/python fuzz/agent/run.py -runs=1000000 -seed=1

Arguments are libFuzzer's. The target is built with clang (``-fsanitize=fuzzer,address,
undefined``; Debian: clang, libclang-rt-dev) from the agent's host sources, fuzzes a scratch
corpus seeded from ``fuzz/agent/corpus/`` with ``agent.dict``, and leaves findings in
``fuzz/findings/agent/`` (override with ``-artifact_prefix=``). Run it as root: view roots then
live on a private, size-limited tmpfs that disappears with the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HARNESS = HERE / "fuzz_agent_frames.c"
CORPUS = HERE / "corpus"
DICT = HERE / "agent.dict"
FINDINGS = ROOT / "fuzz" / "findings" / "agent"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.agent.native import SANITIZER_ENV, build  # noqa: E402

__all__ = ["build_fuzzer", "fuzz_argv"]


def build_fuzzer(out: Path, cc: str = "clang") -> Path:
    """The libFuzzer binary at ``out``."""
    return build(out, HARNESS, cc=cc, flags=("-fsanitize=fuzzer",))


def fuzz_argv(binary: Path, work: Path, args: list[str]) -> list[str]:
    """The command line: ``args``, the dictionary, and ``work`` seeded from the corpus."""
    own = [] if any(a.startswith("-artifact_prefix=") for a in args) else [
        f"-artifact_prefix={FINDINGS}/"
    ]  # fmt: skip
    return [str(binary), f"-dict={DICT}", *own, *args, str(work), str(CORPUS)]


def main(args: list[str]) -> int:
    FINDINGS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agent-fuzz-") as tmp:
        binary = build_fuzzer(Path(tmp) / "fuzz_agent_frames")
        work = Path(tmp) / "corpus"
        work.mkdir()
        argv = fuzz_argv(binary, work, args)
        print("$", " ".join(argv), flush=True)
        env = {**os.environ, **SANITIZER_ENV}
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
