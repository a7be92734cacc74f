"""Task-accuracy gate: a quantized network against its FP32 reference on held-out images.

Metrics on the same held-out batch:

* ``top1_agreement``: fraction of images whose top-1 class is the FP32 model's top-1 class;
* ``top5_overlap``: mean fraction of the FP32 top-5 classes found in the candidate's top-5;
* ``top1_accuracy`` and ``top1_accuracy_reference``: top-1 against ground truth, when labels are given;
* ``by_reference_confidence``: top-1 agreement within bands of the FP32 model's top-1 probability.
  Not gated; it tells a real accuracy loss from flips between near-tied classes on images the FP32
  model is itself unsure about, which any small perturbation of the input also flips.

Each metric's drop is measured from what an exact copy of the reference would score (1.0 for the
agreement metrics, the reference's accuracy for accuracy). The gate allows ``max_drop`` for top-1
agreement and top-1 accuracy, and ``TOP5_FACTOR * max_drop`` for top-5 overlap: the order of the
low-probability classes near rank 5 is noise-sensitive (on a 10-class model it is nearly arbitrary),
and one swap there already costs 0.2 of an image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvserve.errors import UserInputError

TOP5_FACTOR = 5.0
CONFIDENCE_BANDS = ((0.8, 1.0), (0.5, 0.8), (0.0, 0.5))  # FP32 top-1 probability, [low, high)


@dataclass(frozen=True, kw_only=True)
class AccuracyResult:
    held_out_images: int
    top1_agreement: float
    top5_overlap: float
    top1_accuracy: float | None = None
    top1_accuracy_reference: float | None = None
    by_reference_confidence: tuple[dict, ...] = ()

    def as_dict(self) -> dict:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["by_reference_confidence"] = [dict(b) for b in self.by_reference_confidence]
        return out

    def low_confidence_changes(self) -> tuple[int, int]:
        """(top-1 changes on images where FP32's top-1 probability is below 0.5, all top-1 changes)."""
        changes = {b["band"]: b["top1_changes"] for b in self.by_reference_confidence}
        low = sum(n for band, n in changes.items() if band.endswith("-0.5"))
        return low, sum(changes.values())

    def drops(self) -> dict[str, float]:
        """Metric -> how far the candidate is below an exact copy of the reference."""
        out = {"top1_agreement": 1.0 - self.top1_agreement, "top5_overlap": 1.0 - self.top5_overlap}
        if self.top1_accuracy is not None and self.top1_accuracy_reference is not None:
            out["top1_accuracy"] = self.top1_accuracy_reference - self.top1_accuracy
        return out


@dataclass(frozen=True, kw_only=True)
class GateResult:
    passed: bool
    misses: dict[str, float]  # metric -> amount by which its drop exceeds the allowance

    allowed: dict[str, float]  # metric -> largest drop allowed

    def message(self, result: AccuracyResult) -> str:
        if self.passed:
            return "accuracy gate passed"
        drops = result.drops()
        parts = [
            f"{m} dropped {drops[m]:.4f} (allowed {self.allowed[m]:.4f}, missed by {miss:.4f})"
            for m, miss in self.misses.items()
        ]
        text = f"accuracy gate failed on {result.held_out_images} held-out images: " + "; ".join(parts)
        low, changes = result.low_confidence_changes()
        if "top1_agreement" in self.misses and changes:
            text += (
                f" ({low} of the {changes} top-1 changes are on images where FP32's own top-1 "
                "probability is below 0.5)"
            )
        return text


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits per row, best first."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> AccuracyResult:
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
    return AccuracyResult(
        held_out_images=len(reference),
        top1_agreement=float(np.mean(same)),
        top5_overlap=float(overlap),
        top1_accuracy=acc,
        top1_accuracy_reference=acc_ref,
        by_reference_confidence=_bands(probabilities(reference).max(axis=1), same),
    )


def probabilities(outputs: np.ndarray) -> np.ndarray:
    """Softmax of ``outputs``, unless its rows already are probabilities (non-negative, summing to 1)."""
    outputs = outputs.astype(np.float64)
    if (outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return outputs
    z = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


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


def allowances(max_drop: float) -> dict[str, float]:
    """Metric -> the largest drop the gate allows, for ``--max-accuracy-drop max_drop``."""
    return {
        "top1_agreement": max_drop,
        "top5_overlap": min(1.0, TOP5_FACTOR * max_drop),
        "top1_accuracy": max_drop,
    }


def gate(result: AccuracyResult, max_drop: float) -> GateResult:
    """Pass when no metric drops by more than it is allowed (1e-9 slack for float rounding)."""
    if max_drop < 0:
        raise UserInputError(f"--max-accuracy-drop must be >= 0, got {max_drop}")
    allowed = allowances(max_drop)
    misses = {m: d - allowed[m] for m, d in result.drops().items() if d > allowed[m] + 1e-9}
    return GateResult(passed=not misses, misses=misses, allowed=allowed)


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
