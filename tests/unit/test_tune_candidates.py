"""The tuner's search space, the engine-profile bound and the mapping of candidates onto Triton configs."""

from __future__ import annotations

import json

import pytest

from cvserve.builders import triton_config as tc
from cvserve.builders.profile import EngineProfile
from cvserve.errors import UserInputError
from cvserve.tune.apply import config_from_json, config_to_json
from cvserve.tune.candidates import (
    Candidate,
    apply_candidate,
    build_space,
    candidate_from_configs,
    profile_batch_bound,
    read_build_report,
)


def configs(runtime="python", mbs=32):
    shape = tc.PipelineShape(tensor_shape=(3, 224, 224), num_classes=1000)
    return tc.pipeline_configs("net", shape, tc.Batching(max_batch_size=mbs), tc.VersionPolicy(), runtime)


def test_candidate_round_trips_through_the_configs():
    base = configs()
    start = candidate_from_configs(base)
    assert start == Candidate(max_batch_size=32, max_queue_delay_us=2000, preprocess_instances=2)
    c = Candidate(
        max_batch_size=16,
        preferred_batch_sizes=(8,),
        max_queue_delay_us=500,
        network_instances=3,
        preprocess_instances=1,
        postprocess_instances=2,
    )
    new = apply_candidate(base, c)
    assert candidate_from_configs(new) == c
    assert all(cfg.max_batch_size == 16 for cfg in new.values())
    assert new["ensemble"].HasField("ensemble_scheduling")  # the oneof with dynamic_batching is untouched
    assert not new["ensemble"].HasField("dynamic_batching")
    assert base["network"].max_batch_size == 32  # the input is not modified


def test_lowering_the_max_batch_drops_preferred_sizes_it_cannot_form():
    base = configs()
    base["preprocess"].dynamic_batching.preferred_batch_size.append(32)  # as Triton fills it in
    new = apply_candidate(base, candidate_from_configs(base).with_value("max_batch_size", 8))
    assert list(new["preprocess"].dynamic_batching.preferred_batch_size) == []


def test_space_respects_the_batch_bound_and_the_slo():
    start = Candidate(max_batch_size=32, max_queue_delay_us=2000)
    space = build_space(start, batch_bound=16, max_instances=3, slo_p95_ms=8.0)
    assert max(space.values["max_batch_size"]) == 16
    assert all(p <= 16 for (p,) in [v for v in space.values["preferred_batch_sizes"] if v])
    assert max(space.values["max_queue_delay_us"]) == 2000  # the start's value stays reachable
    assert [d for d in space.values["max_queue_delay_us"] if d != 2000 and d > 2000] == []
    assert space.values["network_instances"] == [1, 2, 3]
    assert not space.valid(start)  # 32 > the profile's 16


def test_neighbours_walk_one_step_and_stay_valid():
    start = Candidate(max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_us=1000)
    space = build_space(start, batch_bound=8, max_instances=2, slo_p95_ms=100)
    down, up = space.neighbours(start, "max_batch_size")
    assert down.max_batch_size == 4 and down.preferred_batch_sizes == () and up is None
    down, up = space.neighbours(start, "max_queue_delay_us")
    assert (down.max_queue_delay_us, up.max_queue_delay_us) == (500, 2000)
    down, up = space.neighbours(start, "network_instances")
    assert down is None and up.network_instances == 2


def test_images_per_request_bound_the_smallest_max_batch():
    start = Candidate(max_batch_size=32)
    assert (
        min(
            build_space(start, batch_bound=32, max_instances=1, slo_p95_ms=50, min_batch=4).values[
                "max_batch_size"
            ]
        )
        == 4
    )
    with pytest.raises(UserInputError, match="at most 2"):
        build_space(start, batch_bound=2, max_instances=1, slo_p95_ms=50, min_batch=4)


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
    bound, source = profile_batch_bound(configs("tensorrt")["network"], report)
    assert bound == expected and source


def test_profile_of_an_unknown_schema_is_refused():
    report = {"engine_profile": {"schema": 99, "min_batch": 1, "opt_batch": 1, "max_batch": 1}}
    with pytest.raises(UserInputError, match="schema"):
        profile_batch_bound(configs("tensorrt")["network"], report)


def test_build_report_is_read_from_the_newest_version(tmp_path):
    for v, n in ((1, 4), (2, 8)):
        d = tmp_path / "net" / str(v)
        d.mkdir(parents=True)
        (d / "build_report.json").write_text(json.dumps(_profile(n)))
    assert read_build_report(tmp_path, "net") == _profile(8)
    assert read_build_report(None, "net") is None


def test_override_json_round_trips():
    cfg = configs()["network"]
    assert config_from_json(config_to_json(cfg)) == cfg
    assert config_from_json({"config": json.loads(config_to_json(cfg))}) == cfg


def test_the_preferred_size_triton_fills_in_is_no_preference():
    base = configs()
    base["network"].dynamic_batching.preferred_batch_size.append(32)  # what the server reports for "none"
    start = candidate_from_configs(base)
    assert start.preferred_batch_sizes == ()
    assert start.with_value("preferred_batch_sizes", (32,)) == start
