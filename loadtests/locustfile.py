"""cvserve's Locust suite: a served model over gRPC, payloads round-robin from a folder.

Each request is the call of the model's task, as the server's config names it (``ModelInfo.task``):
``classify`` for classifiers, ``detect`` for detectors (docs/detection.md); one inference per image.

Run it the Locust way (flags, ``LOCUST_*`` environment variables, or ``locust.conf``)::

    locust -f loadtests/locustfile.py -H 127.0.0.1:8001 --model mobilenet_v2 --images photos/ \\
        --headless -u 8 -r 8 -t 60s --csv out/locust

or through ``cvserve loadtest``, which adds the gates, the server-side view and the report. The suite's
own options are registered in ``_options`` below from the settings they share with ``cvserve loadtest``
(:data:`cvserve.loadtests.settings.LOCUST_OPTIONS`; Locust prints ``--help`` before it loads a
locustfile, so they are not listed there); each also reads ``LOCUST_<NAME>`` and a ``locust.conf`` key.
Durations take 90, 60s, 2m or 1m30s.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cvserve.client import ClientError
from cvserve.loadtests._locust import constant_throughput, events, task
from cvserve.loadtests.collector import COLLECTOR  # noqa: F401  (registers its listeners)
from cvserve.loadtests.payloads import RoundRobin
from cvserve.loadtests.scenarios import ScenarioShape  # noqa: F401  (the one load shape)
from cvserve.loadtests.settings import LOCUST_DEFAULTS, LOCUST_OPTIONS, LoadTestSettings
from cvserve.loadtests.users import GrpcUser
from cvserve.settings import add_arguments


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("cvserve", "options of cvserve's suite")
    # The options shared with `cvserve loadtest` come from the same definitions (LoadTestSettings).
    add_arguments(
        g,
        LoadTestSettings,
        only=LOCUST_OPTIONS,
        defaults=LOCUST_DEFAULTS,
        parsers={"images": str},  # the master sends its options to the workers with msgpack: no Path
        optional=True,
        argument_kwargs=lambda flag: {"env_var": "LOCUST_" + flag[2:].upper().replace("-", "_")},
    )
    g.add_argument(
        "--samples-file", env_var="LOCUST_SAMPLES_FILE", help="write per-request samples (JSON) here on exit"
    )
    g.add_argument(
        "--rate-users",
        type=int,
        env_var="LOCUST_RATE_USERS",
        help="users sharing --target-rps (default: --users)",
    )


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


# The client call of each task (the model's config says which): one implementation per task, no branch.
CALLS = {
    "classify": lambda user, batch: user.client.classify(
        batch, model=user.model, model_version=user.model_version
    ),
    "detect": lambda user, batch: user.client.detect(
        batch, model=user.model, model_version=user.model_version
    ),
}


class ClassifyUser(GrpcUser):
    """Calls the served model (its task's call) with ``--images-per-request`` images per request."""

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

    _task: str | None = None  # the model's task, from its metadata (found by the first request)

    def _find_task(self) -> None:
        self._task = self.client.model_info(self.model, model_version=self.model_version).task

    @task
    def classify(self) -> None:
        batch = self.payload.next_batch()
        if self._task is None:  # before the first request, so that it is named by its call too
            with contextlib.suppress(ClientError):
                self._find_task()

        def send():  # inside call(): a server that cannot say its task is a counted failure
            if self._task is None:
                self._find_task()
            return CALLS[self._task](self, batch)

        self.call(
            f"{self._task or 'classify'} {self.model or ''}".strip(),
            send,
            inferences=len(batch),
            length=sum(len(b) for b in batch),
        )
