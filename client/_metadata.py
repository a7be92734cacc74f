"""Model discovery: the server's metadata and configuration turned into :class:`ModelInfo`, and checks.

Nothing about a model is hard-coded: input names, data types, shapes, the max batch size, the number
of classes a classifier returns and its class names are all read from the server, once per
(model, version) and client.

The classifier contract (v2): one BYTES input of encoded images (``IMAGE``, dims [1]), outputs
``CLASS_INDEX`` (INT64 [K]) and ``SCORE`` (FP32 [K], best first), ``max_batch_size > 0``; the class names
are the JSON array in the config parameter ``labels`` (absent: class ``i`` is ``str(i)``). Models built
before v2 also have a ``LABEL`` (BYTES [K]) output; the client still reads it when there is no ``labels``
parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from cvserve.client._pacing import default_max_in_flight
from cvserve.client.contract import CLASS_INDEX, IMAGE, LABELS_PARAMETER, SCORE, TASK_PARAMETER
from cvserve.client.errors import InvalidInput, ServerError
from cvserve.client.types import ModelInfo, TensorSpec

# The contract's names (above) are used when the server's names are ambiguous.
LABEL = "LABEL"  # the BYTES output of models built before contract v2


def model_info(
    metadata: object, config: object | None, version: str = "", steps: Sequence[object] = ()
) -> ModelInfo:
    """Build :class:`ModelInfo` from tritonclient's ``ModelMetadataResponse`` and ``ModelConfig``.

    ``version`` is the version asked for (``""``: the server's choice, reported as the highest one);
    ``steps`` the configs of an ensemble's steps, whose queues admit its requests.
    """
    optional = {i.name for i in getattr(config, "input", ()) if getattr(i, "optional", False)}

    def specs(tensors: object, optional_names: set[str]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape), t.name in optional_names)
            for t in tensors  # type: ignore[attr-defined]
        )

    versions = [str(v) for v in getattr(metadata, "versions", ())]
    if not version and versions:
        version = max(versions, key=lambda v: (len(v), v))  # numeric order of decimal strings
    return ModelInfo(
        name=metadata.name,  # type: ignore[attr-defined]
        version=version,
        platform=getattr(metadata, "platform", "") or getattr(config, "platform", "") or "",
        max_batch_size=int(getattr(config, "max_batch_size", 0) or 0),
        inputs=specs(metadata.inputs, optional),  # type: ignore[attr-defined]
        outputs=specs(metadata.outputs, set()),  # type: ignore[attr-defined]
        labels=_labels(metadata.name, config),  # type: ignore[attr-defined]
        task=_parameter(config, TASK_PARAMETER) or "classify",
        **_admission(config, steps),
    )


def _parameter(config: object | None, key: str) -> str | None:
    parameters = getattr(config, "parameters", None)
    return parameters[key].string_value if parameters and key in parameters else None


def _admission(config: object | None, steps: Sequence[object]) -> dict[str, int]:
    """The queue bound, instances and requests per execution the server admits requests with: the
    model's own or, for an ensemble, those of the step that admits the fewest (the bound of an
    unbounded queue is 0)."""

    def of(cfg: object | None) -> tuple[int, int, int]:
        batching = getattr(cfg, "dynamic_batching", None)
        policy = getattr(batching, "default_queue_policy", None)
        groups = getattr(cfg, "instance_group", ())
        return (
            int(getattr(policy, "max_queue_size", 0) or 0),
            sum(g.count or 1 for g in groups) or 1,
            _requests_per_execution(cfg, batching),
        )

    found = [of(c) for c in (steps or (config,))]
    bounded = [a for a in found if a[0] > 0]
    queue, instances, per_execution = (
        min(bounded, key=lambda a: default_max_in_flight(*a) or 0) if bounded else found[0]
    )
    return {"max_queue_size": queue, "instances": instances, "requests_per_execution": per_execution}


def _requests_per_execution(config: object | None, batching: object | None) -> int:
    """At most how many requests one execution takes: 1 without a dynamic batcher, without batching,
    or with a batcher that runs one request at a time (preferred size 1, no queue delay: a cvserve
    build, docs/serving.md); else the max batch size (the batcher joins requests of one image)."""
    max_batch = int(getattr(config, "max_batch_size", 0) or 0)
    has_field = getattr(config, "HasField", None)  # a protobuf message has every field, set or not
    if max_batch <= 1 or batching is None or (has_field is not None and not has_field("dynamic_batching")):
        return 1
    preferred = list(getattr(batching, "preferred_batch_size", ()) or ())
    if preferred == [1] and not getattr(batching, "max_queue_delay_microseconds", 0):
        return 1
    return max_batch


def _labels(model: str, config: object | None) -> tuple[str, ...]:
    """The class names in the config parameter ``labels`` (a JSON array), or ``()`` when absent."""
    parameters = getattr(config, "parameters", None)
    if not parameters or LABELS_PARAMETER not in parameters:
        return ()
    text = parameters[LABELS_PARAMETER].string_value
    try:
        labels = json.loads(text)
    except ValueError:
        labels = None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ServerError(
            f"model '{model}' has a config parameter {LABELS_PARAMETER} that is not a JSON array of "
            f"class names ({text[:60]!r}); rebuild the model with cvserve build",
            model=model,
        )
    return tuple(labels)


@dataclass(frozen=True, slots=True)
class ClassifierSpec:
    """Where a classification model keeps what the client needs."""

    input: TensorSpec
    index: str
    score: str
    label: str | None  # the LABEL output of a model built before contract v2, read when labels is empty
    labels: tuple[str, ...]  # index -> class name, from the model's config
    k: int | None  # classes returned per image; None when the output dimension is variable
    max_batch_size: int

    def name_of(self, index: int) -> str:
        """The name of class ``index``: its label from the config, else ``str(index)``."""
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)


def _pick(specs: tuple[TensorSpec, ...], preferred: str, datatypes: tuple[str, ...]) -> TensorSpec | None:
    for spec in specs:
        if spec.name == preferred and spec.datatype in datatypes:
            return spec
    matches = [s for s in specs if s.datatype in datatypes]
    return matches[0] if len(matches) == 1 else None


def problems_of(info: ModelInfo) -> list[str]:
    """What keeps ``info`` from taking encoded images the way every cvserve model does."""
    problems = []
    required = [i for i in info.inputs if not i.optional]
    if image_input(info) is None or len(required) > 1:
        problems.append(f"it needs one BYTES input of encoded images, it has {_describe(info.inputs)}")
    if info.max_batch_size <= 0:
        problems.append("it does not batch (max_batch_size 0)")
    return problems


def image_input(info: ModelInfo) -> TensorSpec | None:
    """The BYTES input of encoded images (``IMAGE``, or the only BYTES input)."""
    return _pick(info.inputs, IMAGE, ("BYTES",))


def classifier_spec(info: ModelInfo) -> ClassifierSpec:
    """Check that ``info`` describes a cvserve classifier and say where its tensors are.

    Raises:
        InvalidInput: the model does not take encoded images in and give top-k classes out.
    """
    problems = problems_of(info)
    image = image_input(info)
    index = _pick(info.outputs, CLASS_INDEX, ("INT64", "INT32"))
    score = _pick(info.outputs, SCORE, ("FP32", "FP16", "FP64"))
    if index is None or score is None:
        problems.append(
            f"it needs outputs {CLASS_INDEX} (INT64) and {SCORE} (FP32), it has {_describe(info.outputs)}"
        )
    if problems:
        raise InvalidInput(
            f"model '{info.name}' is not a cvserve classifier: {'; '.join(problems)}; "
            "use infer() for other models, or build it with cvserve build",
            model=info.name,
        )
    assert image is not None and index is not None and score is not None
    # Labels from the config when it has them; the LABEL output only for a model built before v2.
    label = None if info.labels else _pick(info.outputs, LABEL, ("BYTES",))
    k = score.shape[-1] if score.shape and score.shape[-1] > 0 else None
    return ClassifierSpec(
        image, index.name, score.name, label.name if label else None, info.labels, k, info.max_batch_size
    )


def _describe(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs) or "none"


def check_top_k(spec: ClassifierSpec, top_k: int | None, model: str) -> int:
    """Check ``top_k`` (a positive int no larger than what the model returns); ``None`` means all."""
    if top_k is None:
        return spec.k or 2**31
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InvalidInput(f"top_k must be a positive integer, got {top_k!r}", model=model)
    if spec.k is not None and top_k > spec.k:
        raise InvalidInput(
            f"top_k={top_k} but model '{model}' returns only the top {spec.k} classes per image: "
            f"ask for top_k<={spec.k}, or rebuild the model with a larger --top-k (cvserve build --top-k {top_k})",
            model=model,
        )
    return int(top_k)


def triton_dtype(array: np.ndarray) -> str:
    """The Triton data type of a numpy array (object/bytes/str arrays are ``BYTES``)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    return np_to_triton_dtype(array.dtype) or str(array.dtype)


