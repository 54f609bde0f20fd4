"""containerd's own snapshotter conformance suite against ``lcow snapshotter serve``.

containerd 1.6's ``snapshots/testsuite`` (Go, from Debian's
``golang-github-containerd-containerd-dev``) is built once per session with the small program
in ``gosuite/`` (Debian's ``golang-go`` in GOPATH mode, the output in the session's temporary
directory) and run as root: each suite case starts its own ``lcow --root ROOT --backend host
snapshotter serve`` on a fresh root and talks to it through containerd's ``snapshots/proxy``
client, as a stock containerd talks to a ``[proxy_plugins]`` snapshotter.

Every case the suite runs becomes one test here (``test_suite_case[NAME]``), which passes only if
the case passed; the cases that cannot run are listed in :data:`NOT_RUN` with the reason (not
collected, so CI shows no skips), and :func:`test_every_suite_case_is_run_or_listed` fails when
the suite has a case in neither list. The whole run ends with nothing mounted, attached or
running below its temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.containerd.daemons import short_dir
from tests.harness.crash.rootstate import settled_leftovers
from tests.helpers import SBIN_PATH, ensure, missing, requires, tool

pytestmark = [requires("root", "host", "go"), pytest.mark.timeout(900)]

#: Debian's Go source tree (golang-github-containerd-containerd-dev and its dependencies).
GOPATH = Path("/usr/share/gocode")
SUITE_SOURCE = GOPATH / "src/github.com/containerd/containerd/snapshots/testsuite"
PROGRAM = Path(__file__).parent / "gosuite"
#: The Go test function of ``gosuite/``; suite cases are its subtests.
TOP = "TestLcowSnapshotter"

#: Suite cases that must pass against the lcow snapshotter.
MUST_PASS: tuple[str, ...] = (
    "Basic",
    "StatActive",
    "StatComitted",
    "TransitivityTest",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "Walk",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "ViewReadonly",
    "StatInWalk",
    "CloseTwice",
    "RootPermission",
    "128LayersMount",
)

#: Suite cases that do not run, with the reason; each must be reported as skipped by the suite.
NOT_RUN: dict[str, str] = {
    "Rename": (
        "containerd 1.6.20 skips it for every snapshotter before its first step (t.Skip: "
        "'rename test still fails on some kernels with overlay'): renaming a directory of a "
        "lower layer through an overlay mount gives EXDEV unless the kernel's overlay "
        "redirect_dir is on, and lcow's mounts are overlays"
    ),
}


@dataclass
class Case:
    """One suite case's outcome in ``go test -json`` terms."""

    action: str = "run"  # pass, fail, skip (or run: never finished)
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)


@dataclass
class SuiteRun:
    """The run of the whole suite: each case by name, the process's status and output tail."""

    cases: dict[str, Case]
    returncode: int
    tail: str
    seconds: float


def _need_suite_sources() -> None:
    ensure("root", "host", "go")
    if not (SUITE_SOURCE / "testsuite.go").is_file():
        missing(
            f"{SUITE_SOURCE}: containerd's snapshotter suite not found "
            "(Debian: golang-github-containerd-containerd-dev)"
        )


def _go_env(cache: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOFLAGS": "",
        "PATH": os.environ.get("PATH", "") + ":" + SBIN_PATH,
    }
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(cache / "go-build")
    return env


def _build(out_dir: Path) -> Path:
    """``go test -c`` of ``gosuite/`` (GOPATH mode: a directory outside GOPATH is built by its
    relative path ``.``)."""
    binary = out_dir / "gosuite.test"
    go = tool("go")
    assert go is not None
    done = subprocess.run(
        [go, "test", "-c", "-o", str(binary), "."],
        cwd=PROGRAM, env=_go_env(out_dir), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"building {PROGRAM} failed:\n{done.stdout}\n{done.stderr}"
    return binary


def _parse(events: str) -> dict[str, Case]:
    """The subtests of :data:`TOP` from ``go tool test2json`` events."""
    cases: dict[str, Case] = {}
    prefix = TOP + "/"
    for line in events.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        name = event.get("Test", "")
        if not name.startswith(prefix):
            continue
        case = cases.setdefault(name[len(prefix) :], Case())
        action = event.get("Action")
        if action == "output":
            case.output.append(event.get("Output", ""))
        elif action in ("pass", "fail", "skip"):
            case.action = action
            case.seconds = float(event.get("Elapsed", 0.0))
    return cases


@pytest.fixture(scope="session")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteRun]:
    """Build and run the whole suite once; judge what it leaves behind."""
    _need_suite_sources()
    binary = _build(tmp_path_factory.mktemp("gosuite-build"))
    go = tool("go")
    assert go is not None
    # The suite's temporary directories (data roots, sockets, its work trees) go here.
    work = short_dir("gos-")
    env = {**_go_env(binary.parent), "TMPDIR": str(work), "LCOW_GOSUITE_PYTHON": sys.executable}
    started = time.monotonic()
    try:
        done = subprocess.run(
            [go, "tool", "test2json", "-t", str(binary), "-test.v"],
            env=env, capture_output=True, text=True, check=False, timeout=840,
        )  # fmt: skip
        seconds = time.monotonic() - started
        left, _ = settled_leftovers(work)
        assert left == [], f"the suite left behind: {left}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    yield SuiteRun(_parse(done.stdout), done.returncode, done.stderr[-3000:], seconds)


@pytest.mark.parametrize("name", MUST_PASS)
def test_suite_case(suite_run: SuiteRun, name: str) -> None:
    case = suite_run.cases.get(name)
    assert case is not None, f"the suite ran no case {name}:\n{suite_run.tail}"
    output = "".join(case.output)
    assert case.action == "pass", f"{name}: {case.action}\n{output[-12000:]}"


def test_every_suite_case_is_run_or_listed(suite_run: SuiteRun) -> None:
    """The suite's cases are exactly MUST_PASS and NOT_RUN; the listed ones did not run."""
    assert set(MUST_PASS).isdisjoint(NOT_RUN)
    assert all(reason.strip() for reason in NOT_RUN.values())
    assert set(suite_run.cases) == set(MUST_PASS) | set(NOT_RUN)
    for name in NOT_RUN:
        assert suite_run.cases[name].action == "skip", f"{name} ran: move it to MUST_PASS"


def test_the_suite_process_passed_as_a_whole(suite_run: SuiteRun) -> None:
    """No failure outside the cases (the factory, a panic, the run's status)."""
    failed = sorted(n for n, c in suite_run.cases.items() if c.action not in ("pass", "skip"))
    assert suite_run.returncode == 0, f"failed: {failed}\n{suite_run.tail}"
