"""The default queue bound (builders/admission.py): Little's law on the SLO, resolved to a number at build."""

from __future__ import annotations

import pytest

from cvserve.builders import admission as ad
from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc

SHAPE = tc.PipelineShape(pixels_shape=(8, 8, 3), top_k=2, labels=["a", "b", "c"])


def test_the_queue_holds_what_the_server_finishes_within_half_the_slo():
    # 260 img/s, one image per request, 500 ms SLO: 260 x 0.5 x 0.5 s = 65 requests.
    assert ad.queue_bound(260.0, slo_p95_ms=500, max_batch_size=16) == 65
    assert ad.queue_bound(261.9, slo_p95_ms=500, max_batch_size=16) == 65  # whole requests, rounded down
    assert ad.queue_bound(260.0, slo_p95_ms=1000, max_batch_size=16) == 130  # a looser SLO queues more


def test_the_queue_is_never_below_one_max_batch():
    assert ad.queue_bound(40.0, slo_p95_ms=500, max_batch_size=16) == 16  # 10 by the rule
    assert ad.queue_bound(None, slo_p95_ms=500, max_batch_size=16) == 16  # not measured


def test_resolve_writes_an_absolute_number_and_keeps_an_explicit_one():
    single = rt.LAYOUT["single"]
    derived = ad.resolve(tc.Batching(max_batch_size=16), single, 260.0)
    assert derived.max_queue_size == 65
    assert ad.resolve(tc.Batching(max_queue_size=5), single, 260.0).max_queue_size == 5  # --max-queue-size N
    assert ad.resolve(tc.Batching(max_queue_size=0), single, 260.0).max_queue_size == 0  # 0: unbounded


@pytest.mark.parametrize("layout", ["single", "ensemble"])
def test_the_config_writer_writes_the_resolved_number(layout):
    plan = rt.decide(target="cpu", runtime="openvino", layout=layout)
    b = ad.resolve(tc.Batching(max_batch_size=16), plan.roles, 260.0)
    cfgs = tc.pipeline_configs("m", plan, SHAPE, b, tc.VersionPolicy())
    queued = [c for c in cfgs.values() if c.HasField("dynamic_batching")]
    assert queued and all(c.dynamic_batching.default_queue_policy.max_queue_size == 65 for c in queued)
    assert "max_queue_size: 65" in tc.to_text(queued[0])


def test_an_unresolved_default_never_reaches_a_config():
    plan = rt.decide(target="cpu", runtime="openvino", layout="single")
    with pytest.raises(ValueError, match="derived at build time"):
        tc.Batching().scheduling(plan.roles)


def test_a_gpu_build_is_not_timed_here_and_says_so(tmp_path):
    plan = rt.decide(target="gpu", runtime="onnxruntime", layout="ensemble")
    b, entry = ad.admission(tc.Batching(max_batch_size=32), plan, tmp_path / "none.onnx", [], None, print)
    assert b.max_queue_size == 32 and entry["max_queue_size"] == 32
    assert entry["throughput"] is None and "not timed" in entry["source"]
    explicit, entry = ad.admission(tc.Batching(max_queue_size=7), plan, tmp_path, [], None, print)
    assert explicit.max_queue_size == 7 and entry["source"] == "--max-queue-size"


def _measured(img_s_per_instance: float, instances: int = 2) -> dict:
    return {"img_s_per_instance": img_s_per_instance, "instances": instances}


def test_a_short_request_gets_the_advice_to_run_more_instances():
    hint = ad.instances_hint(_measured(800.0), one_request=True)  # 1.25 ms a request
    assert (
        hint is not None and "1.2 ms" in hint and f"--network-instances {ad.SHORT_REQUEST_INSTANCES}" in hint
    )
    assert ad.instances_hint(_measured(100.0), one_request=True) is None  # 10 ms: the gap is a few percent
    assert ad.instances_hint(_measured(800.0, instances=6), one_request=True) is None  # already enough
    assert ad.instances_hint(_measured(800.0), one_request=False) is None  # batched requests: not measured so
    assert ad.instances_hint(None, one_request=True) is None  # a GPU build: not timed


