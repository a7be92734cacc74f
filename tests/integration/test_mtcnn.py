"""MTCNN with facenet-pytorch's weights, built (three networks exported, checked, converted) and served
by the real Triton: on real face photos pasted at known places into a real background, the served
faces are those of the published implementation (facenet-pytorch's own ``detect_face`` and networks),
IoU >= 0.9 each and no extra face, one where each face was pasted, with five landmarks inside its box."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

if importlib.util.find_spec("facenet_pytorch") is None:  # found, never imported (torchvision)
    pytest.skip("pip install --no-deps facenet-pytorch (the 'faces' extra)", allow_module_level=True)

from cvserve.builders import mtcnn_build, mtcnn_reference
from cvserve.builders.detection import box_iou
from cvserve.client import Client, InvalidInput

NAME = "faces"


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def faces_server(tmp_path_factory):
    from cvserve.server import ServerSettings, TritonServer

    repository = tmp_path_factory.mktemp("faces") / "models"
    report = mtcnn_build.build(NAME, repository, mtcnn_build.sample_photos(), log=lambda _: None).report
    assert all(check["ok"] for check in report["verification"]["fp32_vs_reference"].values())
    settings = ServerSettings.embedded(repository, exit_timeout_s=5)
    with TritonServer(settings) as server:
        yield server


def test_served_faces_match_the_reference_cascade_where_they_were_pasted(faces_server):
    scene, pasted = mtcnn_build.composed_scene()
    reference = mtcnn_reference.detect(scene)
    with Client(faces_server.grpc_url, model=NAME, timeout=120) as client:
        [found] = client.detect([_png(scene)])
    boxes = np.array([d.box for d in found], np.float32)
    assert len(found) == len(reference.boxes) == len(pasted)  # no extra face, none missed
    assert (box_iou(reference.boxes, boxes).max(axis=1) >= 0.9).all()
    for x1, y1, x2, y2 in pasted:  # one face inside each pasted photo
        inside = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        assert np.sum((x1 <= inside[0]) & (inside[0] <= x2) & (y1 <= inside[1]) & (inside[1] <= y2)) == 1
    for d in found:
        assert d.label == "face" and d.score > 0.9 and len(d.landmarks) == 5
        assert all(d.box[0] <= x <= d.box[2] and d.box[1] <= y <= d.box[3] for x, y in d.landmarks)


def test_no_face_and_bad_input(faces_server):
    with Client(faces_server.grpc_url, model=NAME, timeout=120) as client:
        assert client.detect([_png(np.full((64, 96, 3), 128, np.uint8))]) == [[]]
        with pytest.raises(InvalidInput, match="not a JPEG or PNG"):
            client.detect([b"not an image"])
