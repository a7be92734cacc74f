"""The demo model on the real embedded Triton: predictions, the served graph, bad input, batching."""

from __future__ import annotations

import io
import json
import re
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.integration._stats import settled_stats, wait_for

MODEL = "mobilenet_v2"


def _request(data: list[bytes]) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("IMAGE", [len(data), 1], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=np.object_).reshape(-1, 1))
    return [inp]


def _jpeg(path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def grpc(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def labels(grpc) -> list[str]:
    """The class names, from the model's config (contract v2: no LABEL output)."""
    config = grpc.get_model_config(MODEL, as_json=True)["config"]
    return json.loads(config["parameters"]["labels"]["string_value"])


def test_real_photos_get_the_expected_top1(grpc, labels, sample_images, expected_labels):
    names = list(expected_labels)
    result = grpc.infer(MODEL, _request([sample_images[n].read_bytes() for n in names]))
    index = result.as_numpy("CLASS_INDEX")
    assert [labels[i] for i in index[:, 0]] == [expected_labels[n] for n in names]
    scores = result.as_numpy("SCORE")
    assert scores.shape == (len(names), 5)
    assert np.all(np.diff(scores, axis=1) <= 0), "scores sorted best first"
    assert np.all(scores.sum(axis=1) <= 1.0001)
    assert index[:, 0].tolist() == [285, 967, 812]


def test_served_result_equals_the_reference_float_pipeline(grpc, demo_repository, sample_images):
    """Issue 11: uint8 pixels in, normalisation/softmax/top-k in the graph, equal to the float pipeline.

    The reference: the served decode (the same crop), numpy normalisation, the PyTorch checkpoint
    itself, softmax and top-k in numpy.
    """
    from cvserve.builders.checkpoint import load_model
    from cvserve.builders.preprocessing import PreprocessSpec, normalize_batch, pixels
    from cvserve.builders.samples import demo_weights
    from cvserve.builders.verify import softmax_topk, torch_outputs

    spec = PreprocessSpec.load(demo_repository / MODEL / "1")
    images = [p.read_bytes() for p in sample_images.values()]
    result = grpc.infer(MODEL, _request(images))
    batch = np.stack([pixels(data, spec) for data in images])
    model = load_model(demo_weights(), "cvserve.builders.architectures:mobilenet_v2")
    ref_index, ref_score = softmax_topk(torch_outputs(model, normalize_batch(batch, spec)), 5)
    np.testing.assert_array_equal(result.as_numpy("CLASS_INDEX")[:, 0], ref_index[:, 0])
    np.testing.assert_allclose(result.as_numpy("SCORE"), ref_score, atol=1e-4)


def test_the_served_network_computes_in_the_precision_the_build_pinned(triton, demo_repository):
    """FP32 on every CPU: the served model reads the precision back from its compiled network and
    exports it. On a CPU with native bf16, OpenVINO's default would have been bf16."""
    from cvserve.loadtests.metrics import network_info

    report = json.loads((demo_repository / MODEL / "1" / "build_report.json").read_text())
    assert network_info(triton.metrics_url, MODEL) == [
        {"model": MODEL, "version": "1", "runtime": "openvino", "precision": "f32"}
    ]
    metrics = urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()
    layers = {
        m.group(1): int(float(m.group(2)))
        for m in re.finditer(r'cvserve_network_layers\{[^}]*precision="(\w+)"[^}]*\} (\S+)', metrics)
    }
    assert layers == report["network"]["layer_precisions"] and set(layers) == {"f32"}


def test_jpeg_and_png_of_the_same_photo_agree(grpc, labels, sample_images):
    png = sample_images["coffee"].read_bytes()
    jpeg = _jpeg(sample_images["coffee"])
    result = grpc.infer(MODEL, _request([png, jpeg]))
    assert [labels[i] for i in result.as_numpy("CLASS_INDEX")[:, 0]] == ["espresso", "espresso"]


def test_metadata_describes_the_contract(grpc):
    meta = grpc.get_model_metadata(MODEL, as_json=True)
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("IMAGE", "BYTES")]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("CLASS_INDEX", "INT64"),
        ("SCORE", "FP32"),
        ("FEATURES", "FP32"),  # the feature summary the model counts; clients ask for the others by name
    ]
    index = grpc.get_model_repository_index(as_json=True)["models"]
    assert [m["name"] for m in index] == [MODEL], "one model: no ensemble, no python pre/post hop"


