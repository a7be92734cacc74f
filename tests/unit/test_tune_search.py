"""The tuner's search logic with a deterministic measurement (no server): operating point, noise, budget."""

from __future__ import annotations

import dataclasses

import pytest

from cvserve.errors import TritonError
from cvserve.tune.candidates import Candidate, build_space
from cvserve.tune.measure import Measurement, operating_point, relative_spread, summarise
from cvserve.tune.search import Trial, Tuner, better
from cvserve.tune.settings import SearchSettings

START = Candidate(  # the single layout as cvserve build writes it, with a 2 ms queue delay
    max_batch_size=32,
    preferred_batch_sizes=(),
    max_queue_delay_us=2000,
    network_instances=1,
    network_threads=0,
    decode_threads=0,
    max_queue_size=64,
    queue_timeout_us=500_000,
)
CORES = 4


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Model:
    """A closed-loop queue: throughput = min(users / latency, capacity); p95 grows past saturation.

    Capacity peaks at 2 network instances and a 1 ms queue delay, so the optimum is known. A queue
    timeout shorter than the latency rejects half the requests (admission control at work).
    """

    def __init__(self, clock: Clock, run_s: float = 10.0, noise: float = 0.0) -> None:
        self.clock, self.run_s, self.noise, self.calls = clock, run_s, noise, 0

    def capacity(self, c: Candidate) -> float:
        net = {1: 100.0, 2: 150.0, 3: 140.0, 4: 120.0}[c.network_instances]
        delay = max(0.2, 1.0 - abs(c.max_queue_delay_us - 1000) / 10000)
        return net * delay

    def __call__(self, c: Candidate, users: int) -> Measurement:
        self.clock.t += self.run_s
        self.calls += 1
        wiggle = 1 + self.noise * (1 if self.calls % 2 else -1)
        base_ms = 10.0 + c.max_queue_delay_us / 1000
        tput = min(users * 1000 / base_ms, self.capacity(c)) * wiggle
        p95 = max(base_ms * 1.3, 1.3 * users * 1000 / self.capacity(c))
        rejected = c.queue_timeout_us and c.queue_timeout_us / 1000 < p95
        return Measurement(
            users=users,
            p50_ms=p95 / 1.3,
            p95_ms=p95,
            p99_ms=p95 * 1.2,
            throughput_rps=tput,
            inferences_per_s=tput,
            error_rate=0.5 if rejected else 0.0,
        )


class Applier:
    def __init__(self, clock: Clock, refuse: set[Candidate] | None = None) -> None:
        self.clock, self.applied, self.refuse = clock, [], refuse or set()
        self.live = START

    def apply(self, c: Candidate) -> None:
        if c in self.refuse:
            raise TritonError("Triton refused it")
        if c != self.live:
            self.clock.t += 3.0
            self.applied.append(c)
            self.live = c


def tuner(budget_s=900.0, noise=0.0, refuse=None, slo=100.0, max_instances=4, start=START):
    clock = Clock()
    space = build_space(start, batch_bound=32, max_instances=max_instances, slo_p95_ms=slo, cores=CORES)
    applier = Applier(clock, refuse)
    t = Tuner(
        space,
        applier=applier,
        measure=Model(clock, noise=noise),
        settings=SearchSettings(slo_p95_ms=slo, price_per_hour=3.6, budget_s=budget_s, repeats=3),
        clock=clock,
        log=lambda _m: None,
    )
    return t, applier, clock


def test_operating_point_is_the_most_throughput_within_the_slo():
    clock = Clock()
    op = operating_point(
        Model(clock), START, slo_p95_ms=40.0, max_error_rate=0.0, start_users=1, max_users=64
    )
    assert op.feasible and op.best.p95_ms <= 40.0
    # One more users step would break the SLO or add nothing.
    assert all(p.p95_ms > 40.0 or p.inferences_per_s <= op.best.inferences_per_s for p in op.points)
    assert op.best.users > 1


def test_operating_point_walks_down_when_the_start_misses_the_slo():
    op = operating_point(
        Model(Clock()), START, slo_p95_ms=20.0, max_error_rate=0.0, start_users=32, max_users=64
    )
    assert op.feasible and op.best.users < 32
    assert op.points[0].users == 32


def test_search_finds_the_known_optimum_and_beats_the_start():
    t, applier, _ = tuner()
    result = t.run(START)
    assert result.best.candidate.network_instances == 2
    assert result.best.candidate.max_queue_delay_us == 1000
    assert result.best.feasible and result.best.confirmed
    assert result.best.summary.inferences_per_s > result.start.summary.inferences_per_s * 1.3
    assert result.best.cost_per_1k(3.6) < result.start.cost_per_1k(3.6)
    assert result.stopped_by == "converged"
    assert applier.live == result.best.candidate


def test_search_stays_within_the_budget():
    t, _, clock = tuner(budget_s=150.0)
    result = t.run(START)
    assert result.stopped_by == "budget"
    assert clock.t <= 150.0 + 13.0  # at most the one run that is always allowed for the baseline


