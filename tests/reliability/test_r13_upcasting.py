"""R13, upgrade and upcasting: every committed corpus (a SQLite store written by an earlier
version for a seeded workload, tests/reliability/corpus/) is opened by this version, and
replays to the digests recorded when it was written: every aggregate's state loaded from its
events, the resource index rebuilt from scratch, every subscription invoice's audit (its
content hash, and that it matches). A changed event class must keep old events loading
(`class_version` and `upcast_v1_v2`, tests/reliability/README.md) or this test fails.

Figures: `digest_mismatches` (0), corpora and aggregates replayed. Same in both tiers.
"""

from pathlib import Path

import pytest

from tests.reliability.battery import report
from tests.reliability.corpus import DIGESTS, DIRECTORY, replay

pytestmark = pytest.mark.reliability

CORPORA = sorted(path.stem for path in DIRECTORY.glob("*.json"))


def test_every_committed_corpus_replays_to_its_recorded_digest(tmp_path: Path) -> None:
    assert CORPORA, f"no corpus in {DIRECTORY}"
    mismatched: list[str] = []
    aggregates = 0
    for name in CORPORA:
        found, record = replay(name, tmp_path)
        aggregates += record["aggregates"]
        mismatched += [
            f"{name}:{part}" for part in DIGESTS if found[part] != record["digests"][part]
        ]
    passed = report(
        "R13",
        "upcasting",
        seed="corpus",
        runs=len(CORPORA),
        failures={"digest_mismatches": len(mismatched)},
        corpora=",".join(CORPORA),
        aggregates=aggregates,
    )
    assert passed, mismatched
