"""Measuring a candidate: the ``Measure`` protocol, the load-generator measurement, the operating point.

The search asks for one measurement at a time (a candidate at a number of concurrent users). The real
measurement runs ``cvserve.loadtests`` against the server; unit tests of the search logic pass a
deterministic function instead. :func:`operating_point` finds, for the candidate that is live, the load
that maximises throughput while p95 holds the SLO: it walks the users ladder up from the last good level
while p95 is under the SLO and throughput still grows, and down when p95 is over it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from cvserve.loadtests.settings import LoadTestSettings
from cvserve.tune.candidates import Candidate

USERS_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MIN_GAIN = 0.03  # throughput must grow by this much for one more users step to be worth it


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One load run at a fixed number of users."""

    users: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float  # requests per second
    inferences_per_s: float  # images per second (requests x images per request)
    error_rate: float = 0.0
    wall_s: float = 0.0

    def meets(self, slo_p95_ms: float, max_error_rate: float) -> bool:
        return self.p95_ms <= slo_p95_ms and self.error_rate <= max_error_rate

    def as_dict(self) -> dict:
        return asdict(self)


class Measure(Protocol):
    """Measure the live candidate ``candidate`` at ``users`` concurrent users."""

    def __call__(self, candidate: Candidate, users: int) -> Measurement: ...


@dataclass(kw_only=True)
class OperatingPoint:
    """The best load for one candidate: the max-throughput measurement within the SLO (or the least bad)."""

    best: Measurement
    feasible: bool
    points: list[Measurement] = field(default_factory=list)


def operating_point(
    measure: Measure,
    candidate: Candidate,
    *,
    slo_p95_ms: float,
    max_error_rate: float,
    start_users: int,
    max_users: int,
    may_continue: Callable[[], bool] = lambda: True,
) -> OperatingPoint:
    """Find the users level that maximises throughput with p95 within the SLO.

    Args:
        measure: the measurement function.
        candidate: the live candidate.
        slo_p95_ms: p95 SLO in milliseconds.
        max_error_rate: a run with more errors than this does not meet the SLO.
        start_users: users to try first (the previous candidate's best level: usually close).
        max_users: the ladder's top.
        may_continue: returns False when the time budget is spent; at least one run is always made.
    """
    ladder = [u for u in USERS_LADDER if u <= max_users] or [1]
    i = min(range(len(ladder)), key=lambda k: abs(ladder[k] - start_users))
    points: list[Measurement] = []
    seen: dict[int, Measurement] = {}

    def at(k: int) -> Measurement:
        if ladder[k] not in seen:
            seen[ladder[k]] = m = measure(candidate, ladder[k])
            points.append(m)
        return seen[ladder[k]]

    m = at(i)
    if m.meets(slo_p95_ms, max_error_rate):
        best = m
        while i + 1 < len(ladder) and may_continue():
            nxt = at(i + 1)
            if not nxt.meets(slo_p95_ms, max_error_rate):
                break
            grew = nxt.inferences_per_s > best.inferences_per_s * (1 + MIN_GAIN)
            if nxt.inferences_per_s > best.inferences_per_s:
                best = nxt
            if not grew:
                break
            i += 1
    else:
        while i > 0 and may_continue():
            i -= 1
            if at(i).meets(slo_p95_ms, max_error_rate):
                break
        good = [p for p in points if p.meets(slo_p95_ms, max_error_rate)]
        best = max(good, key=lambda p: p.inferences_per_s) if good else min(points, key=lambda p: p.p95_ms)
    return OperatingPoint(best=best, feasible=best.meets(slo_p95_ms, max_error_rate), points=points)


def summarise(runs: list[Measurement]) -> Measurement:
    """The median of repeated runs at the same users level, field by field."""
    if len(runs) == 1:
        return runs[0]
    med = statistics.median
    return Measurement(
        users=runs[0].users,
        p50_ms=med(r.p50_ms for r in runs),
        p95_ms=med(r.p95_ms for r in runs),
        p99_ms=med(r.p99_ms for r in runs),
        throughput_rps=med(r.throughput_rps for r in runs),
        inferences_per_s=med(r.inferences_per_s for r in runs),
        error_rate=max(r.error_rate for r in runs),
        wall_s=sum(r.wall_s for r in runs),
    )


def relative_spread(runs: list[Measurement]) -> float:
    """Coefficient of variation of throughput across repeated runs (0 for fewer than two)."""
    values = [r.inferences_per_s for r in runs]
    if len(values) < 2 or statistics.mean(values) <= 0:
        return 0.0
    return statistics.stdev(values) / statistics.mean(values)


@dataclass(kw_only=True)
class LoadtestMeasure:
    """Measure with ``cvserve.loadtests`` (Locust) against the live server: one steady run per call.

    Each run is ``template`` (what to load and how to judge it) at the asked number of users, with its
    report in ``report_dir/runNNN``.
    """

    template: LoadTestSettings
    report_dir: Path = Path("tuning")
    _runs: int = 0

    def __call__(self, candidate: Candidate, users: int) -> Measurement:
        from cvserve.loadtests.runner import run_loadtest

        self._runs += 1
        started = time.perf_counter()
        report = run_loadtest(
            dataclasses.replace(
                self.template,
                scenario="steady",
                users=users,
                spawn_rate=float(users),
                workers=0,
                report_dir=self.report_dir / f"run{self._runs:03d}",
            )
        )
        return from_report(report, users=users, wall_s=time.perf_counter() - started)


def from_report(report: dict, *, users: int, wall_s: float = 0.0) -> Measurement:
    """A :class:`Measurement` from a ``run_loadtest`` report dict."""
    rps = float(report.get("throughput_rps") or 0.0)
    return Measurement(
        users=users,
        p50_ms=float(report.get("p50_ms") or 0.0),
        p95_ms=float(report.get("p95_ms") or float("inf")),
        p99_ms=float(report.get("p99_ms") or 0.0),
        throughput_rps=rps,
        inferences_per_s=float(report.get("inferences_per_s") or rps),
        error_rate=float(report.get("error_rate") or 0.0),
        wall_s=wall_s,
    )
