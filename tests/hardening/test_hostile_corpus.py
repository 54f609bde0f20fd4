"""The hostile tar corpus (:mod:`tests.harness.hostile`) through every sink (hardening, part 1).

Each case runs through ``tar2ext4``, ``Driver.apply_diff``, ``lcow import`` and the plugin's
ApplyDiff (and, for :data:`EXTRACT_IN_CI`, ``extract_archive`` of a host-backend view, judged by
the case's ``extract_expect``), each sink in a fresh interpreter, and must
end as its case says: the expected error naming the entry with nothing left behind and nothing
written outside the scratch tree, or a layer that ``e2fsck -fn`` accepts, lcow's reader walks and
— for the ``tar2ext4`` sink, when loop devices are available — a read-only kernel mount shows
with the case's property; every sink's peak RSS stays within the case's budget and successful
sinks write identical ext4 images. ``tools/hostile_corpus.py`` runs the same with a table.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from tests.harness.hostile.corpus import ALL_CASES, EXTRACT_DIFFERENCES, write_case
from tests.harness.hostile.reports import markdown_table
from tests.harness.hostile.run import run_isolated
from tests.harness.hostile.sinks import HOST_SINKS, SINKS
from tests.helpers import ensure, in_ci, requires, tool

pytestmark = requires("e2fsck")


@functools.cache
def _kernel_ok() -> bool:
    """Root and a loop driver: the ok cases are also checked through a kernel mount."""
    ok = (
        os.geteuid() == 0
        and Path("/dev/loop-control").exists()
        and all(tool(t) for t in ("losetup", "mount", "umount"))
    )
    if not ok and in_ci():
        pytest.fail("CI=true: kernel mounts (root, loop devices) are needed", pytrace=False)
    return ok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the cases' inputs are written (each on first use)."""
    return tmp_path_factory.mktemp("hostile")


#: The cases the ``extract_archive`` sink (a host-backend view, about a second a case) runs
#: in CI: every case where its expectation differs from ApplyDiff's, and the archive-level
#: ones (cuts, end markers, damaged headers, compression). ``tools/hostile_corpus.py`` runs it
#: on every case (RELIABILITY.md §1).
EXTRACT_IN_CI = frozenset(EXTRACT_DIFFERENCES) | {
    "dotdot-leading",
    "dotdot-climb-to-canary",
    "absolute-name",
    "hardlink-dotdot-target",
    "root-entry-metadata",
    "sparse-1tib-realsize",
    "sparse-map-beyond-file",
    "pax-uid-huge",
    "pax-record-bomb",
    "pax-chain-bomb",
    "gnu-longname-bomb",
    "pax-bad-record-length",
    "xattr-value-over-block",
    "hardlink-to-directory",
    "file-then-child",
    "corrupt-checksum",
    "truncated-in-header",
    "truncated-in-data",
    "truncated-in-pax",
    "not-a-tar",
    "not-a-tar-text",
    "empty-input",
    "no-end-marker",
    "one-zero-block",
    "zero-block-then-member",
    "gzip-cut-trailer",
    "gzip-cut-mid-stream",
    "entries-after-end-marker",
}


def _sinks(name: str) -> list[str]:
    return [s for s in SINKS if s not in HOST_SINKS or name in EXTRACT_IN_CI]


def test_corpus_is_large_enough() -> None:
    assert len(ALL_CASES) >= 50
    assert {"tar2ext4", "apply_diff", "import", "plugin", "extract_archive"} <= set(SINKS)
    assert set(ALL_CASES) >= EXTRACT_IN_CI
    outcomes = {case.expect.outcome for case in ALL_CASES.values()}
    assert {"ok", "InvalidArgument", "LimitExceeded", "NotFound"} <= outcomes


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if c.slow else []) for n, c in ALL_CASES.items()],
)
def test_hostile_case(name: str, corpus: Path) -> None:
    case = ALL_CASES[name]
    sinks = _sinks(name)
    if set(sinks) & HOST_SINKS:
        ensure("host")  # extract_archive mounts a host-backend view
    layer = write_case(corpus, case)
    mount = ["tar2ext4"] if case.expect.error is None and _kernel_ok() else False
    report = run_isolated(name, layer, sinks, mount=mount, timeout=600)
    assert report.passed, "\n" + markdown_table([report])
    assert [s.sink for s in report.sinks] == sinks
