"""The accuracy gate: a reduced-precision network against its FP32 reference on held-out images.

Two rules (issue 12), chosen by whether the held-out images come with ground truth:

* **With labels** (``--validation-labels``) the gate is top-1 *accuracy*: the candidate must keep at
  least ``1 - max_accuracy_drop`` of FP32's accuracy (default 0.99 of it, the MLPerf Inference rule).
  The absolute drop in percentage points is reported beside it.
* **Without labels** the gate is top-1 *agreement where FP32 is sure*: on the held-out images whose
  FP32 top-1 probability is at least ``confidence`` (default 0.5), the candidate's top-1 must equal
  FP32's on at least ``1 - max_accuracy_drop`` of them; and the mean top-5 overlap over *all* images
  must be at least ``min_top5_overlap``. On images where FP32 itself is unsure, the top classes are
  near-ties that any perturbation of the input flips (docs/benchmarks.md); agreement there is reported
  (overall, and by bands of FP32's confidence) but does not decide.

So ``--max-accuracy-drop D`` always means: the gated top-1 metric may fall at most the fraction ``D``
below what FP32 itself scores on it (FP32's own accuracy with labels; 1.0, a perfect copy, for
agreement). ``D = 0.01`` allows INT8 90.0 % accuracy for FP32's 90.9 %, or 1 changed answer in 100
confident images.

The agreement rule refuses to pass when fewer than ``min_confident_images`` confident images remain,
by default ``ceil(1 / D)`` (100 for ``D = 0.01``, and for ``D = 0``): with fewer, one changed answer is already more than
the allowed drop, so the measured agreement moves in steps coarser than the threshold it is compared
with, and a pass (0 changes in n images) bounds the true rate of changed answers only to about 3/n
(rule of three, 95 % confidence), far above ``D``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvserve.errors import UserInputError
from cvserve.settings import check, setting

CONFIDENCE_BANDS = ((0.8, 1.0), (0.5, 0.8), (0.0, 0.5))  # FP32 top-1 probability, [low, high)


@dataclass(frozen=True, kw_only=True)
class GateSettings:
    """Thresholds of the gate (see the module docstring for their exact meaning); ``cvserve build``'s
    accuracy-gate flags are derived from these fields."""

    max_accuracy_drop: float = setting(
        0.01,
        at_least=0,
        at_most=0.99,
        help="the gate: with labels, INT8 keeps >= (1 - D) of FP32's top-1 accuracy; without, top-1 "
        "agreement >= 1 - D on the images FP32 is confident about (docs/quantization.md)",
    )
    confidence: float = setting(
        0.5,
        at_least=0,
        at_most=0.99,
        help="FP32 top-1 probability from which a held-out image counts as confident",
    )
    # Mean share of FP32's top-5 found in the candidate's top-5, over all held-out images. Catches a
    # broken network (wrong ranges: below 0.5) while the order of the near-zero classes around rank 5,
    # which INT8 weights alone reshuffle (0.88 on MobileNetV2, docs/benchmarks.md), does not decide.
    min_top5_overlap: float = setting(
        0.8,
        at_least=0,
        at_most=1,
        help="the gate's floor on top-5 overlap with FP32 over all held-out images",
    )
    min_confident_images: int = setting(0, cli=False)  # 0: ceil(1 / max_accuracy_drop)

    def __post_init__(self) -> None:
        check(self)  # the ranges above, naming the flag
        if self.min_confident_images < 0:
            raise UserInputError(f"min_confident_images must be >= 0, got {self.min_confident_images}")

    @property
    def needed_confident_images(self) -> int:
        """How many confident images the agreement rule needs (see the module docstring)."""
        if self.min_confident_images:
            return self.min_confident_images
        return math.ceil(1 / self.max_accuracy_drop - 1e-9) if self.max_accuracy_drop > 0 else 100

    def as_dict(self) -> dict:
        return {**asdict(self), "min_confident_images": self.needed_confident_images}


@dataclass(frozen=True, kw_only=True)
class AccuracyResult:
    """Metrics of a candidate against FP32 on the same held-out images."""

    held_out_images: int
    top1_agreement: float  # share of images whose top-1 equals FP32's
    top5_overlap: float  # mean share of FP32's top-5 found in the candidate's top-5
    confidence: float  # the FP32 top-1 probability threshold of the next two fields
    confident_images: int
    confident_top1_agreement: float | None
    top1_accuracy: float | None = None
    top1_accuracy_reference: float | None = None
    by_reference_confidence: tuple[dict, ...] = ()

    def as_dict(self) -> dict:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["by_reference_confidence"] = [dict(b) for b in self.by_reference_confidence]
        if self.top1_accuracy is not None and self.top1_accuracy_reference is not None:
            out["top1_accuracy_drop_points"] = round(
                100 * (self.top1_accuracy_reference - self.top1_accuracy), 4
            )
        return out

    def step_entry(self) -> dict:
        """What one step of the fallback records of these metrics."""
        return {
            "top1_agreement": round(self.top1_agreement, 6),
            "confident_top1_agreement": self.confident_top1_agreement,
            "top5_overlap": round(self.top5_overlap, 6),
            "top1_accuracy": self.top1_accuracy,
        }

    def summary(self) -> str:
        text = (
            f"top-1 agreement {self.top1_agreement:.4f} overall, {_num(self.confident_top1_agreement)} on "
            f"the {self.confident_images} images with FP32 p >= {self.confidence:g}; top-5 overlap "
            f"{self.top5_overlap:.4f}"
        )
        if self.top1_accuracy is not None:
            text += f"; top-1 accuracy {self.top1_accuracy:.4f} (FP32 {self.top1_accuracy_reference:.4f})"
        return f"{text}; {self.held_out_images} held-out images"


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """The gate's verdict: ``decision`` is passed, failed or refused (too few confident images)."""

    decision: str
    metric: str  # the metric that decided (the first that missed, else the primary one)
    value: float | None
    threshold: float
    images: int  # images the deciding metric was measured on
    held_out_images: int
    rule: str  # "labelled accuracy" or "agreement where FP32 is confident"
    checks: tuple[dict, ...]
    thresholds: dict

    @property
    def passed(self) -> bool:
        return self.decision == "passed"

    def message(self) -> str:
        """One line: the decision, the metric, its value, the threshold and the number of images."""
        if self.decision == "refused":
            return (
                f"accuracy gate refused: only {self.images} of the {self.held_out_images} held-out images "
                f"have an FP32 top-1 probability >= {self.thresholds['confidence']:g}; the gate needs at "
                f"least {int(self.threshold)} (with fewer, one changed answer exceeds the allowed drop "
                f"{self.thresholds['max_accuracy_drop']:g}): add held-out images like the ones served, "
                "give --validation-labels, or lower the confidence threshold"
            )
        cmp = ">=" if self.passed else "<"
        return (
            f"accuracy gate {self.decision}: {self.metric} {_num(self.value)} {cmp} {_num(self.threshold)} "
            f"on {self.images} held-out images ({self.rule})"
        )

    def as_dict(self) -> dict:
        out = asdict(self)
        out["checks"] = [dict(c) for c in self.checks]
        return out


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits per row, best first."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def probabilities(outputs: np.ndarray) -> np.ndarray:
    """Softmax of ``outputs``, unless its rows already are probabilities (non-negative, summing to 1)."""
    outputs = outputs.astype(np.float64)
    if (outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return outputs
    z = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    confidence: float = GateSettings.confidence,
) -> AccuracyResult:
    """Metrics of ``candidate`` logits against ``reference`` logits (and ``labels``, if given)."""
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"logits shapes differ or are not 2-D: {reference.shape} vs {candidate.shape}")
    ref5, cand5 = topk(reference, 5), topk(candidate, 5)
    k = ref5.shape[1]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref5, cand5, strict=True)])
    acc = acc_ref = None
    if labels is not None:
        labels = np.asarray(labels)
        acc = float(np.mean(cand5[:, 0] == labels))
        acc_ref = float(np.mean(ref5[:, 0] == labels))
    same = ref5[:, 0] == cand5[:, 0]
    p_ref = probabilities(reference).max(axis=1)
    sure = p_ref >= confidence
    return AccuracyResult(
        held_out_images=len(reference),
        top1_agreement=float(np.mean(same)),
        top5_overlap=float(overlap),
        confidence=confidence,
        confident_images=int(sure.sum()),
        confident_top1_agreement=float(same[sure].mean()) if sure.any() else None,
        top1_accuracy=acc,
        top1_accuracy_reference=acc_ref,
        by_reference_confidence=_bands(p_ref, same),
    )


