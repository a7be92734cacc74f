"""The release's settings: one keyword-only dataclass, the single definition of every default.

The load-test fields take their defaults from :class:`cvserve.loadtests.runner.LoadTestSettings`, so a
release measures the way ``cvserve loadtest`` does unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import UserInputError
from cvserve.loadtests.runner import LoadTestSettings
from cvserve.release.control import DEFAULT_LOAD_TIMEOUT_S

_LOADTEST = {f.name: f.default for f in fields(LoadTestSettings)}


@dataclass(kw_only=True)
class ReleaseSettings:
    """What to release and how to judge it; see ``cvserve release --help`` for each field's flag.

    Attributes:
        name: the served model (single layout).
        golden: the golden-set folder (images and ``labels.csv``).
        candidate: the version to judge.
        baseline: the version to judge it against; ``None``: the version production gets now.
        url: gRPC address of a running Triton in explicit model-control mode; ``None``: start an
            embedded server on ``repository`` for the release (a staging server).
        repository: the model repository the server serves (read for versions; written on promotion).
        max_regression_rate: the largest regression rate allowed on any slice (a fraction).
        max_accuracy_drop_points: the largest overall accuracy drop allowed, in percentage points.
        max_cost_increase: the largest cost-per-1k increase over the baseline allowed (a fraction).
        promote: on go, make the candidate the served version.
    """

    name: str
    golden: Path
    candidate: int
    baseline: int | None = None
    url: str | None = None
    repository: Path = DEFAULT_REPOSITORY
    report_dir: Path = Path("release-report")
    # gates
    max_regression_rate: float = 0.02
    max_accuracy_drop_points: float = 1.0
    max_cost_increase: float = 0.10
    slo_p95_ms: float = _LOADTEST["slo_p95_ms"]
    max_error_rate: float = _LOADTEST["max_error_rate"]
    # the release load test (steady, against each version in turn)
    users: int = _LOADTEST["users"]
    spawn_rate: float | None = None  # None: --users per second
    duration_s: float = _LOADTEST["duration_s"]
    warmup_s: float = _LOADTEST["warmup_s"]
    images_per_request: int = _LOADTEST["images_per_request"]
    request_timeout_s: float = _LOADTEST["request_timeout_s"]
    price_per_hour: float | None = _LOADTEST["price_per_hour"]
    instance_type: str | None = _LOADTEST["instance_type"]
    replicas: int = _LOADTEST["replicas"]
    metrics_url: str | None = None
    plots: bool = _LOADTEST["plots"]
    # the model card
    intended_use: str | None = None
    limitations: str | None = None
    # rollout
    promote: bool = False
    load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S
    # gRPC metadata on model-control calls, e.g. {"admin-key": "..."} for a restricted model-control API
    control_headers: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`UserInputError` naming the flag of a setting that cannot work."""
        checks = [
            (self.candidate >= 1, "--candidate must be a version number >= 1"),
            (self.baseline is None or self.baseline >= 1, "--baseline must be a version number >= 1"),
            (self.baseline != self.candidate, "--baseline and --candidate are the same version"),
            (0 <= self.max_regression_rate <= 1, "--max-regression-rate is a fraction between 0 and 1"),
            (self.max_accuracy_drop_points >= 0, "--max-accuracy-drop must not be negative (points)"),
            (self.max_cost_increase >= 0, "--max-cost-increase must not be negative (a fraction)"),
            (self.load_timeout_s > 0, "--load-timeout must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
