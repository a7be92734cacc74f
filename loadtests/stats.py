"""Latency and throughput figures from per-request samples ``(end time, ms, ok, inferences)``.

Percentiles are over the *successful* requests of a window (a failure that returns at once would
otherwise make latency look better); failures count in the error rate, which is gated separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Figures of one window; latencies in ms (``None`` when no request succeeded)."""

    window_s: float
    count: int
    failures: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    throughput_rps: float
    inferences_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def summarize(samples: Sequence[Sequence[float]], window_s: float) -> Summary:
    """Summarize the samples of a window lasting ``window_s`` seconds."""
    arr = np.asarray(samples, dtype=float).reshape(-1, 4)
    ok = arr[:, 2] > 0
    good = arr[ok, 1]
    count = len(arr)
    failures = int(count - ok.sum())
    span = max(window_s, 1e-9)
    return Summary(
        window_s=round(window_s, 3),
        count=count,
        failures=failures,
        error_rate=round(failures / count, 6) if count else 0.0,
        p50_ms=_pct(good, 50),
        p95_ms=_pct(good, 95),
        p99_ms=_pct(good, 99),
        mean_ms=round(float(good.mean()), 3) if good.size else None,
        max_ms=round(float(good.max()), 3) if good.size else None,
        throughput_rps=round(ok.sum() / span, 3),
        inferences_per_s=round(float(arr[ok, 3].sum()) / span, 3),
    )


def window(samples: Sequence[Sequence[float]], start: float, end: float) -> list[Sequence[float]]:
    """Samples that ended in ``[start, end)``."""
    return [s for s in samples if start <= s[0] < end]


def timeline(samples: Sequence[Sequence[float]], t0: float, bucket_s: float = 1.0) -> list[dict]:
    """Per-bucket figures (``t_s`` = bucket start, seconds since ``t0``) for the plots."""
    arr = np.asarray(samples, dtype=float).reshape(-1, 4)
    if not len(arr):
        return []
    idx = np.floor((arr[:, 0] - t0) / bucket_s).astype(int)
    rows = []
    for b in range(max(idx.min(), 0), idx.max() + 1):
        part = arr[idx == b]
        s = summarize(part, bucket_s)
        rows.append(
            {
                "t_s": b * bucket_s,
                "requests": s.count,
                "failures": s.failures,
                "throughput_rps": s.throughput_rps,
                "inferences_per_s": s.inferences_per_s,
                "p50_ms": s.p50_ms,
                "p95_ms": s.p95_ms,
                "p99_ms": s.p99_ms,
            }
        )
    return rows
