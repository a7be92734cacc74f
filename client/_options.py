"""A client's options (checked once, when it is created) and the gRPC channel they make."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

from cvserve.client._pacing import check_max_in_flight
from cvserve.client._retry import Deadline, RetryPolicy
from cvserve.client.errors import InvalidInput
from cvserve.client.metrics import ClientMetrics
from cvserve.settings import setting

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20  # 20 MiB: one encoded image
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20  # 64 MiB: the payload of one request (a split batch's part)
COMPRESSIONS = ("gzip", "deflate")


_TLS = "TLS (mutual TLS with a client key and certificate chain)"


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """A client's options: the keyword arguments of :class:`~cvserve.client.Client` and
    :class:`~cvserve.client.AsyncClient` (documented on ``Client.__init__``), defined once.

    Checked and normalised when made: ``url`` is ``host:port`` (``$CVSERVE_URL`` or ``localhost:8001``
    when omitted), ``ssl`` is on when a certificate is given, certificate paths are strings, ``headers``
    holds the lower-cased metadata (``token`` moved into it), ``retry`` a :class:`RetryPolicy` or ``None``,
    ``metrics`` a :class:`ClientMetrics` or ``None``. ``cvserve predict``'s connection flags are derived
    from the fields that have one (:mod:`cvserve.settings`).

    Raises:
        InvalidInput: an option is wrong (bad URL, missing certificate file, unknown compression).
    """

    url: str | None = setting(
        None,
        metavar="HOST:PORT",
        help="gRPC address of the server",
        default_help="$CVSERVE_URL or localhost:8001",
    )
    model: str | None = setting(None, cli=False)
    timeout: float = setting(DEFAULT_TIMEOUT_S, above=0, help="deadline of each call in seconds")
    retry: RetryPolicy | bool | None = setting(True, cli=False)
    max_image_bytes: int = setting(DEFAULT_MAX_IMAGE_BYTES, cli=False)
    max_request_bytes: int = setting(DEFAULT_MAX_REQUEST_BYTES, cli=False)
    ssl: bool = setting(False, group=_TLS, help="use TLS (implied by a certificate flag)")
    root_certificates: str | os.PathLike[str] | None = setting(
        None, parser=Path, metavar="PATH", group=_TLS, help="PEM root certificates of the server"
    )
    private_key: str | os.PathLike[str] | None = setting(
        None, parser=Path, metavar="PATH", group=_TLS, help="the client's PEM private key"
    )
    certificate_chain: str | os.PathLike[str] | None = setting(
        None, parser=Path, metavar="PATH", group=_TLS, help="the client's PEM certificate chain"
    )
    token: str | None = setting(None, cli=False)
    headers: Mapping[str, str] | None = setting(None, cli=False)
    compression: str | None = setting(None, cli=False)
    keepalive: KeepAliveOptions | None = setting(None, cli=False)
    metrics: ClientMetrics | bool | None = setting(None, cli=False)
    # None: from the model's instances and queue bound (_pacing.default_max_in_flight)
    max_in_flight: int | None = setting(None, cli=False)

    def __post_init__(self) -> None:
        ssl = self.ssl
        url = self.url or os.environ.get("CVSERVE_URL") or DEFAULT_URL
        for scheme, secure in (("grpcs://", True), ("grpc://", False)):
            if url.startswith(scheme):
                url, ssl = url[len(scheme) :], ssl or secure
        if "://" in url or not url:
            raise InvalidInput(
                f"url must be host:port of Triton's gRPC endpoint (e.g. localhost:8001), got {url!r}"
            )
        normal: dict[str, Any] = {"url": url}
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None:
                if not Path(path).is_file():
                    raise InvalidInput(f"{name} file {path} does not exist: pass the path of a PEM file")
                normal[name], ssl = str(path), True
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise InvalidInput(
                f"compression must be one of {', '.join(COMPRESSIONS)} or None, got {self.compression!r}"
            )
        headers = {str(k).lower(): str(v) for k, v in (self.headers or {}).items()}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        retry = self.retry
        if retry is True:
            retry = RetryPolicy()
        elif retry is False:
            retry = None
        Deadline(self.timeout)  # validates the default timeout
        for name in ("max_image_bytes", "max_request_bytes"):
            limit = getattr(self, name)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidInput(f"{name} must be a positive number of bytes, got {limit!r}")
        normal |= {
            "ssl": ssl,
            "headers": headers,
            "token": None,  # it is in headers now
            "timeout": float(self.timeout),
            "retry": retry,
            "metrics": (ClientMetrics.default() if self.metrics is True else self.metrics) or None,
            "max_in_flight": check_max_in_flight(self.max_in_flight),
        }
        for name, value in normal.items():  # frozen: set once, here
            object.__setattr__(self, name, value)


def channel_args(options: ClientOptions) -> list[tuple[str, Any]]:
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


def triton_kwargs(options: ClientOptions) -> dict[str, Any]:
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
    "ClientOptions",
    "channel_args",
    "triton_kwargs",
]
