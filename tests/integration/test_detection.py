"""The trained single-shot detector built with ``--task detect``, served by the real Triton, called by
the client: its mAP equals in-process PyTorch's, boxes come back in original pixels, bad input fails
alone and clearly (_detection_fixtures)."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from cvserve.builders.detection_data import torch_detections
from cvserve.builders.detection_metrics import coco_map
from cvserve.client import AsyncClient, Client, Detection, InvalidInput
from cvserve.reliability.payloads import png_header_bomb
from tests.integration import _detection_fixtures as fx


@pytest.fixture(scope="module")
def client(detector_server):
    with Client(detector_server.grpc_url, model=fx.NAME, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def served(client, held_out) -> dict[str, list[Detection]]:
    return dict(zip(held_out, client.detect(list(held_out.values())), strict=True))


def test_build_report_records_the_task_and_its_check(detector_build):
    report = detector_build[1]
    assert report["task"]["name"] == "detect" and report["task"]["head"] == "yolo"
    assert report["task"]["max_detections"] == fx.NMS.max_detections
    check = report["verification"]["served"]
    assert check["count_equal"] == check["images"] and check["max_box_diff_px"] <= 1.0
    assert report["network"]["num_classes"] == 2 and report["preprocess"]["fit"] == "letterbox"


def test_served_fp32_map_equals_in_process_pytorch(scenes, held_out, served):
    truth = json.loads(scenes.truth.read_text())
    reference = coco_map(truth, torch_detections(scenes.checkpoint, held_out, scenes.spec, fx.NMS))
    got = coco_map(truth, served)
    assert reference["map50"] > 0.3, reference  # the detector learned: the comparison means something
    assert abs(got["map50"] - reference["map50"]) <= 0.005, (got, reference)
    assert abs(got["map"] - reference["map"]) <= 0.005, (got, reference)


def test_detections_are_in_original_pixels(held_out, served):
    for name, data in held_out.items():
        w, h = Image.open(io.BytesIO(data)).size
        for d in served[name]:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert d.label in ("face", "cat") and d.label == ("face", "cat")[d.index]
        scores = [d.score for d in served[name]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= fx.NMS.max_detections


def test_async_client_gets_the_same_detections(detector_server, held_out, served):
    names = list(held_out)[:6]

    async def run():
        async with AsyncClient(detector_server.grpc_url, model=fx.NAME, timeout=60) as c:
            return await asyncio.gather(*(c.detect([held_out[n]]) for n in names))

    for name, [found] in zip(names, asyncio.run(run()), strict=True):
        assert [d.index for d in found] == [d.index for d in served[name]]
        np.testing.assert_allclose([d.box for d in found], [d.box for d in served[name]], atol=1e-3)


def _png(size: tuple[int, int], colour=(120, 130, 140)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_input_fails_clearly_and_a_blank_image_has_no_detections(client):
    with pytest.raises(InvalidInput, match="not a JPEG or PNG"):
        client.detect([b"definitely not an image"])
    with pytest.raises(InvalidInput, match="pixels"):
        client.detect([png_header_bomb()])
    with pytest.raises(InvalidInput):
        client.detect([b""])
    assert client.detect([]) == []
    tiny, blank = client.detect([_png((1, 1)), _png((333, 77))])
    assert isinstance(tiny, list) and all(0 <= d.box[2] <= 1 for d in tiny)
    assert all(d.score < 0.5 for d in blank)


def test_bad_images_in_a_burst_fail_alone_and_the_good_ones_lose_nothing(detector_server, held_out, served):
    """Corrupt, empty, over-the-pixel-limit, 1x1 and blank images sent concurrently with the held-out
    scenes (so the server batches them together): each bad one gets its own clear error or an empty
    result, each good one exactly the detections it gets alone."""
    good = list(held_out)[:9]
    scene = held_out[good[0]]
    bad = {
        "truncated": (scene[: len(scene) // 2], "truncated or corrupt PNG data"),
        "empty": (b"", "is empty (0 bytes)"),  # refused by the client before sending
        "huge": (png_header_bomb(), "pixels"),
    }
    odd = {"tiny": _png((1, 1)), "blank": _png((333, 77))}
    jobs = [("good", n, held_out[n]) for n in good]
    for i, (name, (data, _)) in enumerate(bad.items()):
        jobs.insert(3 * i + 1, ("bad", name, data))
    jobs += [("odd", name, data) for name, data in odd.items()]

    async def run():
        async with AsyncClient(detector_server.grpc_url, model=fx.NAME, timeout=60) as c:
            return await asyncio.gather(*(c.detect([data]) for _, _, data in jobs), return_exceptions=True)

    for (kind, name, _), outcome in zip(jobs, asyncio.run(run()), strict=True):
        if kind == "bad":
            assert isinstance(outcome, InvalidInput), (name, outcome)
            assert bad[name][1] in str(outcome), (name, outcome)
            continue
        assert not isinstance(outcome, BaseException), (name, outcome)
        [found] = outcome
        if kind == "good":
            assert [d.index for d in found] == [d.index for d in served[name]], name
            np.testing.assert_allclose([d.box for d in found], [d.box for d in served[name]], atol=1e-3)
        elif name == "tiny":
            assert all(0 <= d.box[2] <= 1 and 0 <= d.box[3] <= 1 for d in found)
        else:
            assert all(d.score < 0.5 for d in found), found  # nothing in it: nothing confident found


def test_classify_on_a_detector_names_the_right_call(client):
    with pytest.raises(InvalidInput, match="not a cvserve classifier"):
        client.classify([_png((32, 32))])


def test_predict_cli_prints_json_and_draws_boxes(detector_server, scenes, tmp_path, capsys):
    from cvserve.cli import main

    image = sorted(scenes.validation.glob("*.png"))[0]
    code = main(
        ["predict", fx.NAME, str(image), "--url", detector_server.grpc_url, "--json", "--draw", str(tmp_path)]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload[0]["image"] == str(image) and isinstance(payload[0]["detections"], list)
    drawn = tmp_path / image.name
    assert Image.open(drawn).size == Image.open(image).size


def test_the_ensemble_layout_builds_a_detector_end_to_end(scenes, tmp_path):
    """The trained detector through every build stage into the four-model ensemble (NGC's layout): the
    network's graph ends in NMS, a python step maps the boxes back. The embedded server cannot run the
    native network step; the postprocess step alone is served in test_detect_postprocess.py. (ONNX
    Runtime's backend: Triton's openvino backend cannot pin f32, docs/hardware.md.)"""
    runtime = "onnxruntime"
    from cvserve.builders import pipeline
    from cvserve.builders import triton_config as tc
    from cvserve.builders.repository import Repository

    repository = tmp_path / "models"
    settings = pipeline.BuildSettings(
        checkpoint=scenes.checkpoint, name="scenes", task="detect", labels=scenes.labels,
        repository=repository, preprocess=scenes.spec, detection=fx.NMS,
        export=pipeline.ExportSettings(verify_images=sorted(scenes.validation.glob("*.png"))[:8]),
        serving=pipeline.ServingOptions(layout="ensemble", runtime=runtime), progress=False,
    )  # fmt: skip
    report = pipeline.build(settings, log=lambda _: None).report
    assert report["network"]["layout"] == "ensemble" and report["task"]["name"] == "detect"
    served = report["verification"]["served"]
    assert served is not None and served["images"] >= 1  # the NMS-ending graph checked against numpy's rows
    repo = Repository(repository)
    names = sorted(p.name for p in repository.iterdir())
    assert names == ["scenes", "scenes_network", "scenes_postprocess", "scenes_preprocess"]
    ensemble = repo.config("scenes")
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == ["scenes_preprocess", "scenes_network", "scenes_postprocess"]
    assert {o.name for o in ensemble.output} >= {"BOXES", "SCORES", "CLASSES", "COUNT"}
    network = repo.config("scenes_network")
    assert (network.backend, network.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert tc.to_text(network)  # a valid config, written from the protobuf
