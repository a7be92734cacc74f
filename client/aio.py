"""The asyncio client, :class:`AsyncClient`: the shared calls of ``ClientCore`` run on ``tritonclient.grpc.aio``."""

from __future__ import annotations

import asyncio
from typing import Any

import tritonclient.grpc.aio as triton_aio

from cvserve.client._core import ClientCore
from cvserve.client._effects import Effect, Exclusive, Gather, Paced, Plan, Rpc, Sleep, arun, asynchronous
from cvserve.client._options import triton_kwargs
from cvserve.client._pacing import AsyncSlots

# asyncio.wait_for with no time left cancels even a free lock's acquire; give it a moment.
_MIN_LOCK_WAIT_S = 0.001


class AsyncClient(ClientCore):
    """An asyncio client of a cvserve (Triton) server over one gRPC channel.

    Takes the same arguments as :class:`cvserve.client.Client` and has the same methods, awaited. The
    channel is opened on the first call, in the running event loop; many calls may run concurrently on
    it (``asyncio.gather``), and the requests of one call split at the max batch size are sent
    concurrently. Use it as ``async with AsyncClient(url) as client:`` or call :meth:`close`.

    Example:
        >>> async with AsyncClient("localhost:8001", model="mobilenet_v2") as client:  # doctest: +SKIP
        ...     results = await asyncio.gather(*(client.classify([p]) for p in paths))
    """

    is_ready = asynchronous(ClientCore._is_ready)
    wait_until_ready = asynchronous(ClientCore._wait_until_ready)
    model_info = asynchronous(ClientCore._model_info)
    classify = asynchronous(ClientCore._classify)
    detect = asynchronous(ClientCore._detect)
    infer = asynchronous(ClientCore._infer)

    async def close(self) -> None:
        """Close the channel; later calls raise :class:`ClientError`."""
        self._closed = True
        if self._triton is not None:
            await self._triton.close()
            self._triton = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- I/O: the only part that is not shared --------------------------------------------------------
    def _setup(self) -> None:
        # They belong to the event loop of the first call, so they are made there.
        self._triton: triton_aio.InferenceServerClient | None = None
        self._lock: asyncio.Lock | None = None
        self._slots: dict[Any, AsyncSlots] = {}  # Paced key -> its slots

    async def _run(self, plan: Plan[Any]) -> Any:
        return await arun(plan, self._perform)

    async def _perform(self, effect: Effect) -> Any:
        if self._triton is None or self._lock is None:
            self._triton = triton_aio.InferenceServerClient(**triton_kwargs(self._opts))
            self._lock = asyncio.Lock()
        if isinstance(effect, Rpc):
            return await getattr(self._triton, effect.method)(*effect.args, **effect.kwargs)
        if isinstance(effect, Sleep):
            return await asyncio.sleep(effect.seconds)
        if isinstance(effect, Gather):
            return await _gather_all([self._run(plan) for plan in effect.plans])
        if isinstance(effect, Paced):
            slots = self._slots.setdefault(effect.key, AsyncSlots(effect.limit))
            if not await slots.acquire(effect.timeout):
                raise TimeoutError
            try:
                return await self._run(effect.plan)
            finally:
                slots.release()
        assert isinstance(effect, Exclusive)
        await asyncio.wait_for(self._lock.acquire(), max(effect.timeout, _MIN_LOCK_WAIT_S))
        try:
            return await self._run(effect.plan)
        finally:
            self._lock.release()


async def _gather_all(coros: list[Any]) -> list[Any]:
    """``asyncio.gather`` that cancels the other requests as soon as one fails."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


__all__ = ["AsyncClient"]
