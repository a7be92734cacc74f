"""INT8 for MTCNN's three networks, gated on the faces the cascade finds (``mtcnn_build --precision int8``).

Calibration: the FP32 cascade (the OpenVINO networks just built) runs on calibration photos, and each
network is calibrated on what it sees there: P-Net on square windows cut at random from the pyramid
levels (it is fully convolutional, so a window's activations are the level's at those places), R-Net
and O-Net on their 24x24 and 48x48 crops. The calibration photos are real faces that the gate never
sees: LFW faces (from the 20th on) pasted into the coffee, chelsea and brick photos, and the cameraman
photo (scikit-image's sample data). Each network is quantized with the build's quantizer machinery
(:mod:`cvserve.builders.quantizers`, NNCF for OpenVINO) and converted to OpenVINO IR.

The gate: on every check photo, the INT8 cascade's faces against the FP32 cascade's (both in OpenVINO,
float layers in f32), matched-box F1 (:func:`cvserve.builders.detection_metrics.matched_f1`, greedy,
best score first) at IoU ``iou`` (0.5); every photo must reach ``min_f1`` (0.99: with a handful of faces
per photo, every face found and none extra). The photos carry no labelled face boxes, so the gate
measures what INT8 changes, not mAP. A failed gate raises before the repository is touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvserve.builders.mtcnn import Faces

WINDOW = 32  # P-Net's calibration windows, pixels of a pyramid level
WINDOWS_PER_LEVEL = 4
MAX_CROPS = 256  # R-Net's and O-Net's calibration crops, at most
QUANTIZER = "nncf"  # quantizers.default_quantizer("cpu", "openvino")


@dataclass(frozen=True, kw_only=True)
class Int8Gate:
    """INT8 passes when, on every check photo, its faces match FP32's with F1 >= ``min_f1`` at IoU ``iou``."""

    iou: float = 0.5
    min_f1: float = 0.99


def calibration_photos() -> dict[str, np.ndarray]:
    """Real faces the check photos do not contain: LFW faces 20.. pasted into two photos, the cameraman."""
    from skimage import data

    from cvserve.builders.mtcnn_build import paste_faces

    def rgb(grey: np.ndarray) -> np.ndarray:
        return np.repeat(grey[..., None], 3, axis=2)

    grid = [(26 + k, 16 + 128 * (k % 4), 16 + 128 * (k // 4), 96 - 8 * (k % 3)) for k in range(12)]
    return {
        "coffee": paste_faces(data.coffee(), [(20, 30, 40, 90), (21, 400, 60, 120), (22, 250, 250, 70)]),
        "chelsea": paste_faces(data.chelsea(), [(23, 20, 20, 100), (24, 330, 150, 60), (25, 200, 10, 48)]),
        "camera": rgb(data.camera()),
        "brick": paste_faces(rgb(data.brick()), grid),
    }


def calibration_inputs(networks, photos: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """What each of the FP32 ``networks`` (P-, R-, O-Net callables) sees on ``photos``, as calibration
    batches of one shape per network (the module docstring)."""
    from cvserve.builders.mtcnn import detect

    seen: dict[str, list[np.ndarray]] = {"pnet": [], "rnet": [], "onet": []}

    def recording(name, net):
        def run(x):
            seen[name].append(np.array(x, np.float32))
            return net(x)

        return run

    for image in photos.values():
        detect(image, *(recording(n, net) for n, net in zip(seen, networks, strict=True)))
    rng = np.random.default_rng(seed)
    windows = []
    for level in seen["pnet"]:
        _, _, h, w = level.shape
        if h < WINDOW or w < WINDOW:
            continue
        for _ in range(WINDOWS_PER_LEVEL):
            y, x = rng.integers(0, h - WINDOW + 1), rng.integers(0, w - WINDOW + 1)
            windows.append(level[0, :, y : y + WINDOW, x : x + WINDOW])
    out = {"pnet": np.stack(windows)}
    for n in ("rnet", "onet"):
        crops = np.concatenate(seen[n])
        out[n] = crops[rng.permutation(len(crops))[:MAX_CROPS]]
    return out


def quantize(fp32_onnx: dict[str, Path], calibration: dict[str, np.ndarray], out: Path, log) -> dict:
    """Quantize each network (``fp32_onnx``: name -> ONNX) and write its IR to ``out``; the report entry."""
    from cvserve.builders import onnx2openvino, quantizers

    entry: dict = {}
    for n, onnx_file in fp32_onnx.items():
        q = quantizers.make(
            QUANTIZER, onnx_file, calibration[n], target="cpu", runtime="openvino",
            workdir=onnx_file.parent, progress=False, log=log,
        )  # fmt: skip
        qdq = q.quantize(onnx_file.with_suffix(".int8.onnx"))
        onnx2openvino.convert(qdq, out / f"{n}.xml")
        layers = len(quantizers.quantized_layers(qdq))
        entry = {**q.describe(), **entry}
        entry.setdefault("networks", {})[n] = {
            "calibration_inputs": len(calibration[n]), "input_shape": list(calibration[n].shape[1:]),
            "quantized_layers": layers,
        }  # fmt: skip
        log(
            f"[{n}] INT8 ({QUANTIZER}): {layers} layers quantized, calibrated on {len(calibration[n])} inputs"
        )
    return entry


def _boxes(faces: Faces) -> list:
    from cvserve.builders.detection_metrics import Box

    return [Box(tuple(map(float, b)), float(s), 0) for b, s in zip(faces.boxes, faces.scores, strict=True)]


def gate(int8, fp32, photos: dict[str, np.ndarray], settings: Int8Gate) -> dict:
    """The INT8 cascade (networks ``int8``) against the FP32 one on ``photos``: the gate's report entry,
    ``decision`` passed or failed."""
    from cvserve.builders.detection import box_iou
    from cvserve.builders.detection_metrics import matched_f1
    from cvserve.builders.mtcnn import detect

    per_photo = {}
    for photo, image in photos.items():
        want, got = detect(image, *fp32), detect(image, *int8)
        f1 = matched_f1(want.boxes, np.zeros(len(want.boxes), np.int64), _boxes(got), settings.iou)
        both = len(want.boxes) and len(got.boxes)
        ious = box_iou(want.boxes, got.boxes).max(axis=1) if both else np.zeros(0)
        per_photo[photo] = {
            "fp32_faces": len(want.boxes), "int8_faces": len(got.boxes), "f1": round(f1, 4),
            "min_iou": round(float(ious.min()), 4) if len(ious) else None,
        }  # fmt: skip
    worst = min(p["f1"] for p in per_photo.values())
    return {
        **asdict(settings), "metric": "matched-box F1 of INT8's faces against FP32's, per photo",
        "photos": per_photo, "min_f1_found": worst,
        "decision": "passed" if worst >= settings.min_f1 else "failed",
    }  # fmt: skip
