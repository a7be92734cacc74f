"""The abstract gRPC Locust ``User`` on :mod:`cvserve.client`, reporting each call as a Locust request.

Subclass it, set ``model`` (or pass ``--model``) and write tasks that go through :meth:`GrpcUser.call`::

    class MyUser(GrpcUser):
        @task
        def classify(self):
            self.call("classify", lambda: self.client.classify(images, model=self.model), inferences=len(images))

Each call fires Locust's ``request`` event (``request_type="grpc"``, response time in milliseconds);
a :class:`cvserve.client.ClientError` is a failed request named by its category (``DeadlineExceeded``,
``ServerUnavailable``...). Retries are off: a load test must see every failure the server returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from cvserve.client import Client, ClientError
from cvserve.loadtests._locust import User, grpc_gevent

# gRPC's C core must cooperate with gevent before the first channel is created (Locust's gRPC example).
grpc_gevent.init_gevent()

T = TypeVar("T")


class GrpcUser(User):
    """A Locust user holding one :class:`cvserve.client.Client` (one gRPC channel) to ``host``.

    Attributes:
        model: the model called when a task names none; ``--model`` overrides it.
        model_version: the version called (``--model-version``); the server's choice when ``None``.
        timeout_s: the deadline of each call; ``--request-timeout`` overrides it.
    """

    abstract = True
    model: str | None = None
    model_version: str | None = None
    timeout_s: float = 30.0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        self.model = getattr(opts, "model", None) or self.model
        self.model_version = getattr(opts, "model_version", None) or self.model_version
        self.timeout_s = float(getattr(opts, "request_timeout_s", None) or self.timeout_s)
        if not self.host:
            raise ValueError("no host: give the Triton gRPC address with -H/--host, e.g. -H 127.0.0.1:8001")
        self.client = Client(self.host, model=self.model, timeout=self.timeout_s, retry=False)

    def on_stop(self) -> None:
        self.client.close()

    def call(self, name: str, fn: Callable[[], T], *, inferences: int = 1, length: int = 0) -> T | None:
        """Run ``fn`` (one gRPC call) and report it to Locust as request ``name``.

        Returns:
            What ``fn`` returned, or ``None`` when it failed with a :class:`ClientError` (reported as a
            failure). Any other exception is a bug: it is reported, then raised so Locust logs it.
        """
        start_time = time.time()
        start = time.perf_counter()
        try:
            result = fn()
        except ClientError as e:
            self._report(name, start_time, start, length, inferences, None, e)
            return None
        except Exception as e:
            self._report(name, start_time, start, length, inferences, None, e)
            raise
        # A user stopped mid-call (GreenletExit) reports nothing: that request never completed.
        self._report(name, start_time, start, length, inferences, result, None)
        return result

    def _report(
        self,
        name: str,
        start_time: float,
        start: float,
        length: int,
        inferences: int,
        result: Any,
        exc: BaseException | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            start_time=start_time,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            response=result,
            context={"inferences": inferences},
            exception=exc,
        )
