"""cvserve's Locust suite: the classification ensemble over gRPC, payloads round-robin from a folder.

Run it the Locust way (flags, ``LOCUST_*`` environment variables, or ``locust.conf``)::

    locust -f loadtests/locustfile.py -H 127.0.0.1:8001 --model mobilenet_v2 --images photos/ \\
        --headless -u 8 -r 8 -t 60s --csv out/locust

or through ``cvserve loadtest``, which adds the gates, the server-side view and the report. The suite's
own options are defined in ``_options`` below (Locust prints ``--help`` before it loads a locustfile, so
they are not listed there); each also reads ``LOCUST_<NAME>`` and a ``locust.conf`` key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvserve.loadtests._locust import constant_throughput, events, task
from cvserve.loadtests.collector import COLLECTOR  # noqa: F401  (registers its listeners)
from cvserve.loadtests.payloads import RoundRobin
from cvserve.loadtests.scenarios import ScenarioShape  # noqa: F401  (the one load shape)
from cvserve.loadtests.schedule import SCENARIOS
from cvserve.loadtests.users import GrpcUser


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("cvserve", "options of cvserve's classification suite")

    def add(flag: str, **kw: Any) -> None:
        g.add_argument(flag, env_var="LOCUST_" + flag[2:].upper().replace("-", "_"), **kw)

    add("--model", default=None, help="model (ensemble) to call; discovered when the server serves one")
    add("--model-version", default=None, help="model version to call (default: the server's choice)")
    add("--images", default=None, help="folder of JPEG/PNG files sent round-robin (required)")
    add("--images-per-request", type=int, default=1, help="images in each request (default 1)")
    add("--scenario", choices=SCENARIOS, default="steady", help="load shape (default steady)")
    add("--warmup", type=float, default=0.0, help="seconds of warm-up before the measured window")
    add("--target-rps", type=float, default=0.0, help="fixed total request rate (0: closed loop)")
    add("--request-timeout", type=float, default=30.0, help="deadline of each call in seconds")
    add("--step-users", type=int, default=None, help="ramp: users added per step (default users/5)")
    add("--step-duration", type=float, default=10.0, help="ramp: seconds per step (default 10)")
    add("--spike-users", type=int, default=None, help="spike: users during the spike (default 4x)")
    add("--spike-duration", type=float, default=10.0, help="spike: seconds of the spike (default 10)")
    add("--slo-p95-ms", type=float, default=0.0, help="ramp: stop after a step whose p95 is above this")
    add("--max-error-rate", type=float, default=0.001, help="ramp: stop after a step with more errors")
    add("--samples-file", default=None, help="write per-request samples (JSON) here on exit")
    add("--rate-users", type=int, default=None, help="users sharing --target-rps (default: --users)")


@events.init.add_listener
def _share_rate(environment: Any, **_: Any) -> None:
    # Workers do not receive --users from the master, only the suite's own options: pass the total on.
    opts = environment.parsed_options
    if opts is not None and not getattr(opts, "worker", False) and getattr(opts, "rate_users", None) is None:
        opts.rate_users = opts.num_users


_payloads: dict[tuple[str, int], RoundRobin] = {}


def payloads(directory: str | None, per_request: int) -> RoundRobin:
    """One round-robin image source per process, shared by its users."""
    if not directory:
        raise ValueError("no images: give a folder of JPEG/PNG files with --images (or LOCUST_IMAGES)")
    key = (directory, per_request)
    if key not in _payloads:
        _payloads[key] = RoundRobin(Path(directory), per_request)
    return _payloads[key]


class ClassifyUser(GrpcUser):
    """Calls the classification ensemble with ``--images-per-request`` images per request."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        self.payload = payloads(opts.images, int(opts.images_per_request or 1))
        rate = float(opts.target_rps or 0.0)
        # A fixed total rate: each of the --users paces itself at its share.
        users = int(getattr(opts, "rate_users", None) or opts.num_users or 1)
        self._pace = constant_throughput(rate / max(users, 1)) if rate > 0 else None

    def wait_time(self) -> float:
        return self._pace(self) if self._pace else 0.0

    @task
    def classify(self) -> None:
        batch = self.payload.next_batch()
        self.call(
            f"classify {self.model or ''}".strip(),
            lambda: self.client.classify(batch, model=self.model, model_version=self.model_version),
            inferences=len(batch),
            length=sum(len(b) for b in batch),
        )
