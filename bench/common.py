"""What the benchmark scripts share: the machine's description and latency percentiles."""

import platform
import statistics
from collections.abc import Sequence
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50, p99, max and mean of latencies (nearest rank), and how many; zeros for none."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "samples": 0}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": at(0.50),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "samples": len(ordered),
    }
