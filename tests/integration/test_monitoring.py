"""Monitoring against real parts: the embedded Triton serves the demo model under load, a real Prometheus
scrapes it and ``cvserve monitor``'s gauges, and every dashboard and alert expression of the chart is run.

The server here is this module's own (fresh counters, Triton's latency summaries on, as the chart runs
it), on the session's demo build. Prometheus gets the labels the chart's ServiceMonitor would add
(namespace, service, pod), so the chart's expressions run exactly as rendered. Every wait is on state that
Prometheus reports (query results), never a fixed sleep.
"""

from __future__ import annotations

import io
import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cvserve.monitor import signals as sg
from cvserve.monitor.prometheus import Prometheus
from cvserve.monitor.watch import DRIFT_WINDOW_IMAGES, DriftGauges, MonitorSettings, check

from ._chart import render
from ._demo import DEMO_MODEL
from ._prometheus import SCRAPE_INTERVAL_S, prometheus
from ._stats import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RELEASE, NAMESPACE = "rel", "ml"
SERVICE = f"{RELEASE}-cvserve"
MONITOR_JOB = "cvserve-monitor"
WINDOW_IMAGES = 160  # images per phase: the drift tests are sharp from about 100 (docs/monitoring.md)
RATE_WINDOW = "30s"  # the dashboards' $__rate_interval here: 30 scrapes
# Values that make each of the chart's alerts fire on this module's traffic, so that an alert whose
# expression selects nothing (a wrong metric or label) fails the test instead of staying quiet.
BASE = {
    "modelRepository": {"type": "pvc", "pvc": {"claimName": "models"}},
    "restrictedApi": {"secretName": "cvserve-admin-key"},
    "helmTest": {"image": "registry.example.com/cvserve/client:0.1.0", "model": DEMO_MODEL},
}
SENSITIVE = {
    **BASE,
    "monitoring": {
        "prometheusRule": {
            "enabled": True,
            "latencySloMs": 0.001,
            "errorRateThreshold": 1e-9,
            "queueTimeThresholdMs": 1e-9,
            "expectedModels": [DEMO_MODEL, "not_served"],
            "quality": {
                "enabled": True,
                "runbookBaseUrl": "https://docs.example.com/runbooks",
                "driftSelector": f'job="{MONITOR_JOB}"',
                "minMeanConfidence": 0.999,
                "window": "2m",
                "minImages": 1,
            },
        },
        "dashboard": {"enabled": True, "pricePerHour": 2.5},
    },
}


@pytest.fixture(scope="module")
def server(demo_repository: Path):
    from cvserve.server import ServerSettings, TritonServer

    settings = ServerSettings(
        repository=demo_repository,
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        exit_timeout_s=5,
        extra_args=["--metrics-config=summary_latencies=true"],
    )
    with TritonServer(settings) as s:
        yield s


@pytest.fixture(scope="module")
def gauges():
    g = DriftGauges(0, addr="127.0.0.1")
    yield g
    g.close()


@pytest.fixture(scope="module")
def prom(server, gauges, tmp_path_factory) -> Prometheus:
    metrics = server.metrics_url.removeprefix("http://").removesuffix("/metrics")
    targets = {
        "triton": (metrics, {"namespace": NAMESPACE, "service": SERVICE, "pod": f"{SERVICE}-0"}),
        MONITOR_JOB: (f"127.0.0.1:{gauges.port}", {"namespace": NAMESPACE}),
    }
    with prometheus(targets, tmp_path_factory.mktemp("prometheus")) as url:
        yield Prometheus(url=url)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """The version's own held-out images (the reference's): a stream without any shift."""
    from cvserve.monitor.reference import held_out_images

    images, _ = held_out_images(None, [], WINDOW_IMAGES)
    return images


def _darkened(data: bytes) -> bytes:
    from PIL import Image, ImageEnhance

    buf = io.BytesIO()
    ImageEnhance.Brightness(Image.open(io.BytesIO(data)).convert("RGB")).enhance(0.35).save(buf, "PNG")
    return buf.getvalue()


def _images_counted(prom: Prometheus, window: str) -> float:
    result = prom.query(f'sum(increase({sg.IMAGES}{{model="{DEMO_MODEL}"}}[{window}]))')
    return float(result[0]["value"][1]) if result else 0.0


def _send_until_counted(server, prom: Prometheus, images: list[bytes], started: float, junk: int = 0) -> str:
    """Classify ``images`` (shuffled, 4 at a time) until Prometheus counts them all in the window since
    ``started``; the served model adds its counts once a second, on a request, so sending goes on."""
    import time

    from cvserve.client import Client, InvalidInput

    order = random.Random(0).sample(images, len(images))

    def one(data: bytes) -> None:
        try:
            client.classify([data])
        except InvalidInput:  # the junk requests
            pass

    with Client(server.grpc_url, model=DEMO_MODEL) as client, ThreadPoolExecutor(4) as pool:
        list(pool.map(one, order + [b"junk"] * junk))

        def counted() -> str | None:
            window = f"{int(time.time() - started) + 2 * SCRAPE_INTERVAL_S}s"
            if _images_counted(prom, window) >= 0.98 * len(images):
                return window
            one(order[0])  # a request flushes what the instance still holds
            return None

        return wait_for(counted, 120, f"Prometheus to count {len(images)} images")  # type: ignore[return-value]


def _by_labels(expr: str) -> set[str]:
    match = re.match(r"\s*\(?\s*(?:sum|min|max|avg|count) by \(([^)]*)\)", expr)
    return {label.strip() for label in match.group(1).split(",")} if match else set()


