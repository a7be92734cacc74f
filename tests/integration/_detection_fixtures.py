"""The trained detector: scenes composed from real photos (cached per session), built and served.

``make_scenes`` trains the YOLO-layout detector of :mod:`cvserve.builders.detection_data` once per
session (seconds on 2 cores); the FP32 build is served by a real embedded Triton on free ports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvserve.builders.detection import NmsSettings

NAME = "scenes"
NMS = NmsSettings(score_threshold=0.05, iou_threshold=0.5, max_detections=20)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory):
    from cvserve.builders.detection_data import make_scenes

    return make_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="session")
def held_out(scenes) -> dict[str, bytes]:
    """File name -> PNG bytes of the held-out scenes, in the ground truth's order."""
    truth = json.loads(scenes.truth.read_text())
    return {im["file_name"]: (scenes.validation / im["file_name"]).read_bytes() for im in truth["images"]}


def build_detector(
    scenes, repository: Path, *, checkpoint: Path | None = None, detection: NmsSettings = NMS, **quantization
) -> dict:
    from cvserve.builders import pipeline
    from cvserve.builders import triton_config as tc
    from cvserve.builders.quantize import QuantizeSettings

    verify = sorted(scenes.validation.glob("*.png"))[:8]
    settings = pipeline.BuildSettings(
        checkpoint=checkpoint or scenes.checkpoint,
        name=NAME,
        task="detect",
        labels=scenes.labels,
        repository=repository,
        preprocess=scenes.spec,
        export=pipeline.ExportSettings(verify_images=verify),
        quantization=QuantizeSettings(**quantization),
        detection=detection,
        serving=pipeline.ServingOptions(batching=tc.Batching(max_queue_size=256, queue_timeout_ms=60_000)),
        progress=False,
    )
    return pipeline.build(settings, log=lambda _: None).report


@pytest.fixture(scope="session")
def detector_build(scenes, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    repository = tmp_path_factory.mktemp("detector_repo") / "models"
    return repository, build_detector(scenes, repository)


@pytest.fixture(scope="session")
def detector_server(detector_build) -> Iterator[object]:
    from cvserve.server import ServerSettings, TritonServer

    settings = ServerSettings(
        repository=detector_build[0], grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5
    )
    with TritonServer(settings) as server:
        yield server
