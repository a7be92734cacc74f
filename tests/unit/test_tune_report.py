"""Tuning outputs: Pareto front, config.pbtxt changes, Helm values valid for the chart, report files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.admission import resolve
from cvserve.cli import build_parser
from cvserve.settings import from_args
from cvserve.tune import report
from cvserve.tune.measure import Measurement
from cvserve.tune.models import discover
from cvserve.tune.search import SearchResult, Trial
from cvserve.tune.settings import TuneSettings

SCHEMA = Path(__file__).resolve().parents[2] / "helm" / "cvserve" / "values.schema.json"


def pipeline(layout="ensemble"):
    shape = tc.PipelineShape(pixels_shape=(224, 224, 3), top_k=5, labels=[str(i) for i in range(10)])
    plan = rt.decide(target="cpu", runtime="onnxruntime", layout=layout)
    batching = resolve(tc.Batching(max_batch_size=32, network_instances=1), plan.roles, None)  # tuner: 1 -> 2
    cfgs = tc.pipeline_configs("net", plan, shape, batching, tc.VersionPolicy())
    return discover("net", {c.name: c for c in cfgs.values()}.__getitem__)


def result(layout="ensemble"):
    base = pipeline(layout)
    start = base.scheduling()
    chosen = (
        start.with_value("network_instances", 2)
        .with_value("max_batch_size", 16)
        .with_value("max_queue_delay_us", 500)
    )

    def trial(i, c, tput, p95, phase):
        m = Measurement(
            users=8, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95, throughput_rps=tput, inferences_per_s=tput
        )
        return Trial(
            index=i, candidate=c, phase=phase, summary=m, feasible=p95 <= 100, runs=[m], repeats=[m, m]
        )

    t0, t1 = trial(0, start, 100.0, 80.0, "start"), trial(1, chosen, 150.0, 90.0, "explore")
    t2 = trial(2, start.with_value("network_instances", 3), 160.0, 140.0, "explore")
    res = SearchResult(
        start=t0, best=t1, trials=[t0, t1, t2], noise=0.01, margin=0.03, stopped_by="converged", elapsed_s=60
    )
    return res, base


SETTINGS = {
    "model": "net",
    "slo_p95_ms": 100.0,
    "price_per_hour": 3.6,
    "budget_s": 600.0,
    "batch_bound": 32,
    "batch_bound_source": "starting max_batch_size",
}


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 50), (20, 40), (30, 90), (25, 90), (40, 100)]
    assert report.pareto_front(pts) == [(10, 50), (25, 90), (40, 100)]


def test_helm_values_match_the_chart_schema():
    jsonschema = pytest.importorskip("jsonschema")
    res, base = result()
    values, notes = report.helm_overrides(base, res.best.candidate)
    overrides = values["modelConfigOverrides"]
    policy = {  # the whole policy: the chart replaces dynamic_batching (REJECT is the proto default)
        "default_timeout_microseconds": 1000000,  # the build's default: 2 x the SLO, at least 1 s
        "allow_timeout_override": True,
        "max_queue_size": 32,  # one max batch
    }
    assert overrides["net_network"] == {
        "max_batch_size": 16,
        "dynamic_batching": {"max_queue_delay_microseconds": 500, "default_queue_policy": policy},
    }
    assert overrides["net"] == {"max_batch_size": 16}
    assert notes == ["net_network: instance_group count 1 -> 2 (config.pbtxt only)"]
    schema = json.loads(SCHEMA.read_text())["properties"]["modelConfigOverrides"]
    jsonschema.validate(overrides, schema)


def test_single_layout_threads_and_queue_limits_reach_the_outputs():
    jsonschema = pytest.importorskip("jsonschema")
    res, base = result("single")
    chosen = res.start.candidate.with_value("network_threads", 1).with_value("queue_timeout_us", 250_000)
    values, notes = report.helm_overrides(base, chosen)
    assert (
        values["modelConfigOverrides"]["net"]["dynamic_batching"]["default_queue_policy"][
            "default_timeout_microseconds"
        ]
        == 250000
    )
    assert notes == ["net: parameter intra_op_threads 0 -> 1 (config.pbtxt only)"]
    jsonschema.validate(
        values["modelConfigOverrides"], json.loads(SCHEMA.read_text())["properties"]["modelConfigOverrides"]
    )
    changes = report.config_changes(base, chosen)
    assert set(changes) == {"classifier"} and 'string_value: "1"' in changes["classifier"]["after"]


def test_config_changes_are_text_format_diffs():
    res, base = result()
    changes = report.config_changes(base, res.best.candidate)
    assert set(changes) == {"preprocess", "network", "classifier"}
    net = tc.parse(changes["network"]["after"])
    assert net.instance_group[0].count == 2 and net.dynamic_batching.max_queue_delay_microseconds == 500
    assert "+  count: 2" in changes["network"]["diff"]


def test_report_files(tmp_path):
    res, base = result()
    data = report.build_report(res, settings=SETTINGS, base=base)
    assert data["chosen"]["cost_per_1k_usd"] == pytest.approx(3.6 / 3600 / 150 * 1000)
    assert [c["index"] for c in data["candidates"]] == [0, 1, 2]
    written = report.write(data, tmp_path)
    names = {p.name for p in written}
    assert {"tuning_report.json", "tuning_report.md", "helm-values.yaml", "tuning_pareto.png"} <= names
    md = (tmp_path / "tuning_report.md").read_text()
    assert "| chosen |" in md and "## Candidates" in md and "```diff" in md
    assert json.loads((tmp_path / "tuning_report.json").read_text())["meets_slo"] is True
    assert (tmp_path / "configs" / "net_network" / "config.pbtxt").exists()
    helm = (tmp_path / "helm-values.yaml").read_text()
    assert helm.startswith(
        "# cvserve tune net: chosen configuration\n# net_network: instance_group count 1 -> 2"
    )
    assert yaml.safe_load(helm) == data["helm_values"]  # YAML from yaml.safe_dump, as the chart reads it
    assert "SLO p95 <= 100 ms, price $3.6/h" in md and "| chosen | mbs=16" in md and "$0.00667" in md


def test_cli_registers_tune_and_builds_its_settings():
    args = build_parser().parse_args(
        ["tune", "m", "--images", ".", "--slo-p95-ms", "50", "--price-per-hour", "1.2", "--budget", "1m30s",
         "--run-duration", "5s", "--no-plots"]
    )  # fmt: skip
    assert args.func.__module__ == "cvserve.tune.cli"
    s = from_args(TuneSettings, args)
    assert (s.name, s.max_instances, s.plots, s.keep) == ("m", 4, False, False)
    assert (s.search.budget_s, s.search.slo_p95_ms, s.search.price_per_hour) == (90.0, 50.0, 1.2)
    assert (s.run.run_duration_s, s.run.warmup_s, s.run.images_per_request) == (5.0, 2.0, 1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget=-5m"], "argument --budget: '-5m' is not a duration"),
        (["--budget", "0s"], "argument --budget: must be positive"),
        (["--price-per-hour", "0"], "argument --price-per-hour: must be positive"),
    ],
)
def test_bad_tune_flags_name_the_flag(flags, message, capsys):
    argv = ["tune", "m", "--images", ".", "--slo-p95-ms", "50", "--price-per-hour", "1", *flags]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err
