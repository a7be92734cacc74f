"""Small typed results and descriptions returned by the client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Classification:
    """One of the top-k classes predicted for an image.

    Attributes:
        label: the class name, e.g. ``"Egyptian cat"``.
        index: the class index in the model's output, e.g. ``285``.
        score: the softmax probability in ``[0, 1]``.
    """

    label: str
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found in an image.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in the original image's pixels (left, top, right, bottom).
        score: the detector's confidence in ``[0, 1]``.
        index: the class index, e.g. ``0``.
        label: the class name, e.g. ``"face"`` (``str(index)`` when the model has no names).
        landmarks: ``((x, y), ...)`` keypoints in original pixels (MTCNN's five face landmarks), or
            ``None`` for detectors without keypoints.
    """

    box: tuple[float, float, float, float]
    score: float
    index: int
    label: str
    landmarks: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output tensor as the server describes it.

    Attributes:
        name: the tensor name, e.g. ``"IMAGE"``.
        datatype: the Triton data type, e.g. ``"FP32"``, ``"BYTES"``.
        shape: the full shape; ``-1`` is a variable dimension (the batch dimension of a batching model).
        optional: whether the model may be called without this input.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the client discovered about a served model (from its metadata and configuration).

    Attributes:
        name: the model name.
        version: the version described: the one asked for, else the highest the server serves
            (``""`` when unknown).
        platform: ``"ensemble"``, ``"onnxruntime_onnx"``, ``"python"``...
        max_batch_size: the largest batch the server accepts in one request; 0 if the model does not batch.
        inputs: the input tensors, in the server's order.
        outputs: the output tensors, in the server's order.
        labels: the class names of a classifier, index -> name, from the ``labels`` parameter of the
            model's configuration; empty when it has none (class ``i`` is then named ``str(i)``).
        max_queue_size: the requests the server queues for the model before rejecting more (its
            ``dynamic_batching.default_queue_policy.max_queue_size``); 0 when unbounded. For an
            ensemble, that of the step that admits the fewest requests.
        instances: the model's instances (summed over its instance groups), or those of that step.
        requests_per_execution: how many requests one execution of that model takes at most: 1 where
            its batcher runs one request at a time (``preferred_batch_size: [1]`` and no queue delay, a
            cvserve build's default) or it does not batch; else its max batch size.
        task: what the model answers, from its config parameter ``task``: ``"classify"`` (also for
            models built before tasks existed) or ``"detect"`` (docs/detection.md).
    """

    name: str
    version: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] = ()
    max_queue_size: int = 0
    instances: int = 1
    requests_per_execution: int = 1
    task: str = "classify"

    def input(self, name: str) -> TensorSpec:
        """The input tensor called ``name``; ``KeyError`` if there is none."""
        return _by_name(self.inputs, name)

    def output(self, name: str) -> TensorSpec:
        """The output tensor called ``name``; ``KeyError`` if there is none."""
        return _by_name(self.outputs, name)


def _by_name(specs: tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(name)


__all__ = ["Classification", "Detection", "ModelInfo", "TensorSpec"]
