"""Members in separate processes over TCP, beside the same N in one process.

Run: ``pytest benchmarks/bench_net.py --benchmark-enable``. Each case runs
``trio-gm bench`` (a 3 s flood, every member broadcasting, then 200 idle
confirmed broadcasts) and records its figures in ``extra_info``:
``delivered_to_all_per_s`` and ``confirmed_us``. The in-process case in the
same group is the baseline for the ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

SECONDS = "3"


def _bench(*extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "trio_gm.cli", "bench", "--seconds", SECONDS, "--confirms",
         "200", "--json", *extra],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("where", ["one process", "processes"])
def test_bench_members_over_tcp(benchmark: Any, n: int, where: str) -> None:
    benchmark.group = f"N={n}: processes over TCP vs one process"
    extra = ["--members", str(n)] + (["--processes"] if where == "processes" else [])
    figures: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: figures.append(_bench(*extra)), rounds=1)
    benchmark.extra_info["delivered_to_all_per_s"] = figures[0]["delivered_to_all_per_s"]
    benchmark.extra_info["confirmed_us"] = figures[0]["confirmed_us"]
