"""The search: noise-aware coordinate descent over the serving knobs, within a time budget.

1. The starting configuration is measured at its best load (:func:`~cvserve.tune.measure.operating_point`)
   and then repeated (``repeats`` runs) to estimate run-to-run noise: the relative spread of throughput.
2. Coordinate descent: for each knob in turn, the candidates one step down and one step up are measured
   with one run per load level. A candidate that looks better than the incumbent by more than the noise
   margin (``max(min_gain, 2 x spread)``) is *confirmed*: repeated at its best load, and it replaces the
   incumbent only if the median of its repeats still wins. After a win the search keeps stepping the same
   way along that knob (a line search). Passes over all knobs repeat until one changes nothing.
3. Every run is checked against the clock first; the search stops when the budget cannot fit another.

Better means: meets the SLO when the other does not; otherwise more inferences per second (less cost per
1k, the machine's price being fixed), or, when neither meets the SLO, a lower p95. Ties within the noise
keep the incumbent, so the starting configuration is only replaced by a real improvement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cvserve.errors import TritonError
from cvserve.loadtests.cost import cost_per_1k
from cvserve.reporting import num
from cvserve.tune.candidates import Candidate, SearchSpace
from cvserve.tune.measure import Measure, Measurement, operating_point, relative_spread, summarise
from cvserve.tune.settings import SearchSettings


class Applier(Protocol):
    """Makes a candidate live on the server (raises :class:`TritonError` if Triton refuses it)."""

    def apply(self, candidate: Candidate) -> None: ...


@dataclass(kw_only=True)
class Trial:
    """One candidate tried: its best load, the summary there, and every run made for it."""

    index: int
    candidate: Candidate
    phase: str  # start | explore | failed
    dimension: str | None = None
    summary: Measurement | None = None
    feasible: bool = False
    confirmed: bool = False
    runs: list[Measurement] = field(default_factory=list)
    repeats: list[Measurement] = field(default_factory=list)  # runs at the best load, first included
    apply_s: float = 0.0
    at_s: float = 0.0
    error: str | None = None

    def cost_per_1k(self, price_per_hour: float) -> float | None:
        """$ per 1k inferences on one server at this trial's throughput; ``None`` when nothing was served."""
        if self.summary is None:
            return None
        return cost_per_1k(price_per_hour, 1, self.summary.inferences_per_s)


@dataclass(kw_only=True)
class SearchResult:
    start: Trial
    best: Trial
    trials: list[Trial]
    noise: float
    margin: float
    stopped_by: str  # converged | budget
    elapsed_s: float


def better(a: Trial, b: Trial, margin: float) -> bool:
    """Whether ``a`` beats ``b`` by more than ``margin`` (relative)."""
    if a.summary is None:
        return False
    if b.summary is None or (a.feasible and not b.feasible):
        return a.feasible or b.summary is None
    if b.feasible and not a.feasible:
        return False
    if a.feasible:
        return a.summary.inferences_per_s > b.summary.inferences_per_s * (1 + margin)
    return a.summary.p95_ms < b.summary.p95_ms * (1 - margin)


