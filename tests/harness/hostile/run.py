"""Run the hostile corpus (:mod:`.corpus`) through every sink (:mod:`.sinks`) and judge it.

A *sink* is one way a tar becomes a layer (see :mod:`.sinks`; all are listed in
:data:`~.sinks.SINKS`); ``extract_archive`` is judged against the case's
:attr:`~.case.HostileCase.extract_expect`.

For every case and sink :func:`run_case` checks:

* the outcome is the expected one: the error category (for the command line, its exit status)
  with a message naming the entry, or success;
* on success the image passes ``e2fsck -fn``, lcow's reader walks all of it, the case's property
  holds through the reader and, with ``mount=True``, through a read-only kernel mount;
* on failure nothing at all changed in the scratch tree (output directory, data root, the image
  tarball, a canary directory beside them), and on success only the sink's own outputs appeared —
  so nothing was written outside the data root and no partial layer is left;
* the peak RSS of the sink (``VmHWM``, reset before each sink) stays within the case's budget.

:func:`run_isolated` runs each sink of a case in a fresh interpreter (``python -m
tests.harness.hostile.run``) so RSS is measured per sink, a crash or hang is caught, and address
space is capped.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from lcow.errors import LcowError
from tests.harness.hostile.case import HostileCase
from tests.harness.hostile.corpus import ALL_CASES
from tests.harness.hostile.expect import Expect
from tests.harness.hostile.oracles import (
    Snapshot,
    changes,
    e2fsck,
    image_digest,
    kernel_mount,
    rss_peak_mib,
    rss_reset,
    snapshot,
)
from tests.harness.hostile.probes import MountProbe, ReaderProbe
from tests.harness.hostile.reports import CaseReport, SinkReport
from tests.harness.hostile.sinks import SINKS, CliFailure, PluginFailure, Sink
from tests.harness.spawn import child_env, python_module

__all__ = ["run_case", "run_isolated", "run_sink"]

#: Images with more inodes than this are walked with the reader's lean scan.
_BIG = 100_000
#: Address-space cap of an isolated run: a runaway allocation fails instead of swapping.
_ADDRESS_SPACE = 6 << 30


def _verify_image(
    hostile: HostileCase, image: Path, report: SinkReport, scratch: Path, mount: bool
) -> None:
    """e2fsck, a full reader walk, the case's property (reader, then kernel)."""
    from lcow.formats.ext4.reader import Ext4Reader

    if not image.is_file():
        report.problems.append(f"{image.name} missing after success")
        return
    complaint = e2fsck(image)
    if complaint:
        report.problems.append(complaint)
    try:
        with Ext4Reader.open(image) as reader:
            ext4_size = reader.superblock.s_blocks_count * reader.block_size
            # every entry with its xattrs and link target; the lean scan for huge images
            big = reader.superblock.s_inodes_count > _BIG
            walk = reader.scan() if big else reader.walk()
            report.entries = sum(1 for _ in walk)
            hostile.expect.verify(ReaderProbe(reader))
        report.image_digest = image_digest(image, ext4_size)
    except AssertionError as exc:
        report.problems.append(f"reader: {exc}")
        return
    except LcowError as exc:
        report.problems.append(f"reader: {type(exc).__name__}: {exc}")
        return
    if mount:
        try:
            with kernel_mount(image, scratch / "mnt", ext4_size) as where:
                hostile.expect.verify(MountProbe(where))
        except AssertionError as exc:
            report.problems.append(f"kernel mount: {exc}")
        except subprocess.CalledProcessError as exc:
            report.problems.append(f"kernel mount failed: {exc.stderr.strip()}")


def _expectation(hostile: HostileCase, sink: Sink) -> Expect:
    special = getattr(sink, "expectation", None)
    return hostile.expect if special is None else special(hostile)


def _judge_error(expect: Expect, exc: BaseException, report: SinkReport) -> None:
    from lcow.cli.status import exit_status_for

    message = str(exc).splitlines()[0] if str(exc) else ""
    report.message = message
    if isinstance(exc, CliFailure):
        report.outcome = f"exit {exc.status}"
        if expect.error is None:
            report.problems.append(f"expected success, got exit {exc.status}: {message}")
            return
        want = exit_status_for(expect.error("probe"))
        if exc.status != want:
            report.problems.append(f"expected exit {int(want)}, got {exc.status}: {message}")
            return
        if not message.startswith("lcow: "):
            report.problems.append(f"message does not start with 'lcow: ': {message!r}")
    elif isinstance(exc, PluginFailure):
        report.outcome = "Err"
        if expect.error is None:
            report.problems.append(f"expected success, got Err: {message}")
            return
    else:
        report.outcome = type(exc).__name__
        if not isinstance(exc, LcowError):
            report.problems.append(f"crash: {type(exc).__name__}: {message}")
            return
        if expect.error is None:
            report.problems.append(f"expected success, got {report.outcome}: {message}")
            return
        if not isinstance(exc, expect.error):
            report.problems.append(f"expected {expect.error.__name__}, got {report.outcome}")
            return
    for name in expect.names:
        if name not in message:
            report.problems.append(f"message does not name {name!r}: {message!r}")