def check_inputs(info: ModelInfo, inputs: Mapping[str, np.ndarray]) -> int | None:
    """Check names, data types and shapes of ``inputs`` against the model; return the batch size.

    Returns:
        The common first dimension when the model batches (``max_batch_size`` > 0), else ``None``.

    Raises:
        InvalidInput: naming the tensor, what was given and what the model expects.
    """
    model = info.name
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput(
            f"inputs must be a non-empty dict of name -> numpy array; model '{model}' takes "
            f"{_describe(info.inputs)}",
            model=model,
        )
    known = {s.name: s for s in info.inputs}
    unknown = sorted(set(inputs) - set(known))
    if unknown:
        raise InvalidInput(
            f"model '{model}' has no input {', '.join(unknown)}; its inputs are {_describe(info.inputs)}",
            model=model,
        )
    missing = [s.name for s in info.inputs if not s.optional and s.name not in inputs]
    if missing:
        raise InvalidInput(f"model '{model}' needs input {', '.join(missing)} as well", model=model)
    batches = set()
    for name, array in inputs.items():
        spec = known[name]
        if not isinstance(array, np.ndarray):
            raise InvalidInput(f"input {name} must be a numpy array, got {type(array).__name__}", model=model)
        dtype = triton_dtype(array)
        if dtype != spec.datatype:
            raise InvalidInput(
                f"input {name} of model '{model}' must be {spec.datatype}, got {dtype} (numpy {array.dtype}); "
                "convert it with .astype(...)",
                model=model,
            )
        if len(array.shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, array.shape, strict=False)
        ):
            batch = " (the first dimension is the batch)" if info.max_batch_size > 0 else ""
            raise InvalidInput(
                f"input {name} of model '{model}' must have shape {list(spec.shape)}{batch}, "
                f"got {list(array.shape)}",
                model=model,
            )
        if info.max_batch_size > 0:
            batches.add(array.shape[0])
    if len(batches) > 1:
        raise InvalidInput(
            f"inputs of model '{model}' have different batch sizes {sorted(batches)}", model=model
        )
    return batches.pop() if batches else None


