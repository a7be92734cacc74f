"""The tuner's models, search space, bounds (engine profile, thread budget) and config mapping, both layouts."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.admission import resolve
from cvserve.builders.profile import EngineProfile
from cvserve.errors import UserInputError
from cvserve.server.control import config_from_json, config_to_json
from cvserve.tune.candidates import (
    Candidate,
    build_space,
    profile_batch_bound,
)
from cvserve.tune.models import Pipeline, discover

SHAPE = tc.PipelineShape(pixels_shape=(224, 224, 3), top_k=5, labels=["a", "b", "c", "d", "e"])


def configs(layout="single", runtime="openvino", target="cpu", **batching) -> dict[str, mc.ModelConfig]:
    """Model name -> config, as cvserve build writes them (max batch 32 unless given: the figures below
    are written for it, whatever the build default)."""
    plan = rt.decide(target=target, runtime=runtime, layout=layout)
    batching.setdefault("max_batch_size", 32)
    cfgs = tc.pipeline_configs(
        "net", plan, SHAPE, resolve(tc.Batching(**batching), plan.roles, None), tc.VersionPolicy()
    )
    return {cfg.name: cfg for cfg in cfgs.values()}


def pipeline(layout="single", runtime="openvino", target="cpu", **batching) -> Pipeline:
    by_name = configs(layout, runtime, target, **batching)
    return discover("net", by_name.__getitem__)


def test_discovery_reads_the_layout_and_the_roles_from_the_configs():
    single = pipeline()
    assert (single.layout, single.models, single.network_role) == (
        "single",
        {"classifier": "net"},
        "classifier",
    )
    assert single.threads_parameter == "intra_op_threads" and single.roles.decode == "classifier"
    assert single.threads_share_cores and single.queue_roles == ("classifier",)

    # Step models under other names than NAME_*: roles come from the configs, not from the names.
    by_name = configs("ensemble", "onnxruntime")
    renamed = {"pre": by_name["net_preprocess"], "body": by_name["net_network"], "net": by_name["net"]}
    steps = renamed["net"].ensemble_scheduling.step
    steps[0].model_name, steps[1].model_name = "pre", "body"
    ens = discover("net", renamed.__getitem__)
    assert ens.layout == "ensemble" and ens.models == {
        "classifier": "net",
        "preprocess": "pre",
        "network": "body",
    }
    assert ens.threads_parameter == "intra_op_thread_count" and not ens.threads_share_cores
    # the decoder does not batch (malformed framing fails alone): only the network queues
    assert ens.roles.decode == "preprocess" and ens.queue_roles == ("network",)
    assert pipeline("ensemble", "openvino").threads_parameter == "INFERENCE_NUM_THREADS"
    assert pipeline("ensemble", "tensorrt", "gpu").threads_parameter is None  # GPU: no CPU thread budget


def test_an_ensemble_of_unknown_steps_is_refused():
    by_name = configs("ensemble", "onnxruntime")
    by_name["net"].ensemble_scheduling.step.add(model_name="net_postprocess")
    by_name["net_postprocess"] = mc.ModelConfig(name="net_postprocess", backend="python")
    with pytest.raises(UserInputError, match="net_preprocess, net_network, net_postprocess"):
        discover("net", by_name.__getitem__)


def test_single_layout_round_trips_through_its_config():
    p = pipeline(queue_timeout_ms=200)
    start = p.scheduling()
    assert start == Candidate(
        max_batch_size=32,
        preferred_batch_sizes=tc.ONE_REQUEST_PER_EXECUTION,
        network_instances=2,
        network_threads=0,
        decode_threads=0,
        max_queue_size=32,
        queue_timeout_us=200_000,
    )
    c = Candidate(
        max_batch_size=16,
        preferred_batch_sizes=(8,),
        max_queue_delay_us=500,
        network_instances=2,
        network_threads=1,
        decode_threads=2,
        max_queue_size=16,
        queue_timeout_us=100_000,
    )
    new = p.apply(c)
    assert set(new) == {"classifier"}
    cfg = new["classifier"]
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    assert cfg.parameters["decode_threads"].string_value == "2"
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 16
    assert cfg.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert Pipeline(name="net", layout="single", models=p.models, configs=new).scheduling() == c
    assert p.configs["classifier"].max_batch_size == 32  # the input is not modified


def test_ensemble_layout_round_trips_and_spreads_each_knob_to_its_model():
    p = pipeline("ensemble", "openvino")
    start = p.scheduling()
    assert start.preprocess_instances == 2 and start.decode_threads == 0 and start.network_threads == 0
    c = (
        start.with_value("max_batch_size", 8)
        .with_value("network_instances", 2)
        .with_value("network_threads", 1)
    )
    c = c.with_value("preprocess_instances", 3).with_value("max_queue_size", 32)
    new = p.apply(c)
    assert all(cfg.max_batch_size == 8 for cfg in new.values())
    assert new["classifier"].HasField("ensemble_scheduling") and not new["classifier"].HasField(
        "dynamic_batching"
    )
    assert new["network"].parameters["INFERENCE_NUM_THREADS"].string_value == "1"
    assert new["network"].instance_group[0].count == 2 and new["preprocess"].instance_group[0].count == 3
    assert new["network"].dynamic_batching.default_queue_policy.max_queue_size == 32
    assert not new["preprocess"].HasField("dynamic_batching")
    assert Pipeline(name="net", layout="ensemble", models=p.models, configs=new).scheduling() == c
    # Threads back to 0: a native backend gets no parameter (its own default), not "0".
    back = p.apply(c.with_value("network_threads", 0))
    assert "INFERENCE_NUM_THREADS" not in back["network"].parameters


def test_lowering_the_max_batch_drops_preferred_sizes_it_cannot_form():
    p = pipeline("ensemble", "onnxruntime")
    p.configs["preprocess"].dynamic_batching.preferred_batch_size.append(32)  # as Triton fills it in
    new = p.apply(p.scheduling().with_value("max_batch_size", 8))
    assert list(new["preprocess"].dynamic_batching.preferred_batch_size) == []


def test_space_respects_the_batch_bound_and_the_slo():
    start = Candidate(max_batch_size=32, max_queue_delay_us=2000, queue_timeout_us=500_000)
    space = build_space(start, batch_bound=16, max_instances=3, slo_p95_ms=8.0, cores=4, max_users=8)
    assert max(space.values["max_batch_size"]) == 16
    assert all(p <= 16 for (p,) in [v for v in space.values["preferred_batch_sizes"] if v])
    assert max(space.values["max_queue_delay_us"]) == 2000  # the start's value stays reachable
    assert [d for d in space.values["max_queue_delay_us"] if d != 2000 and d > 2000] == []
    assert space.values["network_instances"] == [1, 2, 3]
    assert space.values["queue_timeout_us"] == [2000, 4000, 8000, 16000, 500_000]  # SLO fractions + start
    assert space.values["max_queue_size"] == [0, 4, 8, 16, 32]
    assert "preprocess_instances" not in space.values and "decode_threads" not in space.values
    assert not space.valid(start)  # 32 > the profile's 16


def test_a_model_that_executes_one_request_at_a_time_keeps_doing_so():
    """The single layout's default (malformed framing fails alone): tuning never joins requests."""
    start = pipeline(max_batch_size=16).scheduling()
    space = build_space(start, batch_bound=16, max_instances=2, slo_p95_ms=100, cores=2)
    assert space.values["preferred_batch_sizes"] == [(1,)] and space.values["max_queue_delay_us"] == [0]
    assert space.values["max_batch_size"] == [1, 2, 4, 8, 16]  # images a request may carry
    batched = pipeline(max_batch_size=16, batch_requests=True).scheduling()
    assert len(build_space(batched, batch_bound=16, max_instances=2, slo_p95_ms=100, cores=2).values[
        "preferred_batch_sizes"]) > 1  # fmt: skip


