"""What differs between tasks, in one place: ``cvserve build --task classify|detect``.

A :class:`Task` owns its preprocessing defaults, how the checkpoint's output is read (classes), how
ONNX Runtime's answers are compared with PyTorch's, the served graph's tail, the served python model
and the files beside it, the Triton outputs and config parameters of its wire contract
(:mod:`cvserve.client.contract`), the served-network check, its build-report entry and the release's
golden-set format (:mod:`cvserve.release.formats`). The pipeline,
the config writer and the repository writer ask the task; none of them branches on its name. The
client's side of each contract (its result types and parsing) is in :mod:`cvserve.client`, which
imports nothing from here (dependencies point builders -> client).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvserve.builders.detection import HEADS, NmsSettings
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.client import contract
from cvserve.errors import BuildError, UserInputError

NAMES = contract.TASKS
DEFAULT = "classify"


@dataclass(frozen=True, kw_only=True)
class Served:
    """What the wrap stage hands on: the served graph file and the numbers its contract needs."""

    path: Path
    pixels_shape: tuple[int, int, int]
    rows: int  # per image: the top-k of a classifier, the fixed K of a detector
    num_classes: int
    feature_dims: int = 0  # width of the FEATURES output (a monitored classifier's); 0: none


class Classify:
    """Top-k classes of an image: softmax and top-k inside the served graph."""

    name = "classify"
    model_file = "classifier.py"
    monitored = True  # its served model counts what it sees and answers (cvserve.monitor)
    beside: tuple[tuple[str, str, str], ...] = ()  # (package, file, name in the version folder)

    def __init__(self, *, top_k: int = 5, **_: object) -> None:
        self.top_k = top_k

    def preprocess(self, spec: PreprocessSpec) -> PreprocessSpec:
        return spec

    def serving_plan(self, plan):
        """The plan as this task serves it: a classifier's graph ends in its answer (no postprocess)."""
        return plan

    def check_plan(self, plan, precision: str) -> None:
        """Every layout, runtime and precision serves classifiers."""

    def python_models(self, layout) -> dict[str, str]:
        """Role -> the file of ``cvserve.model_repository`` served as that role's ``model.py``."""
        return {layout.decode: self.model_file if layout.one_model else "preprocess.py"}

    def num_classes(self, output_shape: tuple[int, ...]) -> int:
        if len(output_shape) != 1:
            raise UserInputError(
                f"a classifier returns [batch, classes]; this model returns [batch, {output_shape}]"
            )
        return output_shape[0]

    @staticmethod
    def compare(got: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, int]:
        """The largest elementwise difference; the images whose top-1 class is PyTorch's."""
        from cvserve.builders.verify import top1_compare

        return top1_compare(got, reference, tolerance)

    def wrap(self, network: Path, out: Path, spec: PreprocessSpec, *, features: int = 0, plan=None) -> Served:
        from cvserve.builders import served_graph

        g = served_graph.wrap(network, out, spec, top_k=self.top_k, features=features)
        return Served(
            path=g.path,
            pixels_shape=g.pixels_shape,
            rows=g.top_k,
            num_classes=g.num_classes,
            feature_dims=g.feature_dims,
        )

    def outputs(self, rows: int) -> list:
        from tritonclient.grpc import model_config_pb2 as mc

        return [
            mc.ModelOutput(name=contract.CLASS_INDEX, data_type=mc.TYPE_INT64, dims=[rows]),
            mc.ModelOutput(name=contract.SCORE, data_type=mc.TYPE_FP32, dims=[rows]),
        ]

    def decoder_outputs(self, pixels_shape: tuple[int, ...]) -> list:
        """What the ensemble's decoder (NAME_preprocess) answers: the uint8 crops."""
        from tritonclient.grpc import model_config_pb2 as mc

        return [mc.ModelOutput(name=contract.PIXELS, data_type=mc.TYPE_UINT8, dims=list(pixels_shape))]

    def network_outputs(self, rows: int) -> list:
        """What the ensemble's network answers: the wire outputs themselves (top-k in the graph)."""
        return self.outputs(rows)

    def parameters(self) -> dict[str, str]:
        return {}

    def metric(self, labels):
        """The quantize stage's accuracy metric and gate: top-1 (cvserve.builders.accuracy)."""
        from cvserve.builders.accuracy import TopOne

        return TopOne()

    def golden_format(self):
        """The release's golden set: images and their class in ``labels.csv`` (docs/release.md)."""
        from cvserve.release.labelled import LabelledImages

        return LabelledImages()

    def check(self, given):
        """The check stage: the served network against the float reference (``verify.CheckInputs``)."""
        from cvserve.builders import verify

        return verify.served(given)

    def report(self, served: Served) -> dict:
        return {"name": self.name, "top_k": served.rows, "returns": f"{served.rows} classes, best first"}


