"""``run_release``: the only orchestrator of a release (check, judge, report, then maybe promote).

Order matters: everything that can be checked on disk (settings, golden set, layout, versions, labels,
load-test settings) is checked before the server is touched, so a bad input changes nothing there.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cvserve import hardware
from cvserve.builders.repository import Repository
from cvserve.errors import CvserveError, MissingDependencyError, UserInputError
from cvserve.release import measure, promote
from cvserve.release import report as reports
from cvserve.release.formats import Comparison, GoldenFormat, check_same_task, golden_format
from cvserve.release.gates import Gate, evaluate, failed
from cvserve.release.settings import ReleaseSettings
from cvserve.release.shadow import serve_shadows
from cvserve.release.versions import ModelVersion, load_version, model_config
from cvserve.server.control import ModelControl

Log = Callable[[str], None]
NO_URL_HINT = ", or give no --url so that cvserve release starts its own embedded server on the repository"


@dataclass(frozen=True, kw_only=True)
class ReleaseResult:
    """The decision and everything behind it (``report`` is what release_report.json holds)."""

    decision: str  # "go" or "no-go"
    failed_gates: list[str]
    report: dict
    report_dir: Path
    promoted: bool

    @property
    def go(self) -> bool:
        return self.decision == "go"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _check_loadtest(s: ReleaseSettings, golden) -> None:
    import importlib.util

    from cvserve.loadtests.cost import resolve_price
    from cvserve.loadtests.runner import validate

    # Found, not imported: importing Locust would monkey-patch this process with gevent.
    for module in ("locust", *(("matplotlib",) if s.plots else ())):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"{module} is needed for the release's load test and report: pip install 'cvserve[loadtest]'"
            )

    probe = measure.loadtest_settings(
        s, model=s.name, version=s.candidate, role="candidate", url="", images=golden.root, metrics_url=None
    )
    validate(probe)
    resolve_price(s.price_per_hour, s.instance_type)


def _resolve(fmt: GoldenFormat, golden, baseline: ModelVersion, candidate: ModelVersion):
    """The golden set checked against both versions' classes (both built for one task)."""
    check_same_task(baseline, candidate)
    return fmt.resolve(golden, baseline, candidate)


@contextmanager
def _server(s: ReleaseSettings, log: Log) -> Iterator[tuple[str, str | None, bool]]:
    """``(gRPC url, metrics url, embedded)``: the running server, or an embedded one started here."""
    if s.url:
        yield s.url, s.metrics_url, False
        return
    from cvserve.server import ServerSettings, TritonServer

    server = TritonServer(
        ServerSettings.embedded(s.repository, model_control_mode="explicit", exit_timeout_s=10)
    )
    log(f"starting an embedded Triton on {s.repository} for the release (explicit model control)")
    with server:
        yield server.grpc_url, s.metrics_url or server.metrics_url, True


def _baseline_number(s: ReleaseSettings, control: ModelControl | None) -> int:
    """``--baseline``, else what requests naming no version get now (from the server, else the repository)."""
    if s.baseline is not None:
        return s.baseline
    ready = control.ready_versions(s.name) if control is not None else None
    number = Repository(s.repository).served_version(s.name, ready)
    if number is None:
        raise UserInputError(f"{s.name} serves no version yet: give --baseline VERSION")
    if number == s.candidate:
        raise UserInputError(
            f"{s.name} already serves version {number}: give --baseline, the version to judge it against"
        )
    return number


@dataclass(frozen=True, kw_only=True)
class _Judgement:
    shadows: dict[str, str]
    comparison: Comparison
    loads: dict[str, dict]
    latencies: dict[str, list[float]]


def _judge(
    s: ReleaseSettings,
    ctl: ModelControl,
    *,
    url: str,
    metrics_url: str | None,
    fmt: GoldenFormat,
    golden,
    versions: dict[str, ModelVersion],
    log: Log,
) -> _Judgement:
    """Serve both versions under shadow names, run the golden set through each, load-test each."""
    with serve_shadows(ctl, versions, log=log) as shadows:
        predictions = {
            role: fmt.predict(url, shadows[role], v, golden, timeout_s=s.request_timeout_s)
            for role, v in versions.items()
        }
        comparison = fmt.compare(golden, predictions["baseline"], predictions["candidate"])
        loads, latencies = {}, {}
        with tempfile.TemporaryDirectory(prefix="cvserve-release-") as tmp:
            images = measure.payload_folder(golden, Path(tmp))
            for role, v in versions.items():
                lt = measure.loadtest_settings(
                    s,
                    model=shadows[role],
                    version=v.version,
                    role=role,
                    url=url,
                    images=images,
                    metrics_url=metrics_url,
                )
                result = measure.run(lt, log=log)
                loads[role], latencies[role] = measure.summary(result), measure.latencies_ms(result)
    return _Judgement(shadows=shadows, comparison=comparison, loads=loads, latencies=latencies)


