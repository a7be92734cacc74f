"""Load schedules of the scenarios and the statistics of a window (no server, no Locust)."""

from __future__ import annotations

import pytest

from cvserve.errors import UserInputError
from cvserve.loadtests import schedule
from cvserve.loadtests.stats import summarize, timeline, window


def test_steady_plan_is_warmup_then_window():
    plan = schedule.steady_plan(users=8, spawn_rate=8.0, warmup_s=5.0, duration_s=30.0)
    assert [(s.label, s.start_s, s.end_s, s.users) for s in plan] == [
        ("warmup", 0.0, 5.0, 8),
        ("steady", 5.0, 35.0, 8),
    ]
    assert schedule.stage_at(plan, 4.9).label == "warmup"
    assert schedule.stage_at(plan, 34.9).label == "steady"
    assert schedule.stage_at(plan, 35.0) is None
    assert schedule.total_s(plan) == 35.0


def test_ramp_steps_up_to_max_users_including_a_partial_last_step():
    plan = schedule.ramp_plan(max_users=10, step_users=4, step_duration_s=10.0, spawn_rate=4.0, warmup_s=2.0)
    assert [(s.label, s.users) for s in plan] == [("warmup", 4), ("step1", 4), ("step2", 8), ("step3", 10)]
    assert plan[1].start_s == 2.0 and plan[-1].end_s == 32.0
    assert schedule.default_step_users(10) == 2
    assert [
        s.users
        for s in schedule.ramp_plan(max_users=3, step_users=None, step_duration_s=5, spawn_rate=1, warmup_s=0)
    ] == [1, 2, 3]


def test_spike_jumps_at_once_and_comes_back():
    plan = schedule.spike_plan(
        users=2, spike_users=8, spawn_rate=1.0, warmup_s=3.0, duration_s=30.0, spike_duration_s=6.0
    )
    labels = {s.label: s for s in plan}
    assert list(labels) == ["warmup", "before", "spike", "after"]
    assert labels["spike"].users == 8 and labels["spike"].spawn_rate >= 8  # the spike arrives at once
    assert (
        labels["before"].start_s == 3.0 and labels["spike"].start_s == 11.0 and labels["after"].end_s == 33.0
    )
    with pytest.raises(UserInputError, match="--spike-duration"):
        schedule.spike_plan(
            users=1, spike_users=2, spawn_rate=1, warmup_s=0, duration_s=5, spike_duration_s=5
        )


def test_step_window_leaves_out_the_settling_seconds_at_most_a_third():
    stage = schedule.Stage("step1", 10.0, 19.0, 4, 4.0)
    assert schedule.step_window(stage, 2.0) == (12.0, 19.0)
    assert schedule.step_window(stage, 60.0) == (13.0, 19.0)


def _samples(t0: float, latencies: list[float], ok: list[int] | None = None, per: int = 1):
    ok = ok or [1] * len(latencies)
    return [(t0 + i * 0.01, ms, k, per) for i, (ms, k) in enumerate(zip(latencies, ok, strict=True))]


def test_summary_percentiles_are_over_successes_and_errors_are_counted():
    lat = [float(i) for i in range(1, 101)]  # 1..100 ms
    ok = [1] * 98 + [0, 0]
    s = summarize(_samples(0.0, lat, ok, per=2), window_s=10.0)
    assert s.count == 100 and s.failures == 2 and s.error_rate == 0.02
    assert s.p50_ms == pytest.approx(49.5) and s.p95_ms == pytest.approx(93.15) and s.max_ms == 98.0
    assert s.throughput_rps == pytest.approx(9.8) and s.inferences_per_s == pytest.approx(19.6)


def test_summary_of_nothing_and_of_only_failures():
    assert summarize([], 5.0).count == 0 and summarize([], 5.0).p95_ms is None
    s = summarize(_samples(0.0, [1.0, 2.0], [0, 0]), 1.0)
    assert s.p95_ms is None and s.error_rate == 1.0 and s.throughput_rps == 0


def test_window_and_timeline_bucket_by_end_time():
    samples = [(100.2, 10.0, 1, 1), (100.7, 30.0, 1, 1), (101.5, 20.0, 0, 1), (103.1, 5.0, 1, 4)]
    assert len(window(samples, 100.0, 101.0)) == 2
    rows = timeline(samples, t0=100.0)
    assert [r["t_s"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["requests"] == 2 and rows[1]["failures"] == 1 and rows[2]["requests"] == 0
    assert rows[3]["inferences_per_s"] == 4