class Detect:
    """Boxes, scores and classes: letterbox in, the raw head decoded and NMSed in the served model."""

    name = "detect"
    model_file = "detector.py"
    monitored = False  # the quality signals (cvserve.monitor) are a classifier's so far
    beside = (("cvserve.builders", "detection.py", "cvserve_detection.py"),)

    def __init__(self, *, nms: NmsSettings | None = None, **_: object) -> None:
        self.nms = nms or NmsSettings()
        self.head = HEADS[self.nms.head]

    def preprocess(self, spec: PreprocessSpec) -> PreprocessSpec:
        """Detectors see the whole image: letterbox, never a crop."""
        return dataclasses.replace(spec, fit="letterbox", resize_shorter=0)

    def serving_plan(self, plan):
        """The plan as a detector serves it: where the network has its own model (the ensemble), its
        graph ends in NMS and a python postprocess step maps the boxes back to original pixels."""
        return plan.with_postprocess()

    def check_plan(self, plan, precision: str) -> None:
        """Every layout, head and precision (gated by mAP); the ensemble ends the graph in the head's
        postprocessing (:mod:`cvserve.builders.detection_graph`)."""

    def python_models(self, layout) -> dict[str, str]:
        """Role -> the file of ``cvserve.model_repository`` served as that role's ``model.py``."""
        if layout.one_model:
            return {layout.decode: self.model_file}
        models = {layout.decode: "preprocess.py"}
        if layout.postprocess:
            models[layout.postprocess] = "postprocess.py"
        return models

    def num_classes(self, output_shape: tuple[int, ...]) -> int:
        try:
            return self.head.num_classes(output_shape)
        except ValueError as exc:
            raise UserInputError(f"{exc} (check --head)") from None

    def compare(self, got: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, int]:
        """The largest difference, and the images whose raw head is within the tolerance of PyTorch's:
        as the head says (:class:`cvserve.builders.detection.Head`): element by element where rows are
        anchors (yolo), as detections where they are a ranking (end2end)."""
        return self.head.difference(got, reference, tolerance, self.nms)

    def wrap(self, network: Path, out: Path, spec: PreprocessSpec, *, features: int = 0, plan=None) -> Served:
        """The raw head, decoded by the single layout's python model; where the ``plan``'s network has
        a model of its own, the raw head followed by the NMS tail of its runtime
        (:mod:`cvserve.builders.detection_graph`). ``features`` is a classifier's (ignored)."""
        from cvserve.builders import detection_graph, served_graph

        raw = out.with_name(f"{out.stem}_raw{out.suffix}") if plan and plan.postprocess else out
        path, shape = served_graph.wrap_raw(network, raw, spec)
        num_classes = self.num_classes(shape)
        if plan is not None and plan.postprocess:
            kind = detection_graph.kind_for(plan.runtime)
            path = detection_graph.append(raw, out, num_classes, self.nms, kind)
        h, w = spec.input_size
        return Served(
            path=path, pixels_shape=(h, w, 3), rows=self.nms.max_detections, num_classes=num_classes
        )

    def outputs(self, rows: int) -> list:
        """The wire rows: ``max_detections`` per image, whatever ``rows`` the caller holds."""
        from tritonclient.grpc import model_config_pb2 as mc

        rows = self.nms.max_detections
        return [
            mc.ModelOutput(name=contract.BOXES, data_type=mc.TYPE_FP32, dims=[rows, 4]),
            mc.ModelOutput(name=contract.SCORES, data_type=mc.TYPE_FP32, dims=[rows]),
            mc.ModelOutput(name=contract.CLASSES, data_type=mc.TYPE_INT64, dims=[rows]),
            mc.ModelOutput(name=contract.COUNT, data_type=mc.TYPE_INT32, dims=[1]),
        ]

    def decoder_outputs(self, pixels_shape: tuple[int, ...]) -> list:
        """What the ensemble's decoder answers: the letterboxed pixels and each image's PLACEMENT."""
        from tritonclient.grpc import model_config_pb2 as mc

        return [
            mc.ModelOutput(name=contract.PIXELS, data_type=mc.TYPE_UINT8, dims=list(pixels_shape)),
            mc.ModelOutput(name=contract.PLACEMENT, data_type=mc.TYPE_FP32, dims=[6]),
        ]

    def network_outputs(self, rows: int) -> list:
        """What the ensemble's network answers: its NMS tail's rows, in input pixels."""
        from tritonclient.grpc import model_config_pb2 as mc

        k = self.nms.max_detections
        return [
            mc.ModelOutput(name=contract.NUM_DETECTIONS, data_type=mc.TYPE_INT32, dims=[1]),
            mc.ModelOutput(name=contract.DETECTION_BOXES, data_type=mc.TYPE_FP32, dims=[k, 4]),
            mc.ModelOutput(name=contract.DETECTION_SCORES, data_type=mc.TYPE_FP32, dims=[k]),
            mc.ModelOutput(name=contract.DETECTION_CLASSES, data_type=mc.TYPE_INT32, dims=[k]),
        ]

    def parameters(self) -> dict[str, str]:
        return self.nms.parameters()

    def metric(self, labels):
        """The quantize stage's accuracy metric and gate: COCO mAP (cvserve.builders.detection_gate)."""
        from cvserve.builders.detection_gate import MeanAveragePrecision

        return MeanAveragePrecision(self.nms, tuple(labels))

    def golden_format(self):
        """The release's golden set: images and their boxes in COCO JSON, judged by mAP per slice and
        per-image F1 (docs/release.md)."""
        from cvserve.release.box_compare import BoxedImages

        return BoxedImages()

    def check(self, given):
        from cvserve.builders.detection_check import served

        return served(given, self.nms)

    def report(self, served: Served) -> dict:
        return {
            "name": self.name,
            **asdict(self.nms),
            "head_layout": self.head.describe,
            "returns": returns_detections(self.nms.max_detections),
        }


def returns_detections(k: int, landmarks: int = 0) -> str:
    """What a detector answers per image, as the build report and the model card say it."""
    marks = f", {landmarks} landmarks each" if landmarks else ""
    return f"up to {k} detections (box, score, class{marks}) and their count"


def get(name: str, *, top_k: int = 5, nms: NmsSettings | None = None) -> Classify | Detect:
    """The task called ``name`` with the build's options."""
    tasks = {"classify": Classify, "detect": Detect}
    if name not in tasks:
        raise UserInputError(f"--task must be one of {', '.join(NAMES)}, not {name!r}")
    return tasks[name](top_k=top_k, nms=nms)


def check_shape(task, output_shape: tuple[int, ...]) -> int:
    """The task's number of classes from the checkpoint's output shape (without the batch)."""
    if not output_shape:
        raise BuildError("the network returned a scalar")
    return task.num_classes(tuple(output_shape))
