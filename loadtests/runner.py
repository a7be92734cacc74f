"""Run a load test: Locust in child processes, Triton's metrics scraped alongside, then the report.

    >>> from cvserve.loadtests.runner import LoadTestSettings, run_loadtest
    >>> report = run_loadtest(LoadTestSettings(model="mobilenet_v2", url="127.0.0.1:8001", slo_p95_ms=200,
    ...                                        images=Path("photos"), duration_s=30))  # doctest: +SKIP
    >>> report["gates_passed"], report["p95_ms"], report["cost_per_1k_usd"]  # doctest: +SKIP

Locust runs in its own processes (``python -m locust -f loadtests/locustfile.py ...``) because it
monkey-patches everything with gevent on import; the caller's process never imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path

from cvserve.errors import CvserveError, NotFoundError, TritonError, UserInputError
from cvserve.loadtests import analysis, payloads, schedule
from cvserve.loadtests.cost import resolve_price
from cvserve.loadtests.settings import LOCUST_OPTIONS, LoadTestSettings
from cvserve.settings import check, to_argv

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Locust's start-up and shutdown around the planned run, and how long workers may take to connect.
_GRACE_S = 60.0
_WORKERS_WAIT_S = 30
# Users finish their request on stop rather than cancel it mid-flight (a cancelled request is no
# measurement, and some python-backend versions of Triton handle cancellation badly).
_STOP_TIMEOUT_S = 10


def validate(s: LoadTestSettings) -> None:
    """Raise :class:`UserInputError` for settings that cannot work, saying which flag to fix."""
    check(s)  # each setting's own range and choices, as declared in LoadTestSettings
    checks = [
        (not s.remote_workers or s.workers >= 1, "--remote-workers needs --workers N (how many to expect)"),
        (s.target_rps is None or s.scenario == "steady", "--target-rps is for --scenario steady"),
        (
            s.max_cost_per_1k_usd is None or s.price_per_hour is not None or s.instance_type is not None,
            "--max-cost-per-1k needs a price: --price-per-hour or --instance-type",
        ),
        (
            s.metrics or s.metrics_url is None,
            "--metrics-url and --no-metrics contradict each other: give one",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserInputError(message)
    if not Path(s.images).is_dir():
        raise UserInputError(f"--images {s.images} is not a directory: give a folder of JPEG/PNG files")


def plan(s: LoadTestSettings) -> list[schedule.Stage]:
    """The load schedule the Locust shape will play (the same functions, the same values)."""
    s = s.resolved()
    if s.scenario == "ramp":
        return schedule.ramp_plan(
            max_users=s.users,
            step_users=s.step_users,
            step_duration_s=s.step_duration_s,
            spawn_rate=s.spawn_rate,
            warmup_s=s.warmup_s,
        )
    if s.scenario == "spike":
        return schedule.spike_plan(
            users=s.users,
            spike_users=s.spike_users,
            spawn_rate=s.spawn_rate,
            warmup_s=s.warmup_s,
            duration_s=s.duration_s,
            spike_duration_s=s.spike_duration_s,
        )
    return schedule.steady_plan(
        users=s.users, spawn_rate=s.spawn_rate, warmup_s=s.warmup_s, duration_s=s.duration_s
    )


def locust_args(s: LoadTestSettings, stages: list[schedule.Stage], report_dir: Path) -> list[str]:
    """The command line of the master (or the single local process), without the interpreter."""
    s = s.resolved()
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
        "--samples-file", str(report_dir / "samples.json"),
    ]  # fmt: skip
    # The suite's own options, written from the same settings it registers (LOCUST_OPTIONS).
    suite = dataclasses.replace(s, images=Path(s.images).resolve())
    return args + to_argv(suite, LOCUST_OPTIONS) + list(s.extra_locust_args)


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

    s = s.resolved()
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


def check_server(s: LoadTestSettings) -> str:
    """Fail fast, with the client's own message, when the server or the model is not there.

    Returns:
        The model's task as its served config says (``ModelInfo.task``): the call the suite sends.
    """
    from cvserve.client import Client, ClientError, ModelNotFound

    try:
        with Client(s.url, model=s.model, retry=False, timeout=10.0) as c:
            c.wait_until_ready(timeout=10.0)
            info = c.model_info(s.model)  # ModelNotFound at once for a wrong name
            c.wait_until_ready(timeout=10.0, model=s.model)
            return info.task
    except ModelNotFound as e:
        raise NotFoundError(f"cannot load-test {s.model!r} at {s.url}: {e}") from None
    except ClientError as e:
        raise TritonError(f"cannot load-test {s.model!r} at {s.url}: {e}") from None


def run_loadtest(s: LoadTestSettings, *, log: Callable[[str], None] | None = None) -> dict:
    """Run the load test described by ``s``, write its report into ``s.report_dir``, and return it.

    Returns:
        The dict written to ``report.json``: the model's task and the payload sent, latency percentiles, throughput, error rate, cost per 1k
        inferences, the SLO, every gate with its value and threshold, ``gates_passed``, and the
        server-side figures scraped from Triton.

    Raises:
        UserInputError: a setting is wrong.
        NotFoundError: the server does not serve the model.
        TritonError: the server is not reachable or the model not ready.
        CvserveError: Locust failed (the message quotes its log).
    """
    say = log or (lambda _m: None)
    validate(s)
    s = s.resolved()
    price = resolve_price(s.price_per_hour, s.instance_type)
    task = check_server(s)
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
        settings=dataclasses.asdict(s) | {"images": str(s.images), "report_dir": str(report_dir)},
        stages=stages,
        samples=data["samples"],
        meta=data["meta"],
        scraper=scraper,
        price=price,
        started=started,
        report_dir=report_dir,
        task=task,
        payload=payloads.describe(Path(s.images)),
    )
    from cvserve.loadtests.report import write_report

    write_report(report, report_dir, plots=s.plots)
    say(f"report: {report_dir / 'report.json'}")
    return report
