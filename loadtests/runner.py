"""Run a load test: Locust in child processes, Triton's metrics scraped alongside, then the report.

    >>> from cvserve.loadtests.runner import LoadTestSettings, run_loadtest
    >>> report = run_loadtest(LoadTestSettings(model="mobilenet_v2", url="127.0.0.1:8001",
    ...                                        images=Path("photos"), duration_s=30))  # doctest: +SKIP
    >>> report["gates_passed"], report["p95_ms"], report["cost_per_1k_usd"]  # doctest: +SKIP

Locust runs in its own processes (``python -m locust -f loadtests/locustfile.py ...``) because it
monkey-patches everything with gevent on import; the caller's process never imports it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cvserve.errors import CvserveError, ServerError, UserInputError
from cvserve.loadtests import analysis, schedule
from cvserve.loadtests.cost import resolve_price

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Locust's start-up and shutdown around the planned run, and how long workers may take to connect.
_GRACE_S = 60.0
_WORKERS_WAIT_S = 30
# Users finish their request on stop rather than cancel it mid-flight (a cancelled request is no
# measurement, and some python-backend versions of Triton handle cancellation badly).
_STOP_TIMEOUT_S = 10


@dataclass(kw_only=True)
class LoadTestSettings:
    """What to load-test and how; see ``cvserve loadtest --help`` for each field's flag.

    ``duration_s`` is the measured window; ``warmup_s`` runs before it and is left out of every figure.
    For ``ramp`` the duration is split into steps (``step_duration_s`` overrides the step length).
    """

    model: str
    url: str
    images: Path
    model_version: str | None = None  # None: the version the server picks for requests naming none
    scenario: str = "steady"
    users: int = 8
    spawn_rate: float = 8.0
    duration_s: float = 60.0
    warmup_s: float = 5.0
    images_per_request: int = 1
    slo_p95_ms: float = 500.0
    max_error_rate: float = 0.001
    price_per_hour: float | None = None
    instance_type: str | None = None
    replicas: int = 1
    metrics_url: str | None = None
    report_dir: Path = Path("loadtest-report")
    workers: int = 0
    plots: bool = True
    name: str | None = None
    target_rps: float | None = None
    min_throughput_rps: float | None = None
    max_cost_per_1k_usd: float | None = None
    request_timeout_s: float = 30.0
    step_users: int | None = None
    step_duration_s: float | None = None
    spike_users: int | None = None
    spike_duration_s: float | None = None
    remote_workers: bool = False
    master_bind_host: str = "127.0.0.1"
    master_port: int = 0
    generator_ceiling_rps: float | None = None
    scrape_interval_s: float = 1.0
    extra_locust_args: list[str] = field(default_factory=list)


def validate(s: LoadTestSettings) -> None:
    """Raise :class:`UserInputError` for settings that cannot work, saying which flag to fix."""
    checks = [
        (s.scenario in schedule.SCENARIOS, f"--scenario must be one of {', '.join(schedule.SCENARIOS)}"),
        (s.users >= 1, "--users must be at least 1"),
        (s.spawn_rate > 0, "--spawn-rate must be positive"),
        (s.duration_s > 0, "--duration must be positive"),
        (s.warmup_s >= 0, "--warmup must not be negative"),
        (s.images_per_request >= 1, "--images-per-request must be at least 1"),
        (s.slo_p95_ms > 0, "--slo-p95-ms must be positive"),
        (0 <= s.max_error_rate <= 1, "--max-error-rate is a fraction between 0 and 1 (0.001 = 0.1%)"),
        (s.replicas >= 1, "--replicas must be at least 1"),
        (s.workers >= 0, "--workers must not be negative"),
        (not s.remote_workers or s.workers >= 1, "--remote-workers needs --workers N (how many to expect)"),
        (s.target_rps is None or s.target_rps > 0, "--target-rps must be positive"),
        (s.target_rps is None or s.scenario == "steady", "--target-rps is for --scenario steady"),
        (
            s.max_cost_per_1k_usd is None or s.price_per_hour is not None or s.instance_type is not None,
            "--max-cost-per-1k needs a price: --price-per-hour or --instance-type",
        ),
        (s.step_users is None or s.step_users >= 1, "--step-users must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserInputError(message)
    if not Path(s.images).is_dir():
        raise UserInputError(f"--images {s.images} is not a directory: give a folder of JPEG/PNG files")


def plan(s: LoadTestSettings) -> list[schedule.Stage]:
    """The load schedule the Locust shape will play (the same functions, the same values)."""
    if s.scenario == "ramp":
        return schedule.ramp_plan(
            max_users=s.users,
            step_users=s.step_users,
            step_duration_s=ramp_step_s(s),
            spawn_rate=s.spawn_rate,
            warmup_s=s.warmup_s,
        )
    if s.scenario == "spike":
        return schedule.spike_plan(
            users=s.users,
            spike_users=s.spike_users or 4 * s.users,
            spawn_rate=s.spawn_rate,
            warmup_s=s.warmup_s,
            duration_s=s.duration_s,
            spike_duration_s=spike_s(s),
        )
    return schedule.steady_plan(
        users=s.users, spawn_rate=s.spawn_rate, warmup_s=s.warmup_s, duration_s=s.duration_s
    )


def ramp_step_s(s: LoadTestSettings) -> float:
    steps = -(-s.users // (s.step_users or schedule.default_step_users(s.users)))
    return s.step_duration_s or max(s.duration_s / steps, 5.0)


def spike_s(s: LoadTestSettings) -> float:
    return s.spike_duration_s or s.duration_s / 3


def locust_args(s: LoadTestSettings, stages: list[schedule.Stage], report_dir: Path) -> list[str]:
    """The command line of the master (or the single local process), without the interpreter."""
    args = [
        "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", s.url,
        "--users", str(s.users),
        "--spawn-rate", str(s.spawn_rate),
        "--run-time", f"{math.ceil(schedule.total_s(stages))}s",
        "--stop-timeout", str(_STOP_TIMEOUT_S),
        "--csv", str(report_dir / "locust"), "--csv-full-history",
        "--html", str(report_dir / "locust.html"),
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
        "--model", s.model,
        "--images", str(Path(s.images).resolve()),
        "--images-per-request", str(s.images_per_request),
        "--scenario", s.scenario,
        "--warmup", str(s.warmup_s),
        "--request-timeout", str(s.request_timeout_s),
        "--slo-p95-ms", str(s.slo_p95_ms),
        "--max-error-rate", str(s.max_error_rate),
        "--samples-file", str(report_dir / "samples.json"),
    ]  # fmt: skip
    if s.model_version:
        args += ["--model-version", str(s.model_version)]
    if s.target_rps:
        args += ["--target-rps", str(s.target_rps)]
    if s.scenario == "ramp":
        args += ["--step-duration", str(ramp_step_s(s))]
        if s.step_users:
            args += ["--step-users", str(s.step_users)]
    if s.scenario == "spike":
        args += ["--spike-users", str(s.spike_users or 4 * s.users), "--spike-duration", str(spike_s(s))]
    return args + list(s.extra_locust_args)


def _start(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_locust(s: LoadTestSettings, stages: list[schedule.Stage], report_dir: Path) -> Path:
    """Run Locust (one process, or a master and ``workers`` worker processes) to completion.

    Returns:
        The path of the samples file the master wrote.
    """
    from cvserve.server.process import free_port

    master_log = report_dir / "locust.log"
    cmd = [sys.executable, *locust_args(s, stages, report_dir)]
    workers: list[subprocess.Popen[bytes]] = []
    if s.workers:
        port = s.master_port or free_port(
            s.master_bind_host if s.master_bind_host != "0.0.0.0" else "127.0.0.1"
        )
        cmd += [
            "--master", "--expect-workers", str(s.workers),
            "--expect-workers-max-wait", str(_WORKERS_WAIT_S),
            "--master-bind-host", s.master_bind_host, "--master-bind-port", str(port),
        ]  # fmt: skip
    samples = report_dir / "samples.json"
    samples.unlink(missing_ok=True)
    master = _start(cmd, master_log, report_dir)
    try:
        if s.workers and not s.remote_workers:
            worker_cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                          "--master-host", "127.0.0.1", "--master-port", str(port), "--loglevel", "WARNING",
                          "--stop-timeout", str(_STOP_TIMEOUT_S)]  # fmt: skip
            workers = [
                _start(worker_cmd, report_dir / f"locust-worker-{i}.log", report_dir)
                for i in range(s.workers)
            ]
        limit = schedule.total_s(stages) + _GRACE_S + (_WORKERS_WAIT_S if s.workers else 0)
        try:
            master.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise CvserveError(
                f"Locust did not finish within {limit:.0f} s; see {master_log}:\n{_tail(master_log)}"
            ) from None
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
    finally:
        for p in [master, *workers]:
            if p.poll() is None:
                p.kill()
                p.wait()
    if master.returncode != 0 or not samples.exists():
        raise CvserveError(
            f"Locust failed (exit status {master.returncode}); see {master_log}:\n{_tail(master_log)}"
        )
    return samples


def check_server(s: LoadTestSettings) -> None:
    """Fail fast, with the client's own message, when the server or the model is not there."""
    from cvserve.client import Client, ClientError

    try:
        with Client(s.url, model=s.model, retry=False, timeout=10.0) as c:
            c.wait_until_ready(timeout=10.0)
            c.model_info(s.model)  # ModelNotFound at once for a wrong name
            c.wait_until_ready(timeout=10.0, model=s.model)
    except ClientError as e:
        raise ServerError(f"cannot load-test {s.model!r} at {s.url}: {e}") from None


