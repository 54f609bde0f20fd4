"""What a crash campaign keeps: the model of a layer (:class:`LayerState`), one kill
(:class:`KillRecord`) and the whole campaign (:class:`Campaign`)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Campaign", "KillRecord", "LayerState"]


@dataclass
class LayerState:
    """What a layer holds, as last verified."""

    kind: str  # "empty", "layer.vhd", "sandbox.vhdx"
    parent: str | None
    key: list[int] | None = None  # of its disk
    manifest: str | None = None  # of a layer.vhd's content
    files: dict[str, str] = field(default_factory=dict)  # fsynced through a view: name → sha256


@dataclass
class KillRecord:
    """One kill: what ran, when it died, what recovery found."""

    number: int
    backend: str
    op: str
    variant: str
    layer: str | None
    delay_ms: float
    phase: str  # "before start", "in flight", "after done"
    outcome: str = ""
    recover_seconds: float = 0.0
    loop_wait_ms: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class Campaign:
    """The result of :func:`run_kills`."""

    seed: int
    kills: list[KillRecord] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)  # per backend/op/variant
    unkilled: int = 0  # calibration runs (checked like kills)
    seconds: float = 0.0
    load: list[float] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every finding, prefixed by its kill."""
        return [
            f"kill {k.number} ({k.backend} {k.op}/{k.variant}, {k.phase}, {k.delay_ms} ms): {p}"
            for k in self.kills
            for p in k.problems
        ]

    def table(self) -> dict[str, dict[str, Any]]:
        """Per ``backend op``: kills, phases hit and outcomes counted."""
        rows: dict[str, dict[str, Any]] = {}
        for k in self.kills:
            row = rows.setdefault(
                f"{k.backend} {k.op}",
                {"kills": 0, "phases": Counter(), "outcomes": Counter(), "problems": 0},
            )
            row["kills"] += 1
            row["phases"][k.phase] += 1
            row["outcomes"][k.outcome] += 1
            row["problems"] += len(k.problems)
        return rows

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``--out``."""
        return {
            "seed": self.seed,
            "kills": len(self.kills),
            "unkilled_runs": self.unkilled,
            "seconds": round(self.seconds, 1),
            "load": self.load,
            "durations_ms": {
                k: {
                    "finished_runs": len(v),
                    "median": round(statistics.median(v) * 1000, 2),
                    "max": round(max(v) * 1000, 2),
                }
                for k, v in self.durations.items()
            },
            "table": {
                k: {**v, "phases": dict(v["phases"]), "outcomes": dict(v["outcomes"])}
                for k, v in self.table().items()
            },
            "problems": self.problems,
            "records": [asdict(k) for k in self.kills],
        }
