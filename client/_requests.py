"""Request planning and result parsing, shared by both clients: what to send in which requests, and
what the answers mean.

A call's rows (images, or rows of raw tensors) are split into requests of at most the model's max
batch size and at most the client's ``max_request_bytes`` of payload, checked before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput

from cvserve.client._metadata import ClassifierSpec, check_inputs, check_outputs, triton_dtype
from cvserve.client.errors import InvalidInput, ServerError
from cvserve.client.types import Classification, ModelInfo, TensorSpec

BYTES_PREFIX = 4  # tritonclient sends each BYTES element as a 4-byte length and its bytes


def split_rows(sizes: Sequence[int], max_rows: int, max_bytes: int, *, what: str, model: str) -> list[slice]:
    """Consecutive slices of rows, each of at most ``max_rows`` rows (0: no limit) and ``max_bytes``.

    Args:
        sizes: the payload bytes of each row.
        max_rows: the model's max batch size.
        max_bytes: the client's ``max_request_bytes``.
        what: names a row in the error, e.g. ``"image"``.
        model: the model, for the error.

    Raises:
        InvalidInput: one row alone is larger than ``max_bytes``.
    """
    parts, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if size > max_bytes:
            raise InvalidInput(
                f"{what} {i + 1} of {len(sizes)} needs {_mb(size)} in one request, more than the client's "
                f"max_request_bytes ({_mb(max_bytes)}): send less, or raise max_request_bytes=",
                model=model,
            )
        if i > start and ((max_rows > 0 and i - start >= max_rows) or total + size > max_bytes):
            parts.append(slice(start, i))
            start, total = i, 0
        total += size
    parts.append(slice(start, len(sizes)))
    return parts


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def image_request(
    spec: ClassifierSpec, blobs: list[bytes]
) -> tuple[list[InferInput], list[InferRequestedOutput]]:
    """The inputs and requested outputs of one classification request of ``len(blobs)`` images."""
    names = (spec.index, spec.score) + ((spec.label,) if spec.label else ())
    return images_request(spec.input, names, blobs)


def images_request(
    image: TensorSpec, outputs: Sequence[str], blobs: list[bytes]
) -> tuple[list[InferInput], list[InferRequestedOutput]]:
    """The inputs and requested ``outputs`` of one request of ``len(blobs)`` encoded images."""
    # [n, 1] for the contract's dims [1]; follows the model if its image input has another rank.
    shape = [len(blobs)] + [1] * (len(image.shape) - 1)
    array = np.empty(len(blobs), dtype=object)
    array[:] = blobs
    tensor = InferInput(image.name, shape, "BYTES")
    tensor.set_data_from_numpy(array.reshape(shape))
    return [tensor], [InferRequestedOutput(name) for name in outputs]


def image_sizes(blobs: list[bytes]) -> list[int]:
    """The payload bytes of each image in a request."""
    return [len(b) + BYTES_PREFIX for b in blobs]


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


def plan_infer(
    info: ModelInfo, inputs: Mapping[str, np.ndarray], outputs: list[str] | None, max_bytes: int
) -> tuple[list[str], list[slice | None]]:
    """The outputs to request and the rows of each request (``None``: all of it, a non-batching model).

    Raises:
        InvalidInput: the inputs do not fit the model, or a request would exceed ``max_bytes``.
    """
    if isinstance(outputs, str):
        raise InvalidInput(f"outputs must be a list of names, e.g. [{outputs!r}]", model=info.name)
    batch = check_inputs(info, inputs)
    names = check_outputs(info, outputs)
    if batch == 0:
        raise InvalidInput(f"inputs of model '{info.name}' hold no rows (batch size 0)", model=info.name)
    if batch is None:
        total = sum(_payload(a) for a in inputs.values())
        split_rows([total], 0, max_bytes, what="request", model=info.name)  # raises when too large
        return names, [None]
    sizes = np.zeros(batch, dtype=np.int64)
    for array in inputs.values():
        sizes += [_payload(row) for row in array] if _is_bytes(array) else array[0].nbytes
    return names, list(
        split_rows(sizes.tolist(), info.max_batch_size, max_bytes, what="row", model=info.name)
    )


def _is_bytes(array: np.ndarray) -> bool:
    return array.dtype.kind in ("O", "S", "U")


def _payload(array: Any) -> int:
    """Bytes a tensor (or one row of it) takes in a request."""
    array = np.asarray(array)
    if not _is_bytes(array):
        return int(array.nbytes)
    return sum(len(x if isinstance(x, bytes) else str(x).encode()) + BYTES_PREFIX for x in array.reshape(-1))


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
    "collect_outputs",
    "image_request",
    "image_sizes",
    "images_request",
    "parse_classifications",
    "plan_infer",
    "split_rows",
    "tensor_request",
]
