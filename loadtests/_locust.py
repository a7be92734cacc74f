"""Locust (and gevent) for the suite's modules, or stand-ins when the ``loadtest`` extra is missing.

Every ``cvserve`` module must import with only the core install, yet a Locust suite defines its classes
on Locust's at import time. With Locust installed this re-exports it (importing Locust monkey-patches
the process with gevent: only Locust's own processes import the suite); without it the stand-ins let
the modules import and raise ``pip install 'cvserve[loadtest]'`` as soon as anything is used.
"""

from __future__ import annotations

from typing import Any

from cvserve._extras import require

try:
    import gevent
    import grpc.experimental.gevent as grpc_gevent
    from locust import LoadTestShape, User, constant_throughput, events, task
    from locust.runners import MasterRunner, WorkerRunner

    AVAILABLE = True
except ImportError as exc:
    if (exc.name or "").split(".", 1)[0] not in ("locust", "gevent", "zmq", "greenlet"):
        raise  # Locust is there but one of its imports is broken: a real bug, keep it
    AVAILABLE = False

    def _missing(*_: Any, **__: Any) -> Any:
        require("locust", extra="loadtest", purpose="to run load tests")  # raises: Locust is missing
        raise AssertionError("unreachable")

    class User:  # type: ignore[no-redef]
        """Stand-in: subclassing works, creating a user says which extra to install."""

        abstract = True
        host: str | None = None
        __init__ = _missing

    class LoadTestShape:  # type: ignore[no-redef]
        __init__ = _missing

    class MasterRunner:  # type: ignore[no-redef]
        pass

    class WorkerRunner:  # type: ignore[no-redef]
        pass

    class _Hook:
        def add_listener(self, fn: Any) -> Any:
            return fn

    class _Events:
        def __getattr__(self, name: str) -> _Hook:
            return _Hook()

    events = _Events()  # type: ignore[assignment]
    gevent = grpc_gevent = None  # type: ignore[assignment]
    constant_throughput = _missing  # type: ignore[assignment]

    def task(fn: Any) -> Any:  # type: ignore[no-redef]
        return fn


__all__ = [
    "AVAILABLE",
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
