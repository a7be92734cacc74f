"""The one model of the serving settings: flags -> absolute settings -> configs -> back, and tune -> build."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.scheduling import Scheduling, from_tune_report
from cvserve.errors import NotFoundError, UserInputError
from cvserve.settings import add_arguments, from_args

SHAPE = tc.PipelineShape(pixels_shape=(32, 32, 3), top_k=2, labels=["a", "b", "c"])

CASES = [
    ("single", {}),
    ("single", {"max_batch_size": 8, "network_instances": 1, "network_threads": 2, "max_queue_size": 0}),
    ("single", {"batch_requests": True, "preferred_batch_sizes": (4,), "max_queue_delay_us": 300}),
    ("single", {"batch_requests": True, "queue_timeout_ms": 0, "decode_threads": 3}),
    ("ensemble", {"preferred_batch_sizes": (4, 8), "preprocess_instances": 3, "queue_timeout_ms": 250}),
    ("ensemble", {"max_batch_size": 4, "network_threads": 1, "max_queue_size": 9}),
]


def _parse(flags: list[str]) -> tc.Batching:
    parser = argparse.ArgumentParser()
    add_arguments(parser, tc.Batching)
    return from_args(tc.Batching, parser.parse_args(flags))


@pytest.mark.parametrize(("layout", "given"), CASES)
def test_flags_settings_and_configs_are_one_value(layout, given):
    plan = rt.decide(layout=layout, runtime="openvino")
    batching = tc.Batching(**{"max_queue_size": 20, **given})
    settings = batching.scheduling(plan.roles)
    configs = tc.pipeline_configs("m", plan, SHAPE, settings, tc.VersionPolicy())
    assert Scheduling.read(plan.roles, configs) == settings  # what the configs carry, read back
    flags = tc.Batching.of(settings, plan.roles, slo_p95_ms=batching.slo_p95_ms).flags()
    assert _parse(flags).scheduling(plan.roles) == settings  # the printed flags build it again
    assert Scheduling.from_dict(json.loads(json.dumps(settings.as_dict()))) == settings  # the reports' JSON


def test_zero_means_what_it_means_in_triton():
    single = rt.LAYOUT["single"]
    unbounded = tc.Batching(max_queue_size=0, queue_timeout_ms=0).scheduling(single)
    assert (unbounded.max_queue_size, unbounded.queue_timeout_us) == (0, 0)
    derived = tc.Batching(max_queue_size=5).scheduling(single)  # no timeout given: 2 x the SLO
    assert derived.queue_timeout_us == 1_000_000
    # a lower max batch keeps the queue bound it was given (the tuner's step did not carry it before)
    assert derived.with_value("max_batch_size", 4).max_queue_size == 5


def test_the_layout_names_its_roles_once():
    single, ensemble = rt.LAYOUT["single"], rt.LAYOUT["ensemble"]
    assert single.model_names("m") == {"classifier": "m"}
    assert ensemble.model_names("m") == {
        "preprocess": "m_preprocess",
        "network": "m_network",
        "classifier": "m",
    }
    assert (ensemble.network, ensemble.decode, ensemble.roles[-1]) == ("network", "preprocess", rt.ENTRY)
    assert rt.decide(layout="ensemble").roles is ensemble


def _tune_report(tmp_path: Path, layout: str, settings: Scheduling) -> Path:
    path = tmp_path / "tuning" / "tuning_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {"layout": layout}, "scheduling": settings.as_dict()}))
    return path


def test_a_tune_report_is_read_from_its_file_or_folder(tmp_path):
    tuned = tc.Batching(max_batch_size=8, network_instances=1, max_queue_size=40).scheduling(
        rt.LAYOUT["single"]
    )
    path = _tune_report(tmp_path, "single", tuned)
    assert from_tune_report(path, "single") == from_tune_report(path.parent, "single") == tuned


def test_a_tune_report_of_another_layout_or_no_report_is_refused(tmp_path):
    tuned = tc.Batching(max_queue_size=40).scheduling(rt.LAYOUT["ensemble"])
    path = _tune_report(tmp_path, "ensemble", tuned)
    with pytest.raises(UserInputError, match=r"tuned on the ensemble layout.*--layout ensemble"):
        from_tune_report(path, "single")
    with pytest.raises(NotFoundError, match=r"cvserve tune writes tuning_report\.json"):
        from_tune_report(tmp_path / "nowhere", "single")
    path.write_text('{"settings": {}}')
    with pytest.raises(UserInputError, match="not a cvserve tune report"):
        from_tune_report(path, "ensemble")


def test_build_settings_take_the_tuned_values_and_refuse_a_second_source(tmp_path):
    from cvserve.builders.pipeline import BuildSettings, ServingOptions

    tuned = tc.Batching(max_batch_size=8, network_instances=1, max_queue_size=40, queue_timeout_ms=300)
    path = _tune_report(tmp_path, "single", tuned.scheduling(rt.LAYOUT["single"]))
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"")
    s = BuildSettings(checkpoint=checkpoint, name="m", serving=ServingOptions(from_tune=path))
    assert s.serving.batching.scheduling(rt.LAYOUT["single"]) == tuned.scheduling(rt.LAYOUT["single"])
    with pytest.raises(UserInputError, match=r"--from-tune .* and so do --max-batch-size: drop"):
        BuildSettings(
            checkpoint=checkpoint,
            name="m",
            serving=ServingOptions(from_tune=path, batching=tc.Batching(max_batch_size=4)),
        )
