"""A short libFuzzer run of the guest agent's frame parser (the long runs: ``fuzz/agent/run.py``).

The target (``fuzz/agent/fuzz_agent_frames.c``, built with clang, AddressSanitizer and
UndefinedBehaviorSanitizer) first replays every input of ``fuzz/agent/regressions/`` (each
once crashed or hung the agent), then fuzzes 20,000 inputs from the committed seeds. Any
finding fails the test and leaves its input in the test's directory. Needs clang with
libFuzzer (Debian: clang, libclang-rt-dev) and root (the views' private tmpfs).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import requires
from tests.integration.agent.native import SANITIZER_ENV

pytestmark = requires("clang", "root")

AGENT_FUZZ = Path(__file__).resolve().parents[2] / "fuzz" / "agent"
RUNS = 20_000


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_fuzz_run", AGENT_FUZZ / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary: Path = _runner().build_fuzzer(tmp_path_factory.mktemp("agent-fuzz") / "fuzz_agent")
    return binary


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, errors="replace", timeout=600, check=False,
        env={**os.environ, **SANITIZER_ENV},
    )  # fmt: skip


def test_regressions_replay(fuzzer: Path) -> None:
    inputs = sorted((AGENT_FUZZ / "regressions").glob("*.bin"))
    assert inputs, "no regression inputs"
    proc = _run([str(fuzzer), "-timeout=20", *map(str, inputs)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("Executed ") == len(inputs), proc.stderr[-2000:]


def test_fuzz_smoke(fuzzer: Path, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    argv = _runner().fuzz_argv(
        fuzzer, work, [f"-runs={RUNS}", "-seed=1", "-timeout=20", f"-artifact_prefix={tmp_path}/"]
    )
    proc = _run(argv)
    found = [p.name for p in tmp_path.iterdir() if p.name != "corpus"]
    assert proc.returncode == 0 and not found, f"finding {found}:\n{proc.stderr[-4000:]}"
    assert f"Done {RUNS} runs" in proc.stderr, proc.stderr[-2000:]
