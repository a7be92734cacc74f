"""MTCNN in the bls layout (``mtcnn_build --layout bls``), served by the real Triton: NAME runs the
cascade and calls NAME_pnet, NAME_rnet and NAME_onet through BLS. The served faces are facenet-pytorch's
``detect_face``'s (IoU >= 0.9 each, none extra), a corrupt image in a request fails alone, and the
network models really served the calls (their inference counts)."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from cvserve.builders import mtcnn_build, mtcnn_reference
from cvserve.builders.detection import box_iou
from cvserve.builders.runtime import model_names
from cvserve.client import Client, InvalidInput

# The single layout's module skips without facenet-pytorch, and this one with it; its photo helper too.
from tests.integration.test_mtcnn import NAME, _png


@pytest.fixture(scope="module")
def bls_server(tmp_path_factory):
    from cvserve.server import ServerSettings, TritonServer

    repository = tmp_path_factory.mktemp("faces-bls") / "models"
    report = mtcnn_build.build(
        NAME, repository, mtcnn_build.sample_photos(), log=lambda _: None, layout="bls"
    ).report
    assert report["layout"] == "bls"
    assert all(check["ok"] for check in report["verification"]["fp32_vs_reference"].values())
    assert sorted(p.name for p in repository.iterdir()) == sorted(
        model_names(NAME)[role] for role in (*mtcnn_build.NETWORKS, "classifier")
    )
    settings = ServerSettings.embedded(repository, exit_timeout_s=5)
    with TritonServer(settings) as server:
        yield server


def _inferences(server, model: str) -> int:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=10) as r:
        return sum(s["inference_count"] for s in json.load(r)["model_stats"])


def test_served_faces_match_the_reference(bls_server):
    scene, pasted = mtcnn_build.composed_scene()
    reference = mtcnn_reference.detect(scene)
    with Client(bls_server.grpc_url, model=NAME, timeout=120) as client:
        [found] = client.detect([_png(scene)])
    boxes = np.array([d.box for d in found], np.float32)
    assert len(found) == len(reference.boxes) == len(pasted)
    assert (box_iou(reference.boxes, boxes).max(axis=1) >= 0.9).all()
    assert all(d.label == "face" and len(d.landmarks) == 5 for d in found)
    names = model_names(NAME)
    assert all(_inferences(bls_server, names[n]) > 0 for n in mtcnn_build.NETWORKS)


def test_a_corrupt_image_fails_alone(bls_server):
    scene, pasted = mtcnn_build.composed_scene()
    with Client(bls_server.grpc_url, model=NAME, timeout=120) as client:
        with pytest.raises(InvalidInput, match="not a JPEG or PNG"):
            client.detect([b"not an image"])
        assert len(client.detect([_png(scene)])[0]) == len(pasted)  # the model keeps serving
        assert client.detect([_png(np.full((64, 96, 3), 128, np.uint8))]) == [[]]
