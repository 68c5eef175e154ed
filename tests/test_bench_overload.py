"""bench/overload.py's pure parts (#21): capacity, Retry-After, the window's arithmetic and the report. No
server: the load itself is checked by running the script."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ov():
    spec = importlib.util.spec_from_file_location("bench_overload", ROOT / "bench" / "overload.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_overload"] = module
    spec.loader.exec_module(module)
    return module


def test_one_x_is_the_queue_s_worth_plus_the_one_being_scored(ov):
    assert ov.clients_at_1x(3000, 1000) == 4  # the report's 4 clients; 8x = 32
    assert ov.clients_at_1x(10_000, 1000) == 11
    assert ov.clients_at_1x(500, 1000) == 2  # a queue smaller than one request still holds one


def test_retry_after_is_delta_seconds_only(ov):
    assert ov.retry_after_seconds("3") == 3.0
    assert ov.retry_after_seconds(" 0.5 ") == 0.5
    assert ov.retry_after_seconds(None) is None
    assert ov.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert ov.retry_after_seconds("-1") is None


def test_backoff_honours_retry_after_plus_a_little_jitter(ov):
    rng = random.Random(1)
    waits = [ov.backoff(2.0, 0.1, rng) for _ in range(200)]
    assert all(2.0 <= w <= 2.0 + 0.05 + 0.2 for w in waits)
    assert all(1.0 <= ov.backoff(None, 0.1, rng) <= 1.15 for _ in range(50))  # absent: 1 s
    assert ov.backoff(0.0, 0.0, rng) >= ov.MIN_WAIT  # never a hot loop


def test_window_share(ov):
    assert ov.window_share(2.0, 4.0, 0.0, 10.0) == 1.0
    assert ov.window_share(8.0, 12.0, 0.0, 10.0) == 0.5
    assert ov.window_share(-3.0, 1.0, 0.0, 10.0) == 0.25
    assert ov.window_share(11.0, 12.0, 0.0, 10.0) == 0.0
    assert ov.window_share(5.0, 5.0, 0.0, 10.0) == 1.0


def _level(ov):
    A = ov.Attempt
    attempts = [
        A(0, 0, 0.0, 0.0, 4.0, 200),  # half inside the window [2, 12]: 50 pairs
        A(0, 1, 4.0, 4.0, 6.0, 200),  # inside: 100 pairs, latency 2000 ms
        A(1, 2, 1.0, 1.0, 1.01, 429, 3.0),  # a refusal in the ramp (counted for the level only)
        A(1, 2, 1.0, 4.0, 8.0, 200),  # after its 429: latency 4000 ms, end to end 7000 ms
        A(2, 3, 5.0, 5.0, 5.02, 429, 5.0),
        A(2, 3, 5.0, 10.0, 10.03, 503, None),  # no Retry-After
        A(3, 0, 6.0, 6.0, 6.5, 0, None, "ConnectError: refused"),
        A(0, 2, 6.0, 6.0, 14.0, 200),  # answered during the drain: 6/8 of it inside
    ]
    waiting = [(6.0, 0), (5.0, 2), (9.0, 0)]  # first sent, refusals: outstanding when the window closed
    return ov.Level(1, 4, 2.0, 12.0, attempts, waiting, server_cpu_seconds=15.0)


def test_summarise_counts_the_window_and_spreads_answers_over_their_interval(ov):
    r = ov.summarise(_level(ov), docs=100)
    assert r["seconds"] == 10.0
    assert r["answered"] == 3  # completed inside the window
    assert r["served_clients"] == 2  # clients 0 and 1
    assert r["pairs"] == pytest.approx(50 + 100 + 100 + 75)
    assert r["goodput"] == pytest.approx(32.5)
    assert r["goodput_completed"] == pytest.approx(30.0)
    assert r["latency_ms"] == pytest.approx({"p50": 4000, "p95": 4000, "p99": 4000})
    assert r["end_to_end_ms"]["p50"] == pytest.approx(4000)
    assert r["end_to_end_ms"]["p99"] == pytest.approx(4000 + 3000 * 0.98)  # numpy's linear percentile
    assert (r["r429"], r["r429_level"], r["r503"], r["r503_level"]) == (1, 2, 1, 1)
    assert r["r429_ms"]["p50"] == pytest.approx(15, abs=0.01)
    assert r["retry_after_s"] == {"p0": 3.0, "p50": 4.0, "p100": 5.0}
    assert r["retry_after_missing"] == 1
    assert r["other"] == 1 and r["other_samples"] == ["ConnectError: refused"]
    assert r["server_cores"] == 1.5
    assert (r["unanswered"], r["unanswered_refused"], r["oldest_unanswered_s"]) == (3, 1, 7.0)


def test_report_compares_with_1x_and_reads_the_requirement(ov):
    base = ov.summarise(_level(ov), docs=100)
    over = {**base, "multiplier": 8, "clients": 32, "goodput": base["goodput"] * 0.5}
    rows = [base, over]
    lines = ov.table(rows)
    assert lines[0].startswith("| load | clients (with a 200) | 200s | goodput pairs/s | % of 1x |")
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    assert "| 8x | 32 (2) |" in lines[3] and "| 50% |" in lines[3]
    text = ov.verdict(rows, immediate_ms=100)
    assert "at 8x goodput is 50% of 1x (>= 80%): NOT met" in text
    assert "429 latency p95 at most 19 ms (immediate: <= 100 ms): met" in text
    assert ov.verdict(rows, immediate_ms=10).endswith("NOT met")
    assert ov.verdict([base], immediate_ms=100) == "requirement (#21): not enough levels to compare"
    assert ov.caveats(rows)[0].startswith("fewer than 10 answers inside the window")
    assert "1x (3), 8x (3)" in ov.caveats(rows)[0] and len(ov.caveats(rows)) == 1
    assert "8x (2)" in ov.caveats([{**over, "answered": 50, "cancelled": 2}])[0]