def run_loadtest(s: LoadTestSettings, *, log: Callable[[str], None] | None = None) -> dict:
    """Run the load test described by ``s``, write its report into ``s.report_dir``, and return it.

    Returns:
        The dict written to ``report.json``: latency percentiles, throughput, error rate, cost per 1k
        inferences, the SLO, every gate with its value and threshold, ``gates_passed``, and the
        server-side figures scraped from Triton.

    Raises:
        UserInputError: a setting is wrong.
        ServerError: the server or the model is not reachable.
        CvserveError: Locust failed (the message quotes its log).
    """
    say = log or (lambda _m: None)
    validate(s)
    price = resolve_price(s.price_per_hour, s.instance_type)
    check_server(s)
    stages = plan(s)
    report_dir = Path(s.report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    say(
        f"load test {s.name or s.model}: {s.scenario}, {s.users} users, "
        f"{schedule.total_s(stages):.0f} s ({s.warmup_s:g} s warm-up) against {s.url}"
    )
    from cvserve.loadtests.metrics import Scraper

    started = time.time()
    with ExitStack() as stack:
        scraper = None
        if s.metrics_url:
            total = schedule.total_s(stages) + _GRACE_S * 2
            scraper = stack.enter_context(Scraper(s.metrics_url, s.scrape_interval_s, max_s=total))
        else:
            stack.enter_context(nullcontext())
        samples_file = run_locust(s, stages, report_dir)
    data = json.loads(samples_file.read_text())
    report = analysis.build_report(
        settings=asdict(s) | {"images": str(s.images), "report_dir": str(report_dir)},
        stages=stages,
        samples=data["samples"],
        meta=data["meta"],
        scraper=scraper,
        price=price,
        started=started,
        report_dir=report_dir,
    )
    from cvserve.loadtests.report import write_report

    write_report(report, report_dir, plots=s.plots)
    say(f"report: {report_dir / 'report.json'}")
    return report
