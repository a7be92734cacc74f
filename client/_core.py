"""What :class:`Client` and :class:`AsyncClient` share: the constructor and every call, written once.

Each public call is a plan (:mod:`cvserve.client._effects`): it checks and plans the request, yields
the tritonclient calls it needs, retries them (:func:`cvserve.client._retry.retrying`), maps errors and
parses the results. The two clients only run the plans with blocking or asyncio I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, replace
from typing import Any

import grpc
import numpy as np
from tritonclient.utils import InferenceServerException

from cvserve.client._detection import detector_spec, parse_detections
from cvserve.client._effects import Exclusive, Gather, Plan, Rpc, Sleep
from cvserve.client._images import ImageLike, as_image_list, encode_images
from cvserve.client._metadata import check_top_k, classifier_spec, model_info, pick_model
from cvserve.client._options import ClientOptions
from cvserve.client._pacing import NO_PACING, Flow, default_max_in_flight, paced
from cvserve.client._requests import (
    collect_outputs,
    image_request,
    image_sizes,
    images_request,
    parse_classifications,
    plan_infer,
    split_rows,
    tensor_request,
)
from cvserve.client._retry import Deadline, RetryBudget, RetryPolicy, retrying
from cvserve.client.errors import ClientError, DeadlineExceeded, ServerUnavailable, map_error, queue_timed_out
from cvserve.client.metrics import track
from cvserve.client.types import Classification, Detection, ModelInfo

# A queue-timeout rejection counts as the call's own deadline when no more than a request's time
# outside the queue (its floor), plus this much for the rejection's way back, is left of it.
EXPIRY_SLACK_S = 0.02
# The model a call uses when none is named and the client has no default: the one the server serves
# that the call's contract accepts.
_DISCOVERY = {"classify": (classifier_spec, "classifiers"), "detect": (detector_spec, "detectors")}


class ClientCore:
    """The constructor and the calls of both clients; see :class:`cvserve.client.Client`."""

    def __init__(
        self, url: str | None = None, *, options: ClientOptions | None = None, **kwargs: Any
    ) -> None:
        """Check the options and prepare the channel (opened on the first call).

        The keyword arguments are the fields of :class:`~cvserve.client.ClientOptions` (their defaults
        are in this signature); ``options=`` takes them made already (``url`` and keywords given beside
        it replace its fields).

        Args:
            url: ``host:port`` of Triton's gRPC endpoint (``grpc://`` or ``grpcs://`` prefixes accepted);
                ``$CVSERVE_URL`` or ``localhost:8001`` when omitted.
            model: the model used when a call names none; discovered from the server when it serves
                exactly one classifier.
            timeout: the default deadline of each call in seconds, retries and batch splitting included.
            retry: ``True`` (the default :class:`RetryPolicy`), a :class:`RetryPolicy`, or ``False`` to
                never retry (for models with side effects). Its retry budget is shared by all calls.
            max_image_bytes: the largest encoded image sent (default 20 MiB); a larger one raises
                :class:`InvalidInput` before anything is sent.
            max_request_bytes: the largest payload of one request (default 64 MiB); a call is split
                into requests under it, and a single image or row over it raises :class:`InvalidInput`.
            ssl: use TLS (implied by any certificate argument); the system's roots unless given.
            root_certificates: path of the PEM root certificates that signed the server's certificate.
            private_key: path of the client's PEM private key (mutual TLS).
            certificate_chain: path of the client's PEM certificate chain (mutual TLS).
            token: sent as ``authorization: Bearer <token>`` metadata on every call.
            headers: other gRPC metadata sent on every call (keys are lower-cased).
            compression: ``"gzip"`` or ``"deflate"`` to compress requests.
            keepalive: gRPC keepalive settings; pings every 60 s during calls by default.
            metrics: ``True`` for Prometheus metrics on the default registry, or a :class:`ClientMetrics`.
            max_in_flight: the most requests this client has out to one model (and version) at once;
                more wait in the client, within their deadline, for one to finish. By default two per
                instance of the model as the server reports it (two executions' worth where its batcher
                joins requests), at most its queue bound and no bound for an unbounded queue, so a
                burst is paced to what the server admits and leaves its queue to other clients
                (docs/client.md).
                ``0``: no pacing at all (every request goes out at once, as Triton's ``0`` means an
                unbounded queue).
            options: all of the above as one :class:`~cvserve.client.ClientOptions`.

        Raises:
            InvalidInput: an argument is wrong (bad URL, missing certificate file, unknown compression).
            TypeError: an unknown keyword argument.
        """
        if url is not None:
            kwargs["url"] = url
        unknown = set(kwargs) - _OPTION_NAMES
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword arguments: {', '.join(sorted(unknown))}"
            )
        self._opts = replace(options, **kwargs) if options is not None else ClientOptions(**kwargs)
        policy = self._opts.retry or RetryPolicy()  # per-call policies share this client's budget
        self._budget = RetryBudget(policy.max_tokens, policy.token_ratio)
        self._flows: dict[tuple[str, str], Flow] = {}  # per model and version: window and latency
        self._models: dict[tuple[str, str], ModelInfo] = {}  # (model, version) -> info
        self._default_model: str | None = self._opts.model
        self._closed = False
        self._setup()

    def _setup(self) -> None:
        """Prepare the client's I/O (its lock and tritonclient); each client defines it."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The server's gRPC address, ``host:port``."""
        return self._opts.url

    @property
    def model(self) -> str | None:
        """The model used when a call names none (given, or discovered on first use)."""
        return self._default_model

    @property
    def retry_budget(self) -> RetryBudget:
        """The retry budget shared by this client's calls."""
        return self._budget

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self._default_model!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"this {type(self).__name__} is closed: create a new one")

    # -- health -------------------------------------------------------------------------------------
    def _is_ready(
        self, model: str | None = None, *, model_version: str | None = None, timeout: float = 5.0
    ) -> Plan[bool]:
        """Whether the server (and ``model``, when given) is ready; never raises for an unreachable server."""
        self._check_open()
        kw = {"headers": self._opts.headers or None, "client_timeout": timeout}
        try:
            ready = yield Rpc("is_server_ready", (), kw)
            if ready and model is not None:
                ready = yield Rpc("is_model_ready", (model, model_version or ""), kw)
        except (InferenceServerException, grpc.RpcError):
            return False
        return bool(ready)

    def _wait_until_ready(
        self, timeout: float = 60.0, *, model: str | None = None, model_version: str | None = None
    ) -> Plan[None]:
        """Wait until the server (and ``model``, when given) is ready.

        Raises:
            ServerUnavailable: not ready within ``timeout`` seconds.
        """
        deadline, delay = Deadline(timeout), 0.05
        while True:
            left = max(min(deadline.remaining(), 1.0), 0.01)
            if (yield from self._is_ready(model, model_version=model_version, timeout=left)):
                return
            if deadline.remaining() <= delay:
                what = f"model '{model}' on " if model else ""
                raise ServerUnavailable(
                    f"{what}the Triton server at {self.url} was not ready after {timeout:g} s; "
                    "check that it is running and the URL",
                    model=model,
                )
            yield Sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- metadata -----------------------------------------------------------------------------------
    def _model_info(
        self, model: str | None = None, *, model_version: str | None = None, timeout: float | None = None
    ) -> Plan[ModelInfo]:
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
        name = model or (yield from self._resolve_model(deadline))
        return (yield from self._info(name, model_version, deadline))

    def _info(self, model: str, version: str | None, deadline: Deadline) -> Plan[ModelInfo]:
        key = (model, version or "")
        info = self._models.get(key)
        if info is None:
            try:  # concurrent first calls fetch the metadata once
                info = yield Exclusive(self._fetch_info(key, deadline), deadline.remaining())
            except ClientError:
                raise
            except TimeoutError:  # the lock was not free in time
                raise DeadlineExceeded(
                    f"model '{model}': its metadata was not fetched within the deadline of "
                    f"{deadline.timeout:g} s; allow a longer timeout=",
                    code="DEADLINE_EXCEEDED",
                    model=model,
                ) from None
        return info

    def _fetch_info(self, key: tuple[str, str], deadline: Deadline) -> Plan[ModelInfo]:
        info = self._models.get(key)  # another call may have fetched it while this one waited
        if info is None:
            model, version = key
            metadata = yield from self._call("get_model_metadata", model, deadline, None, model, version)
            config = (yield from self._call("get_model_config", model, deadline, None, model, version)).config
            steps = []  # an ensemble's requests are admitted by its steps' queues
            for step in getattr(getattr(config, "ensemble_scheduling", None), "step", ()):
                at = str(step.model_version) if step.model_version > 0 else ""
                name = step.model_name
                steps.append(
                    (yield from self._call("get_model_config", name, deadline, None, name, at)).config
                )
            info = self._models[key] = model_info(metadata, config, version, steps)
        return info

    def _resolve_model(self, deadline: Deadline, call: str = "classify") -> Plan[str]:
        if self._default_model is None:
            index = yield from self._call("get_model_repository_index", None, deadline, None)
            ready = sorted({m.name for m in index.models if m.state == "READY"})  # one per version
            infos = []
            for name in ready:
                infos.append((yield from self._info(name, None, deadline)))
            spec_of, what = _DISCOVERY[call]
            self._default_model = pick_model(infos, self.url, spec_of, what, call)
        return self._default_model

    # -- inference ----------------------------------------------------------------------------------
    def _classify(
        self,
        images: Sequence[ImageLike],
        *,
        top_k: int | None = None,
        model: str | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | bool | None = None,
    ) -> Plan[list[list[Classification]]]:
        """Classify images; per image, its ``top_k`` classes, best first.

        Args:
            images: file paths, encoded bytes (JPEG/PNG), uint8 numpy arrays (H, W, 3) or (H, W), PIL
                images, or a uint8 array (N, H, W, 3); any number, split into requests of at most the
                model's max batch size and the client's ``max_request_bytes`` (sent concurrently by
                :class:`AsyncClient`). An empty list returns ``[]`` without calling the server.
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
            InvalidInput: an image is not an image or is over ``max_image_bytes``, ``top_k`` is too
                large, or the model is no classifier.
            ModelNotFound: the server does not serve ``model`` (or not that version).
            DeadlineExceeded: no answer within ``timeout``.
            ServerUnavailable: the server was unreachable or overloaded until the deadline.
            ServerError: the server failed.
        """
        self._check_open()

        def prepare(info: ModelInfo, name: str):
            spec = classifier_spec(info)
            k = check_top_k(spec, top_k, name)

            def parse(result: Any, n: int) -> list[list[Classification]]:
                return parse_classifications(result, spec, k, n, name)

            return spec.max_batch_size, lambda blobs: image_request(spec, blobs), parse

        return (
            yield from self._on_images(
                images,
                "classify",
                prepare,
                model=model,
                model_version=model_version,
                timeout=timeout,
                retry=retry,
            )
        )

    def _detect(
        self,
        images: Sequence[ImageLike],
        *,
        model: str | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | bool | None = None,
    ) -> Plan[list[list[Detection]]]:
        """Find objects in images with a detector (``cvserve build --task detect``).

        Args:
            images: as for ``classify``: paths, encoded bytes, uint8 arrays or PIL images; split into
                requests the same way. An empty list returns ``[]`` without calling the server.
            model: the model name; the client's default when omitted (or the one detector served).
            model_version: the version to run; the server's choice when omitted.
            timeout: the deadline of the whole call in seconds; the client's default when omitted.
            retry: override the client's retry setting for this call (``False``: no retries).

        Returns:
            Per image, in the order given, its :class:`Detection` list, best score first: boxes in
            the original image's pixels, at most the model's ``--max-detections``; ``[]`` when none.

        Raises:
            InvalidInput: an image is not an image, is over ``max_image_bytes`` or the server's pixel
                limit, or the model is no detector.
            ModelNotFound, DeadlineExceeded, ServerUnavailable, ServerError: as for ``classify``.
        """
        self._check_open()

        def prepare(info: ModelInfo, name: str):
            spec = detector_spec(info)

            def parse(result: Any, n: int) -> list[list[Detection]]:
                return parse_detections(result, spec, n, name)

            return spec.max_batch_size, lambda blobs: images_request(spec.input, spec.outputs, blobs), parse

        return (
            yield from self._on_images(
                images,
                "detect",
                prepare,
                model=model,
                model_version=model_version,
                timeout=timeout,
                retry=retry,
            )
        )

    def _on_images(
        self,
        images: Sequence[ImageLike],
        call: str,
        prepare: Callable,
        *,
        model,
        model_version,
        timeout,
        retry,
    ) -> Plan[list]:
        """One image call: encode, find the model, split into requests, send them paced, parse.

        ``prepare(info, name)`` checks the model's contract and returns (max batch, the request of
        some blobs, the parser of a response of n images).
        """
        blobs = encode_images(as_image_list(images), self._opts.max_image_bytes)
        if not blobs:
            return []
        deadline = self._deadline(timeout)
        name = model or (yield from self._resolve_model(deadline, call))
        with track(self._opts.metrics, name, call):
            info = yield from self._info(name, model_version, deadline)
            max_batch, request, parse = prepare(info, name)
            parts = split_rows(
                image_sizes(blobs), max_batch, self._opts.max_request_bytes, what="image", model=name
            )

            def part(rows: slice) -> Plan[list]:
                flow = self._flow(info)

                def sent() -> Plan[Any]:  # the request is built once it holds a slot, not before
                    inputs, outputs = request(blobs[rows])
                    kw = {"outputs": outputs, "model_version": model_version or ""}
                    return (
                        yield from self._call("infer", name, deadline, retry, name, inputs, flow=flow, **kw)
                    )

                result = yield from self._paced(info, deadline, sent(), flow)
                return parse(result, len(blobs[rows]))

            results = yield Gather(tuple(part(rows) for rows in parts))
            return [item for result in results for item in result]

    def _infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        *,
        model_version: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | bool | None = None,
    ) -> Plan[dict[str, np.ndarray]]:
        """Run any model on raw tensors, checked against the model's metadata before sending.

        Args:
            model: the model name.
            inputs: input name -> numpy array, batch dimension first for a batching model; a batch larger
                than the model's max batch size or ``max_request_bytes`` is split and the outputs
                concatenated in order.
            outputs: the output names to return; all of them when omitted.
            model_version: the version to run; the server's choice when omitted.
            timeout: the deadline of the whole call in seconds; the client's default when omitted.
            retry: override the client's retry setting for this call (``False``: no retries).

        Returns:
            Output name -> numpy array (``BYTES`` outputs are object arrays of ``bytes``).

        Raises:
            InvalidInput: an input is unknown or missing, has the wrong data type or shape, or one row
                is over ``max_request_bytes``.
            ModelNotFound, DeadlineExceeded, ServerUnavailable, ServerError: as for ``classify``.
        """
        self._check_open()
        deadline = self._deadline(timeout)
        with track(self._opts.metrics, model, "infer"):
            info = yield from self._info(model, model_version, deadline)
            names, parts = plan_infer(info, inputs, outputs, self._opts.max_request_bytes)

            def part(rows: slice | None) -> Plan[Any]:
                tensors, wanted = tensor_request(inputs, names, rows)
                kw = {"outputs": wanted, "model_version": model_version or ""}
                flow = self._flow(info)
                call = self._call("infer", model, deadline, retry, model, tensors, flow=flow, **kw)
                return (yield from self._paced(info, deadline, call, flow))

            results = yield Gather(tuple(part(rows) for rows in parts))
            return collect_outputs(results, names)

    # -- one RPC, retried ---------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        model: str | None,
        deadline: Deadline,
        retry: Any,
        *args: Any,
        flow: Flow | None = None,
        **kw: Any,
    ) -> Plan[Any]:
        if method == "infer" and self._opts.compression:
            kw["compression_algorithm"] = self._opts.compression
        headers = self._opts.headers or None

        def rpc(remaining: float) -> Rpc:
            sent = {**kw, "headers": headers, "client_timeout": remaining}
            if method == "infer":  # the server drops a queued request that could no longer answer in time
                queued = flow.latency.queue_timeout(remaining) if flow is not None else remaining
                sent["timeout"] = max(1, int(queued * 1e6))  # microseconds (queue policy override)
            return Rpc(method, args, sent)

        return (
            yield from retrying(
                rpc,
                deadline=deadline,
                policy=self._policy(retry),
                budget=self._budget,
                map_error=self._mapper(model, deadline),
                on_retry=self._on_retry(model, flow),
                expired=self._expired(deadline, flow) if method == "infer" else None,
            )
        )

    @staticmethod
    def _expired(deadline: Deadline, flow: Flow | None) -> Callable[[BaseException], bool]:
        """Whether an infer attempt was dropped from the server's queue for this call's own deadline:
        its queue timeout passed and no more time is left than a request needs outside the queue. (A
        model's own queue timeout that passes first, with more of the deadline left, is overload.)"""

        def expired(exc: BaseException) -> bool:
            floor = flow.latency.floor if flow is not None else 0.0
            return queue_timed_out(exc) and deadline.remaining() <= floor + EXPIRY_SLACK_S

        return expired

    def _flow(self, info: ModelInfo) -> Flow | None:
        """The pacing state of ``info``'s model: ``None`` when requests to it are not bounded."""
        if self._opts.max_in_flight == NO_PACING:
            return None
        limit = self._opts.max_in_flight or default_max_in_flight(
            info.max_queue_size, info.instances, info.requests_per_execution
        )
        if limit is None:
            return None
        key = (info.name, info.version)
        flow = self._flows.get(key)
        if flow is None or flow.window.ceiling != limit:
            flow = self._flows[key] = Flow.of(limit, info.instances)
        return flow

    def _paced(self, info: ModelInfo, deadline: Deadline, call: Plan[Any], flow: Flow | None) -> Plan[Any]:
        """``call`` (one request) run within this client's window of requests in flight to the model."""
        return paced(
            call,
            model=info.name,
            key=(info.name, info.version),
            flow=flow,
            deadline=deadline,
            metrics=self._opts.metrics,
        )

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self._opts.timeout if timeout is None else timeout)

    def _policy(self, retry: RetryPolicy | bool | None) -> RetryPolicy | None:
        if retry is None:
            return self._opts.retry
        if retry is True:
            return self._opts.retry or RetryPolicy()
        return retry or None

    def _mapper(self, model: str | None, deadline: Deadline) -> Callable[..., ClientError]:
        def mapper(exc: BaseException, attempts: int, note: str = "") -> ClientError:
            return map_error(
                exc, model=model, url=self.url, timeout=deadline.timeout, attempts=attempts, note=note
            )

        return mapper

    def _on_retry(
        self, model: str | None, flow: Flow | None = None
    ) -> Callable[[BaseException], None] | None:
        metrics = self._opts.metrics
        if flow is None:
            return None if metrics is None else (lambda exc: metrics.retried(model, exc))

        def retried(exc: BaseException) -> None:
            flow.observe(exc)  # a rejection for overload shrinks the window before the retry waits
            if metrics is not None:
                metrics.retried(model, exc)

        return retried


_OPTION_NAMES = frozenset(f.name for f in fields(ClientOptions))


def _constructor_signature() -> inspect.Signature:
    """``__init__`` as ``help(Client)`` shows it: ``url``, then every :class:`ClientOptions` field with
    its default, then ``options``."""
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD)]
    for f in fields(ClientOptions):
        kind = P.POSITIONAL_OR_KEYWORD if f.name == "url" else P.KEYWORD_ONLY
        default = f.default if f.default is not MISSING else f.default_factory()
        params.append(P(f.name, kind, default=default, annotation=f.type))
    params.append(P("options", P.KEYWORD_ONLY, default=None, annotation="ClientOptions | None"))
    return inspect.Signature(params, return_annotation="None")


ClientCore.__init__.__signature__ = _constructor_signature()  # type: ignore[attr-defined]

__all__ = ["ClientCore"]