class Tuner:
    """Runs the search; see the module docstring."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        applier: Applier,
        measure: Measure,
        settings: SearchSettings,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = print,
    ) -> None:
        self.space, self.applier, self.measure, self.s = space, applier, measure, settings
        self.clock, self.log = clock, log
        self.trials: list[Trial] = []
        self._cache: dict[Candidate, Trial] = {}
        self._run_walls: list[float] = []
        self._apply_walls: list[float] = []
        self._reserving = False

    # -- budget --------------------------------------------------------------------------------
    def _run_estimate(self) -> float:
        w = self._run_walls
        return max(w[-5:]) if w else self.s.run_estimate_s

    def _fits(self, runs: int, apply: bool = False, *, reserve: bool = True) -> bool:
        """Whether ``runs`` load runs (and an apply) fit in the budget. Exploration keeps a reserve for
        re-measuring the start at the winner's load (:meth:`_recheck_start`): a winner that cannot be
        checked is not credited, so the check must never be the thing the budget runs out on."""
        apply_s = max(self._apply_walls[-3:], default=5.0)
        need = runs * self._run_estimate() + (apply_s if apply else 0.0)
        if reserve and self._reserving:
            need += self.s.repeats * self._run_estimate() + apply_s
        return self.clock() + need <= self._deadline

    def _measure(self, candidate: Candidate, users: int) -> Measurement:
        t = self.clock()
        m = self.measure(candidate, users)
        self._run_walls.append(m.wall_s or (self.clock() - t))
        return m

    # -- one candidate -------------------------------------------------------------------------
    def _evaluate(self, c: Candidate, phase: str, dimension: str | None, users: int) -> Trial:
        trial = Trial(
            index=len(self.trials), candidate=c, phase=phase, dimension=dimension, at_s=self._elapsed()
        )
        self.trials.append(trial)
        self._cache[c] = trial
        t = self.clock()
        try:
            self.applier.apply(c)
        except TritonError as exc:
            trial.phase, trial.error = "failed", str(exc)
            self.log(f"  #{trial.index} {c.label()}: Triton refused it: {exc}")
            return trial
        finally:
            trial.apply_s = self.clock() - t
            self._apply_walls.append(trial.apply_s)
        op = operating_point(
            self._measure,
            c,
            slo_p95_ms=self.s.slo_p95_ms,
            max_error_rate=self.s.max_error_rate,
            start_users=users,
            max_users=self.s.max_users,
            may_continue=lambda: self._fits(1),
        )
        trial.runs, trial.summary, trial.feasible = op.points, op.best, op.feasible
        self._log_trial(trial)
        return trial

    def _confirm(self, trial: Trial) -> None:
        """Repeat ``trial`` at its best load until it has ``repeats`` runs there; summarise by median."""
        assert trial.summary is not None
        self.applier.apply(trial.candidate)  # a no-op when it is still live
        runs = [trial.summary]
        while len(runs) < self.s.repeats and self._fits(1):
            runs.append(self._measure(trial.candidate, trial.summary.users))
        trial.repeats = runs
        trial.summary = summarise(runs)
        trial.feasible = trial.summary.meets(self.s.slo_p95_ms, self.s.max_error_rate)
        trial.confirmed = True
        self._log_trial(trial, confirmed=True)

    def _log_trial(self, t: Trial, confirmed: bool = False) -> None:
        m = t.summary
        if m is None:
            return
        tag = f"confirmed x{len(t.repeats)}" if confirmed else t.phase
        self.log(
            f"  #{t.index} {t.candidate.label()}: {num(m.inferences_per_s)} inf/s, p95 {num(m.p95_ms)} ms "
            f"@ {m.users} users, {'meets' if t.feasible else 'misses'} SLO, "
            f"${num(t.cost_per_1k(self.s.price_per_hour))}/1k [{tag}]"
        )

    def _elapsed(self) -> float:
        return self.clock() - self._started

    # -- the search ----------------------------------------------------------------------------
    def run(self, start: Candidate) -> SearchResult:
        """Search from ``start`` (the live configuration) and return the best trial found."""
        self._started = self.clock()
        self._deadline = self._started + self.s.budget_s
        self.log(f"starting configuration: {start.label()}")
        base = self._evaluate(start, "start", None, self.s.start_users)
        if base.summary is None:
            raise TritonError(f"the starting configuration could not be applied: {base.error}")
        self._confirm(base)
        noise = relative_spread(base.repeats)
        margin = max(self.s.min_gain, 2 * noise)
        self.log(
            f"noise: throughput spread {num(noise * 100)}% over repeats; a win needs > {num(margin * 100)}%"
        )
        best, stopped_by = base, "converged"
        self._reserving = True  # from here on, keep time to re-check the start (see _fits)
        changed = True
        while changed and stopped_by == "converged":
            changed = False
            for dim in self.space.dimensions:
                best, moved, out_of_time = self._line_search(best, dim, margin)
                changed |= moved
                if out_of_time:
                    stopped_by = "budget"
                    break
        self._reserving = False
        if best is not base:
            base, best = self._recheck_start(base, best, margin)
        self.applier.apply(best.candidate)
        return SearchResult(
            start=base,
            best=best,
            trials=self.trials,
            noise=noise,
            margin=margin,
            stopped_by=stopped_by,
            elapsed_s=self._elapsed(),
        )

    def _recheck_start(self, base: Trial, best: Trial, margin: float) -> tuple[Trial, Trial]:
        """Measure the start at the winner's load before crediting the winner. -> (start, best).

        A noisy first run can settle the start's operating point at fewer users than it can take; a
        winner found at more users would then "win" only by the load it was given. The start is
        re-measured (``repeats`` runs) at the winner's load; if it meets the SLO there, that is its
        operating point, and the winner must beat it by the noise margin or the start is kept.
        """
        users = best.summary.users if best.summary else None
        if users is None or base.summary is None or users == base.summary.users:
            return base, best
        if not self._fits(self.s.repeats, apply=True, reserve=False):
            self.log("  (no budget left to re-measure the start at the winner's load: the start is kept)")
            return base, base
        self.applier.apply(base.candidate)
        runs = [self._measure(base.candidate, users)]
        while len(runs) < self.s.repeats and self._fits(1, reserve=False):
            runs.append(self._measure(base.candidate, users))
        summary = summarise(runs)
        recheck = Trial(
            index=len(self.trials),
            candidate=base.candidate,
            phase="start",
            summary=summary,
            runs=runs,
            repeats=runs,
            confirmed=True,
            at_s=self._elapsed(),
            feasible=summary.meets(self.s.slo_p95_ms, self.s.max_error_rate),
        )
        self.trials.append(recheck)
        self._log_trial(recheck, confirmed=True)
        if not (recheck.feasible and summary.inferences_per_s > base.summary.inferences_per_s):
            return base, best
        self.log(
            f"  start re-measured at {users} users: {num(summary.inferences_per_s)} inf/s, meets the SLO"
        )
        if better(best, recheck, margin):
            return recheck, best
        self.log("  -> the winner does not beat the start at the same load: keeping the start")
        return recheck, recheck

    def _line_search(self, best: Trial, dim: str, margin: float) -> tuple[Trial, bool, bool]:
        """Step ``dim`` down and up from ``best``; follow a confirmed win. -> (best, moved, out_of_time)."""
        moved = False
        for direction in (1, 0):  # up first: more instances/batching usually raise throughput
            while True:
                nxt = self.space.neighbours(best.candidate, dim)[direction]
                if nxt is None:
                    break
                trial = self._cache.get(nxt)
                if trial is None:
                    if not self._fits(2, apply=True):
                        return best, moved, True
                    users = best.summary.users if best.summary else self.s.start_users
                    trial = self._evaluate(nxt, "explore", dim, users)
                if not better(trial, best, margin):
                    break
                if not trial.confirmed:
                    if not self._fits(self.s.repeats - 1):
                        return best, moved, True
                    self._confirm(trial)
                if not better(trial, best, margin):
                    break
                self.log(f"  -> new best: {trial.candidate.label()}")
                best, moved = trial, True
            if moved:
                break
        return best, moved, False
