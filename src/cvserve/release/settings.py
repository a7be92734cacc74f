"""The release's settings: one keyword-only dataclass, from which ``cvserve release``'s flags are derived.

The load-test settings are ``cvserve loadtest``'s own (:func:`cvserve.settings.like`), so a release
measures the way a load test does and takes the same flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import UserInputError
from cvserve.loadtests.settings import LoadTestSettings
from cvserve.server.control import DEFAULT_LOAD_TIMEOUT_S
from cvserve.settings import check, duration, flag, like, setting

_GATES = "gates"
_LOAD = "release load test (cvserve loadtest, steady, against each version in turn)"
_CARD = "model card"
_SERVER = "server"


@dataclass(kw_only=True)
class ReleaseSettings:
    """What to release and how to judge it; ``cvserve release --help`` shows each field's flag."""

    name: str = setting(positional=True, metavar="NAME", help="the served model (single layout)")
    golden: Path = setting(
        metavar="DIR",
        help="the golden set: a folder of images and labels.csv (classifiers) or annotations.json, COCO "
        "JSON (detectors); the candidate's build report names its task",
    )
    candidate: int = setting(at_least=1, metavar="VERSION", help="the version to judge")
    baseline: int | None = setting(
        None,
        at_least=1,
        metavar="VERSION",
        help="the version to judge it against",
        default_help="the version the server gives requests that name none",
    )
    report_dir: Path = setting(Path("release-report"), metavar="DIR", help="where the reports go")
    promote: bool = setting(
        False,
        help="on go, make the candidate the served version: the repository's config (atomically) and "
        "the server at --url (no failed request)",
    )

    url: str | None = setting(
        None,
        metavar="HOST:PORT",
        group=_SERVER,
        help="gRPC address of a running Triton in explicit model-control mode",
        default_help="an embedded server started on --repository for the release",
    )
    repository: Path = setting(
        DEFAULT_REPOSITORY,
        short="-r",
        metavar="DIR",
        group=_SERVER,
        help="the model repository the server serves",
    )
    control_header: str | None = setting(
        None,
        metavar="NAME=VALUE",
        group=_SERVER,
        help="gRPC metadata for model-control calls, e.g. the key of a restricted model-control API",
    )
    load_timeout_s: float = duration(
        DEFAULT_LOAD_TIMEOUT_S, above=0, group=_SERVER, help="how long a version may take to load"
    )

    max_regression_rate: float = setting(
        0.02,
        at_least=0,
        at_most=1,
        group=_GATES,
        help="the largest regression rate on any slice, a fraction of its golden images (classifiers: "
        "right in the baseline, wrong in the candidate; detectors: a lower F1 at IoU 0.5)",
    )
    max_accuracy_drop_points: float = setting(
        1.0,
        at_least=0,
        flag="--max-accuracy-drop",
        metavar="POINTS",
        group=_GATES,
        help="classifiers: the largest overall top-1 accuracy drop, in percentage points",
    )
    max_map_drop: float = setting(
        0.01,
        at_least=0,
        at_most=1,
        group=_GATES,
        help="detectors: the largest drop of mAP@[.5:.95] on any slice, a fraction of the baseline's",
    )
    min_map: float | None = setting(
        None,
        at_least=0,
        at_most=1,
        group=_GATES,
        help="detectors: the lowest mAP@[.5:.95] the candidate may have on any slice",
        default_help="no floor",
    )
    max_cost_increase: float = setting(
        0.10, at_least=0, group=_GATES, help="the largest cost-per-1k increase over the baseline, a fraction"
    )
    slo_p95_ms: float = like(LoadTestSettings, "slo_p95_ms", help="the candidate's p95 latency SLO in ms")
    max_error_rate: float = like(
        LoadTestSettings, "max_error_rate", help="the candidate's highest error rate"
    )

    users: int = like(LoadTestSettings, "users", group=_LOAD, help="concurrent users")
    spawn_rate: float | None = like(LoadTestSettings, "spawn_rate", group=_LOAD)
    duration_s: float = like(LoadTestSettings, "duration_s", group=_LOAD)
    warmup_s: float = like(LoadTestSettings, "warmup_s", group=_LOAD)
    images_per_request: int = like(LoadTestSettings, "images_per_request", group=_LOAD)
    request_timeout_s: float = like(LoadTestSettings, "request_timeout_s", group=_LOAD)
    price_per_hour: float | None = like(LoadTestSettings, "price_per_hour", group=_LOAD)
    instance_type: str | None = like(LoadTestSettings, "instance_type", group=_LOAD)
    replicas: int = like(LoadTestSettings, "replicas", group=_LOAD)
    metrics_url: str | None = like(
        LoadTestSettings, "metrics_url", group=_LOAD, default_help="the embedded server's; none with --url"
    )
    plots: bool = like(LoadTestSettings, "plots", group=_LOAD)

    intended_use: str | None = setting(
        None, metavar="TEXT", group=_CARD, help="intended use", default_help="a sentence naming the classes"
    )
    limitations: str | None = setting(None, metavar="TEXT", group=_CARD, help="known limitations to add")

    @property
    def control_headers(self) -> dict[str, str]:
        return control_headers(self.control_header)

    def validate(self) -> None:
        """Raise :class:`UserInputError` naming the flag of a setting that cannot work."""
        check(self)
        if self.baseline == self.candidate:
            raise UserInputError("--baseline and --candidate are the same version: judge two versions")
        if self.control_header is not None and "=" not in self.control_header.strip("="):
            raise UserInputError(
                f"{flag(ReleaseSettings, 'control_header')} takes NAME=VALUE, e.g. admin-key=$CVSERVE_ADMIN_KEY"
            )


@dataclass(kw_only=True)
class RollbackSettings:
    """``cvserve rollback``: serve an earlier version again, in the repository and on a live server."""

    name: str = like(ReleaseSettings, "name", help="the served model")
    version: int = setting(positional=True, metavar="VERSION", help="the version to serve", at_least=1)
    repository: Path = like(ReleaseSettings, "repository")
    url: str | None = like(
        ReleaseSettings,
        "url",
        None,
        default_help="none: only the repository changes (a poll-mode server picks it up; restart a "
        "none-mode server)",
    )
    control_header: str | None = like(ReleaseSettings, "control_header")

    @property
    def control_headers(self) -> dict[str, str]:
        return control_headers(self.control_header)


def control_headers(text: str | None) -> dict[str, str]:
    """``--control-header NAME=VALUE`` as gRPC metadata (keys lower-cased, as gRPC wants them)."""
    if not text:
        return {}
    key, _, value = text.partition("=")
    return {key.strip().lower(): value}
