"""The served model's running counts read straight from Triton's metrics port, without Prometheus.

For a quick look where no Prometheus runs (``make demo``): read the counts, send traffic, read them
again; :meth:`signals.Counts.since` gives the window. Production reads windows from Prometheus
(:mod:`cvserve.monitor.prometheus`), which keeps them across restarts and pods.
"""

from __future__ import annotations

import urllib.request

from cvserve._extras import require
from cvserve.errors import UserInputError
from cvserve.monitor import signals as sg


def read_counts(
    metrics_url: str, model: str, version: str, *, num_classes: int, feature_dims: int
) -> sg.Counts:
    """The running counts of ``model`` ``version`` on one Triton (``http://host:8002/metrics``)."""
    parser = require("prometheus_client.parser", extra="monitor", purpose="to read Triton's metrics")
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    except OSError as exc:
        raise UserInputError(
            f"Triton's metrics at {metrics_url} are not reachable ({exc})", exit_code=2
        ) from None
    counts = sg.Counts(num_classes=num_classes, feature_dims=feature_dims)
    classes = {label: i for i, label in enumerate(sg.class_bucket_labels(num_classes))}
    confidence = {label: i for i, label in enumerate(sg.bin_labels(sg.CONFIDENCE_EDGES))}
    inputs = {
        stat: {label: i for i, label in enumerate(sg.bin_labels(e))} for stat, e in sg.INPUT_EDGES.items()
    }
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if s.name == sg.IMAGES:
                counts.images = s.value  # type: ignore[assignment]
            elif s.name == sg.CONFIDENCE_SUM:
                counts.confidence_sum = s.value
            elif s.name == sg.CLASSES and labels["bucket"] in classes:
                counts.classes[classes[labels["bucket"]]] = s.value
            elif s.name == sg.CONFIDENCE and labels["bin"] in confidence:
                counts.confidence[confidence[labels["bin"]]] = s.value
            elif s.name == sg.INPUTS and labels["bucket"] in inputs.get(labels["stat"], {}):
                counts.inputs[labels["stat"]][inputs[labels["stat"]][labels["bucket"]]] = s.value
            elif s.name == sg.REJECTIONS and s.value:
                counts.rejections[labels["reason"]] = s.value  # type: ignore[assignment]
            elif s.name in (sg.FEATURE_SUM, sg.FEATURE_SQUARES) and int(labels["dim"]) < feature_dims:
                d = int(labels["dim"])
                if s.name == sg.FEATURE_SQUARES:
                    counts.feature_squares[d] = s.value
                elif labels["sign"] == "pos":
                    counts.feature_pos[d] = s.value
                else:
                    counts.feature_neg[d] = s.value
    return counts