def run_release(s: ReleaseSettings, *, log: Log = _stderr) -> ReleaseResult:
    """Judge ``s.candidate`` against the baseline, write the reports, and promote on go if asked.

    Raises:
        UserInputError: a setting, the golden set, the repository or a version is wrong (nothing on
            the server has changed).
        TritonError, CvserveError: the server failed, a load test failed, or the promotion failed (the
            repository's previous configuration is then restored).
    """
    s.validate()
    model_config(s.repository, s.name)  # the layout check
    candidate = load_version(s.repository, s.name, s.candidate)
    fmt = golden_format(candidate)  # the candidate's task owns the golden-set format
    golden = fmt.load(s.golden)
    _check_loadtest(s, golden)
    baseline = None
    if s.baseline is not None or s.url is None:  # known without asking the server: check the labels now
        baseline = load_version(s.repository, s.name, _baseline_number(s, None))
        golden = _resolve(fmt, golden, baseline, candidate)

    with (
        _server(s, log) as (url, metrics_url, embedded),
        ModelControl(
            url, load_timeout_s=s.load_timeout_s, headers=s.control_headers, disabled_hint=NO_URL_HINT
        ) as ctl,
    ):
        ctl.check_live()
        if baseline is None:
            baseline = load_version(s.repository, s.name, _baseline_number(s, ctl))
            golden = _resolve(fmt, golden, baseline, candidate)
        log(
            f"release {s.name}: candidate v{s.candidate} against baseline v{baseline.version}, {len(golden)} cases"
        )
        versions = {"baseline": baseline, "candidate": candidate}
        judged = _judge(
            s, ctl, url=url, metrics_url=metrics_url, fmt=fmt, golden=golden, versions=versions, log=log
        )

    gates = evaluate(s, judged.comparison, judged.loads["baseline"], judged.loads["candidate"])
    failing = failed(gates)
    report = _report(s, fmt, golden, versions, judged, gates, failing, url=url, embedded=embedded)
    error = _promote(s, report, report["decision"], url=None if embedded else url, log=log)
    report_dir = Path(s.report_dir)
    card = reports.write(report, judged.latencies, report_dir, plots=s.plots)["model_card"]
    card_path = reports.write_model_card(card, candidate.directory)
    log(f"model card: {report_dir / reports.MODEL_CARD} and {card_path}")
    if error is not None:
        raise error
    return ReleaseResult(
        decision=report["decision"],
        failed_gates=failing,
        report=report,
        report_dir=report_dir,
        promoted=report["promotion"]["done"],
    )


def _report(
    s: ReleaseSettings,
    fmt: GoldenFormat,
    golden,
    versions: dict[str, ModelVersion],
    judged: _Judgement,
    gates: list[Gate],
    failing: list[str],
    *,
    url: str,
    embedded: bool,
) -> dict:
    """What release_report.json holds (docs/release.md lists the keys)."""
    baseline, candidate = versions["baseline"], versions["candidate"]
    return {
        "schema": 1,
        "name": s.name,
        "candidate": candidate.version,
        "baseline": baseline.version,
        "decision": "no-go" if failing else "go",
        "failed_gates": failing,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": hardware.summary(),
        "hardware": hardware.cpu().as_dict(),
        "server": {"url": url, "embedded": embedded, "shadows": judged.shadows},
        "golden": {
            "path": str(golden.root),
            "cases": len(golden),
            "slice_columns": list(golden.slice_columns),
            "format": fmt.name,
            "metric": fmt.metric,
            **fmt.describe(golden),
        },
        "gates": [g.as_dict() for g in gates],
        "slices": [sl.as_dict() for sl in judged.comparison.slices],
        "changed_cases": [c.as_dict() for c in judged.comparison.changed],
        "loadtest": {
            **judged.loads,
            "settings": {k: getattr(s, k) for k in ("users", "duration_s", "warmup_s", "images_per_request")},
        },
        "builds": {"baseline": baseline.build, "candidate": candidate.build},
        "intended_use": s.intended_use or fmt.intended_use(candidate),
        "user_limitations": s.limitations,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
        | {"control_header": sorted(s.control_headers) or None},  # the name only: the value may be a key
        "promotion": {"requested": s.promote, "done": False, "outcome": "not requested"},
    }


def _promote(
    s: ReleaseSettings, report: dict, decision: str, *, url: str | None, log: Log
) -> CvserveError | None:
    """Promote on go if asked; record the outcome in ``report``; return the error to raise after writing."""
    promotion = report["promotion"]
    if not s.promote:
        return None
    if decision != "go":
        promotion["outcome"] = "not done: the release is a no-go"
        return None
    try:
        config = promote.switch(
            s.repository, s.name, s.candidate, url=url, timeout_s=s.load_timeout_s, log=log
        )
    except CvserveError as exc:
        promotion["outcome"] = f"failed, the previous configuration is back: {exc}"
        return exc
    promotion.update(done=True, config=str(config))
    if url is None:
        promotion["outcome"] = (
            f"{config} now pins version {s.candidate}; a server on this repository serves it once NAME is "
            "loaded again (explicit mode), by itself (poll mode) or after a restart (none mode)"
        ).replace("NAME", s.name)
    else:
        promotion["outcome"] = f"done: {url} serves {s.name} version {s.candidate}"
    return None
