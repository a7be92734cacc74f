"""Fixtures for the reliability and serving tests: small real python-backend models scheduled the way
cvserve builds them (the default queue policy of :class:`cvserve.builders.triton_config.Batching`), in
both layouts:

* ``toy_single``: one python model that decodes and classifies (the ``single`` layout in small): a
  dynamic batcher for admission control that executes one request at a time;
* ``toy_ensemble``: an ensemble ``toy_ensemble_preprocess`` (python, no batcher: each request decoded
  alone) -> ``toy_ensemble_network`` (python, batching pixels), the ``ensemble`` layout with python
  models (the embedded server has no other backend).

Both follow the classifier contract (``IMAGE`` BYTES [1] -> ``CLASS_INDEX``, ``SCORE`` [3]): a red
picture is class 0. The models' code is in ``reliability_repo/``; configs come from Triton's protobuf.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.admission import resolve
from cvserve.builders.runtime import LAYOUT
from cvserve.builders.triton_config import ONE_REQUEST_PER_EXECUTION, Batching

HERE = Path(__file__).parent / "reliability_repo"
MAX_BATCH = 8
K = 3
RED, GREEN = (250, 10, 10), (10, 250, 10)


def _io(name: str, dtype: int, dims: list[int]) -> dict:
    return {"name": name, "data_type": dtype, "dims": dims}


def _batched(
    name: str,
    inputs,
    outputs,
    delay_s: float,
    *,
    one_request: bool = False,
    batcher: bool = True,
    instances: int = 1,
) -> mc.ModelConfig:
    """A python model's config; ``one_request``: executions of one request (the single layout),
    ``batcher``: False for no dynamic batcher at all (the ensemble's decoder)."""
    # The build's default admission; a toy's throughput is not measured, so the rule's floor: one max batch.
    b = resolve(Batching(max_batch_size=MAX_BATCH), LAYOUT["single"], None)
    config = mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=MAX_BATCH,
        input=[mc.ModelInput(**i) for i in inputs],
        output=[mc.ModelOutput(**o) for o in outputs],
        instance_group=[mc.ModelInstanceGroup(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(ONE_REQUEST_PER_EXECUTION) if one_request else [],
            default_queue_policy=mc.ModelQueuePolicy(
                timeout_action=mc.ModelQueuePolicy.REJECT,
                default_timeout_microseconds=b.queue_timeout_us,
                allow_timeout_override=True,
                max_queue_size=b.max_queue_size,
            ),
        ),
    )
    if not batcher:
        config.ClearField("dynamic_batching")
    if delay_s:
        config.parameters["delay_s"].string_value = str(delay_s)
    return config


def _write(repo: Path, config: mc.ModelConfig, source: str | None, versions=(1,)) -> None:
    for v in versions:
        (repo / config.name / str(v)).mkdir(parents=True)
        if source:
            shutil.copy(HERE / source, repo / config.name / str(v) / "model.py")
    (repo / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))


def write_repository(repo: Path, *, delay_s: float = 0.0, ensemble: bool = True) -> Path:
    """``toy_single`` (and the ``toy_ensemble`` pipeline) in ``repo``; ``delay_s`` per batch and step."""
    image = _io("IMAGE", mc.TYPE_STRING, [1])
    pixels = _io("PIXELS", mc.TYPE_UINT8, [8, 8, 3])
    outputs = [_io("CLASS_INDEX", mc.TYPE_INT64, [K]), _io("SCORE", mc.TYPE_FP32, [K])]
    repo.mkdir(parents=True, exist_ok=True)
    # Two instances, as builds give the model that runs the network (builders/triton_config.py: with a
    # queue policy, an instance that is handing back its last execution misses a new request's wake-up,
    # which then waits for the batcher's 500 ms re-check unless another instance is waiting).
    single = _batched("toy_single", [image], outputs, delay_s, one_request=True, instances=2)
    _write(repo, single, "toy_single.py")
    if not ensemble:
        return repo
    preprocess = _batched("toy_ensemble_preprocess", [image], [pixels], delay_s, batcher=False)
    _write(repo, preprocess, "toy_preprocess.py")
    _write(repo, _batched("toy_ensemble_network", [pixels], outputs, delay_s), "toy_network.py")
    step = mc.ModelEnsembling.Step
    ensemble_config = mc.ModelConfig(
        name="toy_ensemble",
        platform="ensemble",
        max_batch_size=MAX_BATCH,
        input=[mc.ModelInput(**image)],
        output=[mc.ModelOutput(**o) for o in outputs],
        ensemble_scheduling=mc.ModelEnsembling(
            step=[
                step(
                    model_name="toy_ensemble_preprocess",
                    model_version=-1,
                    input_map={"IMAGE": "IMAGE"},
                    output_map={"PIXELS": "pixels"},
                ),
                step(
                    model_name="toy_ensemble_network",
                    model_version=-1,
                    input_map={"PIXELS": "pixels"},
                    output_map={"CLASS_INDEX": "CLASS_INDEX", "SCORE": "SCORE"},
                ),
            ]
        ),
    )
    _write(repo, ensemble_config, None)
    return repo


def png(rgb: tuple[int, int, int] = RED, size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()
