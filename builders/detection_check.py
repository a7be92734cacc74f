"""The check stage for detectors: the served network, in its runtime, against the float reference.

The served graph (uint8 letterboxed pixels in, the raw head out; in the ensemble layout the NMS tail's
rows) runs in its runtime and precision on the build's real photos; the bare float network runs in ONNX
Runtime on the same pixels normalised in numpy. Both go through the served postprocessing
(:mod:`cvserve.builders.detection`: the raw heads through ``postprocess``, the graph's NMS rows through
``unpack_nms``), and the detections must be the same: the same count per image, boxes within a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvserve.builders.detection import Detections, NmsSettings, postprocess, unpack_nms
from cvserve.builders.verify import CheckInputs, RuntimeCheck
from cvserve.client import contract
from cvserve.errors import BuildError

BOX_TOLERANCE_PX = 1.0  # original pixels


@dataclass(kw_only=True)
class DetectionCheck(RuntimeCheck):
    """The served detector against the float reference (the check stage's result)."""

    count_equal: int  # images with as many detections as the reference
    max_raw_diff: float  # of the raw head
    max_box_diff_px: float  # of the boxes of images whose counts agree
    tolerance: float = BOX_TOLERANCE_PX

    def summary(self) -> str:
        return (
            f"detection counts equal {self.count_equal}/{self.images}, max box diff "
            f"{self.max_box_diff_px:.2e} px, max raw diff {self.max_raw_diff:.2e}"
        )

    def require_equal(self) -> None:
        if self.count_equal != self.images or self.max_box_diff_px > self.tolerance:
            raise BuildError(
                f"the served {self.runtime} detector ({self.precision}) disagrees with the float reference "
                f"on {self.images} real images: {self.summary()} (tolerance {self.tolerance:g} px)"
            )


def compare(got: Detections, reference: Detections) -> tuple[int, float]:
    """(images with equal counts, max box difference over those images)."""
    same = got.count[:, 0] == reference.count[:, 0]
    diffs = [
        float(np.max(np.abs(got.rows(i).boxes - reference.rows(i).boxes), initial=0.0))
        for i in np.flatnonzero(same)
    ]
    return int(np.sum(same)), max(diffs, default=0.0)


def served(given: CheckInputs, nms: NmsSettings) -> DetectionCheck | None:
    """Run the served detector on ``images`` and compare with the float network; ``None`` where its
    runtime cannot run here (a TensorRT engine)."""
    from cvserve.builders.preprocessing import normalize_batch, placed
    from cvserve.builders.verify import open_served, ort_session

    runner = open_served(given.served_file, given.runtime, given.precision)
    if runner is None:
        return None
    inputs, placements = zip(*(placed(data, given.spec) for data in given.images), strict=True)
    batch = np.stack(inputs)
    out = runner.run(batch)
    session = ort_session(given.reference)
    ref_raw = session.run(None, {session.get_inputs()[0].name: normalize_batch(batch, given.spec)})[0]
    if contract.NUM_DETECTIONS in out:  # the ensemble's graph ends in NMS (cvserve.builders.detection_graph)
        found = unpack_nms(*(out[n] for n in contract.NMS_OUTPUTS), placements, nms.max_detections)
        raw_diff = float("nan")  # the graph does not return its raw head
    else:
        found = postprocess(out["RAW"], placements, nms)
        raw_diff = float(np.max(np.abs(out["RAW"].astype(np.float64) - ref_raw)))
    count_equal, box_diff = compare(found, postprocess(ref_raw, placements, nms))
    return DetectionCheck(
        runtime=given.runtime,
        precision=runner.precision,
        layer_precisions=runner.layer_precisions(),
        images=len(batch),
        count_equal=count_equal,
        max_raw_diff=raw_diff,
        max_box_diff_px=box_diff,
    )
