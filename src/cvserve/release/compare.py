"""Classify the golden set with both versions and compare them, overall and per slice.

Definitions (docs/release.md):

* accuracy: the share of the slice's cases whose top-1 class is the golden label.
* regression: a case the baseline classifies correctly and the candidate does not.
* regression rate: regressions / all cases of the slice (the "negative flip rate"); the share of the
  golden cases that a user of the slice would see get worse.
* improvement: a case the baseline gets wrong and the candidate right; the improvement rate likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvserve.errors import CvserveError
from cvserve.release.gates import Gate, gate
from cvserve.release.golden import GoldenCase, GoldenSet

if TYPE_CHECKING:
    from cvserve.release.settings import ReleaseSettings

ALL = "all"  # the slice of every case
_BATCH = 32  # images per classify call: bounded memory for large golden sets


@dataclass(frozen=True, slots=True)
class Prediction:
    """A version's top-1 answer for one image."""

    label: str
    index: int
    score: float


def classify_all(
    url: str, model: str, version: int, cases: Sequence[GoldenCase], *, timeout_s: float = 60.0
) -> list[Prediction]:
    """The top-1 prediction of ``model`` (version ``version``) for each case, over gRPC.

    Raises:
        CvserveError: the server failed to classify an image (the client's message, naming the model).
    """
    from cvserve.client import Client, ClientError

    out: list[Prediction] = []
    try:
        with Client(url, model=model, timeout=timeout_s) as client:
            for start in range(0, len(cases), _BATCH):
                chunk = cases[start : start + _BATCH]
                results = client.classify(
                    [c.file for c in chunk], model=model, model_version=str(version), top_k=1
                )
                out += [Prediction(r[0].label, r[0].index, r[0].score) for r in results]
    except ClientError as exc:
        raise CvserveError(
            f"classifying the golden set with {model} (version {version}) failed: {exc}"
        ) from None
    return out


@dataclass(frozen=True, kw_only=True)
class CaseResult:
    """One golden case as each version classified it."""

    case: GoldenCase
    expected: str
    baseline: Prediction
    candidate: Prediction

    @property
    def baseline_correct(self) -> bool:
        return self.baseline.label == self.expected

    @property
    def candidate_correct(self) -> bool:
        return self.candidate.label == self.expected

    @property
    def kind(self) -> str | None:
        """``regression``, ``improvement``, ``changed`` (both wrong, differently) or ``None``."""
        if self.baseline_correct and not self.candidate_correct:
            return "regression"
        if self.candidate_correct and not self.baseline_correct:
            return "improvement"
        if self.baseline.label != self.candidate.label:
            return "changed"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.case.path,
            "expected": self.expected,
            "slices": self.case.slices,
            "kind": self.kind,
            "baseline": {"label": self.baseline.label, "score": round(self.baseline.score, 6)},
            "candidate": {"label": self.candidate.label, "score": round(self.candidate.score, 6)},
        }


@dataclass(frozen=True, kw_only=True)
class SliceResult:
    """The comparison on one slice (``all``, or ``column=value``)."""

    slice: str
    cases: int
    baseline_correct: int
    candidate_correct: int
    regressions: int
    improvements: int

    @property
    def baseline_accuracy(self) -> float:
        return self.baseline_correct / self.cases

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_correct / self.cases

    @property
    def accuracy_change_points(self) -> float:
        """Candidate minus baseline accuracy, in percentage points (negative: a drop)."""
        return 100.0 * (self.candidate_correct - self.baseline_correct) / self.cases

    @property
    def regression_rate(self) -> float:
        return self.regressions / self.cases

    @property
    def improvement_rate(self) -> float:
        return self.improvements / self.cases

    def as_dict(self) -> dict[str, Any]:
        return {
            "slice": self.slice,
            "cases": self.cases,
            "baseline_correct": self.baseline_correct,
            "candidate_correct": self.candidate_correct,
            "baseline_accuracy": round(self.baseline_accuracy, 6),
            "candidate_accuracy": round(self.candidate_accuracy, 6),
            "accuracy_change_points": round(self.accuracy_change_points, 4),
            "regressions": self.regressions,
            "regression_rate": round(self.regression_rate, 6),
            "improvements": self.improvements,
            "improvement_rate": round(self.improvement_rate, 6),
        }


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Per case and per slice (``all`` first, then each slice column's values in order of appearance)."""

    cases: tuple[CaseResult, ...]
    slices: tuple[SliceResult, ...]

    @property
    def overall(self) -> SliceResult:
        return self.slices[0]

    @property
    def changed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.kind is not None]

    def gates(self, s: ReleaseSettings) -> list[Gate]:
        """``regression_rate[SLICE]`` for every slice, then the overall ``accuracy_drop_points``."""
        gates = [
            gate(
                f"regression_rate[{sl.slice}]",
                sl.regression_rate,
                s.max_regression_rate,
                "fraction",
                f"{sl.regressions} of {sl.cases} golden cases",
            )
            for sl in self.slices
        ]
        overall = self.overall
        gates.append(
            gate(
                "accuracy_drop_points",
                100.0 * (overall.baseline_correct - overall.candidate_correct) / overall.cases,
                s.max_accuracy_drop_points,
                "points",
                f"{overall.baseline_accuracy:.4f} -> {overall.candidate_accuracy:.4f}",
            )
        )
        return gates


def _slice(key: str, results: Sequence[CaseResult]) -> SliceResult:
    return SliceResult(
        slice=key,
        cases=len(results),
        baseline_correct=sum(r.baseline_correct for r in results),
        candidate_correct=sum(r.candidate_correct for r in results),
        regressions=sum(r.kind == "regression" for r in results),
        improvements=sum(r.kind == "improvement" for r in results),
    )


def compare(golden: GoldenSet, baseline: Sequence[Prediction], candidate: Sequence[Prediction]) -> Comparison:
    """Compare the two versions' predictions on ``golden`` (same order as its cases)."""
    results = tuple(
        CaseResult(case=case, expected=golden.expected(case), baseline=b, candidate=c)
        for case, b, c in zip(golden.cases, baseline, candidate, strict=True)
    )
    slices = [_slice(ALL, results)]
    for column in golden.slice_columns:
        values = list(dict.fromkeys(r.case.slices[column] for r in results))
        for value in values:
            subset = [r for r in results if r.case.slices[column] == value]
            slices.append(_slice(f"{column}={value or '(blank)'}", subset))
    return Comparison(cases=results, slices=tuple(slices))
