"""Detect the golden set with both versions and compare them: mAP per slice and F1 per image.

Definitions (docs/release.md, "Detectors"):

* mAP: COCO mAP@[.5:.95] (and mAP@.5 beside it) of a version's detections on the slice's images, by
  :func:`cvserve.builders.detection_metrics.coco_map` (faster-coco-eval).
* mAP drop: ``1 - candidate mAP / baseline mAP`` on the slice (relative, as the INT8 gate's; 0 when the
  baseline's is 0).
* F1 of an image: its detections matched to its boxes greedily, best score first, same class, IoU at
  least 0.5 (:func:`~cvserve.builders.detection_metrics.matched_f1`), on the detections the server
  returns (its score threshold is the operating point users get). Crowd boxes and detections of classes
  the golden set has no category for are left out.
* regression: an image whose F1 is lower with the candidate than with the baseline (by more than
  :data:`F1_EPSILON`); the regression rate is regressions / all images of the slice. Improvement: higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvserve.builders.detection_metrics import Box, coco_map, matched_f1
from cvserve.errors import CvserveError, MissingDependencyError
from cvserve.release.boxes import BoxCase, BoxGoldenSet, load_box_golden_set, resolve_classes
from cvserve.release.compare import ALL
from cvserve.release.formats import intended_use
from cvserve.release.gates import Gate, gate
from cvserve.release.versions import ModelVersion

if TYPE_CHECKING:
    from cvserve.release.settings import ReleaseSettings

IOU = 0.5  # the F1's match threshold
F1_EPSILON = 1e-6  # an F1 lower by more than this is a regression (F1 values are ratios of small counts)
_BATCH = 32  # images per detect call: bounded memory for large golden sets


def detect_all(
    url: str, model: str, version: ModelVersion, golden: BoxGoldenSet, *, timeout_s: float = 60.0
) -> list[tuple[Box, ...]]:
    """Each golden image's detections by ``model`` (``version``), classes as golden category positions.

    Raises:
        CvserveError: the server failed to detect an image (the client's message, naming the model).
    """
    from cvserve.client import Client, ClientError

    classes = golden.classes.get(version.version)
    categories = len(golden.category_names)
    out: list[tuple[Box, ...]] = []
    try:
        with Client(url, model=model, timeout=timeout_s) as client:
            for start in range(0, len(golden.cases), _BATCH):
                chunk = golden.cases[start : start + _BATCH]
                found = client.detect(
                    [c.file for c in chunk], model=model, model_version=str(version.version)
                )
                for image in found:
                    out.append(
                        tuple(
                            Box(
                                tuple(float(v) for v in d.box),
                                float(d.score),
                                _position(d.index, classes, categories),
                            )
                            for d in image
                        )
                    )
    except ClientError as exc:
        raise CvserveError(
            f"detecting the golden set with {model} (version {version.version}) failed: {exc}"
        ) from None
    return out


def _position(index: int, classes: tuple[int, ...] | None, categories: int) -> int:
    """A model's class index as a golden category position (-1: the golden set has no such category)."""
    if classes is None:  # a model without labels: class i is the i-th category
        return index if 0 <= index < categories else -1
    return classes[index] if 0 <= index < len(classes) else -1


def image_f1(case: BoxCase, found: Sequence[Box]) -> float:
    """The image's matched-box F1 at IoU 0.5 (crowd boxes and unknown classes left out)."""
    keep = [i for i, crowd in enumerate(case.crowd) if not crowd]
    boxes = np.asarray([case.boxes[i] for i in keep], np.float64).reshape(-1, 4)
    classes = np.asarray([case.categories[i] for i in keep], np.int64)
    return matched_f1(boxes, classes, [d for d in found if d.index >= 0], iou=IOU)


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    """One golden image as each version detected it."""

    case: BoxCase
    baseline: tuple[Box, ...]
    candidate: tuple[Box, ...]
    baseline_f1: float
    candidate_f1: float

    @property
    def kind(self) -> str | None:
        """``regression`` (F1 dropped), ``improvement`` (F1 rose) or ``None``."""
        if self.candidate_f1 < self.baseline_f1 - F1_EPSILON:
            return "regression"
        if self.candidate_f1 > self.baseline_f1 + F1_EPSILON:
            return "improvement"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.case.path,
            "slices": self.case.slices,
            "kind": self.kind,
            "boxes": len(self.case.boxes),
            "baseline": {"f1": round(self.baseline_f1, 6), "detections": len(self.baseline)},
            "candidate": {"f1": round(self.candidate_f1, 6), "detections": len(self.candidate)},
        }


@dataclass(frozen=True, kw_only=True)
class BoxSlice:
    """The comparison on one slice (``all``, or ``name=value``)."""

    slice: str
    cases: int
    boxes: int
    baseline_map: float
    baseline_map50: float
    candidate_map: float
    candidate_map50: float
    regressions: int
    improvements: int

    @property
    def map_drop(self) -> float:
        """``1 - candidate / baseline`` mAP@[.5:.95] (negative: the candidate is better; 0 if baseline is 0)."""
        return 1.0 - self.candidate_map / self.baseline_map if self.baseline_map > 0 else 0.0

    @property
    def regression_rate(self) -> float:
        return self.regressions / self.cases

    def as_dict(self) -> dict[str, Any]:
        return {
            "slice": self.slice,
            "cases": self.cases,
            "boxes": self.boxes,
            "baseline_map": round(self.baseline_map, 6),
            "candidate_map": round(self.candidate_map, 6),
            "baseline_map50": round(self.baseline_map50, 6),
            "candidate_map50": round(self.candidate_map50, 6),
            "map_drop": round(self.map_drop, 6),
            "regressions": self.regressions,
            "regression_rate": round(self.regression_rate, 6),
            "improvements": self.improvements,
        }