def test_never_proposes_a_batch_the_profile_cannot_run():
    clock = Clock()
    space = build_space(
        START.with_value("max_batch_size", 8), batch_bound=8, max_instances=2, slo_p95_ms=100, cores=CORES
    )
    applier = Applier(clock)
    t = Tuner(
        space,
        applier=applier,
        measure=Model(clock),
        settings=SearchSettings(slo_p95_ms=100, price_per_hour=1.0, budget_s=3000),
        clock=clock,
        log=lambda _m: None,
    )
    t.run(START.with_value("max_batch_size", 8))
    tried = [tr.candidate for tr in t.trials]
    assert len(tried) > 3
    assert all(
        c.max_batch_size <= 8 and all(p <= c.max_batch_size for p in c.preferred_batch_sizes) for c in tried
    )


def test_noise_does_not_move_the_incumbent():
    # Every candidate with one network instance has the same true capacity; +-2% noise must not win.
    t, _, _ = tuner(noise=0.02, max_instances=1)
    result = t.run(START.with_value("max_queue_delay_us", 1000))
    assert result.best.candidate == START.with_value("max_queue_delay_us", 1000)
    assert result.margin >= 0.03


def test_a_queue_timeout_that_rejects_at_the_operating_load_is_loosened():
    tight = START.with_value("queue_timeout_us", 10_000)  # 10 ms: under the latency at any load
    t, _, _ = tuner(start=tight, max_instances=1)
    result = t.run(tight)
    assert not result.start.feasible and result.start.summary.error_rate > 0
    assert result.best.feasible and result.best.candidate.queue_timeout_us >= 25_000


def test_every_candidate_keeps_the_thread_budget():
    t, _, _ = tuner()
    result = t.run(START)
    explored = [trial for trial in t.trials if trial.phase == "explore"]
    # The search tried several ways to split the cores, and found the model's best one (2 instances).
    assert {trial.candidate.network_instances for trial in explored} >= {2, 3}
    assert result.best.candidate.network_instances == 2
    for trial in t.trials:
        c = trial.candidate
        assert c.network_instances * t.space.threads(c) <= CORES


def test_a_refused_candidate_is_recorded_and_the_search_goes_on():
    refused = START.with_value("network_instances", 2)
    t, _, _ = tuner(refuse={refused})
    result = t.run(START)
    failed = [tr for tr in result.trials if tr.phase == "failed"]
    assert [tr.candidate for tr in failed] == [refused] and failed[0].error
    assert result.best.candidate != refused


def test_better_prefers_meeting_the_slo_then_throughput():
    def trial(tput, p95, ok):
        m = Measurement(
            users=1, p50_ms=p95, p95_ms=p95, p99_ms=p95, throughput_rps=tput, inferences_per_s=tput
        )
        return Trial(index=0, candidate=START, phase="explore", summary=m, feasible=ok)

    assert better(trial(10, 50, True), trial(100, 500, False), 0.03)
    assert not better(trial(102, 50, True), trial(100, 50, True), 0.03)
    assert better(trial(110, 50, True), trial(100, 50, True), 0.03)
    assert better(trial(1, 200, False), trial(1, 300, False), 0.03)


def test_summarise_takes_medians_and_spread_measures_noise():
    runs = [
        Measurement(users=4, p50_ms=1, p95_ms=p, p99_ms=1, throughput_rps=t, inferences_per_s=t)
        for p, t in ((10, 100), (30, 90), (20, 110))
    ]
    s = summarise(runs)
    assert (s.p95_ms, s.inferences_per_s) == (20, 100)
    assert relative_spread(runs) == pytest.approx(0.1)


class UnluckyStart(Model):
    """Every candidate has the same capacity; the start's very first run is unluckily slow (p95 over the
    SLO at 2 users), so its operating point settles at 1 user while other candidates reach 2."""

    def capacity(self, c: Candidate) -> float:
        return 200.0

    def __call__(self, c: Candidate, users: int) -> Measurement:
        m = super().__call__(c, users)
        if self.calls <= 2 and c == START and users >= 2:
            return dataclasses.replace(m, p95_ms=1000.0)  # one noisy run
        return m


def unlucky_run(budget_s: float):
    """A search from a start whose first run was unluckily slow (:class:`UnluckyStart`). -> (result, clock)"""
    clock = Clock()
    space = build_space(START, batch_bound=32, max_instances=2, slo_p95_ms=30.0, cores=CORES)
    t = Tuner(
        space,
        applier=Applier(clock),
        measure=UnluckyStart(clock),
        settings=SearchSettings(
            slo_p95_ms=30.0, price_per_hour=3.6, budget_s=budget_s, repeats=3, start_users=2
        ),
        clock=clock,
        log=lambda _m: None,
    )
    return t.run(START), clock


def test_a_winner_only_credited_with_more_load_is_checked_against_the_start_at_that_load():
    result, _ = unlucky_run(900.0)
    # Nothing is really better than the start: the re-measured start at the same load keeps it.
    assert result.best.candidate == START
    assert result.start.summary.users == result.best.summary.users


@pytest.mark.parametrize("budget_s", [150.0, 250.0, 400.0, 900.0])
def test_a_winner_at_another_load_is_never_credited_unchecked(budget_s):
    """Whatever the budget, exploration leaves time to re-measure the start at the winner's load, or
    the start is kept: a change the tuner writes was compared at the same number of users."""
    result, clock = unlucky_run(budget_s)
    assert result.best.candidate == START or result.start.summary.users == result.best.summary.users
    assert clock() <= budget_s + 1e-6
