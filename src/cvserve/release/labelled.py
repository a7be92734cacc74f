"""The classifier's golden-set format: images and their class in ``labels.csv``, judged by top-1.

The loader is :mod:`cvserve.release.golden`, the comparison and its gates :mod:`cvserve.release.compare`;
this is what :meth:`cvserve.builders.tasks.Classify.golden_format` hands the release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvserve.release.compare import Comparison, Prediction, classify_all, compare
from cvserve.release.formats import intended_use
from cvserve.release.golden import GoldenSet, load_golden_set, resolve_labels
from cvserve.release.versions import ModelVersion


class LabelledImages:
    """``labels.csv`` golden sets (docs/release.md, "The golden set")."""

    name = "labels"
    metric = {"key": "accuracy", "label": "top-1 accuracy"}

    def load(self, directory: Path) -> GoldenSet:
        return load_golden_set(directory)

    def resolve(self, golden: GoldenSet, baseline: ModelVersion, candidate: ModelVersion) -> GoldenSet:
        # Indices are the baseline's; a class only the candidate knows is still a known name.
        names = list(baseline.labels or [])
        names += [n for n in candidate.labels or [] if n not in names]
        return resolve_labels(golden, names or None, baseline.name)

    def predict(
        self, url: str, model: str, version: ModelVersion, golden: GoldenSet, *, timeout_s: float
    ) -> list[Prediction]:
        return classify_all(url, model, version.version, golden.cases, timeout_s=timeout_s)

    def compare(self, golden: GoldenSet, baseline: list, candidate: list) -> Comparison:
        return compare(golden, baseline, candidate)

    def describe(self, golden: GoldenSet) -> dict[str, Any]:
        return {}

    def intended_use(self, version: ModelVersion) -> str:
        return intended_use(
            version, "Image classification: the top classes among {classes} with softmax scores,"
        )
