"""What every test of the reliability battery shares (performance-and-reliability §5): the tier,
the seed, and the one line each test prints.

The fast tier runs inside `make test`; `make reliability` sets TALLY_RELIABILITY=deep, which
runs the slow tests too and gives the fast ones more seeds and examples. A test's randomness
derives from one seed, printed on its line: `TALLY_SEED=<seed>` replays a failure.
"""

import os
import random
from typing import TypeVar

T = TypeVar("T")

DEEP = os.environ.get("TALLY_RELIABILITY") == "deep"
LINES: list[str] = []  # Shown again at the end of the run (tests/reliability/conftest.py).


def tier(fast: T, deep: T) -> T:
    """The fast tier's value, or the deep tier's under `make reliability`."""
    return deep if DEEP else fast


def seed() -> int:
    """TALLY_SEED when given (a replay), else a fresh one, printed with the figures."""
    given = os.environ.get("TALLY_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def report(
    test_id: str,
    name: str,
    *,
    seed: int | str,
    runs: int,
    failures: dict[str, int],
    **measures: object,
) -> bool:
    """Print `R<n> <name> seed=<seed> runs=<n> <figure>=<value> ... pass=<bool>` and return
    whether it passed: every figure of `failures` counts failures and must be 0; `measures`
    are printed after them (rates, counts of what was exercised)."""
    passed = all(value == 0 for value in failures.values())
    values = " ".join(f"{key}={value}" for key, value in {**failures, **measures}.items())
    line = f"{test_id} {name} seed={seed} runs={runs} {values} pass={passed}"
    print(line, flush=True)
    LINES.append(line)
    return passed