def check_outputs(info: ModelInfo, outputs: list[str] | None) -> list[str]:
    """The output names to request: all of them by default; unknown names are an error."""
    names = [s.name for s in info.outputs]
    if outputs is None:
        return names
    unknown = [o for o in outputs if o not in names]
    if unknown:
        raise InvalidInput(
            f"model '{info.name}' has no output {', '.join(unknown)}; its outputs are {_describe(info.outputs)}",
            model=info.name,
        )
    return list(outputs)


def pick_classifier(infos: list[ModelInfo], url: str) -> str:
    """The name of the one classifier among ``infos``; ``InvalidInput`` when there are none or several."""
    return pick_model(infos, url, classifier_spec, "classifiers", "classify")


def pick_model(infos: list[ModelInfo], url: str, spec_of: Callable, what: str, call: str) -> str:
    """The name of the one model among ``infos`` that ``spec_of`` accepts (``what``: "classifiers")."""
    found = []
    for info in infos:
        try:
            spec_of(info)
        except InvalidInput:
            continue
        found.append(info.name)
    if len(found) == 1:
        return found[0]
    served = ", ".join(sorted(found)) if found else "none"
    raise InvalidInput(
        f"no model named and the server at {url} serves {len(found)} {what} ({served}): "
        f"pass the model, e.g. Client(url, model='mobilenet_v2') or {call}(images, model='mobilenet_v2')"
    )


__all__ = [
    "ClassifierSpec",
    "check_inputs",
    "check_outputs",
    "check_top_k",
    "classifier_spec",
    "image_input",
    "model_info",
    "pick_classifier",
    "pick_model",
    "problems_of",
    "triton_dtype",
]