@dataclass(frozen=True, kw_only=True)
class BoxComparison:
    """Per image and per slice (``all`` first, then each slice's values in order of appearance)."""

    cases: tuple[ImageResult, ...]
    slices: tuple[BoxSlice, ...]

    @property
    def overall(self) -> BoxSlice:
        return self.slices[0]

    @property
    def changed(self) -> list[ImageResult]:
        """Regressed images first, then improved ones, each in golden-set order."""
        return [c for kind in ("regression", "improvement") for c in self.cases if c.kind == kind]

    def gates(self, s: ReleaseSettings) -> list[Gate]:
        """``map_drop[SLICE]`` and ``regression_rate[SLICE]`` for every slice, then ``map[SLICE]``
        floors when ``--min-map`` is given."""
        gates = [
            gate(
                f"map_drop[{sl.slice}]",
                sl.map_drop,
                s.max_map_drop,
                "fraction of the baseline's mAP@[.5:.95]",
                f"mAP@[.5:.95] {sl.baseline_map:.4f} -> {sl.candidate_map:.4f}",
            )
            for sl in self.slices
        ]
        gates += [
            gate(
                f"regression_rate[{sl.slice}]",
                sl.regression_rate,
                s.max_regression_rate,
                "fraction",
                f"{sl.regressions} of {sl.cases} golden images with a lower F1 at IoU {IOU:g}",
            )
            for sl in self.slices
        ]
        if s.min_map is not None:
            gates += [
                gate(f"map[{sl.slice}]", sl.candidate_map, s.min_map, "mAP@[.5:.95]", "candidate", op=">=")
                for sl in self.slices
            ]
        return gates


def _slice(key: str, golden: BoxGoldenSet, results: Sequence[ImageResult]) -> BoxSlice:
    paths = {r.case.path for r in results}
    ids = {r.case.image_id for r in results}
    truth = {
        "images": [im for im in golden.truth["images"] if im["file_name"] in paths],
        "annotations": [a for a in golden.truth["annotations"] if a["image_id"] in ids],
        "categories": golden.truth["categories"],
    }
    base = coco_map(truth, {r.case.path: r.baseline for r in results})
    cand = coco_map(truth, {r.case.path: r.candidate for r in results})
    return BoxSlice(
        slice=key,
        cases=len(results),
        boxes=sum(len(r.case.boxes) for r in results),
        baseline_map=base["map"],
        baseline_map50=base["map50"],
        candidate_map=cand["map"],
        candidate_map50=cand["map50"],
        regressions=sum(r.kind == "regression" for r in results),
        improvements=sum(r.kind == "improvement" for r in results),
    )


def compare_boxes(
    golden: BoxGoldenSet, baseline: Sequence[Sequence[Box]], candidate: Sequence[Sequence[Box]]
) -> BoxComparison:
    """Compare the two versions' detections on ``golden`` (same order as its cases)."""
    results = tuple(
        ImageResult(
            case=case,
            baseline=tuple(b),
            candidate=tuple(c),
            baseline_f1=image_f1(case, b),
            candidate_f1=image_f1(case, c),
        )
        for case, b, c in zip(golden.cases, baseline, candidate, strict=True)
    )
    slices = [_slice(ALL, golden, results)]
    for column in golden.slice_columns:
        for value in dict.fromkeys(r.case.slices[column] for r in results):
            subset = [r for r in results if r.case.slices[column] == value]
            slices.append(_slice(f"{column}={value or '(blank)'}", golden, subset))
    return BoxComparison(cases=results, slices=tuple(slices))


class BoxedImages:
    """COCO JSON golden sets of a detector (docs/release.md, "Detectors")."""

    name = "boxes"
    metric = {"key": "map", "label": "mAP@[.5:.95]"}

    def load(self, directory: Path) -> BoxGoldenSet:
        import importlib.util

        golden = load_box_golden_set(directory)
        # Found, not imported: a missing evaluator is reported before the server is touched.
        if importlib.util.find_spec("faster_coco_eval") is None:
            raise MissingDependencyError(
                "faster-coco-eval is needed to measure a detector's mAP: pip install 'cvserve[build]'"
            )
        return golden

    def resolve(self, golden: BoxGoldenSet, baseline: ModelVersion, candidate: ModelVersion) -> BoxGoldenSet:
        return resolve_classes(golden, {v.version: v.labels for v in (baseline, candidate)}, baseline.name)

    def predict(
        self, url: str, model: str, version: ModelVersion, golden: BoxGoldenSet, *, timeout_s: float
    ) -> list[tuple[Box, ...]]:
        return detect_all(url, model, version, golden, timeout_s=timeout_s)

    def compare(self, golden: BoxGoldenSet, baseline: list, candidate: list) -> BoxComparison:
        return compare_boxes(golden, baseline, candidate)

    def describe(self, golden: BoxGoldenSet) -> dict[str, Any]:
        return {"boxes": golden.boxes, "categories": list(golden.category_names), "iou": IOU}

    def intended_use(self, version: ModelVersion) -> str:
        return intended_use(
            version,
            "Object detection: boxes (x1, y1, x2, y2 in the image's pixels) of objects of {classes}, each "
            "with a score and a class,",
        )
