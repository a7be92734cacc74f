"""A client's settings (checked once, when it is created) and the gRPC channel they make."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

from cvserve.client._pacing import check_max_in_flight
from cvserve.client._retry import Deadline, RetryPolicy
from cvserve.client.errors import InvalidInput
from cvserve.client.metrics import ClientMetrics

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20  # 20 MiB: one encoded image
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20  # 64 MiB: the payload of one request (a split batch's part)
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
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    metrics: ClientMetrics | None = None
    model: str | None = None
    max_in_flight: int | None = None  # None: from the model's queue bound (cvserve.client._pacing)


def make_options(
    url: str | None,
    *,
    model: str | None,
    timeout: float,
    retry: RetryPolicy | bool | None,
    max_image_bytes: int,
    max_request_bytes: int,
    ssl: bool,
    root_certificates: str | os.PathLike | None,
    private_key: str | os.PathLike | None,
    certificate_chain: str | os.PathLike | None,
    token: str | None,
    headers: Mapping[str, str] | None,
    compression: str | None,
    keepalive: KeepAliveOptions | None,
    metrics: ClientMetrics | bool | None,
    max_in_flight: int | None = None,
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
    for name, limit in (("max_image_bytes", max_image_bytes), ("max_request_bytes", max_request_bytes)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"{name} must be a positive number of bytes, got {limit!r}")
    return Options(
        url=url,
        ssl=ssl,
        keepalive=keepalive,
        compression=compression,
        headers=meta,
        timeout=float(timeout),
        retry=retry,
        max_image_bytes=max_image_bytes,
        max_request_bytes=max_request_bytes,
        metrics=metrics or None,
        model=model,
        max_in_flight=check_max_in_flight(max_in_flight),
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


__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "Options",
    "channel_args",
    "make_options",
    "triton_kwargs",
]
