"""The command line, run as a user runs it: as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def trio_gm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_gm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_runs_and_every_guarantee_holds() -> None:
    result = trio_gm("demo", "--seconds", "3", "--members", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every guarantee held" in result.stdout
    assert "killed" in result.stdout  # one member was killed part-way
    assert "m5" in result.stdout  # and one joined


def test_soak_for_a_few_seconds() -> None:
    result = trio_gm("soak", "--seconds", "3", "--seed", "7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("0 violations")


def test_bench_json() -> None:
    result = trio_gm("bench", "--members", "3", "--seconds", "1", "--confirms", "50", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["members"] == 3
    assert figures["delivered_to_all_per_s"] > 0
    assert len(figures["received_per_s"]) == 3
    assert set(figures["confirmed_us"]) >= {"p50", "p99"}


def test_bench_with_one_process_per_member() -> None:
    result = trio_gm("bench", "--members", "2", "--seconds", "1", "--processes", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["processes"] is True
    assert figures["delivered_to_all_per_s"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--members", "0"], "expected at least 1, got 0"),
        (["demo", "--seconds", "soon"], "expected a number of seconds, got 'soon'"),
        (["soak", "--seconds", "-1"], "expected a positive number of seconds"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (
            ["soak", "--seconds", "1", "--store", "postgresql+psycopg://postgres@127.0.0.1:1/x"],
            "cannot connect to postgresql+psycopg://postgres@127.0.0.1:1/x",
        ),
        (["soak", "--seconds", "1", "--store", "nosuchdb://x"], "nosuchdb"),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--cookie-file", "/nonexistent"],
            "cannot read the cookie file '/nonexistent'",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--cookie-file", "/dev/null"],
            "the cookie file '/dev/null' is not a regular file",
        ),
    ],
)
def test_bad_arguments_are_clear_errors_without_tracebacks(args: list[str], message: str) -> None:
    result = trio_gm(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_command_explains_itself() -> None:
    for command in ("demo", "bench", "soak", "member"):
        result = trio_gm(command, "--help")
        assert result.returncode == 0
        assert "usage: trio-gm" in result.stdout
