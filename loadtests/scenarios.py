"""The Locust load shape that plays the scenario picked with ``--scenario`` (steady, ramp, spike).

One shape class reads Locust's common options (``--users``, ``--spawn-rate``, ``--run-time``) and the
suite's own (``--scenario``, ``--warmup``, ``--step-users``...), so the locustfile holds a single shape
and plain ``locust -f loadtests/locustfile.py`` keeps its usual flags. The schedules themselves are in
:mod:`cvserve.loadtests.schedule`.

Ramp stops early once a step breaks the SLO (p95 above ``--slo-p95-ms`` or errors above
``--max-error-rate``); there is no point in loading a server further once it has failed.
"""

from __future__ import annotations

from typing import Any

from cvserve.loadtests import schedule
from cvserve.loadtests._locust import LoadTestShape
from cvserve.loadtests.collector import COLLECTOR
from cvserve.loadtests.stats import summarize

# Workers report to the master every 3 s (Locust's WORKER_REPORT_INTERVAL): wait that long, and a bit,
# before judging a ramp step from the samples the master holds.
_REPORT_LAG_S = 4.0


def plan_from_options(opts: Any) -> list[schedule.Stage]:
    """The schedule described by the parsed Locust options."""
    users = int(opts.num_users or 1)
    spawn_rate = float(opts.spawn_rate or users)
    warmup = float(getattr(opts, "warmup_s", 0.0) or 0.0)
    run_time = opts.run_time
    scenario = getattr(opts, "scenario", "steady") or "steady"
    if scenario == "ramp":
        return schedule.ramp_plan(
            max_users=users,
            step_users=getattr(opts, "step_users", None),
            step_duration_s=float(opts.step_duration_s),
            spawn_rate=spawn_rate,
            warmup_s=warmup,
        )
    duration = float(run_time) - warmup if run_time else float("inf")
    if scenario == "spike":
        return schedule.spike_plan(
            users=users,
            spike_users=int(getattr(opts, "spike_users", None) or 4 * users),
            spawn_rate=spawn_rate,
            warmup_s=warmup,
            duration_s=duration,
            spike_duration_s=float(opts.spike_duration_s),
        )
    return schedule.steady_plan(users=users, spawn_rate=spawn_rate, warmup_s=warmup, duration_s=duration)


class ScenarioShape(LoadTestShape):
    """Plays :func:`plan_from_options`; ``tick`` returns ``(users, spawn rate)`` or ``None`` to stop."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._plan: list[schedule.Stage] | None = None
        self._judged: set[str] = set()

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        if self._plan is None:
            self._plan = plan_from_options(opts)
            COLLECTOR.meta["plan"] = [s.__dict__ for s in self._plan]
        t = self.get_run_time()
        if getattr(opts, "scenario", "steady") == "ramp" and self._ramp_broke(opts, t):
            return None
        stage = schedule.stage_at(self._plan, t)
        return None if stage is None else (stage.users, stage.spawn_rate)

    def _ramp_broke(self, opts: Any, t: float) -> bool:
        slo = getattr(opts, "slo_p95_ms", None)
        if not slo:
            return False
        lag = _REPORT_LAG_S if COLLECTOR.role == "master" else 0.0
        start = COLLECTOR.meta.get("test_start")
        if start is None:
            return False
        for stage in self._plan or []:
            if not stage.label.startswith("step") or stage.label in self._judged or stage.end_s + lag > t:
                continue
            self._judged.add(stage.label)
            lo, hi = schedule.step_window(stage, float(getattr(opts, "warmup_s", 0.0) or 0.0))
            s = summarize(COLLECTOR.window(start + lo, start + hi), hi - lo)
            if s.count == 0 or s.p95_ms > slo or s.error_rate > float(opts.max_error_rate):
                COLLECTOR.meta["stopped_after"] = stage.label
                return True
        return False