def test_thread_budget_bounds_instances_times_threads():
    start = Candidate(max_batch_size=8, network_threads=2, decode_threads=0)
    space = build_space(start, batch_bound=8, max_instances=4, slo_p95_ms=100, cores=2)
    assert space.values["network_threads"] == [0, 1, 2]
    # One more instance at 2 threads would need 4 cores: the step lowers the threads to fit.
    _, up = space.neighbours(start, "network_instances")
    assert (up.network_instances, up.network_threads) == (2, 1)
    two = up
    assert space.neighbours(two, "network_threads")[1] is None  # 2 x 2 > 2 cores
    # More instances than cores, one thread each, take turns (no pools wait on each other): allowed.
    assert space.valid(two.with_value("network_instances", 3))
    assert not space.valid(two.with_value("network_instances", 3).with_value("network_threads", 2))
    _, three = space.neighbours(start.with_value("network_instances", 2), "network_instances")
    assert (three.network_instances, three.network_threads) == (3, 1)  # the step lowers the threads
    assert space.valid(two.with_value("network_threads", 0))  # 0: the cores shared among instances
    # A native backend's 0 is every core per instance: two instances need explicit threads.
    native = build_space(
        start, batch_bound=8, max_instances=4, slo_p95_ms=100, cores=2, threads_share_cores=False
    )
    assert not native.valid(two.with_value("network_threads", 0))
    gpu = build_space(Candidate(max_batch_size=8), batch_bound=8, max_instances=4, slo_p95_ms=100, cores=None)
    assert "network_threads" not in gpu.values and gpu.valid(Candidate(max_batch_size=8, network_instances=4))


