"""The blocking client, :class:`Client`, on ``tritonclient.grpc``."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
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
from cvserve.client._retry import Deadline, RetryPolicy, call_with_retry
from cvserve.client.errors import ServerUnavailable
from cvserve.client.metrics import track
from cvserve.client.types import Classification, ModelInfo


class Client(ClientBase):
    """A blocking, thread-safe client of a cvserve (Triton) server over one gRPC channel.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint (``grpc://`` or ``grpcs://`` prefixes accepted);
            ``$CVSERVE_URL`` or ``localhost:8001`` when omitted.
        model: the model used by :meth:`classify` when a call names none; discovered from the server
            when it serves exactly one classifier.
        timeout: the default deadline of each call in seconds, retries and batch splitting included.
        retry: ``True`` (the default :class:`RetryPolicy`: retry UNAVAILABLE and RESOURCE_EXHAUSTED with
            backoff until the deadline), a :class:`RetryPolicy`, or ``False`` to never retry (for
            non-idempotent models).
        ssl: use TLS (implied by any certificate argument); the system's roots unless given.
        root_certificates: path of the PEM root certificates that signed the server's certificate.
        private_key: path of the client's PEM private key (mutual TLS).
        certificate_chain: path of the client's PEM certificate chain (mutual TLS).
        token: sent as ``authorization: Bearer <token>`` metadata on every call.
        headers: other gRPC metadata sent on every call (keys are lower-cased).
        compression: ``"gzip"`` or ``"deflate"`` to compress requests.
        keepalive: gRPC keepalive settings; pings every 60 s during calls by default.
        metrics: ``True`` for Prometheus metrics on the default registry, or a :class:`ClientMetrics`.

    Raises:
        InvalidInput: an argument is wrong (bad URL, missing certificate file, unknown compression).

    Example:
        >>> with Client("localhost:8001", model="mobilenet_v2") as client:  # doctest: +SKIP
        ...     [top] = client.classify(["cat.jpg"], top_k=3)
        ...     print(top[0].label, top[0].score)
    """

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._lock = threading.Lock()
        self._triton = triton.InferenceServerClient(**triton_kwargs(self._opts))

    def close(self) -> None:
        """Close the channel; later calls raise :class:`ClientError`."""
        self._closed = True
        self._triton.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health -------------------------------------------------------------------------------------
    def is_ready(self, model: str | None = None, *, timeout: float = 5.0) -> bool:
        """Whether the server (and ``model``, when given) is ready; never raises for an unreachable server."""
        self._check_open()
        kw = {"headers": self._opts.headers or None, "client_timeout": timeout}
        try:
            ready = self._triton.is_server_ready(**kw)
            return bool(ready and (model is None or self._triton.is_model_ready(model, **kw)))
        except (InferenceServerException, grpc.RpcError):
            return False

    def wait_until_ready(self, timeout: float = 60.0, *, model: str | None = None) -> None:
        """Block until the server (and ``model``, when given) is ready.

        Raises:
            ServerUnavailable: not ready within ``timeout`` seconds.
        """
        deadline, delay = Deadline(timeout), 0.05
        while True:
            if self.is_ready(model, timeout=max(min(deadline.remaining(), 1.0), 0.01)):
                return
            if deadline.remaining() <= delay:
                what = f"model '{model}' on " if model else ""
                raise ServerUnavailable(
                    f"{what}the Triton server at {self.url} was not ready after {timeout:g} s; "
                    "check that it is running and the URL",
                    model=model,
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- metadata -----------------------------------------------------------------------------------
    def model_info(
        self, model: str | None = None, *, model_version: str | None = None, timeout: float | None = None
    ) -> ModelInfo:
        """What the server says about ``model`` (cached per client and (model, version) after the first call).

        Args:
            model: the model name; the client's default when omitted.
            model_version: a version the server serves, e.g. ``"2"``; the server's choice when omitted.
            timeout: the deadline of the call in seconds; the client's default when omitted.

        Raises:
            ModelNotFound: the server does not serve ``model`` (or not that version).
        """
        self._check_open()
        deadline = self._deadline(timeout)
        return self._info(model or self._resolve_model(deadline), model_version, deadline)

    def _info(self, model: str, version: str | None, deadline: Deadline) -> ModelInfo:
        key = (model, version or "")
        info = self._models.get(key)
        if info is None:
            kw = {"model_version": key[1]}
            metadata = self._call(self._triton.get_model_metadata, model, deadline, None, model, **kw)
            config = self._call(self._triton.get_model_config, model, deadline, None, model, **kw).config
            info = model_info(metadata, config, key[1])
            with self._lock:
                self._models[key] = info
        return info

    def _resolve_model(self, deadline: Deadline) -> str:
        if self._default_model is None:
            index = self._call(self._triton.get_model_repository_index, None, deadline, None)
            ready = [m.name for m in index.models if m.state == "READY"]
            names = sorted(set(ready))  # a model serving two versions is listed twice
            self._default_model = pick_classifier([self._info(n, None, deadline) for n in names], self.url)
        return self._default_model

    def _call(self, fn: Any, model: str | None, deadline: Deadline, retry: Any, *args: Any, **kw: Any) -> Any:
        return call_with_retry(
            lambda remaining: fn(*args, **kw, **self._rpc_kwargs(remaining)),
            deadline=deadline,
            policy=self._policy(retry),
            map_error=self._mapper(model, deadline),
            on_retry=self._on_retry(model),
        )

    # -- inference ----------------------------------------------------------------------------------
    def classify(
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

        Args:
            images: file paths, encoded bytes (JPEG/PNG), uint8 numpy arrays (H, W, 3) or (H, W), PIL
                images, or a uint8 array (N, H, W, 3); any number, split at the model's max batch size.
                An empty list returns ``[]`` without calling the server.
            top_k: how many classes per image, at most what the model was built to return
                (``cvserve build --top-k``, default 5); all of them when omitted.
            model: the model name; the client's default when omitted.
            model_version: the version to run, e.g. ``"2"`` (two versions may be served side by side);
                the server's choice (the highest version) when omitted.
            timeout: the deadline of the whole call in seconds; the client's default when omitted.
            retry: override the client's retry setting for this call (``False``: no retries).

        Returns:
            One list of :class:`Classification` per image, in the order given.

        Raises:
            InvalidInput: an image is not an image, ``top_k`` is too large, or the model is no classifier.
            ModelNotFound: the server does not serve ``model``.
            DeadlineExceeded: no answer within ``timeout``.
            ServerUnavailable: the server was unreachable or overloaded until the deadline.
            ServerError: the server failed.
        """
        self._check_open()
        blobs = self._prepare_images(images)
        if not blobs:
            return []
        deadline = self._deadline(timeout)
        name = model or self._resolve_model(deadline)
        with track(self._opts.metrics, name, "classify"):
            spec = classifier_spec(self._info(name, model_version, deadline))
            top_k = check_top_k(spec, top_k, name)
            results: list[list[Classification]] = []
            for rows in chunks(len(blobs), spec.max_batch_size):
                inputs, outputs = image_request(spec, blobs[rows])
                result = self._call(
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
                results += parse_classifications(result, spec, top_k, len(blobs[rows]), name)
            return results

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        *,
        model_version: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Run any model on raw tensors, checked against the model's metadata before sending.

        Args:
            model: the model name.
            inputs: input name -> numpy array, batch dimension first for a batching model; a batch larger
                than the model's max batch size is split and the outputs concatenated in order.
            outputs: the output names to return; all of them when omitted.
            model_version: the version to run; the server's choice when omitted.
            timeout: the deadline of the whole call in seconds; the client's default when omitted.
            retry: override the client's retry setting for this call (``False``: no retries).

        Returns:
            Output name -> numpy array (``BYTES`` outputs are object arrays of ``bytes``).

        Raises:
            InvalidInput: an input is unknown or missing, or has the wrong data type or shape.
            ModelNotFound, DeadlineExceeded, ServerUnavailable, ServerError: as for :meth:`classify`.
        """
        self._check_open()
        deadline = self._deadline(timeout)
        with track(self._opts.metrics, model, "infer"):
            info = self._info(model, model_version, deadline)
            names, plan = self._plan_infer(info, inputs, outputs)
            results = []
            for rows in plan:
                tensors, wanted = tensor_request(inputs, names, rows)
                results.append(
                    self._call(
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
                )
            return collect_outputs(results, names)


__all__ = ["Client"]
