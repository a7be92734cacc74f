"""The part of :class:`Client` and :class:`AsyncClient` that does no I/O: options, deadlines, retries."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import KeepAliveOptions

from cvserve.client._common import DEFAULT_TIMEOUT_S, Options, make_options
from cvserve.client._images import as_image_list, encode_images
from cvserve.client._metadata import check_inputs, check_outputs, chunks
from cvserve.client._retry import Deadline, ErrorMapper, RetryPolicy
from cvserve.client.errors import ClientError, InvalidInput, map_error
from cvserve.client.metrics import ClientMetrics
from cvserve.client.types import ModelInfo


class ClientBase:
    """Shared constructor and helpers; see :class:`cvserve.client.Client` for the arguments."""

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | bool | None = True,
        ssl: bool = False,
        root_certificates: str | os.PathLike | None = None,
        private_key: str | os.PathLike | None = None,
        certificate_chain: str | os.PathLike | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        keepalive: KeepAliveOptions | None = None,
        metrics: ClientMetrics | bool | None = None,
    ) -> None:
        self._opts: Options = make_options(
            url,
            model=model,
            timeout=timeout,
            retry=retry,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            headers=headers,
            compression=compression,
            keepalive=keepalive,
            metrics=metrics,
        )
        self._models: dict[tuple[str, str], ModelInfo] = {}  # (model, version) -> info
        self._default_model: str | None = model
        self._closed = False

    @property
    def url(self) -> str:
        """The server's gRPC address, ``host:port``."""
        return self._opts.url

    @property
    def model(self) -> str | None:
        """The model used when a call names none (given, or discovered on first use)."""
        return self._default_model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self._default_model!r})"

    # -- helpers shared by both clients ------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"this {type(self).__name__} is closed: create a new one")

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self._opts.timeout if timeout is None else timeout)

    def _policy(self, retry: RetryPolicy | bool | None) -> RetryPolicy | None:
        if retry is None:
            return self._opts.retry
        if retry is True:
            return self._opts.retry or RetryPolicy()
        return retry or None

    def _mapper(self, model: str | None, deadline: Deadline) -> ErrorMapper:
        def mapper(exc: BaseException, attempts: int) -> ClientError:
            return map_error(exc, model=model, url=self.url, timeout=deadline.timeout, attempts=attempts)

        return mapper

    def _on_retry(self, model: str | None) -> Callable[[BaseException], None] | None:
        metrics = self._opts.metrics
        return None if metrics is None else (lambda exc: metrics.retried(model, exc))

    def _rpc_kwargs(self, remaining: float) -> dict[str, Any]:
        return {"headers": self._opts.headers or None, "client_timeout": remaining}

    @staticmethod
    def _prepare_images(images: object) -> list[bytes]:
        return encode_images(as_image_list(images))

    @staticmethod
    def _plan_infer(
        info: ModelInfo, inputs: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> tuple[list[str], list[slice | None]]:
        """The outputs to request and the row ranges of each request (split at the max batch size)."""
        if isinstance(outputs, str):
            raise InvalidInput(f"outputs must be a list of names, e.g. [{outputs!r}]", model=info.name)
        batch = check_inputs(info, inputs)
        names = check_outputs(info, outputs)
        if batch == 0:
            raise InvalidInput(f"inputs of model '{info.name}' hold no rows (batch size 0)", model=info.name)
        if batch is None or batch <= info.max_batch_size:
            return names, [None]
        return names, list(chunks(batch, info.max_batch_size))


__all__ = ["ClientBase"]
