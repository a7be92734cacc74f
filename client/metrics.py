"""Opt-in client-side Prometheus metrics (needs prometheus-client, imported only when enabled).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> metrics = ClientMetrics(registry=CollectorRegistry())
    >>> client = Client("localhost:8001", model="mobilenet_v2", metrics=metrics)  # doctest: +SKIP

Series (``namespace`` defaults to ``cvserve_client``):

* ``cvserve_client_request_duration_seconds{model, method}`` - histogram of whole calls, retries and
  batch splitting included, successful or not.
* ``cvserve_client_errors_total{model, method, code}`` - calls that raised, by gRPC status name
  (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``...) or ``CLIENT`` for errors found before sending.
* ``cvserve_client_retries_total{model, code}`` - retried attempts, by the status that caused them.
* ``cvserve_client_in_flight{model}`` - requests this process's clients have out to the model now
  (each holds one of the client's ``max_in_flight`` slots, through its retries).
* ``cvserve_client_local_wait_seconds{model}`` - histogram of how long requests waited in the client
  for a slot before being sent (flow control; see docs/client.md), those that waited past their
  deadline included.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cvserve.client.errors import ClientError, MissingDependency, status_name

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.005, *LATENCY_BUCKETS[1:])  # most waits are none at all


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MissingDependency(
            "client metrics need prometheus-client, which is not installed: pip install 'cvserve[metrics]'"
        ) from None
    return prometheus_client


class ClientMetrics:
    """Prometheus collectors for a client; share one instance between clients of a process.

    Args:
        registry: where to register the collectors; prometheus-client's default registry when omitted.
        namespace: the prefix of every series name.
    """

    _default: ClientMetrics | None = None
    _default_lock = threading.Lock()

    def __init__(self, *, registry: Any | None = None, namespace: str = "cvserve_client") -> None:
        prom = _prometheus()
        kw = {"namespace": namespace} | ({"registry": registry} if registry is not None else {})
        self.latency = prom.Histogram(
            "request_duration_seconds",
            "Duration of client calls, retries included.",
            ["model", "method"],
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.errors = prom.Counter(
            "errors", "Client calls that raised, by status code.", ["model", "method", "code"], **kw
        )
        self.retries = prom.Counter(
            "retries", "Attempts retried, by the status that caused them.", ["model", "code"], **kw
        )
        self.in_flight = prom.Gauge("in_flight", "Requests out to the model now.", ["model"], **kw)
        self.local_wait = prom.Histogram(
            "local_wait_seconds",
            "Time requests waited in the client for one of its max_in_flight slots.",
            ["model"],
            buckets=WAIT_BUCKETS,
            **kw,
        )

    @classmethod
    def default(cls) -> ClientMetrics:
        """One shared instance on prometheus-client's default registry (what ``metrics=True`` uses)."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    @contextmanager
    def track(self, model: str | None, method: str) -> Iterator[None]:
        """Time the block and count the error it raises, if any."""
        start = time.perf_counter()
        try:
            yield
        except ClientError as exc:
            self.errors.labels(model or "", method, exc.code or "CLIENT").inc()
            raise
        finally:
            self.latency.labels(model or "", method).observe(time.perf_counter() - start)

    def retried(self, model: str | None, exc: BaseException) -> None:
        """Count one retry caused by ``exc``."""
        self.retries.labels(model or "", status_name(exc) or "UNKNOWN").inc()

    def waited(self, model: str, seconds: float) -> None:
        """Record a request's wait for a slot."""
        self.local_wait.labels(model).observe(seconds)

    @contextmanager
    def holding(self, model: str, *, waited: float) -> Iterator[None]:
        """A request holds a slot for the block, after waiting ``waited`` seconds for it."""
        self.waited(model, waited)
        gauge = self.in_flight.labels(model)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()


@contextmanager
def track(metrics: ClientMetrics | None, model: str | None, method: str) -> Iterator[None]:
    """:meth:`ClientMetrics.track` when metrics are on, else nothing."""
    if metrics is None:
        yield
    else:
        with metrics.track(model, method):
            yield


__all__ = ["LATENCY_BUCKETS", "WAIT_BUCKETS", "ClientMetrics", "track"]
