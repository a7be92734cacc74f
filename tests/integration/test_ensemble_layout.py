"""The ensemble layout (the NGC production layout) on the real embedded Triton.

``cvserve build --layout ensemble --runtime onnxruntime`` writes NAME (ensemble) -> NAME_preprocess (the
python decoder) -> NAME_network (Triton's onnxruntime backend). The embedded server has only the python
backend, so NAME_network's config is switched to a python model that runs the build's own model.onnx
with real ONNX Runtime (``ensemble_repo/onnxruntime_network.py``); the ensemble, the decoder and every
other config are the build's, unchanged. Clients call NAME with encoded images, as in the single layout.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cvserve.client import Client

from ._demo import DEMO_MODEL as NAME
from ._demo import build_demo

STAND_IN = Path(__file__).parent / "ensemble_repo" / "onnxruntime_network.py"


@pytest.fixture(scope="module")
def ensemble_repository(tmp_path_factory) -> Path:
    from cvserve.builders import triton_config as tc
    from cvserve.builders.pipeline import ServingOptions

    repo = tmp_path_factory.mktemp("ensemble") / "models"
    build_demo(repo, ServingOptions(layout="ensemble", runtime="onnxruntime"))
    network = repo / f"{NAME}_network"
    config = tc.parse((network / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.HasField("dynamic_batching")
    # The network batches behind the build's admission control: a queue of at least one max batch.
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size >= config.max_batch_size and policy.default_timeout_microseconds > 0
    config.ClearField("platform")
    config.ClearField("default_model_filename")
    config.backend = "python"
    (network / "config.pbtxt").write_text(tc.to_text(config))
    shutil.copy(STAND_IN, network / "1" / "model.py")
    return repo


@pytest.fixture(scope="module")
def server(ensemble_repository: Path):
    from cvserve.server import ServerSettings, TritonServer

    with TritonServer(
        ServerSettings(
            repository=ensemble_repository, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=10
        )
    ) as triton:
        yield triton


def test_the_build_wrote_the_three_models(ensemble_repository: Path):
    assert sorted(p.name for p in ensemble_repository.iterdir()) == [
        NAME,
        f"{NAME}_network",
        f"{NAME}_preprocess",
    ]


def test_clients_call_name_with_encoded_images_and_get_the_expected_labels(
    server, sample_images, expected_labels
):
    names = sorted(expected_labels)
    with Client(server.grpc_url, model=NAME) as client:
        results = client.classify([sample_images[n] for n in names], top_k=3)
    for name, top in zip(names, results, strict=True):
        assert top[0].label == expected_labels[name], (name, top)
        assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)


def test_a_bad_image_fails_only_its_own_request(server, sample_images):
    good = sample_images["rocket"].read_bytes()
    outcomes: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()
    n = 12

    def callback(i, result, error):
        with lock:
            outcomes[i] = error if error is not None else result
            if len(outcomes) == n:
                done.set()

    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        for i in range(n):
            data = b"definitely not an image" if i == 5 else good
            inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            grpc.async_infer(NAME, [inp], callback=lambda result, error, i=i: callback(i, result, error))
        assert done.wait(60), "every request answered"
        assert grpc.is_model_ready(NAME)
    for i, outcome in outcomes.items():
        if i == 5:
            assert isinstance(outcome, InferenceServerException)
            assert outcome.status() == "StatusCode.INVALID_ARGUMENT", outcome.message()
            assert "not a JPEG or PNG image" in outcome.message()
        else:
            assert not isinstance(outcome, Exception), outcome
            assert outcome.as_numpy("CLASS_INDEX").shape[-1] >= 1


def test_malformed_framing_fails_only_its_own_request(server, ensemble_repository, sample_images):
    """The ensemble's decoder has no dynamic batching, so a BYTES element whose length prefix runs past
    its data (which fails a whole dynamic batch in Triton 2.51's python backend) fails alone here."""
    from cvserve.builders import triton_config as tc
    from cvserve.reliability import payloads as pl

    decoder = tc.parse((ensemble_repository / f"{NAME}_preprocess" / "config.pbtxt").read_text())
    assert not decoder.HasField("dynamic_batching")
    target = pl.Target(NAME, server.grpc_url, "127.0.0.1", server.http_port)
    good = sample_images["rocket"].read_bytes()
    malformed = (len(good) + 100).to_bytes(4, "little") + good

    def call(i: int) -> pl.Outcome:
        return pl.grpc_raw(target, malformed) if i % 4 == 2 else pl.image_request(target, good)

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(call, range(24)))
    for i, outcome in enumerate(outcomes):
        if i % 4 == 2:
            assert outcome.status == "INVALID_ARGUMENT" and "incomplete string data" in outcome.message
        else:
            assert outcome.ok, (i, outcome)
