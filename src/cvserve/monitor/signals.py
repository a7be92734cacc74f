"""What the served model sees and answers, as counts: every metric name and bucket edge, in one place.

Per image answered: its top-1 class (in one of at most :data:`CLASS_BUCKETS` contiguous buckets of class
indices), its top-1 confidence (in bins of :data:`CONFIDENCE_EDGES`), its input statistics (width,
height and aspect of the image as sent, mean brightness and contrast of the crop the network sees, each
bucketed by :data:`INPUT_EDGES`) and the feature summary (the served graph's ``FEATURES``, a fixed random
projection of the pooled penultimate features) as running sums. Per request refused: the reason
(:class:`cvserve.builders.preprocessing.Rejection`).

Everything is a count or a sum, so Prometheus' ``increase()`` over any window gives the window's
distribution, mean and variance (docs/monitoring.md). The same code counts what the served model
sees (``model_repository/classifier.py``), the build's reference on held-out images
(:mod:`cvserve.monitor.reference`) and the offline calibration (:mod:`cvserve.monitor.calibrate`).

This file is copied next to the served model as ``cvserve_signals.py``: numpy and the standard
library only, and the wire contract (``cvserve_contract.py`` beside it, :mod:`cvserve.client.contract` here).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

try:  # beside the served model (Triton's python backend): the copy the build made
    import cvserve_contract as contract
except ImportError:
    from cvserve.client import contract

# -- metric names (Triton's metrics port; labels model, version and the ones named) -------------------
IMAGES = "cvserve_images_total"  # images answered
CLASSES = "cvserve_top1_class_total"  # {bucket}: top-1 class bucket
CONFIDENCE = "cvserve_top1_confidence_bin_total"  # {bin}: top-1 confidence bin
CONFIDENCE_SUM = "cvserve_top1_confidence_sum_total"  # sum of top-1 confidences (mean = sum / images)
INPUTS = "cvserve_input_total"  # {stat, bucket}: input statistics
REJECTIONS = "cvserve_rejections_total"  # {reason}: requests refused before the network
FEATURE_SUM = (
    "cvserve_feature_sum_total"  # {dim, sign}: sum of the positive parts / of minus the negative parts
)
FEATURE_SQUARES = "cvserve_feature_squares_total"  # {dim}: sum of squares
# Counters only go up: a signed sum is kept as two counters, sign="pos" (sum of max(x, 0)) and
# sign="neg" (sum of max(-x, 0)), so that rate() and increase() are valid on both.
SIGNS = ("pos", "neg")

# -- buckets ----------------------------------------------------------------------------------------
CLASS_BUCKETS = 32  # contiguous ranges of class indices (every class its own bucket below 32 classes)
CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LOW_CONFIDENCE = 0.5  # "share below": a bin edge, so the share is a sum of bins
INPUT_EDGES: dict[str, tuple[float, ...]] = {
    "width": (64, 128, 224, 320, 480, 640, 1024, 2048),
    "height": (64, 128, 224, 320, 480, 640, 1024, 2048),
    "aspect": (0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0),  # width / height
    "brightness": (32, 64, 80, 96, 112, 128, 144, 160, 192),  # mean luma of the crop, 0-255
    "contrast": (16, 32, 40, 48, 56, 64, 72, 88),  # standard deviation of the crop's luma
}
INPUT_STATS = tuple(INPUT_EDGES)
REJECTION_REASONS = ("empty", "bytes", "format", "pixels", "corrupt", "no_images")
FLUSH_S = 5.0  # the served model adds its counts to Triton's metrics at most this often
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_STRIDE = 4  # brightness and contrast from every fourth pixel of each axis: a sixteenth of the work


def class_buckets(num_classes: int) -> int:
    """How many class buckets a model with ``num_classes`` classes is counted in."""
    return max(1, min(CLASS_BUCKETS, num_classes))


def class_bucket_labels(num_classes: int) -> list[str]:
    """Bucket label -> the class indices it holds, as ``"first-last"`` (e.g. ``"0-31"``)."""
    n = class_buckets(num_classes)
    labels = []
    for b in range(n):
        first = -(-b * num_classes // n)  # ceil: the first index whose bucket is b
        last = -(-(b + 1) * num_classes // n) - 1
        labels.append(f"{first}-{last}")
    return labels


def bin_labels(edges: Sequence[float]) -> list[str]:
    """A label per bin of ``edges``: its lower edge (``"0"`` for the first), as Prometheus ``le`` reads."""
    return ["0", *(f"{e:g}" for e in edges)]


def signal_bins() -> dict[str, list[str]]:
    """Signal name -> its bin labels, for every bucketed signal except the classes (size per model)."""
    return {"confidence": bin_labels(CONFIDENCE_EDGES), **{s: bin_labels(e) for s, e in INPUT_EDGES.items()}}


def _bins(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    return [bisect.bisect_right(edges, float(v)) for v in values]


def brightness_contrast(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the luma of each uint8 crop ``[b, H, W, 3]`` (strided)."""
    luma = crops[:, ::_STRIDE, ::_STRIDE, :].astype(np.float32) @ _LUMA
    flat = luma.reshape(len(crops), -1)
    return flat.mean(axis=1), flat.std(axis=1)


