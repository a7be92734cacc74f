"""What to load-test and how: :class:`LoadTestSettings`, the one definition of every load-test setting.

``cvserve loadtest``'s flags are derived from it (:mod:`cvserve.settings`); the Locust suite registers
the options it shares with it (:data:`LOCUST_OPTIONS`, with Locust's own defaults where a plain
``locust`` run differs), and the runner passes them on to Locust with :func:`cvserve.settings.to_argv`.
Importing this module imports nothing heavy (``cvserve --help`` reads it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvserve.loadtests.schedule import SCENARIOS, default_step_users
from cvserve.settings import REQUIRED, as_mapping, duration, from_args, like, setting
from cvserve.slo import LatencyObjective

_GATES = "gates"
_COST = "cost"
_REPORT = "server metrics and report"
_DISTRIBUTED = "distributed (Locust's master/worker mode)"
# Triton's metrics port, when --metrics-url is not given: the gRPC host's.
DEFAULT_METRICS_PORT = 8002
# The master's port for workers started on other machines (Locust's own default).
DEFAULT_MASTER_PORT = 5557


@dataclass(kw_only=True)
class LoadTestSettings:
    """What to load-test and how; ``cvserve loadtest --help`` shows each field's flag.

    ``duration_s`` is the measured window; ``warmup_s`` runs before it and is left out of every figure.
    For ``ramp`` the duration is split into steps (``step_duration_s`` overrides the step length).
    Settings left ``None`` take the default their help names; :meth:`resolved` fills them in.
    """

    model: str = setting(positional=True, metavar="NAME", help="the classification model to load-test")
    model_version: str | None = setting(
        None, metavar="VERSION", help="the model version to call", default_help="the server's choice"
    )
    url: str = setting("127.0.0.1:8001", metavar="HOST:PORT", help="Triton gRPC address")
    images: Path = setting(metavar="DIR", help="folder of JPEG/PNG files sent round-robin")
    images_per_request: int = setting(1, at_least=1, help="images per request")
    scenario: str = setting("steady", choices=SCENARIOS, help="load shape")
    users: int = setting(8, at_least=1, help="concurrent users; the maximum for ramp")
    spawn_rate: float | None = setting(None, above=0, help="users started per second", default_help="--users")
    duration_s: float = duration(60.0, above=0, help="the measured window")
    warmup_s: float = duration(5.0, help="warm-up before the window, left out of every figure")
    target_rps: float | None = setting(
        None, above=0, help="steady: a fixed total request rate instead of a closed loop"
    )
    step_users: int | None = setting(
        None, at_least=1, help="ramp: users added per step", default_help="--users / 5"
    )
    step_duration_s: float | None = duration(
        None, above=0, help="ramp: length of a step", default_help="--duration / steps, at least 5s"
    )
    spike_users: int | None = setting(
        None, at_least=1, help="spike: users during the spike", default_help="4x --users"
    )
    spike_duration_s: float | None = duration(
        None, above=0, help="spike: length of the spike", default_help="--duration / 3"
    )
    request_timeout_s: float = duration(30.0, above=0, help="deadline of each call")

    slo_p95_ms: float = like(LatencyObjective, "slo_p95_ms", REQUIRED, group=_GATES)
    max_error_rate: float = setting(
        0.001, at_least=0, at_most=1, group=_GATES, help="highest error rate, a fraction (0.001 = 0.1%)"
    )
    min_throughput_rps: float | None = setting(
        None, above=0, group=_GATES, help="lowest sustained requests/s (an optional gate)"
    )
    max_cost_per_1k_usd: float | None = setting(
        None,
        at_least=0,
        flag="--max-cost-per-1k",
        group=_GATES,
        help="highest $ per 1k inferences (an optional gate; needs a price)",
    )

    price_per_hour: float | None = setting(None, at_least=0, group=_COST, help="$ per hour of one replica")
    instance_type: str | None = setting(
        None, group=_COST, help="look the price up in loadtests/prices.toml (e.g. g4dn.xlarge)"
    )
    replicas: int = setting(1, at_least=1, group=_COST, help="server replicas behind --url")

    metrics: bool = setting(True, group=_REPORT, help="scrape Triton's Prometheus metrics during the run")
    metrics_url: str | None = setting(
        None,
        metavar="URL",
        group=_REPORT,
        help="Triton's metrics endpoint",
        default_help=f"--url's host, port {DEFAULT_METRICS_PORT}",
    )
    report_dir: Path = setting(
        Path("loadtest-report"), metavar="DIR", group=_REPORT, help="where the report goes"
    )
    plots: bool = setting(True, group=_REPORT, help="draw the PNG plots")
    generator_ceiling_rps: float | None = setting(
        None,
        at_least=0,
        group=_REPORT,
        help="the load generator's measured ceiling in requests/s",
        default_help="the one recorded on this machine",
    )

    workers: int = setting(0, at_least=0, group=_DISTRIBUTED, help="run a Locust master and N workers")
    remote_workers: bool = setting(
        False, group=_DISTRIBUTED, help="start no local workers: wait for --workers N started elsewhere"
    )
    master_bind_host: str | None = setting(
        None,
        group=_DISTRIBUTED,
        help="interface the master listens on",
        default_help="127.0.0.1; 0.0.0.0 with --remote-workers",
    )
    master_port: int | None = setting(
        None,
        at_least=0,
        group=_DISTRIBUTED,
        help="the master's port",
        default_help=f"{DEFAULT_MASTER_PORT} with --remote-workers, else a free one",
    )

    name: str | None = setting(None, cli=False)  # the report's title; the model's name when None
    scrape_interval_s: float = setting(1.0, cli=False)
    extra_locust_args: list[str] = setting(default_factory=list, cli=False)

    def resolved(self) -> LoadTestSettings:
        """A copy with every ``None`` that stands for a derived default filled in (its scenario's only)."""
        ramp, spike = self.scenario == "ramp", self.scenario == "spike"
        steps = -(-self.users // (self.step_users or default_step_users(self.users)))
        if self.master_port is not None:
            port = self.master_port
        else:
            port = DEFAULT_MASTER_PORT if self.remote_workers else 0
        return dataclasses.replace(
            self,
            spawn_rate=self.spawn_rate or float(self.users),
            step_duration_s=self.step_duration_s or (max(self.duration_s / steps, 5.0) if ramp else None),
            spike_users=self.spike_users or (4 * self.users if spike else None),
            spike_duration_s=self.spike_duration_s or (self.duration_s / 3 if spike else None),
            metrics_url=(self.metrics_url or default_metrics_url(self.url)) if self.metrics else None,
            master_bind_host=self.master_bind_host or ("0.0.0.0" if self.remote_workers else "127.0.0.1"),
            master_port=port,
        )


def load_test(settings: Any, **values: Any) -> LoadTestSettings:
    """The load test another command's ``settings`` describe: every load-test setting it took with
    :func:`~cvserve.settings.like` (same name, nested groups too), then ``values`` (what differs)."""
    return from_args(LoadTestSettings, as_mapping(settings), **values)


def default_metrics_url(url: str) -> str:
    """Triton's metrics endpoint on the host of gRPC address ``url``."""
    host = url.split("://", 1)[-1].rsplit(":", 1)[0] or "127.0.0.1"
    return f"http://{host}:{DEFAULT_METRICS_PORT}/metrics"


# The settings the Locust suite takes as its own options (``locust -f loadtests/locustfile.py --help``
# does not list them: Locust prints help before it loads a locustfile), and their defaults for a plain
# ``locust`` run where they differ: no warm-up, 10 s ramp steps and spikes, no SLO to stop a ramp at.
LOCUST_OPTIONS = (
    "model",
    "model_version",
    "images",
    "images_per_request",
    "scenario",
    "warmup_s",
    "target_rps",
    "request_timeout_s",
    "step_users",
    "step_duration_s",
    "spike_users",
    "spike_duration_s",
    "slo_p95_ms",
    "max_error_rate",
)
LOCUST_DEFAULTS = {"warmup_s": 0.0, "step_duration_s": 10.0, "spike_duration_s": 10.0}
