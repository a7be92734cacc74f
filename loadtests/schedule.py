"""Load schedules of the scenarios (steady, ramp, spike) as plain data, shared by the Locust shape and
the report; no Locust import, so the report side and the unit tests can use them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cvserve.errors import UserInputError

SCENARIOS = ("steady", "ramp", "spike")


@dataclass(frozen=True)
class Stage:
    """``users`` running from ``start_s`` to ``end_s`` (seconds since the test started)."""

    label: str
    start_s: float
    end_s: float
    users: int
    spawn_rate: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def steady_plan(*, users: int, spawn_rate: float, warmup_s: float, duration_s: float) -> list[Stage]:
    """Fixed users: a warm-up stage, then the measured window."""
    return [
        Stage("warmup", 0.0, warmup_s, users, spawn_rate),
        Stage("steady", warmup_s, warmup_s + duration_s, users, spawn_rate),
    ]


def default_step_users(max_users: int) -> int:
    """Five steps up to ``max_users`` unless told otherwise."""
    return max(1, math.ceil(max_users / 5))


def ramp_plan(
    *, max_users: int, step_users: int | None, step_duration_s: float, spawn_rate: float, warmup_s: float
) -> list[Stage]:
    """Steps of ``step_users`` more users, each held ``step_duration_s``, up to ``max_users``.

    A warm-up at the first step's load comes first; each step's own first seconds (while users spawn)
    are excluded when it is measured (see :func:`step_window`).
    """
    step = step_users or default_step_users(max_users)
    levels = list(range(step, max_users + 1, step))
    if not levels or levels[-1] != max_users:
        levels.append(max_users)
    stages = [Stage("warmup", 0.0, warmup_s, levels[0], spawn_rate)] if warmup_s > 0 else []
    t = warmup_s
    for i, users in enumerate(levels, 1):
        stages.append(Stage(f"step{i}", t, t + step_duration_s, users, spawn_rate))
        t += step_duration_s
    return stages


def spike_plan(
    *,
    users: int,
    spike_users: int,
    spawn_rate: float,
    warmup_s: float,
    duration_s: float,
    spike_duration_s: float,
) -> list[Stage]:
    """Baseline ``users``; a third into the window, a jump to ``spike_users`` for ``spike_duration_s``
    (spawned at once); then back to the baseline for the rest."""
    if spike_duration_s >= duration_s:
        raise UserInputError(
            f"--spike-duration ({spike_duration_s:g} s) must be shorter than --duration ({duration_s:g} s)"
        )
    start = warmup_s + (duration_s - spike_duration_s) / 3
    end = start + spike_duration_s
    burst = float(max(spike_users, spawn_rate))  # a spike arrives at once, not at the ramp-up rate
    return [
        Stage("warmup", 0.0, warmup_s, users, spawn_rate),
        Stage("before", warmup_s, start, users, spawn_rate),
        Stage("spike", start, end, spike_users, burst),
        Stage("after", end, warmup_s + duration_s, users, burst),
    ]


def step_window(stage: Stage, settle_s: float) -> tuple[float, float]:
    """The part of a stage that is measured: its first ``settle_s`` (at most a third) left out."""
    return stage.start_s + min(settle_s, stage.duration_s / 3), stage.end_s


def stage_at(plan: list[Stage], t: float) -> Stage | None:
    """The stage running at ``t`` seconds, or ``None`` once the plan is over."""
    for stage in plan:
        if stage.start_s <= t < stage.end_s:
            return stage
    return None


def total_s(plan: list[Stage]) -> float:
    return plan[-1].end_s if plan else 0.0
