"""The MTCNN reference: torchvision's ``batched_nms`` semantics in pure torch (checked on a case worked
by hand), and facenet-pytorch's files loaded without torchvision or the facenet_pytorch package left
behind in ``sys.modules``."""

from __future__ import annotations

import importlib.util
import sys

import pytest

torch = pytest.importorskip("torch")

from cvserve.builders import mtcnn_reference as ref  # noqa: E402

# A, B overlap: intersection 9 x 9 = 81, union 100 + 100 - 81 = 119, IoU 0.681.
BOXES = [(0, 0, 10, 10), (1, 1, 11, 11), (1, 1, 11, 11), (20, 20, 30, 30)]
SCORES = [0.9, 0.8, 0.7, 0.95]
IMAGES = [0, 0, 1, 0]  # C is B's box in another image: it never meets A


@pytest.mark.parametrize(
    ("threshold", "kept"),
    [
        (0.5, [3, 0, 2]),  # B suppressed by A (0.681 > 0.5); C kept (other index); best score first
        (0.7, [3, 0, 1, 2]),  # 0.681 <= 0.7: B kept
        (0.68, [3, 0, 2]),  # 0.681 > 0.68: suppressed
    ],
)
def test_batched_nms_by_hand(threshold, kept):
    got = ref.batched_nms(
        torch.tensor(BOXES, dtype=torch.float32), torch.tensor(SCORES), torch.tensor(IMAGES), threshold
    )
    assert got.dtype == torch.int64 and got.tolist() == kept


def test_batched_nms_without_boxes():
    got = ref.batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert got.shape == (0,) and got.dtype == torch.int64


def test_same_index_overlapping_boxes_suppress_and_other_indices_do_not():
    boxes = torch.tensor([(0, 0, 10, 10)] * 3, dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert ref.batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [1]
    assert ref.batched_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.5).tolist() == [1, 2, 0]


@pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None, reason="the 'faces' extra")
def test_facenet_files_load_without_leaving_stand_ins():
    before = set(sys.modules)
    assert [type(net).__name__ for net in ref.networks()] == ["PNet", "RNet", "ONet"]
    added = set(sys.modules) - before
    assert not [m for m in added if m.startswith(("torchvision", "facenet_pytorch", "_cvserve_facenet"))]
