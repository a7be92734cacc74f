"""Is a live window drawn from the version's reference? One test per signal, numpy and the stdlib only.

Bucketed signals (top-1 classes, confidence bins, the five input statistics): the population stability
index, PSI = sum((p - q) * ln(p / q)), with its p-value from Pearson's approximation: for small
differences PSI ~ sum((p - q)^2 / q), and n_eff * that is chi-square with (bins - 1) degrees of freedom,
where n_eff = 1 / (1/n_live + 1/n_reference) carries the reference's own sampling noise. So one
threshold (a p-value) holds for every window size and bin count, where a fixed PSI cut (0.1, 0.25) would
alarm on small windows and miss on large ones. The Jensen-Shannon distance is reported beside it.

The feature summary: a two-sample z-test on each dimension's window mean against the reference mean
(variance from the reference), Bonferroni over the dimensions. Not MMD: MMD needs the live samples,
and the served model exports only sums (cheap, and all that Prometheus can hold per window); a mean
shift of a random projection of the pooled features is what a new image source or a corruption
moves first (docs/monitoring.md has the calibration).

A window is flagged when a signal's p-value is below ``alpha`` (default :data:`DEFAULT_ALPHA`, with
the Bonferroni factor of the number of signals already in it, so the window's false-alarm rate stays
near 1 %: the offline calibration, :mod:`cvserve.monitor.calibrate`, measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from cvserve.monitor.signals import Counts

DEFAULT_ALPHA = 0.001  # per signal: 8 signals -> about 0.8 % of unshifted windows flagged
MIN_IMAGES = 50  # fewer images in a window: too few for any test; reported, never flagged
FEATURES = "features"
_SMOOTH = 0.5  # pseudo-count per bin, so an empty bin on one side has a finite log-ratio


@dataclass(frozen=True, kw_only=True)
class SignalDrift:
    """One signal's comparison: its statistic, p-value and whether it is flagged."""

    signal: str
    statistic: str  # "psi" or "max abs z"
    value: float
    js_distance: float | None
    p_value: float
    drifted: bool


@dataclass(frozen=True, kw_only=True)
class DriftReport:
    """A window against the reference."""

    images: float
    reference_images: int
    mean_confidence: float
    reference_mean_confidence: float
    low_confidence_share: float
    reference_low_confidence_share: float
    signals: tuple[SignalDrift, ...]
    alpha: float

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.signals)


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof), by the Wilson-Hilferty cube-root normal approximation."""
    if x <= 0:
        return 1.0
    k = float(max(dof, 1))
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 1.0 - NormalDist().cdf(z)


def _probabilities(counts: np.ndarray) -> np.ndarray:
    smoothed = np.asarray(counts, dtype=float) + _SMOOTH
    return smoothed / smoothed.sum()


def psi(live: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (smoothed)."""
    p, q = _probabilities(live), _probabilities(reference)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(live: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two histograms over the same bins."""
    p, q = _probabilities(live), _probabilities(reference)
    m = (p + q) / 2
    div = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(math.sqrt(max(div, 0.0)))


def _bucketed(name: str, live: np.ndarray, ref: np.ndarray, alpha: float) -> SignalDrift:
    n, m = float(live.sum()), float(ref.sum())
    used = (live + ref) > 0  # bins neither side ever fills carry no information
    value = psi(live[used], ref[used]) if used.any() else 0.0
    dof = max(int(used.sum()) - 1, 1)
    n_eff = 1.0 / (1.0 / n + 1.0 / m) if n > 0 and m > 0 else 0.0
    p_value = chi2_sf(n_eff * value, dof) if n >= MIN_IMAGES else 1.0
    return SignalDrift(
        signal=name,
        statistic="psi",
        value=value,
        js_distance=js_distance(live[used], ref[used]) if used.any() else 0.0,
        p_value=p_value,
        drifted=p_value < alpha,
    )


def _features(live: Counts, ref: Counts, alpha: float) -> SignalDrift | None:
    if not live.feature_dims or not ref.feature_dims or live.feature_dims != ref.feature_dims:
        return None
    n, m = float(live.images), float(ref.images)
    live_mean, _ = live.feature_moments()
    ref_mean, ref_var = ref.feature_moments()
    se = np.sqrt(np.maximum(ref_var, 1e-12) * (1.0 / max(n, 1.0) + 1.0 / m))
    z = float(np.max(np.abs(live_mean - ref_mean) / se))
    p_one = 2.0 * (1.0 - NormalDist().cdf(z))
    p_value = min(1.0, p_one * live.feature_dims) if n >= MIN_IMAGES else 1.0
    return SignalDrift(
        signal=FEATURES,
        statistic="max abs z",
        value=z,
        js_distance=None,
        p_value=p_value,
        drifted=p_value < alpha,
    )


def compare(live: Counts, reference: Counts, *, alpha: float = DEFAULT_ALPHA) -> DriftReport:
    """Every signal of the window ``live`` against ``reference`` (both :class:`Counts`)."""
    results = [
        _bucketed(
            name, np.asarray(hist, dtype=float), np.asarray(reference.histograms()[name], dtype=float), alpha
        )
        for name, hist in live.histograms().items()
    ]
    features = _features(live, reference, alpha)
    if features is not None:
        results.append(features)
    return DriftReport(
        images=float(live.images),
        reference_images=reference.images,
        mean_confidence=live.mean_confidence,
        reference_mean_confidence=reference.mean_confidence,
        low_confidence_share=live.low_confidence_share,
        reference_low_confidence_share=reference.low_confidence_share,
        signals=tuple(results),
        alpha=alpha,
    )