def _bands(confidence: np.ndarray, same: np.ndarray) -> tuple[dict, ...]:
    out = []
    for low, high in CONFIDENCE_BANDS:
        inside = (confidence >= low) & ((confidence < high) | (high >= 1.0))
        n = int(inside.sum())
        out.append(
            {
                "band": f"{low:.1f}-{high:.1f}",
                "images": n,
                "top1_agreement": round(float(same[inside].mean()), 6) if n else None,
                "top1_changes": int((~same[inside]).sum()),
            }
        )
    return tuple(out)


_SLACK = 1e-9  # float rounding: 99/100 agreement must pass a 0.99 threshold


def gate(result: AccuracyResult, settings: GateSettings) -> GateResult:
    """Decide on ``result``: labelled accuracy if it has labels, else confident agreement + top-5."""
    thresholds = settings.as_dict()
    if result.top1_accuracy is not None and result.top1_accuracy_reference is not None:
        ref, got = result.top1_accuracy_reference, result.top1_accuracy
        ratio = got / ref if ref > 0 else 1.0
        need = 1.0 - settings.max_accuracy_drop
        check = {
            "metric": "top1_accuracy_ratio",
            "value": round(ratio, 6),
            "threshold": round(need, 6),
            "images": result.held_out_images,
            "passed": ratio >= need - _SLACK,
        }
        return _verdict("labelled accuracy", (check,), result, thresholds)
    rule = f"agreement where FP32 is confident, p >= {settings.confidence:g}"
    needed = settings.needed_confident_images
    if result.confident_images < needed:
        return GateResult(
            decision="refused",
            metric="confident_images",
            value=float(result.confident_images),
            threshold=float(needed),
            images=result.confident_images,
            held_out_images=result.held_out_images,
            rule=rule,
            checks=(),
            thresholds=thresholds,
        )
    agree = result.confident_top1_agreement or 0.0
    checks = (
        {
            "metric": "confident_top1_agreement",
            "value": round(agree, 6),
            "threshold": round(1.0 - settings.max_accuracy_drop, 6),
            "images": result.confident_images,
            "passed": agree >= 1.0 - settings.max_accuracy_drop - _SLACK,
        },
        {
            "metric": "top5_overlap",
            "value": round(result.top5_overlap, 6),
            "threshold": settings.min_top5_overlap,
            "images": result.held_out_images,
            "passed": result.top5_overlap >= settings.min_top5_overlap - _SLACK,
        },
    )
    return _verdict(rule, checks, result, thresholds)


