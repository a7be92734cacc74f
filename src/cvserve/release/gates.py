"""The go/no-go gates: the golden set's (asked of its comparison), p95 within the SLO, errors, cost per 1k."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cvserve.release.settings import ReleaseSettings

if TYPE_CHECKING:
    from cvserve.release.formats import Comparison

_EPS = 1e-12  # a rate equal to its threshold passes, whatever the float rounding


@dataclass(frozen=True, kw_only=True)
class Gate:
    """One gate: ``value op threshold`` passes (``op`` is ``<=``, or ``>=`` for a floor).
    ``value`` is ``None`` when it could not be measured."""

    name: str
    value: float | None
    threshold: float
    unit: str
    passed: bool
    detail: str = ""
    op: str = "<="

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    name: str, value: float | None, threshold: float, unit: str, detail: str = "", *, op: str = "<="
) -> Gate:
    """A gate that passes when ``value <= threshold`` (``op="<="``) or ``value >= threshold`` (``">="``);
    a value equal to its threshold passes."""
    if value is None:
        passed = False
    elif op == "<=":
        passed = value <= threshold + _EPS
    else:
        passed = value >= threshold - _EPS
    return Gate(name=name, value=value, threshold=threshold, unit=unit, passed=passed, detail=detail, op=op)


def _cost_gate(s: ReleaseSettings, baseline: dict, candidate: dict) -> Gate:
    base, cand = baseline.get("cost_per_1k_usd"), candidate.get("cost_per_1k_usd")
    limit = 1.0 + s.max_cost_increase
    if base is not None:
        return gate("cost_per_1k", cand, base * limit, "USD", f"baseline ${base:.6g} x {limit:g}")
    # No price: at one price and replica count, cost per 1k is proportional to 1 / inferences per second.
    b_ips, c_ips = baseline.get("inferences_per_s") or 0.0, candidate.get("inferences_per_s") or 0.0
    ratio = b_ips / c_ips if b_ips > 0 and c_ips > 0 else None
    return gate(
        "cost_per_1k",
        ratio,
        limit,
        "x baseline",
        "no price given: relative cost, baseline inferences/s over candidate's",
    )


def evaluate(s: ReleaseSettings, comparison: Comparison, baseline: dict, candidate: dict) -> list[Gate]:
    """Every gate of the release, in report order.

    Args:
        s: the thresholds.
        comparison: the golden-set comparison; its task's golden-set format gives its gates.
        baseline: the baseline's load-test figures (:func:`cvserve.release.measure.summary`).
        candidate: the candidate's.
    """
    gates = list(comparison.gates(s))
    gates.append(gate("p95_ms", candidate.get("p95_ms"), s.slo_p95_ms, "ms", "candidate, steady load"))
    gates.append(gate("error_rate", candidate.get("error_rate"), s.max_error_rate, "fraction", "candidate"))
    gates.append(_cost_gate(s, baseline, candidate))
    return gates


def failed(gates: list[Gate]) -> list[str]:
    return [g.name for g in gates if not g.passed]
