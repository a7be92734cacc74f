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
