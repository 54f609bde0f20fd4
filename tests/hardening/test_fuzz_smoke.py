"""A short atheris run of every harness in ``fuzz/`` (the long runs are ``tools/fuzz.py``).

Each harness fuzzes 3,000 inputs derived from its committed seeds in a subprocess, with
libFuzzer's hang (20 s per input) and memory (2 GiB) limits; any finding fails the test and
leaves its input in the test's directory. Needs atheris (the ``fuzz`` extra): skipped without
it, failed when ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import missing

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
RUNS = 3000


@pytest.fixture(scope="module", autouse=True)
def _atheris() -> None:
    if importlib.util.find_spec("atheris") is None:
        missing("atheris not installed (pip install -e '.[fuzz]')")


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_smoke(harness: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    argv = [
        sys.executable, str(FUZZ / f"fuzz_{harness}.py"), f"-runs={RUNS}", "-timeout=20",
        "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", "-seed=1",
        str(work), str(FUZZ / "corpus" / harness),
    ]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, errors="replace", timeout=600, check=False
    )
    log = proc.stdout + proc.stderr
    found = [p.name for p in tmp_path.iterdir() if p.name != "corpus"]
    assert proc.returncode == 0 and not found, f"finding {found}:\n{log[-4000:]}"
    assert f"Done {RUNS} runs" in log, log[-2000:]
