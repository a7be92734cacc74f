"""A live window of the served model's signals, read from Prometheus (its HTTP API, the stdlib only).

Each signal is one instant query, ``sum by (<bin label>) (increase(<counter>{model, version}[window]))``,
summed over the pods that serve the version: the window's histogram, as :class:`signals.Counts`.
An unreachable Prometheus or a model it has no signals for is one :class:`UserInputError` (exit 2).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np

from cvserve.errors import UserInputError
from cvserve.monitor import signals as sg

DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class Prometheus:
    """A Prometheus server's HTTP API (``http://host:9090``)."""

    url: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def query(self, expr: str) -> list[dict]:
        """The result vector of an instant query: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        url = f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise UserInputError(
                f"Prometheus at {self.url} refused the query {expr!r}: {detail}", exit_code=2
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserInputError(
                f"Prometheus at {self.url} is not reachable ({reason}): give --prometheus, the server that "
                "scrapes Triton's metrics port",
                exit_code=2,
            ) from None
        if body.get("status") != "success":
            raise UserInputError(f"Prometheus at {self.url}: {body.get('error', body)}", exit_code=2)
        return body["data"]["result"]

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


def _selector(model: str, version: str | None) -> str:
    sel = f'model="{model}"'
    return sel + (f',version="{version}"' if version else "")


def versions(prom: Prometheus, model: str, window: str) -> dict[str, float]:
    """Version -> images answered in the window, for the versions of ``model`` Prometheus has signals of."""
    expr = f"sum by (version) (increase({sg.IMAGES}{{{_selector(model, None)}}}[{window}]))"
    return prom.by_label(expr, "version")


def window_counts(
    prom: Prometheus, model: str, version: str, window: str, *, num_classes: int, feature_dims: int
) -> sg.Counts:
    """The counts of the last ``window`` (a Prometheus duration, ``15m``) of ``model`` ``version``."""
    sel = _selector(model, version)

    def inc(metric: str, by: str, extra: str = "") -> dict[str, float]:
        return prom.by_label(f"sum by ({by}) (increase({metric}{{{sel}{extra}}}[{window}]))", by)

    counts = sg.Counts(num_classes=num_classes, feature_dims=feature_dims)
    images = prom.query(f"sum(increase({sg.IMAGES}{{{sel}}}[{window}]))")
    counts.images = float(images[0]["value"][1]) if images else 0.0  # type: ignore[assignment]
    total = prom.query(f"sum(increase({sg.CONFIDENCE_SUM}{{{sel}}}[{window}]))")
    counts.confidence_sum = float(total[0]["value"][1]) if total else 0.0

    def fill(target: np.ndarray, labels: list[str], values: dict[str, float]) -> None:
        for i, label in enumerate(labels):
            target[i] = values.get(label, 0.0)

    fill(counts.classes, sg.class_bucket_labels(num_classes), inc(sg.CLASSES, "bucket"))
    fill(counts.confidence, sg.bin_labels(sg.CONFIDENCE_EDGES), inc(sg.CONFIDENCE, "bin"))
    for stat, edges in sg.INPUT_EDGES.items():
        fill(counts.inputs[stat], sg.bin_labels(edges), inc(sg.INPUTS, "bucket", f',stat="{stat}"'))
    counts.rejections = {k: v for k, v in inc(sg.REJECTIONS, "reason").items() if v > 0}  # type: ignore[misc]
    if feature_dims:
        dims = [str(d) for d in range(feature_dims)]
        fill(counts.feature_pos, dims, inc(sg.FEATURE_SUM, "dim", ',sign="pos"'))
        fill(counts.feature_neg, dims, inc(sg.FEATURE_SUM, "dim", ',sign="neg"'))
        fill(counts.feature_squares, dims, inc(sg.FEATURE_SQUARES, "dim"))
    return counts