@pytest.fixture(scope="module")
def loaded(server, prom, photos):
    """The unshifted stream served and counted, with a few refused requests among it."""
    import time

    return _send_until_counted(server, prom, photos, time.time(), junk=8)


def test_every_dashboard_expression_returns_its_series(prom, gauges, loaded, demo_repository):
    (board_map,) = [
        o
        for o in render(SENSITIVE, RELEASE, NAMESPACE)
        if o["kind"] == "ConfigMap" and "dashboard" in o["metadata"]["name"]
    ]
    board = json.loads(board_map["data"]["cvserve-triton.json"])
    version, report = check(
        MonitorSettings(name=DEMO_MODEL, prometheus=prom.url, repository=demo_repository, window=loaded)
    )
    gauges.publish(DEMO_MODEL, version, report)
    wait_for(lambda: prom.query(DRIFT_WINDOW_IMAGES), 30, "Prometheus to scrape the drift gauges")
    gpu = {"GPU utilisation", "GPU memory used"}  # no GPU here: Triton exports no nv_gpu_* series
    checked = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$namespace", NAMESPACE)
                .replace("$service", SERVICE)
                .replace("$__rate_interval", RATE_WINDOW)
                .replace("$price_per_hour", "2.5")
            )
            if panel["title"] in gpu:
                continue
            result = wait_for(lambda e=expr: prom.query(e), 60, f"{panel['title']!r}: {expr}")
            for series in result:
                assert _by_labels(expr) <= set(series["metric"]), (panel["title"], series)
            checked.append(panel["title"])
    assert {
        "Top-1 class mix (share per class bucket)",
        "Rejections by reason",
        "Cost per 1k inferences",
    } <= set(checked)
    assert any(title.startswith("Drift p-value") for title in checked)


def _alert_rules(values) -> list[dict]:
    (rule,) = [o for o in render(values, RELEASE, NAMESPACE) if o["kind"] == "PrometheusRule"]
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_every_alert_expression_fires_at_a_sensitive_threshold(server, prom, photos, loaded):
    from cvserve.client import Client

    rules = _alert_rules(SENSITIVE)
    with Client(server.grpc_url, model=DEMO_MODEL) as client:

        def fires(expr: str) -> list:
            client.classify([photos[0]])  # traffic goes on: latency quantiles and rates stay defined
            return prom.query(expr)

        for rule in rules:
            name, expr = rule["alert"], rule["expr"]
            if name in ("CvserveModelNotReady", "CvserveModelDrift"):
                continue  # kube-state-metrics is not here; drift has its own test below
            if name == "CvserveModelNotLoaded" and f'model="{DEMO_MODEL}"' in expr:
                assert prom.query(expr) == [], "the demo model is loaded: its absent() must select nothing"
                continue
            if name == "CvserveErrorRateHigh":
                # Triton counts a request the python model answers with an error (a refused image) as a
                # success: no failure happens here, so the ratio must select the model, at 0.
                ratio = expr.rsplit(">", 1)[0]
                (series,) = wait_for(lambda e=ratio: fires(e), 60, f"{name}'s ratio: {ratio}")
                assert series["metric"] == {"model": DEMO_MODEL} and float(series["value"][1]) == 0.0
                continue
            wait_for(lambda e=expr: fires(e), 60, f"{name} to fire: {expr}")


def test_a_darkened_stream_fires_the_drift_alert_and_the_unshifted_one_does_not(
    server, prom, gauges, photos, demo_repository
):
    import time

    (drift_rule,) = [r for r in _alert_rules(SENSITIVE) if r["alert"] == "CvserveModelDrift"]
    published = {"n": 0.0}

    def run_monitor(window: str):
        settings = MonitorSettings(
            name=DEMO_MODEL,
            prometheus=prom.url,
            url=server.grpc_url,
            repository=demo_repository,
            window=window,
        )
        version, report = check(settings)
        gauges.publish(DEMO_MODEL, version, report)
        published["n"] = report.images

        def scraped() -> bool:  # Prometheus holds what was just published
            result = prom.query(f'{DRIFT_WINDOW_IMAGES}{{model="{DEMO_MODEL}"}}')
            return bool(result) and abs(float(result[0]["value"][1]) - published["n"]) < 1e-6

        wait_for(scraped, 30, "Prometheus to scrape the published drift gauges")
        return report

    quiet = run_monitor(_send_until_counted(server, prom, photos, time.time()))
    assert not quiet.drifted, [(s.signal, s.p_value) for s in quiet.signals]
    assert prom.query(drift_rule["expr"]) == []

    dark = [_darkened(p) for p in photos]
    shifted = run_monitor(_send_until_counted(server, prom, dark, time.time()))
    assert "brightness" in {s.signal for s in shifted.signals if s.drifted}
    firing = prom.query(drift_rule["expr"])
    assert "brightness" in {r["metric"]["signal"] for r in firing}


def test_an_unknown_model_or_a_bad_reference_is_one_exit_2_line(prom, loaded, repo_copy, capsys):
    from cvserve.cli import main

    assert main(["monitor", "not_served", "--prometheus", prom.url, "--window", loaded]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no signals of model not_served" in err[0]

    for reference in repo_copy.glob(f"{DEMO_MODEL}/*/reference_stats.json"):
        reference.write_text('{"schema": 1, "images": "many"}')
    args = ["monitor", DEMO_MODEL, "--prometheus", prom.url, "-r", str(repo_copy), "--window", loaded]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a cvserve reference" in err[0] and "rebuild the version" in err[0]
