"""The blocking client, :class:`Client`: the shared calls of ``ClientCore`` run on ``tritonclient.grpc``."""

from __future__ import annotations

import threading
import time
from typing import Any

import tritonclient.grpc as triton

from cvserve.client._core import ClientCore
from cvserve.client._effects import Effect, Exclusive, Gather, Paced, Plan, Rpc, Sleep, blocking, run
from cvserve.client._options import triton_kwargs
from cvserve.client._pacing import ThreadSlots


class Client(ClientCore):
    """A blocking, thread-safe client of a cvserve (Triton) server over one gRPC channel.

    The constructor's arguments are documented on ``__init__`` (``help(Client)``); they are the same for
    :class:`AsyncClient`. Use it as a context manager or call :meth:`close`.

    Example:
        >>> with Client("localhost:8001", model="mobilenet_v2") as client:  # doctest: +SKIP
        ...     [top] = client.classify(["cat.jpg"], top_k=3)
        ...     print(top[0].label, top[0].score)
    """

    is_ready = blocking(ClientCore._is_ready)
    wait_until_ready = blocking(ClientCore._wait_until_ready)
    model_info = blocking(ClientCore._model_info)
    classify = blocking(ClientCore._classify)
    detect = blocking(ClientCore._detect)
    infer = blocking(ClientCore._infer)

    def close(self) -> None:
        """Close the channel; later calls raise :class:`ClientError`."""
        self._closed = True
        self._triton.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O: the only part that is not shared --------------------------------------------------------
    def _setup(self) -> None:
        self._lock = threading.RLock()
        self._slots: dict[Any, ThreadSlots] = {}  # Paced key -> its slots, shared by the threads
        self._triton = triton.InferenceServerClient(**triton_kwargs(self._opts))

    def _run(self, plan: Plan[Any]) -> Any:
        return run(plan, self._perform)

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Rpc):
            return getattr(self._triton, effect.method)(*effect.args, **effect.kwargs)
        if isinstance(effect, Sleep):
            return time.sleep(effect.seconds)
        if isinstance(effect, Gather):  # one request after the other
            return [self._run(plan) for plan in effect.plans]
        if isinstance(effect, Paced):
            with self._lock:
                slots = self._slots.setdefault(effect.key, ThreadSlots(effect.limit))
            if not slots.acquire(effect.timeout):
                raise TimeoutError
            try:
                return self._run(effect.plan)
            finally:
                slots.release()
        assert isinstance(effect, Exclusive)
        if not self._lock.acquire(timeout=max(effect.timeout, 0.0)):
            raise TimeoutError
        try:
            return self._run(effect.plan)
        finally:
            self._lock.release()


__all__ = ["Client"]
