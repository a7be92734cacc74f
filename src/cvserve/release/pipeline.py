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

from cvserve.errors import CvserveError, MissingDependencyError, UserInputError
from cvserve.release import measure, promote
from cvserve.release import report as reports
from cvserve.release.compare import classify_all, compare
from cvserve.release.control import ModelControl
from cvserve.release.gates import evaluate, failed
from cvserve.release.golden import GoldenSet, load_golden_set, resolve_labels
from cvserve.release.settings import ReleaseSettings
from cvserve.release.shadow import serve_shadows
from cvserve.release.versions import ModelVersion, load_version, model_config, served_by_config
from cvserve.reporting import machine

Log = Callable[[str], None]


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


def _check_loadtest(s: ReleaseSettings, golden: GoldenSet) -> None:
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


def _with_labels(golden: GoldenSet, baseline: ModelVersion, candidate: ModelVersion) -> GoldenSet:
    # Indices are the baseline's; a class only the candidate knows is still a known name.
    names = list(baseline.labels or [])
    names += [n for n in candidate.labels or [] if n not in names]
    return resolve_labels(golden, names or None, baseline.name)


@contextmanager
def _server(s: ReleaseSettings, log: Log) -> Iterator[tuple[str, str | None, bool]]:
    """``(gRPC url, metrics url, embedded)``: the running server, or an embedded one started here."""
    if s.url:
        yield s.url, s.metrics_url, False
        return
    from cvserve.server import ServerSettings, TritonServer

    server = TritonServer(
        ServerSettings(
            repository=s.repository,
            grpc_port=0,
            http_port=0,
            metrics_port=0,
            model_control_mode="explicit",
            exit_timeout_s=10,
        )
    )
    log(f"starting an embedded Triton on {s.repository} for the release (explicit model control)")
    with server:
        yield server.grpc_url, s.metrics_url or server.metrics_url, True


def _baseline_number(s: ReleaseSettings, control: ModelControl | None) -> int:
    if s.baseline is not None:
        return s.baseline
    if control is not None:
        ready = control.ready_versions(s.name)
        if ready:  # what requests naming no version get right now
            return ready[-1]
    served = served_by_config(s.repository, s.name)
    if served is None:
        raise UserInputError(f"{s.name} serves no version yet: give --baseline VERSION")
    return served


def run_release(s: ReleaseSettings, *, log: Log = _stderr) -> ReleaseResult:
    """Judge ``s.candidate`` against the baseline, write the reports, and promote on go if asked.

    Raises:
        UserInputError: a setting, the golden set, the repository or a version is wrong (nothing on
            the server has changed).
        ServerError, CvserveError: the server failed, a load test failed, or the promotion failed (the
            repository's previous configuration is then restored).
    """
    s.validate()
    golden = load_golden_set(s.golden)
    model_config(s.repository, s.name)  # the layout check
    candidate = load_version(s.repository, s.name, s.candidate)
    _check_loadtest(s, golden)
    baseline = None
    if s.baseline is not None or s.url is None:
        baseline = load_version(s.repository, s.name, _baseline_number(s, None))
        golden = _with_labels(golden, baseline, candidate)
    report_dir = Path(s.report_dir)

    with (
        _server(s, log) as (url, metrics_url, embedded),
        ModelControl(url, load_timeout_s=s.load_timeout_s, headers=s.control_headers) as ctl,
    ):
        ctl.check_live()
        if baseline is None:
            number = _baseline_number(s, ctl)
            if number == s.candidate:
                raise UserInputError(
                    f"{s.name} already serves version {number} on {url}: give --baseline, the version to "
                    "judge it against"
                )
            baseline = load_version(s.repository, s.name, number)
            golden = _with_labels(golden, baseline, candidate)
        log(
            f"release {s.name}: candidate v{candidate.version} against baseline v{baseline.version}, "
            f"{len(golden)} golden cases"
        )
        with serve_shadows(ctl, {"baseline": baseline, "candidate": candidate}, log=log) as shadows:
            predictions = {
                role: classify_all(url, shadows[role], v.version, golden.cases, timeout_s=s.request_timeout_s)
                for role, v in (("baseline", baseline), ("candidate", candidate))
            }
            comparison = compare(golden, predictions["baseline"], predictions["candidate"])
            loads, latencies = {}, {}
            with tempfile.TemporaryDirectory(prefix="cvserve-release-") as tmp:
                images = measure.payload_folder(golden, Path(tmp))
                for role, v in (("baseline", baseline), ("candidate", candidate)):
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

    gates = evaluate(s, comparison, loads["baseline"], loads["candidate"])
    failing = failed(gates)
    decision = "no-go" if failing else "go"
    report = {
        "schema": 1,
        "name": s.name,
        "candidate": candidate.version,
        "baseline": baseline.version,
        "decision": decision,
        "failed_gates": failing,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": {"url": url, "embedded": embedded, "shadows": shadows},
        "golden": {
            "path": str(golden.root),
            "cases": len(golden),
            "slice_columns": list(golden.slice_columns),
        },
        "gates": [g.as_dict() for g in gates],
        "slices": [sl.as_dict() for sl in comparison.slices],
        "changed_cases": [c.as_dict() for c in comparison.changed],
        "loadtest": {
            "baseline": loads["baseline"],
            "candidate": loads["candidate"],
            "settings": {k: getattr(s, k) for k in ("users", "duration_s", "warmup_s", "images_per_request")},
        },
        "builds": {"baseline": baseline.build, "candidate": candidate.build},
        "intended_use": s.intended_use or _default_intended_use(candidate),
        "user_limitations": s.limitations,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
        "promotion": {"requested": s.promote, "done": False, "outcome": "not requested"},
    }
    error = _promote(s, report, decision, url=None if embedded else url, log=log)
    card = reports.write(report, latencies, report_dir, plots=s.plots)["model_card"]
    card_path = reports.write_model_card(card, candidate.directory)
    log(f"model card: {report_dir / reports.MODEL_CARD} and {card_path}")
    if error is not None:
        raise error
    return ReleaseResult(
        decision=decision,
        failed_gates=failing,
        report=report,
        report_dir=report_dir,
        promoted=report["promotion"]["done"],
    )


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


def _default_intended_use(v: ModelVersion) -> str:
    classes = f"the {len(v.labels)} classes in the model's labels" if v.labels else "the model's classes"
    return (
        f"Image classification: for each JPEG/PNG image sent to `{v.name}`, the top classes among {classes} "
        "with softmax scores. Judged only on the golden set below and the build's validation images; "
        "use on other kinds of images needs its own evaluation."
    )