def test_neighbours_walk_one_step_and_stay_valid():
    start = Candidate(max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_us=1000)
    space = build_space(start, batch_bound=8, max_instances=2, slo_p95_ms=100, cores=2)
    down, up = space.neighbours(start, "max_batch_size")
    assert down.max_batch_size == 4 and down.preferred_batch_sizes == () and up is None
    down, up = space.neighbours(start, "max_queue_delay_us")
    assert (down.max_queue_delay_us, up.max_queue_delay_us) == (500, 2000)
    down, up = space.neighbours(start, "network_instances")
    assert down is None and up.network_instances == 2


def test_images_per_request_bound_the_smallest_max_batch():
    start = Candidate(max_batch_size=32)
    space = build_space(start, batch_bound=32, max_instances=1, slo_p95_ms=50, cores=2, min_batch=4)
    assert min(space.values["max_batch_size"]) == 4
    with pytest.raises(UserInputError, match="at most 2"):
        build_space(start, batch_bound=2, max_instances=1, slo_p95_ms=50, cores=2, min_batch=4)


def _profile(max_batch: int) -> dict:
    return {"engine_profile": EngineProfile(opt_batch=min(8, max_batch), max_batch=max_batch).to_report()}


@pytest.mark.parametrize(
    "report, expected",
    [
        (None, 32),
        ({"schema": 2}, 32),  # a build without an engine profile
        (_profile(8), 8),
        (_profile(64), 32),  # never above the starting max_batch_size
    ],
)
def test_profile_bound(report, expected):
    p = pipeline("ensemble", "tensorrt", "gpu")
    bound, source = profile_batch_bound(p.configs[p.network_role], report)
    assert bound == expected and source


def test_profile_of_an_unknown_schema_is_refused():
    report = {"engine_profile": {"schema": 99, "min_batch": 1, "opt_batch": 1, "max_batch": 1}}
    with pytest.raises(UserInputError, match="schema"):
        profile_batch_bound(pipeline().configs["classifier"], report)


def test_override_json_round_trips():
    cfg = pipeline().configs["classifier"]
    assert config_from_json(config_to_json(cfg)) == cfg
    assert config_from_json({"config": json.loads(config_to_json(cfg))}) == cfg


def test_the_preferred_size_triton_fills_in_is_no_preference():
    p = pipeline(batch_requests=True)
    p.configs["classifier"].dynamic_batching.preferred_batch_size.append(
        32
    )  # what the server reports for "none"
    start = p.scheduling()
    assert start.preferred_batch_sizes == ()
    assert start.with_value("preferred_batch_sizes", (32,)) == start