@pytest.mark.parametrize(
    "bad",
    [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, None],
    ids=["empty", "text", "png-header-only", "truncated-jpeg"],
)
def test_a_bad_image_fails_only_its_own_request(grpc, triton, labels, sample_images, bad):
    """Good requests batched together with a bad one by the dynamic batcher still succeed."""
    if bad is None:
        bad = _jpeg(sample_images["chelsea"])[:2000]
    good = sample_images["rocket"].read_bytes()
    results: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()
    n = 12

    def callback(i, result, error):
        with lock:
            results[i] = error if error is not None else result
            if len(results) == n:
                done.set()

    for i in range(n):
        data = bad if i == 5 else good
        grpc.async_infer(
            MODEL, _request([data]), callback=lambda result, error, i=i: callback(i, result, error)
        )
    assert done.wait(60), "every request answered"
    for i, outcome in results.items():
        if i == 5:
            assert isinstance(outcome, InferenceServerException)
            assert outcome.status() == "StatusCode.INVALID_ARGUMENT"
            message = outcome.message()
            assert "not a JPEG or PNG image" in message or "empty image" in message or "truncated" in message
        else:
            assert not isinstance(outcome, Exception), (outcome.status(), outcome.message())
            assert labels[outcome.as_numpy("CLASS_INDEX")[0, 0]] == "space shuttle"
    assert grpc.is_server_ready() and grpc.is_model_ready(MODEL)


def test_each_request_executes_alone_and_its_images_as_one_batch(grpc, triton, sample_images):
    """16 concurrent one-image requests: 16 executions (none joins another, so a request with malformed
    framing fails alone, docs/security.md); one request of 4 images: one execution of batch 4."""
    before = settled_stats(triton.grpc_url, MODEL)
    start = int(before["inference_stats"]["success"]["count"])
    data = sample_images["coffee"].read_bytes()
    done = threading.Semaphore(0)
    for _ in range(16):
        grpc.async_infer(MODEL, _request([data]), callback=lambda result, error: done.release())
    for _ in range(16):
        assert done.acquire(timeout=60)
    grpc.infer(MODEL, _request([data] * 4))
    after = settled_stats(triton.grpc_url, MODEL, at_least=start + 17)
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert (inferences, executions) == (16 + 4, 16 + 1)


def test_a_request_with_many_images_in_one_call(grpc, sample_images):
    max_batch = grpc.get_model_config(MODEL, as_json=True)["config"]["max_batch_size"]
    photos = [p.read_bytes() for p in sample_images.values()]
    data = (photos * max_batch)[:max_batch]  # one call as large as the model takes
    result = grpc.infer(MODEL, _request(data))
    assert result.as_numpy("CLASS_INDEX").shape == (len(data), 5)


def _anonymous_mb(pid: int) -> int:
    """A process's anonymous resident memory (its heap and private mappings, not shared memory), MiB."""
    from pathlib import Path

    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^RssAnon:\s+(\d+) kB", status, re.M).group(1)) // 1024


def test_the_python_models_return_large_request_buffers_to_the_system(demo_repository):
    """After 20 MiB requests (the largest image the model takes) each stub's anonymous memory comes back
    to where it was: tritonserver runs its stubs with glibc's mmap and trim thresholds fixed
    (cvserve.server.process.MALLOC_ENV), so such a buffer is returned when freed. With glibc's own moving
    thresholds (set here as it would set them after the first large free: mmap 32 MiB, trim 64 MiB) a
    stub kept about 20 MB per request it had served at once, for good.

    A fresh server: one that has served a large request already holds that memory in either case.
    tritonserver's own memory is not checked: it grew alike with either setting (by about 250 MB over
    24 such requests, measured on the 2-core reference).
    """
    from concurrent.futures import ThreadPoolExecutor

    from cvserve.reliability import payloads as pl
    from cvserve.server import ServerSettings, TritonServer
    from cvserve.server.process import group_members

    settings = ServerSettings(
        repository=demo_repository, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5
    )
    with TritonServer(settings) as server:
        # ready means every endpoint: Triton starts its metrics service after HTTP answers ready
        with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
            assert r.status == 200 and b"nv_inference_count" in r.read()
        target = pl.Target(MODEL, server.grpc_url, "127.0.0.1", server.http_port)
        photo = pl.good_images()[0][0]
        largest = photo + b"\0" * (20 * pl.MiB - len(photo))  # still a valid JPEG: data after its end
        with ThreadPoolExecutor(4) as pool:  # warm: every stub has decoded and classified a photo
            assert all(o.ok for o in pool.map(lambda _: pl.image_request(target, photo), range(8)))
        stubs = [p for p in group_members(server.pid) if p != server.pid]
        assert stubs, "the python models run in stub processes"
        before = {pid: _anonymous_mb(pid) for pid in stubs}
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(lambda _: pl.image_request(target, largest), range(8)))
        assert all(o.ok and o.top1 is not None for o in outcomes), outcomes  # decoded by the stubs

        def returned() -> bool:  # a stub frees a request's buffers just after it has answered it
            return all(_anonymous_mb(pid) - before[pid] < 10 for pid in stubs)  # < half a request

        wait_for(returned, 30, f"the stubs' memory to return to {before} MiB")
