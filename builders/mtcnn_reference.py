"""The published MTCNN implementation, run as it is: facenet-pytorch's own ``detect_face`` and networks.

The independent reference the served cascade (:mod:`cvserve.builders.mtcnn`) is checked against in the
build, the tests and the demo. facenet-pytorch's ``models/utils/detect_face.py`` and ``models/mtcnn.py``
are loaded from the installed wheel's files, unchanged, as a private package (the ``facenet_pytorch``
package itself is never imported: its ``__init__`` pulls in torchvision and requests). They import two
torchvision names: ``torchvision.ops.boxes.batched_nms``, which ``detect_face`` calls, and
``torchvision.transforms.functional``, which it does not. torchvision's compiled ops do not load with
the CPU torch here, so for the duration of that import only, ``sys.modules`` holds a stand-in for these
two names (``batched_nms`` below, in pure torch, with torchvision's semantics); ``sys.modules`` is
restored afterwards.

The one deliberate difference of the served cascade: facenet-pytorch skips a crop that is empty after
clipping but keeps its box, so its boxes and the network's rows no longer have the same length, and
the boolean mask that keeps the passing rows then raises (IndexError) where
:mod:`cvserve.builders.mtcnn` drops the box and goes on. So the difference never shows silently: on an
image with such a crop the reference fails, and on every image it answers, both see the same crops.
"""

from __future__ import annotations

import importlib
import sys
import types
from functools import cache

import numpy as np

from cvserve.builders.mtcnn import Faces, MtcnnSettings

_PACKAGE = "_cvserve_facenet_reference"  # the private name facenet's files are loaded under
_STAND_INS = (
    "torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
    "torchvision.transforms.functional",
)  # fmt: skip


def nms(boxes, scores, iou_threshold: float):
    """torchvision's ``nms``: indices of the kept boxes, best score first; a box is dropped when its IoU
    with a kept better box is above the threshold; areas are (x2 - x1) * (y2 - y1)."""
    torch = __import__("torch")
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while order.numel():
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """torchvision's ``batched_nms``: NMS per index in ``idxs`` (boxes of different indices never
    suppress each other), by offsetting each index's boxes past the largest coordinate."""
    torch = __import__("torch")
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _stand_ins() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in _STAND_INS}
    mods["torchvision.ops.boxes"].batched_nms = batched_nms
    mods["torchvision"].ops, mods["torchvision"].transforms = (
        mods["torchvision.ops"],
        mods["torchvision.transforms"],
    )
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    return mods


@cache
def _facenet() -> types.ModuleType:
    """facenet-pytorch's ``models/mtcnn.py`` (with ``utils.detect_face``), loaded from the wheel's files."""
    from cvserve.builders.architectures.mtcnn import weights_folder

    models = weights_folder().parent / "models"
    package, utils = types.ModuleType(_PACKAGE), types.ModuleType(f"{_PACKAGE}.utils")
    package.__path__, utils.__path__ = [str(models)], [str(models / "utils")]
    added = {_PACKAGE: package, f"{_PACKAGE}.utils": utils, **_stand_ins()}
    saved = {name: sys.modules[name] for name in added if name in sys.modules}
    sys.modules.update(added)
    try:
        module = importlib.import_module(f"{_PACKAGE}.mtcnn")
    finally:
        for name in (*added, f"{_PACKAGE}.mtcnn", f"{_PACKAGE}.utils.detect_face"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return module


@cache
def networks():
    """facenet-pytorch's PNet, RNet, ONet with its published weights, in eval mode."""
    facenet = _facenet()
    return tuple(net().eval() for net in (facenet.PNet, facenet.RNet, facenet.ONet))


def detect(image: np.ndarray, s: MtcnnSettings | None = None) -> Faces:
    """The faces in one HWC uint8 RGB image, by facenet-pytorch's ``detect_face``."""
    torch = __import__("torch")
    s = s or MtcnnSettings()
    with torch.no_grad():
        boxes, points = _facenet().detect_face(
            image, s.min_face_size, *networks(), list(s.thresholds), s.factor, "cpu"
        )  # fmt: skip
    found = np.asarray(boxes[0], np.float32).reshape(-1, 5)
    marks = np.asarray(points[0], np.float32).reshape(-1, 5, 2)
    return Faces(found[:, :4], found[:, 4], marks)


__all__ = ["batched_nms", "detect", "networks", "nms"]