def test_a_short_request_gets_more_instances_unless_the_flag_says_otherwise():
    auto = tc.Batching()
    assert ad.network_instances(auto, 1.3)[0] == ad.SHORT_REQUEST_INSTANCES  # the trained detector's
    count, why = ad.network_instances(auto, 8.0)  # the demo's INT8 classifier's
    assert count == tc.NETWORK_INSTANCES and "8.0 ms" in why
    assert ad.network_instances(auto, None)[0] == tc.NETWORK_INSTANCES  # not timed (a GPU build, batching)
    assert ad.network_instances(tc.Batching(network_instances=3), 1.3) == (3, "--network-instances")
    single = rt.LAYOUT["single"]
    assert ad.resolve(auto, single, 260.0, 6).network_instances == 6
    assert ad.resolve(auto, single, 260.0).network_instances == tc.NETWORK_INSTANCES
    assert ad.resolve(tc.Batching(network_instances=1), single, 260.0, 6).network_instances == 1


def test_instances_that_share_cores_do_not_multiply_the_throughput():
    assert ad.lanes(2, cores=2, threads=1) == 2
    assert ad.lanes(6, cores=2, threads=1) == 2  # six instances, two cores: two run at once
    assert ad.lanes(6, cores=16, threads=2) == 6


def _tiny_network(tmp_path):
    import io

    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from PIL import Image

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["PIXELS"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["MEAN"], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("PIXELS", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("MEAN", TensorProto.FLOAT, [])],
    )
    network = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(network))
    photo = tmp_path / "a.png"
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(buf, format="PNG")
    photo.write_bytes(buf.getvalue())
    return network, photo


@pytest.mark.parametrize("max_queue_size", [None, 64])
def test_the_build_times_a_cpu_network_and_picks_the_instances_from_the_figure(tmp_path, max_queue_size):
    """A real (tiny) served graph timed in OpenVINO: the entry holds the measurement, and the network
    gets more instances exactly when the measured request is short (the figure is this machine's),
    whether or not the queue bound is given."""
    from cvserve.builders.preprocessing import PreprocessSpec

    network, photo = _tiny_network(tmp_path)
    plan = rt.decide(target="cpu", runtime="openvino", layout="single")
    lines: list[str] = []
    batching = tc.Batching(max_batch_size=16, max_queue_size=max_queue_size)
    resolved, entry = ad.admission(
        batching, plan, network, [photo], PreprocessSpec(input_size=(8, 8)), lines.append
    )
    measured = entry["throughput"]
    short = 1000.0 / measured["img_s_per_instance"] < ad.SHORT_REQUEST_MS
    want = ad.SHORT_REQUEST_INSTANCES if short else tc.NETWORK_INSTANCES
    assert measured["batch"] == 1 and measured["instances"] == want == entry["network_instances"]
    assert resolved.network_instances == want and resolved.max_queue_size >= 16
    assert any(f"{want} network instances" in line for line in lines)
    assert not entry.get("hint")  # the build chose: nothing to advise


def test_a_short_request_on_fewer_instances_given_by_flag_gets_the_advice(tmp_path):
    from cvserve.builders.preprocessing import PreprocessSpec

    network, photo = _tiny_network(tmp_path)
    plan = rt.decide(target="cpu", runtime="openvino", layout="single")
    lines: list[str] = []
    batching = tc.Batching(max_batch_size=16, network_instances=2)
    resolved, entry = ad.admission(
        batching, plan, network, [photo], PreprocessSpec(input_size=(8, 8)), lines.append
    )
    assert resolved.network_instances == 2 and entry["instances_source"] == "--network-instances"
    short = 1000.0 / entry["throughput"]["img_s_per_instance"] < ad.SHORT_REQUEST_MS
    assert (entry["hint"] is not None) == short
    assert any("--network-instances" in line for line in lines) == short
