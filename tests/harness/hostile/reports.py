"""What a sink did with a case (:class:`SinkReport`), a case through every sink
(:class:`CaseReport`), and the Markdown tables of many."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["CaseReport", "SinkReport", "compact_table", "markdown_table"]


@dataclass
class SinkReport:
    """What one sink did with one case.

    Attributes:
        sink: the sink's name.
        expected: what this sink had to do (``ok`` or an error class), when it differs from
            the case's own expectation; empty otherwise.
        outcome: ``ok``, the error class, ``exit N`` (command line), or ``crash``/``timeout``.
        message: the error message (first line), empty on success.
        seconds: wall time of the operation.
        rss_mib: peak RSS during the operation, MiB (the process baseline included).
        image_digest: digest of the ext4 part of the image, on success.
        entries: entries the reader walked, on success.
        problems: everything that went against the expectation (empty: the case passed).
    """

    sink: str
    outcome: str = ""
    message: str = ""
    seconds: float = 0.0
    rss_mib: float = 0.0
    image_digest: str = ""
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    expected: str = ""

    @property
    def passed(self) -> bool:
        """No problems."""
        return not self.problems


@dataclass
class CaseReport:
    """A case through every sink."""

    case: str
    expected: str
    sinks: list[SinkReport]

    @property
    def passed(self) -> bool:
        """Every sink passed, and successful sinks wrote identical images."""
        return all(s.passed for s in self.sinks) and not self.mismatch

    @property
    def mismatch(self) -> bool:
        """Two successful sinks produced different ext4 images (sinks that write no image,
        such as ``extract_archive``, have no digest)."""
        digests = {s.image_digest for s in self.sinks if s.image_digest}
        return len(digests) > 1

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict."""
        sinks = [asdict(s) for s in self.sinks]
        return {"case": self.case, "expected": self.expected, "sinks": sinks}

    @classmethod
    def from_json(cls, value: dict[str, object]) -> CaseReport:
        """The inverse of :meth:`to_json`."""
        sinks = [SinkReport(**s) for s in value["sinks"]]  # type: ignore[attr-defined]
        return cls(str(value["case"]), str(value["expected"]), sinks)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:90]


def markdown_table(reports: Sequence[CaseReport]) -> str:
    """One row per case and sink: expected, outcome, message, seconds, RSS, verdict."""
    lines = [
        "| case | sink | expected | outcome | message / check | s | peak RSS MiB | verdict |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for rep in reports:
        for s in rep.sinks:
            checked = "e2fsck clean" if s.image_digest else "checked in the view"
            note = s.message or (f"{s.entries} entries, {checked}" if s.outcome == "ok" else "")
            verdict = "pass" if s.passed else "**FAIL**: " + "; ".join(s.problems)
            lines.append(
                f"| {rep.case} | {s.sink} | {s.expected or rep.expected} | {s.outcome} | "
                f"{_cell(note)} | "
                f"{s.seconds:.2f} | {s.rss_mib:.0f} | {_cell(verdict)} |"
            )
        if rep.mismatch:
            lines.append(f"| {rep.case} | all | | | images differ between sinks | | | **FAIL** |")
    return "\n".join(lines)


def compact_table(reports: Sequence[CaseReport]) -> str:
    """One row per case: the expectation, each sink's outcome, the worst time and peak RSS."""
    sinks = list(dict.fromkeys(s.sink for r in reports for s in r.sinks))
    lines = [
        "| case | expected | " + " | ".join(sinks) + " | max s | max RSS MiB | verdict |",
        "|---|---|" + "---|" * len(sinks) + "---:|---:|---|",
    ]
    for rep in reports:
        by_sink = {s.sink: s for s in rep.sinks}
        cells = [by_sink[name].outcome if name in by_sink else "-" for name in sinks]
        slowest = max((s.seconds for s in rep.sinks), default=0.0)
        rss = max((s.rss_mib for s in rep.sinks), default=0.0)
        verdict = "pass" if rep.passed else "**FAIL**"
        lines.append(
            f"| {rep.case} | {rep.expected} | {' | '.join(cells)} | {slowest:.2f} | {rss:.0f} "
            f"| {verdict} |"
        )
    return "\n".join(lines)
