"""The reader mutation fuzz in CI: a short campaign, and the replay of its findings.

``tools/reader_fuzz.py`` runs the long campaign (RELIABILITY.md §6); here 150 mutants of the
seed images (fixed random seed) go through every reader, each case in a forked child with the
campaign's budgets (20 s per reader, 1 GiB peak RSS): no reader may crash, hang or overrun. The
findings of the campaign are kept as byte patches of the (deterministic) seed images in
``readerfuzz_regressions/``, each replayed through every reader.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.readerfuzz.campaign import Fuzzer, summarise
from tests.readerfuzz.mutate import Mutant
from tests.readerfuzz.seeds import SEEDS

CASES = 150
RANDOM_SEED = 20261206
REGRESSIONS = Path(__file__).parent / "readerfuzz_regressions"


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Fuzzer:
    return Fuzzer(tmp_path_factory.mktemp("readerfuzz"), timeout=20.0, rss_budget_mib=1024)


def test_seeds_read_cleanly_everywhere(fuzzer: Fuzzer) -> None:
    """The unmutated seeds pass every reader with a result, not an error."""
    for name in SEEDS:
        result = fuzzer.run(0, Mutant(name))
        assert {o for o, _, _ in result.outcomes.values()} == {"ok"}, result.outcomes


def test_short_campaign_finds_nothing(fuzzer: Fuzzer) -> None:
    rng = random.Random(RANDOM_SEED)
    results = [fuzzer.run(n, fuzzer.draw(rng)) for n in range(CASES)]
    summary = summarise(results, fuzzer.readers)
    findings = summary["findings"]
    failures = [(f["case"], f["reader"], f["outcome"], f["detail"][-800:]) for f in findings]
    assert not failures, failures
    errors = sum(n for r in summary["per_reader"].values() for o, n in r.items() if o != "ok")
    assert errors > CASES, "the mutants should break most readers some of the time"


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.json")), ids=lambda p: p.stem)
def test_finding_replays_cleanly(path: Path, fuzzer: Fuzzer) -> None:
    saved = json.loads(path.read_text())
    result = fuzzer.run(0, Mutant.from_json(saved["mutant"]))
    assert not result.failures, result.failures
    assert result.outcomes[saved["reader"]][0] == saved["expect"], result.outcomes
