"""The detector's accuracy gate: a reduced-precision detector against FP32 by COCO mAP.

The detect task's metric for the quantize stage (the classifier's is :class:`cvserve.builders.accuracy.TopOne`);
it answers the same three questions, so the INT8 build, its per-layer fallback and the report work
unchanged. Both networks' raw heads on the held-out images go through the served postprocessing (the
build's NMS settings, boxes mapped back to each image's original pixels), then:

* **With labels** (``--validation-labels``: COCO JSON whose ``file_name`` are the held-out images):
  the candidate's mAP@[.5:.95] must be at least ``1 - max_accuracy_drop`` of FP32's (default 0.99 of
  it, relative, as for classifiers). mAP@.5 is reported beside it.
* **Without labels**: FP32's own detections with a score of at least ``confidence`` become the truth,
  and the candidate's mAP@.5 against them must be at least ``1 - max_accuracy_drop``. mAP@.5, because
  FP32's boxes are no ground truth at IoU 0.95: a one-pixel shift already costs the stricter
  thresholds, which would fail every INT8 network without saying anything about its answers.
  mAP@[.5:.95] against FP32 is reported beside it.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvserve.builders.accuracy import _SLACK, GateResult, GateSettings, verdict
from cvserve.builders.detection import NmsSettings, postprocess
from cvserve.builders.detection_metrics import Box, as_truth, coco_map
from cvserve.builders.preprocessing import Placement
from cvserve.errors import UserInputError


@dataclass(frozen=True, kw_only=True)
class HeldOutBoxes:
    """The held-out images as the metric needs them: names, placements, sizes, and the truth if any."""

    names: tuple[str, ...]
    placements: tuple[Placement, ...]
    truth: dict | None  # COCO JSON restricted to the held-out images; None: the unlabelled rule


@dataclass(frozen=True, kw_only=True)
class DetectionAccuracy:
    """A candidate detector's mAP against FP32 (labelled: both against the truth)."""

    held_out_images: int
    map: float  # the candidate's mAP@[.5:.95]: against the truth, or against FP32's confident boxes
    map50: float
    map_reference: float | None = None  # FP32's, against the truth (labelled only)
    map50_reference: float | None = None
    reference_boxes: int = 0  # unlabelled: FP32 boxes taken as the truth

    @property
    def labelled(self) -> bool:
        return self.map_reference is not None

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def step_entry(self) -> dict:
        return {"map": round(self.map, 6), "map50": round(self.map50, 6)}

    def summary(self) -> str:
        if self.labelled:
            return (
                f"mAP@[.5:.95] {self.map:.4f} (FP32 {self.map_reference:.4f}), mAP@.5 {self.map50:.4f} "
                f"(FP32 {self.map50_reference:.4f}); {self.held_out_images} held-out images"
            )
        return (
            f"mAP@.5 {self.map50:.4f}, mAP@[.5:.95] {self.map:.4f} against FP32's {self.reference_boxes} "
            f"confident boxes; {self.held_out_images} held-out images"
        )


class MeanAveragePrecision:
    """The detect task's metric: ``truth``, ``compare`` and ``gate`` as the quantize stage asks them."""

    name = "mAP"

    def __init__(self, nms: NmsSettings, class_names: tuple[str, ...] = ()) -> None:
        self.nms, self.class_names = nms, class_names

    def truth(self, path: Path | None, images, class_names, spec) -> HeldOutBoxes:
        from PIL import Image

        sizes = [Image.open(io.BytesIO(data)).size for data in images.data]
        placements = tuple(Placement.of(size, spec) for size in sizes)
        coco = None if path is None else read_truth(path, images.names)
        return HeldOutBoxes(names=tuple(images.names), placements=placements, truth=coco)

    def detections(self, raw: np.ndarray, held: HeldOutBoxes) -> dict[str, list[Box]]:
        found = postprocess(raw, held.placements, self.nms)
        out = {}
        for i, name in enumerate(held.names):
            rows = found.rows(i)
            out[name] = [
                Box(tuple(map(float, b)), float(s), int(c))
                for b, s, c in zip(rows.boxes, rows.scores, rows.classes, strict=True)
            ]
        return out

    def compare(self, reference, candidate, held: HeldOutBoxes, settings: GateSettings) -> DetectionAccuracy:
        ref, got = self.detections(reference, held), self.detections(candidate, held)
        if held.truth is not None:
            want, have = coco_map(held.truth, ref), coco_map(held.truth, got)
            return DetectionAccuracy(
                held_out_images=len(held.names), map=have["map"], map50=have["map50"],
                map_reference=want["map"], map50_reference=want["map50"],
            )  # fmt: skip
        sure = {n: [d for d in found if d.score >= settings.confidence] for n, found in ref.items()}
        sizes = {n: p.size for n, p in zip(held.names, held.placements, strict=True)}
        names = self.class_names or tuple(
            str(i) for i in range(1 + max((d.index for f in ref.values() for d in f), default=0))
        )
        truth = as_truth(sure, names, sizes)
        have = coco_map(truth, got) if truth["annotations"] else {"map": 0.0, "map50": 0.0}
        return DetectionAccuracy(
            held_out_images=len(held.names), map=have["map"], map50=have["map50"],
            reference_boxes=len(truth["annotations"]),
        )  # fmt: skip

    def gate(self, result: DetectionAccuracy, settings: GateSettings) -> GateResult:
        need = 1.0 - settings.max_accuracy_drop
        thresholds = settings.as_dict()
        if result.labelled:
            ref = result.map_reference or 0.0
            ratio = result.map / ref if ref > 0 else 1.0
            check = {"metric": "map_ratio", "value": round(ratio, 6), "threshold": round(need, 6),
                     "images": result.held_out_images, "passed": ratio >= need - _SLACK}  # fmt: skip
            return verdict(
                "labelled mAP@[.5:.95], relative to FP32", (check,), result.held_out_images, thresholds
            )
        if not result.reference_boxes:
            return GateResult(
                decision="refused", metric="reference_boxes", value=0.0, threshold=1.0, images=0,
                held_out_images=result.held_out_images, checks=(), thresholds=thresholds,
                rule=f"mAP@.5 against FP32's boxes with score >= {settings.confidence:g}",
            )  # fmt: skip
        check = {"metric": "map50_against_fp32", "value": round(result.map50, 6), "threshold": round(need, 6),
                 "images": result.held_out_images, "passed": result.map50 >= need - _SLACK}  # fmt: skip
        rule = f"mAP@.5 against FP32's boxes with score >= {settings.confidence:g}"
        return verdict(rule, (check,), result.held_out_images, thresholds)


def read_truth(path: Path, names) -> dict:
    """COCO JSON ground truth restricted to the held-out images ``names`` (every one must be in it)."""
    import json

    try:
        coco = json.loads(Path(path).read_text(encoding="utf-8"))
        images = {im["file_name"]: im for im in coco["images"]}
        coco["annotations"], coco["categories"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(
            f"--validation-labels {path}: not COCO JSON with images, annotations and categories ({exc})"
        ) from None
    missing = [n for n in names if n not in images]
    if missing:
        raise UserInputError(
            f"--validation-labels {path} has no image {missing[0]} ({len(missing)} held-out image(s) missing)"
        )
    ids = {images[n]["id"] for n in names}
    return {
        "images": [images[n] for n in names],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
        "categories": coco["categories"],
    }