def _verdict(rule: str, checks: tuple[dict, ...], result: AccuracyResult, thresholds: dict) -> GateResult:
    return verdict(rule, checks, result.held_out_images, thresholds)


class TopOne:
    """The classifier's accuracy metric and gate (the module docstring), as the quantize stage asks a
    task's metric: ``truth`` of the held-out set, ``compare`` of two networks' outputs, ``gate``."""

    name = "top-1"

    def truth(self, path: Path | None, images, class_names: list[str] | None, spec) -> np.ndarray | None:
        return None if path is None else read_labels(path, list(images.names), class_names)

    def compare(self, reference, candidate, truth, settings: GateSettings) -> AccuracyResult:
        return compare(reference, candidate, truth, confidence=settings.confidence)

    def gate(self, result: AccuracyResult, settings: GateSettings) -> GateResult:
        return gate(result, settings)


def verdict(rule: str, checks: tuple[dict, ...], held_out_images: int, thresholds: dict) -> GateResult:
    """A gate's verdict from its checks: failed by the first check that missed, else passed."""
    failed = [c for c in checks if not c["passed"]]
    decider = failed[0] if failed else checks[0]
    return GateResult(
        decision="failed" if failed else "passed",
        metric=decider["metric"],
        value=decider["value"],
        threshold=decider["threshold"],
        images=decider["images"],
        held_out_images=held_out_images,
        rule=rule,
        checks=checks,
        thresholds=thresholds,
    )


def read_labels(path: Path, names: list[str], class_names: list[str] | None = None) -> np.ndarray:
    """Ground truth for the held-out images ``names`` (paths relative to the --validation folder).

    Each line of ``path`` is ``IMAGE<sep>LABEL`` (separator: tab, comma or whitespace), LABEL being a
    class index or, when ``class_names`` are known, a class name. Lines starting with ``#`` are skipped.
    """
    truth: dict[str, int] = {}
    index = {n: i for i, n in enumerate(class_names or [])}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for sep in ("\t", ",", None):
            parts = line.split(sep, 1)
            if len(parts) == 2:
                break
        else:
            raise UserInputError(f"{path}:{lineno}: expected 'IMAGE LABEL', got {line!r}")
        image, label = parts[0].strip(), parts[1].strip()
        if label.lstrip("-").isdigit():
            truth[image] = int(label)
        elif label in index:
            truth[image] = index[label]
        else:
            raise UserInputError(
                f"{path}:{lineno}: label {label!r} is neither a class index nor a class name"
            )
    missing = [n for n in names if n not in truth]
    if missing:
        raise UserInputError(
            f"--validation-labels {path} has no label for {len(missing)} held-out image(s), e.g. {missing[0]}"
        )
    return np.asarray([truth[n] for n in names], dtype=np.int64)
