"""MTCNN's networks in INT8 (NNCF, calibrated on real faces the gate never sees), gated on the faces the
cascade finds: a build that passes writes INT8 networks that still find every pasted face; a gate that
fails refuses the build with one message and leaves the repository byte-identical."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("facenet_pytorch") is None:  # found, never imported (torchvision)
    pytest.skip("pip install --no-deps facenet-pytorch (the 'faces' extra)", allow_module_level=True)

from cvserve.builders import mtcnn_build
from cvserve.builders.mtcnn import detect
from cvserve.builders.mtcnn_int8 import Int8Gate
from cvserve.errors import BuildError

NAME = "faces"


def _snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repository = tmp_path_factory.mktemp("faces-int8") / "models"
    result = mtcnn_build.build(
        NAME, repository, mtcnn_build.sample_photos(), log=lambda _: None, precision="int8"
    )
    return repository, result


def test_int8_passes_its_gate_and_still_finds_every_pasted_face(built):
    repository, result = built
    report = result.report
    assert report["precision"] == "int8" and report["quantization"]["method"] == "nncf"
    for n in mtcnn_build.NETWORKS:
        entry = report["quantization"]["networks"][n]
        assert entry["calibration_inputs"] > 0 and entry["quantized_layers"] > 0
    gate = report["verification"]["int8_gate"]
    assert gate["decision"] == "passed" and set(gate["photos"]) == set(mtcnn_build.sample_photos())
    assert all(
        p["f1"] >= gate["min_f1"] and p["int8_faces"] == p["fp32_faces"] for p in gate["photos"].values()
    )
    folder = repository / NAME / str(result.version)
    assert all("FakeQuantize" in (folder / f"{n}.xml").read_text() for n in mtcnn_build.NETWORKS)
    scene, pasted = mtcnn_build.composed_scene()
    faces = detect(scene, *mtcnn_build.runner_cascade(folder))  # the networks as written, in OpenVINO
    centres = (faces.boxes[:, 0:2] + faces.boxes[:, 2:4]) / 2
    assert len(faces.boxes) == len(pasted)
    for x1, y1, x2, y2 in pasted:
        inside = (x1 <= centres[:, 0]) & (centres[:, 0] <= x2) & (y1 <= centres[:, 1]) & (centres[:, 1] <= y2)
        assert np.sum(inside) == 1


def test_failed_gate_refuses_and_leaves_the_repository_unchanged(built):
    repository, _ = built
    before = _snapshot(repository)
    strict = Int8Gate(iou=0.999)  # INT8's boxes move by a pixel or so: no face matches at 0.999
    with pytest.raises(BuildError) as failed:
        mtcnn_build.build(
            NAME,
            repository,
            mtcnn_build.sample_photos(),
            log=lambda _: None,
            precision="int8",
            int8_gate=strict,
        )
    message = str(failed.value)
    assert (
        message.startswith("INT8 gate failed: ") and "nothing was written" in message and "\n" not in message
    )
    assert _snapshot(repository) == before
