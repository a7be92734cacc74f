"""The Helm chart's scaling and monitoring: the HorizontalPodAutoscaler and the Prometheus adapter
rules behind its metrics, the PodDisruptionBudget, the PrometheusRule alerts and the Grafana dashboard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.unit._chart import (
    ADAPTER_VALUES,
    BASE,
    CHART,
    FULLNAME,
    ROOT,
    find,
    helm,
    merge,
    objects,
    render,
    render_error,
)


def test_hpa_on_triton_queue_time(rendered: dict) -> None:
    objs = rendered["autoscaling-values.yaml"]
    hpa = find(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    (metric,) = hpa["spec"]["metrics"]
    assert metric == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "triton_queue_time_per_request_us"},
            "target": {"type": "AverageValue", "averageValue": "10000"},
        },
    }
    assert "replicas" not in find(objs, "Deployment")["spec"]  # the HPA owns the count


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (
            "cpu",
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            },
        ),
        (
            "gpuUtilization",
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "triton_gpu_utilization"},
                    "target": {"type": "AverageValue", "averageValue": "800m"},
                },
            },
        ),
        (
            "pendingRequests",
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "triton_pending_requests"},
                    "target": {"type": "AverageValue", "averageValue": "16"},
                },
            },
        ),
    ],
)
def test_hpa_metric_alternatives(metric: str, expected: dict[str, Any]) -> None:
    objs = objects(render(merge(BASE, {"autoscaling": {"enabled": True, "metric": metric}})))
    assert find(objs, "HorizontalPodAutoscaler")["spec"]["metrics"] == [expected]


def test_prometheus_adapter_rules_serve_the_hpa_metrics() -> None:
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    defaults = helm.Chart.load(CHART).values["autoscaling"]
    for metric in ("queueTime", "pendingRequests", "gpuUtilization"):
        rule = served[defaults[metric]["metricName"]]
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
    queue = served["triton_queue_time_per_request_us"]["metricsQuery"]
    assert "nv_inference_queue_duration_us" in queue and "nv_inference_request_success" in queue


def test_pod_disruption_budget(rendered: dict) -> None:
    objs = rendered["gpu-values.yaml"]
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = find(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert find(rendered["autoscaling-values.yaml"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == "25%"
    assert not [o for o in rendered["cpu-only-values.yaml"] if o["kind"] == "PodDisruptionBudget"]


def test_alerts(rendered: dict) -> None:
    rule = find(rendered["gpu-values.yaml"], "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "CvserveP95LatencyAboveSlo",
        "CvserveErrorRateHigh",
        "CvserveQueueTimeHigh",
        "CvserveModelNotReady",
        "CvserveModelNotLoaded",
        "CvserveModelDrift",
        "CvserveConfidenceLow",
    }
    assert 'quantile="0.95"' in alerts["CvserveP95LatencyAboveSlo"]["expr"]
    assert alerts["CvserveP95LatencyAboveSlo"]["expr"].rstrip().endswith("> 50")
    assert "nv_inference_request_failure" in alerts["CvserveErrorRateHigh"]["expr"]
    assert "nv_inference_queue_duration_us" in alerts["CvserveQueueTimeHigh"]["expr"]
    assert 'model="resnet50"' in alerts["CvserveModelNotLoaded"]["expr"]
    assert f'service="{FULLNAME}"' in alerts["CvserveErrorRateHigh"]["expr"]
    assert alerts["CvserveErrorRateHigh"]["labels"] == {"severity": "critical", "team": "vision"}
    assert alerts["CvserveP95LatencyAboveSlo"]["annotations"]["summary"].startswith(
        "p95 latency of {{ $labels.model }}"
    )
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    drift = alerts["CvserveModelDrift"]
    assert drift["expr"] == (
        'min by (model, version, signal) (cvserve_drift_p_value{namespace="ml",job="cvserve-monitor"}) < 0.001'
    )
    assert drift["annotations"]["runbook_url"] == "https://docs.example.com/cvserve/runbooks/model-drift.md"
    low = alerts["CvserveConfidenceLow"]
    assert (
        "cvserve_top1_confidence_sum_total" in low["expr"]
        and "[30m]" in low["expr"]
        and "< 0.4" in low["expr"]
    )
    assert low["annotations"]["runbook_url"].endswith("/confidence-low.md")
    for alert in (drift, low):  # every runbook the chart links to exists in docs/runbooks
        assert (ROOT / "docs" / "runbooks" / alert["annotations"]["runbook_url"].rsplit("/", 1)[1]).is_file()


def test_quality_alerts_need_the_runbook_url() -> None:
    values = merge(BASE, {"monitoring": {"prometheusRule": {"enabled": True, "quality": {"enabled": True}}}})
    assert "monitoring.prometheusRule.quality.runbookBaseUrl is required" in render_error(values)


def test_dashboard_configmap(rendered: dict) -> None:
    (dashboard,) = [
        o for o in rendered["gpu-values.yaml"] if o["metadata"]["name"] == f"{FULLNAME}-dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["cvserve-triton.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in (
        "nv_inference_request_success",
        "nv_inference_request_summary_us",
        "nv_inference_queue_duration_us",
        "nv_gpu_utilization",
        "cvserve_top1_class_total",
        "cvserve_top1_confidence_sum_total",
        "cvserve_input_total",
        "cvserve_drift_p_value",
        "cvserve_rejections_total",
        "$price_per_hour",
    ):
        assert metric in exprs
    (price,) = [v for v in board["templating"]["list"] if v["name"] == "price_per_hour"]
    assert float(price["query"]) == 3.06  # monitoring.dashboard.pricePerHour


def _json_paths(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_paths(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_paths(item, f"{path}[{i}]")
    else:
        yield path


def _grafana_round_trip(board: dict) -> set[str]:
    """The fields of ``board`` that Grafana's dashboard model (grafana-foundation-sdk, generated from
    Grafana's schema) does not know: they are dropped when the board is read into it and written back."""
    sdk = pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    assert sdk is not None
    register_default_plugins()
    back = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
    return set(_json_paths(board)) - set(_json_paths(back))


def test_dashboard_fits_grafanas_dashboard_model(rendered: dict) -> None:
    (dashboard,) = [
        o for o in rendered["gpu-values.yaml"] if o["metadata"]["name"] == f"{FULLNAME}-dashboard"
    ]
    board = json.loads(dashboard["data"]["cvserve-triton.json"])
    assert _grafana_round_trip(board) == set()
    broken = json.loads(json.dumps(board))
    broken["panels"][0]["gridPoss"] = broken["panels"][0].pop("gridPos")  # a typo is caught
    assert _grafana_round_trip(broken) == {"/panels[0]/gridPoss/" + k for k in ("x", "y", "w", "h")}


def test_dashboard_low_confidence_bins_are_those_of_the_served_model() -> None:
    from cvserve.monitor import signals

    board = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    below = [b for b in signals.bin_labels(signals.CONFIDENCE_EDGES) if float(b) < signals.LOW_CONFIDENCE]
    assert f'bin=~"{"|".join(below)}"' in exprs
