"""``cvserve monitor`` as a library: a live window from Prometheus against the version's reference.

:func:`check` compares once and returns a :class:`~cvserve.monitor.drift.DriftReport`;
:class:`DriftGauges` publishes the results as ``cvserve_drift_*`` gauges on an HTTP endpoint
(prometheus_client) that the same Prometheus scrapes, so the chart's alerts and dashboard read drift
like every other metric. Pull, not push: the monitor is a long-running process with a stable address
(Prometheus' own advice: the Pushgateway is for batch jobs), and a monitor that dies shows as a
target down instead of stale gauges that look healthy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvserve._extras import require
from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import UserInputError
from cvserve.monitor import drift
from cvserve.monitor.prometheus import Prometheus, versions, window_counts
from cvserve.monitor.reference import Reference
from cvserve.settings import duration, setting

# -- the gauges (labels model, version, signal) ----------------------------------------------------------
DRIFT_STATISTIC = "cvserve_drift_statistic"  # PSI, or max |z| for the features
DRIFT_JS_DISTANCE = "cvserve_drift_js_distance"
DRIFT_P_VALUE = "cvserve_drift_p_value"
DRIFT_DETECTED = "cvserve_drift_detected"  # 1 when p_value < alpha
DRIFT_WINDOW_IMAGES = "cvserve_drift_window_images"  # labels model, version


@dataclass(kw_only=True)
class MonitorSettings:
    """What ``cvserve monitor`` takes: its flags come from these fields."""

    name: str = setting(positional=True, metavar="NAME", help="the model to watch")
    prometheus: str = setting(
        metavar="URL", help="the Prometheus that scrapes Triton's metrics port, e.g. http://prometheus:9090"
    )
    url: str | None = setting(
        None,
        metavar="HOST:PORT",
        help="gRPC address of the Triton serving NAME: checks that it serves NAME, and which versions",
        default_help="not asked; the version is the one that answered most in the window",
    )
    repository: Path = setting(
        DEFAULT_REPOSITORY, short="-r", metavar="DIR", help="the model repository (the versions' references)"
    )
    version: int | None = setting(
        None, help="the version to compare", default_help="the one that answered most images in the window"
    )
    window: str = setting("15m", metavar="RANGE", help="the live window, a Prometheus range (15m, 1h)")
    alpha: float = setting(
        drift.DEFAULT_ALPHA, at_least=0, at_most=1, help="p-value below which a signal is flagged"
    )
    serve_metrics: int | None = setting(
        None,
        metavar="PORT",
        help="serve the cvserve_drift_* gauges on this port and compare again every --every (until Ctrl-C)",
    )
    every_s: float = duration(60.0, help="how often --serve-metrics compares")


def _served_versions(url: str, name: str) -> list[str]:
    """The versions Triton at ``url`` has ready for ``name``; one exit-2 error if none or unreachable."""
    from tritonclient.grpc import InferenceServerClient, InferenceServerException

    try:
        client = InferenceServerClient(url)
        metadata = client.get_model_metadata(name, as_json=True)
        return [str(v) for v in metadata.get("versions", [])]
    except InferenceServerException as exc:
        raise UserInputError(
            f"Triton at {url} did not confirm that it serves model {name}: {exc.message()}", exit_code=2
        ) from None


def check(s: MonitorSettings) -> tuple[int, drift.DriftReport]:
    """(version, report): the live window of ``s.name`` against that version's reference."""
    from cvserve.builders.repository import Repository

    prom = Prometheus(url=s.prometheus)
    counted = versions(prom, s.name, s.window)
    served = _served_versions(s.url, s.name) if s.url else None
    if s.version is not None:
        version = s.version
    else:
        candidates = {v: n for v, n in counted.items() if served is None or v in served}
        if not candidates:
            raise UserInputError(
                f"Prometheus at {s.prometheus} has no signals of model {s.name} "
                f"({sorted(counted) or 'no version'} counted in the last {s.window}): is the model served "
                "and scraped, and built with this cvserve?",
                exit_code=2,
            )
        version = int(max(candidates, key=lambda v: candidates[v]))
    try:
        ref = Reference.of(Repository(s.repository).version(s.name, version)).counts
    except UserInputError as exc:  # not in the repository, unreadable JSON, no reference: bad input, exit 2
        raise UserInputError(str(exc), exit_code=2) from None
    live = window_counts(
        prom, s.name, str(version), s.window, num_classes=ref.num_classes, feature_dims=ref.feature_dims
    )
    return version, drift.compare(live, ref, alpha=s.alpha)


class DriftGauges:
    """The ``cvserve_drift_*`` gauges, in a registry of their own served over HTTP."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        pc = require("prometheus_client", extra="monitor", purpose="to serve the drift gauges")
        self.registry = pc.CollectorRegistry()
        signal = ["model", "version", "signal"]
        self.statistic = pc.Gauge(
            DRIFT_STATISTIC,
            "drift statistic: PSI, or max |z| of the features",
            signal,
            registry=self.registry,
        )
        self.js = pc.Gauge(
            DRIFT_JS_DISTANCE,
            "Jensen-Shannon distance of the window to the reference",
            signal,
            registry=self.registry,
        )
        self.p_value = pc.Gauge(
            DRIFT_P_VALUE, "p-value of the window under the reference", signal, registry=self.registry
        )
        self.detected = pc.Gauge(
            DRIFT_DETECTED, "1 when the p-value is below alpha", signal, registry=self.registry
        )
        self.images = pc.Gauge(
            DRIFT_WINDOW_IMAGES, "images in the live window", ["model", "version"], registry=self.registry
        )
        self.server, self.thread = pc.start_http_server(port, addr=addr, registry=self.registry)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def publish(self, model: str, version: int, report: drift.DriftReport) -> None:
        v = str(version)
        self.images.labels(model, v).set(report.images)
        for s in report.signals:
            self.statistic.labels(model, v, s.signal).set(s.value)
            if s.js_distance is not None:
                self.js.labels(model, v, s.signal).set(s.js_distance)
            self.p_value.labels(model, v, s.signal).set(s.p_value)
            self.detected.labels(model, v, s.signal).set(1 if s.drifted else 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
