"""Start a harness module in a child interpreter (``python -m tests.harness.…``).

The harness lives in the repository, not in the installed package, so a child finds it only
with the repository root on its module path: :func:`child_env` puts it first on
``PYTHONPATH`` whatever the working directory is. lcow itself comes from the environment, as
in the parent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["REPO", "child_env", "python_module"]

#: The repository root (the folder holding ``tests/``).
REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """This process's environment with :data:`REPO` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    rest = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + rest if rest else "")
    return env


def python_module(module: str, *args: str) -> list[str]:
    """The argv of ``python -m module args…`` with this interpreter (pass :func:`child_env`
    as the child's environment)."""
    return [sys.executable, "-m", module, *args]