def run_sink(
    hostile: HostileCase, layer: Path, sink: Sink, scratch: Path, *, mount: bool = False
) -> SinkReport:
    """Run one case through one sink in this process (see the module docstring)."""
    report = SinkReport(sink.name)
    expect = _expectation(hostile, sink)
    if expect is not hostile.expect:
        report.expected = expect.outcome
    work = scratch / sink.name
    work.mkdir()
    canary = work / "canary"
    canary.mkdir()
    (canary / "keep").write_bytes(b"canary\n")
    operation, allowed = sink.prepare(layer, work)
    before = snapshot(work)
    rss_reset()
    started = time.monotonic()
    image: Path | None = None
    try:
        image = operation()
    except (Exception, MemoryError) as exc:
        _judge_error(expect, exc, report)
        if not getattr(sink, "partial_on_failure", False):
            allowed = []  # a failure may leave nothing behind at all
    try:
        _judge_result(hostile, expect, sink, image, report, work, mount, before, allowed, started)
    finally:
        release = getattr(sink, "release", None)
        if release is not None:
            release()
    shutil.rmtree(work, ignore_errors=True)
    return report


def _judge_result(
    hostile: HostileCase,
    expect: Expect,
    sink: Sink,
    image: Path | None,
    report: SinkReport,
    work: Path,
    mount: bool,
    before: Snapshot,
    allowed: Sequence[str],
    started: float,
) -> None:
    report.seconds = time.monotonic() - started
    report.rss_mib = round(rss_peak_mib(), 1)
    left = changes(before, snapshot(work), allowed)
    if left:
        report.problems.append("left behind: " + ", ".join(left[:5]))
    if report.rss_mib > hostile.rss_mib:
        report.problems.append(f"peak RSS {report.rss_mib} MiB over {hostile.rss_mib} MiB")
    if image is not None:
        report.outcome = "ok"
        verify = getattr(sink, "verify", None)
        if expect.error is not None:
            report.problems.append(f"expected {expect.outcome}, got success")
            if verify is not None:
                verify(hostile, image, SinkReport(sink.name))  # releases what it holds
        elif verify is not None:
            verify(hostile, image, report)
        else:
            _verify_image(hostile, image, report, work, mount)


def run_case(
    hostile: HostileCase,
    layer: Path,
    scratch: Path,
    sinks: Sequence[str] = tuple(SINKS),
    *,
    mount: bool = False,
) -> CaseReport:
    """Run one case through ``sinks`` in this process, each in its own part of ``scratch``."""
    reports = [run_sink(hostile, layer, SINKS[s], scratch, mount=mount) for s in sinks]
    return CaseReport(hostile.name, hostile.expect.outcome, reports)


def run_isolated(
    name: str,
    layer: Path,
    sinks: Sequence[str] = tuple(SINKS),
    *,
    mount: bool | Collection[str] = False,
    timeout: float = 900,
) -> CaseReport:
    """:func:`run_case` with each sink in a fresh interpreter (so the peak RSS is that sink's
    alone); a crash, kill or timeout becomes a failed report. ``mount``: kernel checks for
    every sink (``True``) or for the sinks named."""
    reports = [
        _run_sink_isolated(
            name, layer, sink, mount is True or (mount is not False and sink in mount), timeout
        )
        for sink in sinks
    ]
    return CaseReport(name, ALL_CASES[name].expect.outcome, reports)


def _run_sink_isolated(
    name: str, layer: Path, sink: str, mount: bool, timeout: float
) -> SinkReport:
    with tempfile.TemporaryDirectory(prefix=f"lcow-hostile-{name}-") as scratch:
        argv = python_module(
            "tests.harness.hostile.run", "--worker", name,
            "--input", str(layer), "--scratch", scratch, "--sinks", sink,
        )  # fmt: skip
        if mount:
            argv.append("--mount")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False,
                env=child_env(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            bad = SinkReport(sink, "timeout", f"no result after {timeout} s", timeout)
            bad.problems.append("timeout")
            return bad
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("{"):
                return CaseReport.from_json(json.loads(line)).sinks[0]
        bad = SinkReport(sink, "crash", (proc.stderr.strip().splitlines() or ["?"])[-1])
        bad.seconds = time.monotonic() - started
        bad.problems.append(f"worker exit {proc.returncode}: {proc.stderr[-2000:]}")
        return bad


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.hostile.run")
    parser.add_argument("--worker", required=True, metavar="CASE")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--scratch", required=True, type=Path)
    parser.add_argument("--sinks", default=",".join(SINKS))
    parser.add_argument("--mount", action="store_true")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE, _ADDRESS_SPACE))
    report = run_case(
        ALL_CASES[args.worker],
        args.input,
        args.scratch,
        [s for s in args.sinks.split(",") if s],
        mount=args.mount,
    )
    print(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
