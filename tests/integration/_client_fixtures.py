"""Fixtures for the client's integration tests: a small real Triton repository of python-backend models.

The models' code lives in ``client_repo/``; their ``config.pbtxt`` files are written here from Triton's
own ``model_config`` protobuf. ``toy_classifier`` follows the cvserve classification contract v2 with a
small max batch size (so that splitting is exercised), K=3 and its class names in the config parameter
``labels``; ``slow_classifier`` is the same model sleeping 0.3 s per batch (for deadlines) and without
``labels`` (its classes are "0", "1", "2"); ``versioned_classifier`` serves versions 1 and 2 side by side
(version 2 rolls the colour channels); ``legacy_classifier`` has the ``LABEL`` output of models built
before contract v2 and no ``labels``; ``add_sub`` serves the generic ``infer`` tests.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

HERE = Path(__file__).parent / "client_repo"
TOY_MAX_BATCH = 4
TOY_K = 3
COLOURS = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}  # class index order


def _tensor(name: str, dtype: int, dims: list[int]) -> dict:
    return {"name": name, "data_type": dtype, "dims": dims}


def _write_model(
    repo: Path, name: str, source: str, config: mc.ModelConfig, versions: tuple[int, ...] = (1,)
) -> None:
    for number in versions:
        version = repo / name / str(number)
        version.mkdir(parents=True)
        shutil.copy(HERE / source, version / "model.py")
    if len(versions) > 1:
        config.version_policy.specific.versions.extend(versions)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))


def _classifier_config(
    name: str, delay_s: float = 0.0, *, labels: bool = True, legacy_label: bool = False
) -> mc.ModelConfig:
    outputs = [("CLASS_INDEX", mc.TYPE_INT64), ("SCORE", mc.TYPE_FP32)]
    outputs += [("LABEL", mc.TYPE_STRING)] if legacy_label else []
    config = mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=TOY_MAX_BATCH,
        input=[mc.ModelInput(**_tensor("IMAGE", mc.TYPE_STRING, [1]))],
        output=[mc.ModelOutput(**_tensor(n, dtype, [TOY_K])) for n, dtype in outputs],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    if labels:
        config.parameters["labels"].string_value = json.dumps(list(COLOURS))
    if delay_s:
        config.parameters["delay_s"].string_value = str(delay_s)
    return config


def write_repository(repo: Path, *, only: Collection[str] | None = None) -> Path:
    """Write the client test repository into ``repo`` (created) and return it.

    ``only`` names the models to write (all by default), for a server that starts and stops faster.
    """
    add_sub = mc.ModelConfig(
        name="add_sub",
        backend="python",
        max_batch_size=8,
        input=[mc.ModelInput(**_tensor(n, mc.TYPE_FP32, [4])) for n in ("INPUT0", "INPUT1")],
        output=[mc.ModelOutput(**_tensor(n, mc.TYPE_FP32, [4])) for n in ("OUTPUT0", "OUTPUT1")],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    models = [
        ("toy_classifier", "toy_classifier.py", _classifier_config("toy_classifier"), (1,)),
        (
            "slow_classifier",
            "toy_classifier.py",
            _classifier_config("slow_classifier", 0.3, labels=False),
            (1,),
        ),
        (
            "legacy_classifier",
            "toy_classifier.py",
            _classifier_config("legacy_classifier", labels=False, legacy_label=True),
            (1,),
        ),
        ("versioned_classifier", "toy_classifier.py", _classifier_config("versioned_classifier"), (1, 2)),
        ("add_sub", "add_sub.py", add_sub, (1,)),
    ]
    repo.mkdir(parents=True, exist_ok=True)
    for name, source, config, versions in models:
        if only is None or name in only:
            _write_model(repo, name, source, config, versions)
    return repo


BUSY_DELAY_S = 0.3
# Longer than the 0.5 s Triton's batcher may wait before it looks at its queue again when no request
# arrives (docs/serving.md): a request the client's queue timeout (its deadline less this) expired is
# then dropped before the client's own deadline passes, not after it.
DEADLINE_DELAY_S = 0.6


def _busy_config(
    name: str, *, max_queue_size: int, queue_timeout_us: int = 0, delay_s: float = BUSY_DELAY_S
) -> mc.ModelConfig:
    """A slow model whose dynamic batcher rejects what its queue policy does not admit."""
    config = mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=1,
        input=[mc.ModelInput(**_tensor("X", mc.TYPE_FP32, [1]))],
        output=[mc.ModelOutput(**_tensor("Y", mc.TYPE_FP32, [1]))],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    policy = config.dynamic_batching.default_queue_policy
    policy.max_queue_size = max_queue_size
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = queue_timeout_us
    config.parameters["delay_s"].string_value = str(delay_s)
    return config


def write_overload_repository(repo: Path) -> Path:
    """Three slow models (one instance, 0.3 s a batch of 1; ``deadline`` 0.6 s) with Triton's queue
    policy set to REJECT: ``queue_full`` admits one queued request (``max_queue_size: 1``); ``queue_timeout`` queues any
    number but rejects a request still queued after 50 ms (``default_timeout_microseconds``);
    ``deadline`` queues any number for up to a minute, and takes a shorter timeout from each request
    (``allow_timeout_override``, as a build's models do; Triton only lets a request shorten the
    model's own timeout, so a model without one ignores the requests')."""
    repo.mkdir(parents=True, exist_ok=True)
    _write_model(repo, "queue_full", "sleeper.py", _busy_config("queue_full", max_queue_size=1))
    timeout = _busy_config("queue_timeout", max_queue_size=0, queue_timeout_us=50_000)
    _write_model(repo, "queue_timeout", "sleeper.py", timeout)
    deadline = _busy_config(
        "deadline", max_queue_size=0, queue_timeout_us=60_000_000, delay_s=DEADLINE_DELAY_S
    )
    deadline.dynamic_batching.default_queue_policy.allow_timeout_override = True
    _write_model(repo, "deadline", "sleeper.py", deadline)
    return repo


PACED = "paced_classifier"


def write_paced_repository(repo: Path, release_file: Path) -> Path:
    """Models for flow control: ``paced_classifier``, the toy classifier with the config a build writes
    (the single layout's: one request per execution, two instances, and the default queue bound, which
    for a model whose throughput is not measured is one max batch, 4), and ``gate``, which holds every
    request until ``release_file`` exists."""
    from cvserve.builders import runtime as rt
    from cvserve.builders import triton_config as tc
    from cvserve.builders.admission import resolve

    repo.mkdir(parents=True, exist_ok=True)
    shape = tc.PipelineShape(pixels_shape=(8, 8, 3), top_k=TOY_K, labels=list(COLOURS))
    plan = rt.decide(target="cpu", runtime="openvino", layout="single")
    scheduling = resolve(tc.Batching(max_batch_size=TOY_MAX_BATCH), plan.roles, None)
    config = tc.pipeline_configs(PACED, plan, shape, scheduling, tc.VersionPolicy())[rt.ENTRY]
    _write_model(repo, PACED, "toy_classifier.py", config)
    gate = _busy_config("gate", max_queue_size=0)
    gate.ClearField("dynamic_batching")
    del gate.parameters["delay_s"]
    gate.parameters["release_file"].string_value = str(release_file)
    _write_model(repo, "gate", "gate.py", gate)
    return repo


def png(rgb: tuple[int, int, int], size: int = 8) -> bytes:
    """A small solid-colour PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Triton server (module-scoped) serving the client test repository."""
    from cvserve.server import ServerSettings, TritonServer

    repo = write_repository(tmp_path_factory.mktemp("client_repo") / "models")
    settings = ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    with TritonServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def colour_pngs() -> dict[str, bytes]:
    return {name: png(rgb) for name, rgb in COLOURS.items()}


__all__ = [
    "BUSY_DELAY_S",
    "COLOURS",
    "PACED",
    "TOY_K",
    "TOY_MAX_BATCH",
    "colour_pngs",
    "png",
    "toy_server",
    "write_overload_repository",
    "write_paced_repository",
    "write_repository",
]
