"""The asyncio client, :class:`AsyncClient`, on ``tritonclient.grpc.aio``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from cvserve.client._base import ClientBase
from cvserve.client._common import (
    collect_outputs,
    image_request,
    parse_classifications,
    tensor_request,
    triton_kwargs,
)
from cvserve.client._images import ImageLike
from cvserve.client._metadata import check_top_k, chunks, classifier_spec, model_info, pick_classifier
from cvserve.client._retry import Deadline, RetryPolicy, acall_with_retry
from cvserve.client.errors import ServerUnavailable
from cvserve.client.metrics import track
from cvserve.client.types import Classification, ModelInfo

T = TypeVar("T")


class AsyncClient(ClientBase):
    """An asyncio client of a cvserve (Triton) server over one gRPC channel.

    Takes the same arguments as :class:`cvserve.client.Client`. The channel is opened on the first call,
    in the running event loop; many calls may run concurrently on it (``asyncio.gather``). Use it as
    ``async with AsyncClient(url) as client:`` or call :meth:`close`.

    Example:
        >>> async with AsyncClient("localhost:8001", model="mobilenet_v2") as client:  # doctest: +SKIP
        ...     results = await asyncio.gather(*(client.classify([p]) for p in paths))
    """

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._triton_client: triton_aio.InferenceServerClient | None = None
        self._metadata_lock: asyncio.Lock | None = None

    @property
    def _triton(self) -> triton_aio.InferenceServerClient:
        self._check_open()
        if self._triton_client is None:
            self._triton_client = triton_aio.InferenceServerClient(**triton_kwargs(self._opts))
            self._metadata_lock = asyncio.Lock()
        return self._triton_client

    async def close(self) -> None:
        """Close the channel; later calls raise :class:`ClientError`."""
        self._closed = True
        if self._triton_client is not None:
            await self._triton_client.close()
            self._triton_client = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- health -------------------------------------------------------------------------------------
    async def is_ready(self, model: str | None = None, *, timeout: float = 5.0) -> bool:
        """Whether the server (and ``model``, when given) is ready; never raises for an unreachable server."""
        kw = {"headers": self._opts.headers or None, "client_timeout": timeout}
        try:
            ready = await self._triton.is_server_ready(**kw)
            return bool(ready and (model is None or await self._triton.is_model_ready(model, **kw)))
        except (InferenceServerException, grpc.RpcError):
            return False

    async def wait_until_ready(self, timeout: float = 60.0, *, model: str | None = None) -> None:
        """Wait until the server (and ``model``, when given) is ready.

        Raises:
            ServerUnavailable: not ready within ``timeout`` seconds.
        """
        deadline, delay = Deadline(timeout), 0.05
        while True:
            if await self.is_ready(model, timeout=max(min(deadline.remaining(), 1.0), 0.01)):
                return
            if deadline.remaining() <= delay:
                what = f"model '{model}' on " if model else ""
                raise ServerUnavailable(
                    f"{what}the Triton server at {self.url} was not ready after {timeout:g} s; "
                    "check that it is running and the URL",
                    model=model,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- metadata -----------------------------------------------------------------------------------
    async def model_info(
        self, model: str | None = None, *, model_version: str | None = None, timeout: float | None = None
    ) -> ModelInfo:
        """What the server says about ``model``; see :meth:`cvserve.client.Client.model_info`."""
        deadline = self._deadline(timeout)
        return await self._info(model or await self._resolve_model(deadline), model_version, deadline)

    async def _info(self, model: str, version: str | None, deadline: Deadline) -> ModelInfo:
        key = (model, version or "")
        info = self._models.get(key)
        if info is not None:
            return info
        client = self._triton
        assert self._metadata_lock is not None
        async with self._metadata_lock:  # 200 concurrent first calls fetch the metadata once
            info = self._models.get(key)
            if info is None:
                kw = {"model_version": key[1]}
                metadata = await self._call(client.get_model_metadata, model, deadline, None, model, **kw)
                config = (
                    await self._call(client.get_model_config, model, deadline, None, model, **kw)
                ).config
                info = self._models[key] = model_info(metadata, config, key[1])
        return info

    async def _resolve_model(self, deadline: Deadline) -> str:
        if self._default_model is None:
            index = await self._call(self._triton.get_model_repository_index, None, deadline, None)
            ready = [m.name for m in index.models if m.state == "READY"]
            infos = [await self._info(n, None, deadline) for n in sorted(set(ready))]
            self._default_model = pick_classifier(infos, self.url)
        return self._default_model

    async def _call(
        self, fn: Any, model: str | None, deadline: Deadline, retry: Any, *args: Any, **kw: Any
    ) -> Any:
        return await acall_with_retry(
            lambda remaining: fn(*args, **kw, **self._rpc_kwargs(remaining)),
            deadline=deadline,
            policy=self._policy(retry),
            map_error=self._mapper(model, deadline),
            on_retry=self._on_retry(model),
        )

    # -- inference ----------------------------------------------------------------------------------
    async def classify(
        self,
        images: Sequence[ImageLike],
        *,
        top_k: int | None = None,
        model: str | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | bool | None = None,
    ) -> list[list[Classification]]:
        """Classify images; per image, its ``top_k`` classes, best first.

        Same arguments, result and errors as :meth:`cvserve.client.Client.classify`; the requests of a
        call split at the max batch size are sent concurrently.
        """
        blobs = self._prepare_images(images)
        if not blobs:
            return []
        self._check_open()
        deadline = self._deadline(timeout)
        name = model or await self._resolve_model(deadline)
        with track(self._opts.metrics, name, "classify"):
            spec = classifier_spec(await self._info(name, model_version, deadline))
            top_k = check_top_k(spec, top_k, name)

            async def one(rows: slice) -> list[list[Classification]]:
                inputs, outputs = image_request(spec, blobs[rows])
                result = await self._call(
                    self._triton.infer,
                    name,
                    deadline,
                    retry,
                    name,
                    inputs,
                    outputs=outputs,
                    model_version=model_version or "",
                    compression_algorithm=self._opts.compression,
                )
                return parse_classifications(result, spec, top_k, len(blobs[rows]), name)

            parts = await _gather_all([one(rows) for rows in chunks(len(blobs), spec.max_batch_size)])
            return [item for part in parts for item in part]

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        *,
        model_version: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Run any model on raw tensors; see :meth:`cvserve.client.Client.infer`."""
        deadline = self._deadline(timeout)
        with track(self._opts.metrics, model, "infer"):
            info = await self._info(model, model_version, deadline)
            names, plan = self._plan_infer(info, inputs, outputs)

            async def one(rows: slice | None) -> Any:
                tensors, wanted = tensor_request(inputs, names, rows)
                return await self._call(
                    self._triton.infer,
                    model,
                    deadline,
                    retry,
                    model,
                    tensors,
                    outputs=wanted,
                    model_version=model_version or "",
                    compression_algorithm=self._opts.compression,
                )

            return collect_outputs(await _gather_all([one(rows) for rows in plan]), names)


async def _gather_all(coros: list[Awaitable[T]]) -> list[T]:
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
