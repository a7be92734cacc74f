"""Cost per 1k inferences, the price table, and parsing Triton's Prometheus metrics (no server)."""

from __future__ import annotations

import pytest

from cvserve.errors import NotFoundError, UserInputError
from cvserve.loadtests import cost, metrics

# Exposition text as Triton 2.51 (the embedded server) prints it, trimmed to one step of the ensemble.
TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 100
nv_inference_request_success{model="m_network",version="1"} 100
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="m_network",reason="CANCELED",version="1"} 2
nv_inference_request_failure{model="m_network",reason="BACKEND",version="1"} 1
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="m_network",version="1"} 400
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="m_network",version="1"} 50
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="m_network",version="1"} 300000
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="m_network",version="1"} 1000000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="m_network",version="1"} 3
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


def test_cost_per_1k_formula():
    # $1/h, 2 replicas, 10 inferences/s: 2 / 36000 * 1000 dollars per 1k inferences.
    assert cost.cost_per_1k(1.0, 2, 10.0) == pytest.approx(2 / 36000 * 1000)
    assert cost.cost_per_1k(1.0, 1, 0.0) is None


def test_price_table_has_date_source_and_prices():
    price = cost.lookup("G4DN.XLARGE")
    assert price.per_hour > 0 and price.instance_type == "g4dn.xlarge"
    assert price.date and price.date.startswith("as recorded") and "Pricing" in price.source
    assert "verify" in cost.PRICE_TABLE.read_text().lower()


def test_price_given_directly_wins_and_unknown_types_are_named():
    assert cost.resolve_price(2.5, "g4dn.xlarge").per_hour == 2.5
    assert cost.resolve_price(None, None) is None
    with pytest.raises(NotFoundError, match=r"no-such-box.*--price-per-hour"):
        cost.resolve_price(None, "no-such-box")
    with pytest.raises(UserInputError):
        cost.resolve_price(-1.0, None)


def test_parse_sums_versions_and_failure_reasons():
    snap = metrics.parse(TRITON_METRICS)
    assert set(snap) == {"m", "m_network"}
    assert snap["m_network"]["failure"] == 3 and snap["m_network"]["inferences"] == 400
    assert "pending" not in snap["m_network"]


def test_window_figures_are_differences_between_scrapes():
    after = metrics.parse(TRITON_METRICS)
    before = {
        "m_network": {
            "success": 50,
            "inferences": 200,
            "executions": 25,
            "queue_us": 100000,
            "compute_infer_us": 500000,
        }
    }
    f = metrics.window_figures(before, after, 10.0, ["m", "m_network", "absent"])
    net = f["m_network"]
    assert net["requests"] == 50 and net["requests_per_s"] == 5.0
    assert net["avg_batch_size"] == 8.0  # 200 inferences in 25 executions
    assert (
        net["avg_queue_ms"] == 4.0 and net["avg_compute_infer_ms"] == 10.0 and net["avg_compute_ms"] == 10.0
    )
    assert f["m"]["avg_batch_size"] is None and "absent" not in f