@dataclass(kw_only=True)
class Observation:
    """Per-image signals of one batch: bin indices and the feature summary rows."""

    classes: list[int]
    confidence: list[int]
    top1: np.ndarray  # top-1 confidences
    inputs: dict[str, list[int]]
    features: np.ndarray | None  # [b, d] float32, or None when the graph has no FEATURES


def observe(
    crops: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    outputs: dict[str, np.ndarray],
    num_classes: int,
) -> Observation:
    """The signals of one batch: the crops the network saw, the sizes sent, the served graph's outputs."""
    index, score = outputs[contract.CLASS_INDEX], outputs[contract.SCORE]
    n = class_buckets(num_classes)
    top1 = np.asarray(score[:, 0], dtype=np.float64)
    brightness, contrast = brightness_contrast(crops)
    widths = [w for w, _ in sizes]
    heights = [h for _, h in sizes]
    stats = {
        "width": widths,
        "height": heights,
        "aspect": [w / h for w, h in zip(widths, heights, strict=True)],
        "brightness": brightness,
        "contrast": contrast,
    }
    features = outputs.get(contract.FEATURES)
    return Observation(
        classes=[int(c) * n // num_classes for c in index[:, 0]],
        confidence=_bins(top1, CONFIDENCE_EDGES),
        top1=top1,
        inputs={s: _bins(stats[s], INPUT_EDGES[s]) for s in INPUT_STATS},
        features=None if features is None else np.asarray(features, dtype=np.float64),
    )


@dataclass(kw_only=True)
class Counts:
    """Running counts of the signals (what the served model exports; what a reference stores)."""

    num_classes: int
    feature_dims: int
    images: int = 0
    classes: np.ndarray = field(default=None)  # type: ignore[assignment]
    confidence: np.ndarray = field(default=None)  # type: ignore[assignment]
    confidence_sum: float = 0.0
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    feature_pos: np.ndarray = field(default=None)  # type: ignore[assignment]
    feature_neg: np.ndarray = field(default=None)  # type: ignore[assignment]
    feature_squares: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.classes is None:
            self.classes = np.zeros(class_buckets(self.num_classes))
        if self.confidence is None:
            self.confidence = np.zeros(len(CONFIDENCE_EDGES) + 1)
        for stat, edges in INPUT_EDGES.items():
            self.inputs.setdefault(stat, np.zeros(len(edges) + 1))
        for name in ("feature_pos", "feature_neg", "feature_squares"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.feature_dims))

    def add(self, obs: Observation) -> None:
        """Count one batch."""
        self.images += len(obs.classes)
        np.add.at(self.classes, obs.classes, 1)
        np.add.at(self.confidence, obs.confidence, 1)
        self.confidence_sum += float(obs.top1.sum())
        for stat, bins in obs.inputs.items():
            np.add.at(self.inputs[stat], bins, 1)
        if obs.features is not None and self.feature_dims:
            f = obs.features[:, : self.feature_dims]
            self.feature_pos += np.maximum(f, 0).sum(axis=0)
            self.feature_neg += np.maximum(-f, 0).sum(axis=0)
            self.feature_squares += (f * f).sum(axis=0)

    def since(self, earlier: Counts) -> Counts:
        """What was counted after ``earlier`` (a snapshot of the same running counts): a window."""
        out = Counts(
            num_classes=self.num_classes, feature_dims=self.feature_dims, images=self.images - earlier.images
        )
        out.classes, out.confidence = self.classes - earlier.classes, self.confidence - earlier.confidence
        out.confidence_sum = self.confidence_sum - earlier.confidence_sum
        out.inputs = {s: self.inputs[s] - earlier.inputs[s] for s in self.inputs}
        out.rejections = {r: n - earlier.rejections.get(r, 0) for r, n in self.rejections.items()}
        out.feature_pos = self.feature_pos - earlier.feature_pos
        out.feature_neg = self.feature_neg - earlier.feature_neg
        out.feature_squares = self.feature_squares - earlier.feature_squares
        return out

    def reject(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def histograms(self) -> dict[str, np.ndarray]:
        """Signal name -> its counts per bin: ``classes``, ``confidence`` and every input statistic."""
        return {"classes": self.classes, "confidence": self.confidence, **self.inputs}

    def feature_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of each feature-summary dimension over the images counted."""
        n = max(self.images, 1)
        mean = (self.feature_pos - self.feature_neg) / n
        return mean, np.maximum(self.feature_squares / n - mean * mean, 0.0)

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.images if self.images else float("nan")

    @property
    def low_confidence_share(self) -> float:
        """Share of images whose top-1 confidence is below :data:`LOW_CONFIDENCE`."""
        below = bisect.bisect_right(CONFIDENCE_EDGES, LOW_CONFIDENCE)
        return float(self.confidence[:below].sum() / self.images) if self.images else float("nan")


_DESCRIPTIONS = {
    IMAGES: "images answered",
    CLASSES: "images answered by top-1 class bucket (a range of class indices)",
    CONFIDENCE: "images answered by top-1 confidence bin (lower edge)",
    CONFIDENCE_SUM: "sum of the top-1 confidences of the images answered",
    INPUTS: "images answered by input statistic bucket (lower edge)",
    REJECTIONS: "requests refused before the network, by reason",
    FEATURE_SUM: "sum of the feature summary's positive (sign=pos) or negated negative (sign=neg) parts",
    FEATURE_SQUARES: "sum of squares of the feature summary",
}


def series(counts: Counts) -> list[tuple[str, dict[str, str], float]]:
    """Every exported series of ``counts``: (metric name, labels beyond model and version, value)."""
    out: list[tuple[str, dict[str, str], float]] = [
        (IMAGES, {}, float(counts.images)),
        (CONFIDENCE_SUM, {}, counts.confidence_sum),
    ]
    for label, value in zip(class_bucket_labels(counts.num_classes), counts.classes, strict=True):
        out.append((CLASSES, {"bucket": label}, float(value)))
    for label, value in zip(bin_labels(CONFIDENCE_EDGES), counts.confidence, strict=True):
        out.append((CONFIDENCE, {"bin": label}, float(value)))
    for stat, edges in INPUT_EDGES.items():
        for label, value in zip(bin_labels(edges), counts.inputs[stat], strict=True):
            out.append((INPUTS, {"stat": stat, "bucket": label}, float(value)))
    for reason in REJECTION_REASONS:
        out.append((REJECTIONS, {"reason": reason}, float(counts.rejections.get(reason, 0))))
    for d in range(counts.feature_dims):
        out.append((FEATURE_SUM, {"dim": str(d), "sign": "pos"}, float(counts.feature_pos[d])))
        out.append((FEATURE_SUM, {"dim": str(d), "sign": "neg"}, float(counts.feature_neg[d])))
        out.append((FEATURE_SQUARES, {"dim": str(d)}, float(counts.feature_squares[d])))
    return out


class SignalExport:
    """Adds what ``counts`` gained since the last :meth:`flush` to counters of a metrics API.

    ``api.family(name, description, counter)`` returns a family whose ``Metric(labels=...)`` has
    ``increment(value)``: Triton's custom metrics in the served model, a fake in tests. Every series
    exists from the start (at 0), so ``increase()`` over a window sees its first images; the families
    and metrics are kept here, since a family that is garbage-collected takes its metrics with it.
    """

    def __init__(self, api, model: str, version: str, counts: Counts) -> None:
        self.counts = counts
        base = {"model": model, "version": version}
        self.families = {name: api.family(name, text, True) for name, text in _DESCRIPTIONS.items()}
        self.metrics = []
        self.sent: list[float] = []
        for name, labels, _ in series(counts):
            self.metrics.append(self.families[name].Metric(labels={**base, **labels}))
            self.sent.append(0.0)
        self.flush()

    def flush(self) -> None:
        """Increment every series by what it gained since the last flush."""
        for i, (_, _, value) in enumerate(series(self.counts)):
            if value > self.sent[i]:
                self.metrics[i].increment(value - self.sent[i])
                self.sent[i] = value
