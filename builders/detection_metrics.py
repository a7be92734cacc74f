"""Detection accuracy: COCO mAP@[.5:.95] and mAP@.5 (faster-coco-eval), and matched-box F1 per image.

The detect task's accuracy metric, used by the tests, the INT8 gate and the release gate. Ground truth
is COCO JSON (``images`` with ``file_name``, ``annotations`` with ``bbox`` as x, y, w, h and a
``category_id``, ``categories``); detections are per file name, as the client returns them (boxes x1,
y1, x2, y2 in original pixels, class indices). Class ``i`` of a model is the ``i``-th entry of
``categories`` (sorted by id). faster-coco-eval (Apache-2.0) is imported when a metric is computed:
``pip install 'cvserve[build]'``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cvserve._extras import require


@dataclass(frozen=True)
class Box:
    """One detection as the metric sees it (the client's :class:`~cvserve.client.Detection` fits)."""

    box: tuple[float, float, float, float]
    score: float
    index: int


def _category_ids(truth: dict) -> list[int]:
    return sorted(c["id"] for c in truth["categories"])


def coco_map(truth: dict, detections: Mapping[str, Sequence]) -> dict[str, float]:
    """``{"map": mAP@[.5:.95], "map50": mAP@.5}`` of ``detections`` (file name -> objects with
    ``box``, ``score``, ``index``) against the COCO ground truth ``truth``."""
    fce = require("faster_coco_eval", extra="build", purpose="to measure detection mAP")
    ids = {im["file_name"]: im["id"] for im in truth["images"]}
    cats = _category_ids(truth)
    results = []
    for name, found in detections.items():
        for d in found:
            x1, y1, x2, y2 = (float(v) for v in d.box)
            if not 0 <= int(d.index) < len(cats):
                continue  # a class the ground truth does not know
            results.append({
                "image_id": ids[name], "category_id": cats[int(d.index)],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(d.score),
            })  # fmt: skip
    if not results:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = fce.COCO(copy.deepcopy(truth))
        dt = gt.loadRes(results)
        ev = fce.COCOeval_faster(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0)}


def as_truth(
    reference: Mapping[str, Sequence], names: Sequence[str], sizes: Mapping[str, tuple[int, int]]
) -> dict:
    """COCO ground truth made of another model's detections (FP32's boxes, for the unlabelled gate)."""
    images, annotations = [], []
    for i, (name, found) in enumerate(reference.items()):
        w, h = sizes[name]
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for d in found:
            x1, y1, x2, y2 = (float(v) for v in d.box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(d.index) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def matched_f1(
    truth_boxes: np.ndarray, truth_classes: np.ndarray, found: Sequence, iou: float = 0.5
) -> float:
    """F1 of one image's detections against its truth: greedy matching, best score first, same class,
    IoU at least ``iou``. 1.0 for an image with neither truth nor detections."""
    from cvserve.builders.detection import box_iou

    if not len(truth_boxes) and not found:
        return 1.0
    taken = np.zeros(len(truth_boxes), bool)
    hits = 0
    for d in sorted(found, key=lambda d: -d.score):
        if not len(truth_boxes):
            break
        overlap = box_iou(np.asarray([d.box], np.float64), truth_boxes.astype(np.float64))[0]
        overlap[taken | (truth_classes != d.index)] = -1
        j = int(np.argmax(overlap))
        if overlap[j] >= iou:
            taken[j], hits = True, hits + 1
    return 2 * hits / (len(truth_boxes) + len(found))
