"""Gates, the report, and the CLI's flags, on synthetic samples (no server, no Locust)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvserve.cli import build_parser
from cvserve.errors import UserInputError
from cvserve.loadtests import analysis, schedule
from cvserve.loadtests.cli import settings_from_args, summary_lines
from cvserve.loadtests.cost import Price
from cvserve.loadtests.report import write_report
from cvserve.loadtests.runner import LoadTestSettings, locust_args, plan, validate

T0 = 1_000.0


def _settings(tmp_path: Path, **kw) -> LoadTestSettings:
    base = {
        "model": "m",
        "url": "127.0.0.1:1",
        "images": tmp_path,
        "report_dir": tmp_path,
        "warmup_s": 2.0,
        "duration_s": 10.0,
        "slo_p95_ms": 500.0,
    }
    return LoadTestSettings(**(base | kw))


def _report(tmp_path: Path, samples, **kw) -> dict:
    s = _settings(tmp_path, **kw)
    meta = {"test_start": T0, "test_stop": T0 + schedule.total_s(plan(s)), "cpu": [(T0 + 3, 20.0, "local")]}
    return analysis.build_report(
        settings=s.__dict__ | {"images": str(s.images), "report_dir": str(tmp_path)},
        stages=plan(s),
        samples=samples,
        meta=meta,
        scraper=None,
        price=Price(per_hour=0.5, instance_type=None, source="--price-per-hour"),
        started=T0,
        report_dir=tmp_path,
    )


def _steady(ms: float, per_s: int = 20, seconds: int = 12, fail_every: int = 0):
    out = []
    for i in range(seconds * per_s):
        out.append((T0 + i / per_s, ms, 0 if fail_every and i % fail_every == 0 else 1, 2))
    return out


def test_gates_pass_and_the_warmup_is_left_out(tmp_path):
    samples = [(T0 + 0.5, 5000.0, 1, 2), *_steady(40.0)]  # a slow first request, in the warm-up
    r = _report(tmp_path, samples, slo_p95_ms=100.0, max_error_rate=0.01)
    assert r["gates_passed"] and r["failed_gates"] == []
    assert r["p95_ms"] == 40.0 and r["max_ms"] == 40.0
    assert r["window"] == {"start_s": 2.0, "end_s": 12.0, "duration_s": 10.0, "warmup_s": 2.0}
    assert r["throughput_rps"] == 20.0 and r["inferences_per_s"] == 40.0
    assert r["cost_per_1k_usd"] == pytest.approx(0.5 / (40.0 * 3600) * 1000, rel=1e-4)
    assert r["slo"] == {"p95_ms": 100.0, "met": True}
    for key in ("p50_ms", "p99_ms", "error_rate", "gates", "server", "generator", "timeline"):
        assert key in r


def test_each_failed_gate_is_named_with_value_and_threshold(tmp_path):
    r = _report(
        tmp_path,
        _steady(40.0, fail_every=10),
        slo_p95_ms=1.0,
        max_error_rate=0.001,
        min_throughput_rps=1000.0,
        max_cost_per_1k_usd=1e-9,
    )
    assert not r["gates_passed"]
    assert r["failed_gates"] == ["p95_latency_ms", "error_rate", "throughput_rps", "cost_per_1k_usd"]
    assert r["gates"]["p95_latency_ms"] | {} == {"value": 40.0, "threshold": 1.0, "op": "<=", "passed": False}
    assert r["slo"]["met"] is False


def test_no_requests_fails_the_gates(tmp_path):
    r = _report(tmp_path, [], slo_p95_ms=100.0)
    assert r["failed_gates"] == ["p95_latency_ms", "error_rate"] and r["cost_per_1k_usd"] is None


def test_ramp_reports_the_highest_throughput_that_held_the_slo(tmp_path):
    s = _settings(tmp_path, scenario="ramp", users=3, step_users=1, step_duration_s=6.0, slo_p95_ms=100.0)
    stages = plan(s)
    samples = []
    for stage, (ms, rate) in zip(stages[1:], [(20.0, 10), (60.0, 18), (300.0, 19)], strict=True):
        n = int(stage.duration_s * rate)
        samples += [(T0 + stage.start_s + i / rate, ms, 1, 1) for i in range(n)]
    r = _report(
        tmp_path, samples, scenario="ramp", users=3, step_users=1, step_duration_s=6.0, slo_p95_ms=100.0
    )
    ramp = r["ramp"]
    assert [x["held_slo"] for x in ramp["steps"]] == [True, True, False]
    assert ramp["max_throughput_rps_under_slo"] == pytest.approx(18, rel=0.05) and ramp["users_at_max"] == 2
    assert ramp["first_step_over_slo"] == "step3"
    assert r["gates_passed"] and r["p95_ms"] == 60.0


def test_report_files(tmp_path):
    r = _report(tmp_path, _steady(40.0), slo_p95_ms=1.0)
    (tmp_path / "locust_stats.csv").write_text("x\n")
    write_report(r, tmp_path, plots=True)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["failed_gates"] == ["p95_latency_ms"]
    md = (tmp_path / "report.md").read_text()
    assert "FAIL: p95_latency_ms" in md and "![latency over time](latency.png)" in md
    assert (tmp_path / "latency.png").stat().st_size > 0 and (tmp_path / "throughput.png").exists()
    assert data["files"]["locust_csv"] == ["locust_stats.csv"]
    assert "| p95_latency_ms | 40 | <= 1 | **FAIL** |" in md and "| 40 ms | 40 ms |" in md
    lines = summary_lines(data)
    assert (
        lines[-1].startswith("FAILED gate(s): p95_latency_ms")
        and "gate p95_latency_ms: 40 <= 1: FAIL" in lines
    )


def test_the_report_names_the_task_and_the_payload_sent(tmp_path):
    from cvserve.loadtests.payloads import describe

    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a.png", 100), ("b.jpg", 300), ("notes.txt", 5000)):
        (images / name).write_bytes(b"x" * size)
    payload = describe(images)
    assert payload == {"directory": str(images), "images": 2, "mean_bytes": 200}
    s = _settings(tmp_path)
    r = analysis.build_report(
        settings=s.__dict__ | {"images": str(images), "report_dir": str(tmp_path)},
        stages=plan(s),
        samples=_steady(40.0),
        meta={"test_start": T0, "test_stop": T0 + schedule.total_s(plan(s))},
        scraper=None,
        price=None,
        started=T0,
        report_dir=tmp_path,
        task="detect",
        payload=payload,
    )
    assert r["task"] == "detect" and r["payload"] == payload
    write_report(r, tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert f"detect requests of 1 image(s) taken in turn from 2 image(s) in `{images}` (200 bytes" in md


def test_generator_ceiling_warning(tmp_path):
    r = _report(tmp_path, _steady(40.0), generator_ceiling_rps=25.0)
    assert r["generator"]["fraction_of_ceiling"] == 0.8
    assert any("ceiling" in w for w in r["warnings"])


def test_cli_flags_become_settings(tmp_path):
    args = build_parser().parse_args(
        ["loadtest", "mobilenet_v2", "--url", "10.0.0.5:8001", "--images", str(tmp_path), "--users", "8",
         "--duration", "1m30s", "--slo-p95-ms", "250", "--instance-type", "g4dn.xlarge", "--replicas", "3",
         "--workers", "2", "--report-dir", str(tmp_path / "out"), "--no-plots"]
    )  # fmt: skip
    s = settings_from_args(args)
    assert (s.model, s.duration_s, s.warmup_s, s.replicas, s.workers, s.plots) == (
        "mobilenet_v2",
        90.0,
        5.0,
        3,
        2,
        False,
    )
    assert s.instance_type == "g4dn.xlarge" and s.report_dir == tmp_path / "out"
    r = s.resolved()  # the defaults that follow from other settings
    assert r.spawn_rate == 8.0 and r.metrics_url == "http://10.0.0.5:8002/metrics"
    assert (r.master_bind_host, r.master_port) == ("127.0.0.1", 0)
    assert args.func.__module__ == "cvserve.loadtests.cli"
    validate(s)
    cmd = locust_args(s, plan(s), tmp_path)
    assert cmd[cmd.index("--run-time") + 1] == "95s" and cmd[cmd.index("--host") + 1] == "10.0.0.5:8001"


def test_the_locust_command_line_carries_the_suites_options(tmp_path):
    s = _settings(tmp_path, scenario="ramp", users=4, step_users=2, request_timeout_s=7.0)
    cmd = locust_args(s, plan(s), tmp_path)
    opt = {flag: cmd[cmd.index(flag) + 1] for flag in ("--model", "--images", "--warmup", "--step-duration")}
    assert opt == {
        "--model": "m",
        "--images": str(tmp_path.resolve()),
        "--warmup": "2.0",
        "--step-duration": "5.0",
    }
    assert "--request-timeout" in cmd and "--target-rps" not in cmd and "--spike-users" not in cmd


def test_remote_workers_listen_on_every_interface_at_locusts_port(tmp_path):
    args = build_parser().parse_args(
        [
            "loadtest",
            "m",
            "--images",
            str(tmp_path),
            "--slo-p95-ms",
            "100",
            "--workers",
            "2",
            "--remote-workers",
        ]
    )
    r = settings_from_args(args).resolved()
    assert (r.remote_workers, r.master_bind_host, r.master_port) == (True, "0.0.0.0", 5557)


def test_bad_values_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="--images"):
        validate(_settings(tmp_path, images=tmp_path / "missing"))
    with pytest.raises(UserInputError, match="--max-error-rate must be at most 1"):
        validate(_settings(tmp_path, max_error_rate=5.0))
    with pytest.raises(UserInputError, match="--users must be at least 1"):
        validate(_settings(tmp_path, users=0))
    with pytest.raises(UserInputError, match="needs a price"):
        validate(_settings(tmp_path, max_cost_per_1k_usd=0.1))
    with pytest.raises(UserInputError, match="contradict"):
        validate(_settings(tmp_path, metrics=False, metrics_url="http://h:8002/metrics"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--duration", "soon"], "argument --duration: 'soon' is not a duration"),
        (["--users", "0"], "argument --users: must be at least 1, not 0"),
        (["--scenario", "sideways"], "argument --scenario: invalid choice: 'sideways'"),
        ([], "the following arguments are required: --slo-p95-ms"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, flags, message, capsys):
    argv = ["loadtest", "m", "--images", str(tmp_path), *flags]
    if flags:
        argv += ["--slo-p95-ms", "100"]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_runner_side_never_imports_locust_or_gevent():
    code = (
        "import sys, cvserve.cli, cvserve.loadtests.runner, cvserve.loadtests.cli, cvserve.loadtests.report, "
        "cvserve.loadtests.metrics, cvserve.loadtests.ceiling, cvserve.loadtests.analysis;"
        "cvserve.cli.build_parser();"
        "bad = [m for m in ('locust', 'gevent', 'matplotlib') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_locustfile_takes_its_options_the_locust_way(tmp_path):
    """Flags, LOCUST_* variables and a locust.conf all reach the suite's options (--list loads the file)."""
    from cvserve.loadtests.runner import LOCUSTFILE

    conf = tmp_path / "locust.conf"
    conf.write_text("scenario = ramp\nstep-users = 2\n")
    env = {**os.environ, "LOCUST_IMAGES_PER_REQUEST": "4"}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--config", str(conf), "--list",
           "--images", str(tmp_path), "--target-rps", "5", "--samples-file", str(tmp_path / "s.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ClassifyUser" in out.stdout
    bad = subprocess.run(
        [*cmd, "--scenario", "sideways"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert bad.returncode != 0 and "sideways" in bad.stderr


def test_suite_modules_without_locust_say_which_extra_is_missing():
    code = (
        "import sys, importlib, pkgutil\n"
        "for m in ('locust', 'gevent'): sys.modules[m] = None  # as if the loadtest extra were not installed\n"
        "import cvserve.loadtests as L\n"
        "from cvserve.errors import MissingDependencyError\n"
        "suite = {'_locust', 'users', 'locustfile', 'scenarios', 'collector'}\n"
        "for m in pkgutil.walk_packages(L.__path__, 'cvserve.loadtests.'):\n"
        "    try:\n        importlib.import_module(m.name)\n"
        "    except MissingDependencyError as e:\n"
        "        assert m.name.rsplit('.', 1)[1] in suite, m.name\n"
        "        print(e)\n"
        "import cvserve.loadtests.cli, cvserve.loadtests.runner  # the runner side imports without Locust\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'cvserve[loadtest]'" in out.stdout
