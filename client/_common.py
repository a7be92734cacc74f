"""What the sync and asyncio clients share: connection options, request building, result parsing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, InferInput, InferRequestedOutput, KeepAliveOptions

from cvserve.client._metadata import ClassifierSpec, triton_dtype
from cvserve.client._retry import Deadline, RetryPolicy
from cvserve.client.errors import InvalidInput, ServerError
from cvserve.client.metrics import ClientMetrics
from cvserve.client.types import Classification

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
COMPRESSIONS = ("gzip", "deflate")


@dataclass(frozen=True, kw_only=True)
class Options:
    """A client's settings, checked once when it is created."""

    url: str
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    keepalive: KeepAliveOptions | None = None
    compression: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy | None = None
    metrics: ClientMetrics | None = None
    model: str | None = None


def make_options(
    url: str | None,
    *,
    model: str | None,
    timeout: float,
    retry: RetryPolicy | bool | None,
    ssl: bool,
    root_certificates: str | os.PathLike | None,
    private_key: str | os.PathLike | None,
    certificate_chain: str | os.PathLike | None,
    token: str | None,
    headers: Mapping[str, str] | None,
    compression: str | None,
    keepalive: KeepAliveOptions | None,
    metrics: ClientMetrics | bool | None,
) -> Options:
    """Check and normalise the arguments both clients take (see :class:`cvserve.client.Client`)."""
    url = url or os.environ.get("CVSERVE_URL") or DEFAULT_URL
    for scheme, secure in (("grpcs://", True), ("grpc://", False)):
        if url.startswith(scheme):
            url, ssl = url[len(scheme) :], ssl or secure
    if "://" in url or not url:
        raise InvalidInput(
            f"url must be host:port of Triton's gRPC endpoint (e.g. localhost:8001), got {url!r}"
        )
    certs = {}
    for name, path in (
        ("root_certificates", root_certificates),
        ("private_key", private_key),
        ("certificate_chain", certificate_chain),
    ):
        if path is not None:
            if not Path(path).is_file():
                raise InvalidInput(f"{name} file {path} does not exist: pass the path of a PEM file")
            certs[name] = str(path)
            ssl = True
    if compression is not None and compression not in COMPRESSIONS:
        raise InvalidInput(
            f"compression must be one of {', '.join(COMPRESSIONS)} or None, got {compression!r}"
        )
    meta = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    if token:
        meta["authorization"] = f"Bearer {token}"
    if retry is True:
        retry = RetryPolicy()
    elif retry is False:
        retry = None
    if metrics is True:
        metrics = ClientMetrics.default()
    Deadline(timeout)  # validates the default timeout
    return Options(
        url=url,
        ssl=ssl,
        keepalive=keepalive,
        compression=compression,
        headers=meta,
        timeout=float(timeout),
        retry=retry,
        metrics=metrics or None,
        model=model,
        **certs,
    )


def channel_args(options: Options) -> list[tuple[str, Any]]:
    """gRPC channel arguments: tritonclient's own, plus keepalive and a short reconnect backoff.

    gRPC's default reconnect backoff grows to two minutes; capped at two seconds, a client notices a
    restarted server within its retry deadline instead of failing fast on a stale broken channel.
    """
    ka = options.keepalive or KeepAliveOptions(keepalive_time_ms=60_000, keepalive_timeout_ms=20_000)
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def triton_kwargs(options: Options) -> dict[str, Any]:
    """Keyword arguments for tritonclient's ``InferenceServerClient`` (sync or aio)."""
    return {
        "url": options.url,
        "ssl": options.ssl,
        "root_certificates": options.root_certificates,
        "private_key": options.private_key,
        "certificate_chain": options.certificate_chain,
        "channel_args": channel_args(options),
    }


def image_request(
    spec: ClassifierSpec, blobs: list[bytes]
) -> tuple[list[InferInput], list[InferRequestedOutput]]:
    """The inputs and requested outputs of one classification request of ``len(blobs)`` images."""
    # [n, 1] for the contract's dims [1]; follows the model if its image input has another rank.
    shape = [len(blobs)] + [1] * (len(spec.input.shape) - 1)
    array = np.empty(len(blobs), dtype=object)
    array[:] = blobs
    tensor = InferInput(spec.input.name, shape, "BYTES")
    tensor.set_data_from_numpy(array.reshape(shape))
    names = (spec.index, spec.score) + ((spec.label,) if spec.label else ())
    return [tensor], [InferRequestedOutput(name) for name in names]


def parse_classifications(
    result: Any, spec: ClassifierSpec, top_k: int, n: int, model: str
) -> list[list[Classification]]:
    """Per image, the first ``top_k`` classes of a classification response."""
    indices, scores = (_rows(result, name, n, model)[:, :top_k] for name in (spec.index, spec.score))
    # A model built before contract v2 names the classes in its LABEL output.
    named = _rows(result, spec.label, n, model)[:, :top_k] if spec.label else None
    out = []
    for r, (row_i, row_s) in enumerate(zip(indices, scores, strict=True)):
        labels = [_text(x) for x in named[r]] if named is not None else [spec.name_of(int(i)) for i in row_i]
        out.append([Classification(*c) for c in zip(labels, map(int, row_i), map(float, row_s), strict=True)])
    return out


def _rows(result: Any, name: str, n: int, model: str) -> np.ndarray:
    array = result.as_numpy(name)
    if array is None:
        raise ServerError(f"model '{model}' returned no {name} output; check the model", model=model)
    try:
        return array.reshape(n, -1)
    except ValueError:
        raise ServerError(
            f"model '{model}' returned {name} of shape {array.shape} for {n} images; check the model",
            model=model,
        ) from None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def tensor_request(
    inputs: Mapping[str, np.ndarray], outputs: list[str], rows: slice | None
) -> tuple[list[InferInput], list[InferRequestedOutput]]:
    """Inputs (rows ``rows`` of each array, all of it when ``None``) and requested outputs of one request."""
    tensors = []
    for name, array in inputs.items():
        part = array[rows] if rows is not None else array
        if part.dtype.kind == "U":
            part = np.char.encode(part, "utf-8")  # str arrays go out as utf-8 BYTES
        tensor = InferInput(name, list(part.shape), triton_dtype(part))
        tensor.set_data_from_numpy(np.ascontiguousarray(part))
        tensors.append(tensor)
    return tensors, [InferRequestedOutput(name) for name in outputs]


def collect_outputs(results: list[Any], outputs: list[str]) -> dict[str, np.ndarray]:
    """Output name -> array, concatenating the responses of a split request in order."""
    merged: dict[str, np.ndarray] = {}
    for name in outputs:
        parts = [r.as_numpy(name) for r in results]
        if any(p is None for p in parts):
            raise ServerError(f"the server returned no {name} output")
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return merged


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "Options",
    "channel_args",
    "collect_outputs",
    "image_request",
    "make_options",
    "parse_classifications",
    "tensor_request",
    "triton_kwargs",
]
