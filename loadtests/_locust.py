"""Locust (and gevent) for the suite's modules, with an error naming the extra when they are missing.

A Locust suite defines its classes on Locust's at import time, so the suite modules (``users``,
``locustfile``, ``scenarios``, ``collector``) need Locust when they are imported: without the
``loadtest`` extra they raise ``pip install 'cvserve[loadtest]'``. Importing Locust monkey-patches the
process with gevent, so only Locust's own processes import the suite; the runner side (``runner``,
``cli``, ``report``, ``metrics``, ``analysis``) never does.
"""

from __future__ import annotations

from cvserve._extras import require

require("locust", extra="loadtest", purpose="to run load tests")

import gevent  # noqa: E402 - after the check above, which names the extra
import grpc.experimental.gevent as grpc_gevent  # noqa: E402
from locust import LoadTestShape, User, constant_throughput, events, task  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

__all__ = [
    "LoadTestShape",
    "MasterRunner",
    "User",
    "WorkerRunner",
    "constant_throughput",
    "events",
    "gevent",
    "grpc_gevent",
    "task",
]
