"""Where and how the network is served, decided once from the target and the flags, and recorded.

Two layouts serve the same contract (clients call one model NAME with encoded images and get
CLASS_INDEX and SCORE back):

* ``single``: one python-backend model NAME decodes the images on a thread pool and runs the network
  in-process (OpenVINO or ONNX Runtime). One process hop, no tensor copied between models. It is the
  only layout the embedded server (python backend only) can run, and it also runs in Triton's NGC image.
* ``ensemble``: NAME (a Triton ensemble) -> NAME_preprocess (python: decode to uint8 pixels) ->
  NAME_network on a native Triton backend (``openvino``, ``onnxruntime_onnx`` or ``tensorrt_plan``). The
  layout for NGC: GPUs need it (TensorRT, ONNX Runtime's TensorRT accelerator), and Triton schedules
  decoding and inference as separate models. A detector's ensemble adds NAME_postprocess (python) after
  the network, whose graph ends in NMS: it maps the boxes back to original pixels
  (:data:`ENSEMBLE_WITH_POSTPROCESS`, docs/detection.md).

The rules: the CPU target serves ``single`` with OpenVINO unless told otherwise; the GPU target serves
``ensemble`` with a TensorRT engine, or with ``--runtime onnxruntime`` the ONNX through ONNX Runtime's
TensorRT accelerator. OpenVINO is the default CPU runtime because it runs the INT8 networks fastest on
the CPUs measured (docs/benchmarks.md); ONNX Runtime stays selectable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cvserve.errors import UserInputError

TARGETS = ("cpu", "gpu")
RUNTIMES = ("openvino", "onnxruntime", "tensorrt")
DEFAULT_CPU_RUNTIME = "openvino"
DEFAULT_GPU_RUNTIME = "tensorrt"
# The file each runtime serves, inside the version folder of the model that runs the network.
NETWORK_FILES = {"openvino": "model.xml", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
# The Triton backend (and platform, where Triton names one) that serves each runtime's network in the
# ensemble layout (NGC's image); the single layout's python model runs every CPU runtime itself.
TRITON_BACKENDS = {
    "openvino": ("openvino", ""),
    "onnxruntime": ("onnxruntime", "onnxruntime_onnx"),
    "tensorrt": ("tensorrt", "tensorrt_plan"),
}
ENTRY = "classifier"  # the role of the model clients call, NAME itself (either task)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Which model of a layout plays which role: the one place that knows (the writer, the tuner, the
    release, the benchmarks and the supervisor ask it).

    Attributes:
        roles: every role the layout writes, the model clients call (:data:`ENTRY`) last.
        network: the role of the model that runs the network and forms its batches.
        decode: the role of the python model that decodes the images (``decode_threads``).
        queues: the roles that may have a dynamic batcher, the one that first queues a request first.
        postprocess: the role of the python model after the network (a detector's ensemble maps the
            NMS rows back to original pixels there), or ``None``.
    """

    name: str
    roles: tuple[str, ...]
    network: str
    decode: str
    queues: tuple[str, ...]
    postprocess: str | None = None

    @property
    def one_model(self) -> bool:
        """One model decodes and runs the network (the single layout): its requests are its batches."""
        return self.decode == self.network

    def model_names(self, name: str) -> dict[str, str]:
        """Role -> model name of every model this layout serves NAME with."""
        return {role: model_names(name)[role] for role in self.roles}


# MTCNN's bls layout (cvserve.builders.mtcnn_build): one model per network of the cascade, NAME_<stage>.
CASCADE_STAGES = ("pnet", "rnet", "onet")


def model_names(name: str) -> dict[str, str]:
    """Role -> model name of every model a pipeline NAME may have (which exist depends on the layout),
    the model clients call last."""
    stages = {stage: f"{name}_{stage}" for stage in CASCADE_STAGES}
    return {
        "preprocess": f"{name}_preprocess",
        "network": f"{name}_network",
        "postprocess": f"{name}_postprocess",
        **stages,
        ENTRY: name,
    }


LAYOUT = {
    "single": Layout(name="single", roles=(ENTRY,), network=ENTRY, decode=ENTRY, queues=(ENTRY,)),
    "ensemble": Layout(
        name="ensemble",
        roles=("preprocess", "network", ENTRY),
        network="network",
        decode="preprocess",
        queues=("preprocess", "network"),
    ),
}
LAYOUTS = tuple(LAYOUT)
# A detector's ensemble: the network's graph ends in NMS (input pixels), and a python step after it maps
# the boxes back through each image's letterbox (docs/detection.md). The same layout otherwise.
ENSEMBLE_WITH_POSTPROCESS = Layout(
    name="ensemble",
    roles=("preprocess", "network", "postprocess", ENTRY),
    network="network",
    decode="preprocess",
    queues=("preprocess", "network"),
    postprocess="postprocess",
)


@dataclass(frozen=True, kw_only=True)
class ServingPlan:
    """The decision: which layout, which runtime, on which device, from which file."""

    target: str
    layout: str
    runtime: str
    accelerator: str | None = None  # "tensorrt": ONNX Runtime's TensorRT execution accelerator (GPU)
    postprocess: bool = False  # a python step after the network (a detector's ensemble)

    @property
    def network_file(self) -> str:
        return NETWORK_FILES[self.runtime]

    @property
    def roles(self) -> Layout:
        return ENSEMBLE_WITH_POSTPROCESS if self.postprocess else LAYOUT[self.layout]

    def with_postprocess(self) -> ServingPlan:
        """This plan with a python step after the network, where the network has its own model."""
        return replace(self, postprocess=not LAYOUT[self.layout].one_model)

    @property
    def instance_kind(self) -> str:
        return "KIND_GPU" if self.target == "gpu" else "KIND_CPU"

    def as_dict(self) -> dict:
        return {**asdict(self), "network_file": self.network_file}


def decide(*, target: str = "cpu", runtime: str = "auto", layout: str = "auto") -> ServingPlan:
    """The serving plan for ``target`` and the ``--runtime`` / ``--layout`` flags (``auto``: the rule)."""
    if target not in TARGETS:
        raise UserInputError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    if runtime != "auto" and runtime not in RUNTIMES:
        raise UserInputError(f"--runtime must be auto or one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if layout != "auto" and layout not in LAYOUTS:
        raise UserInputError(f"--layout must be auto or one of {', '.join(LAYOUTS)}, not {layout!r}")
    if target == "cpu":
        runtime = DEFAULT_CPU_RUNTIME if runtime == "auto" else runtime
        if runtime == "tensorrt":
            raise UserInputError("TensorRT runs on NVIDIA GPUs only: use --target gpu, or --runtime openvino")
        return ServingPlan(target=target, layout="single" if layout == "auto" else layout, runtime=runtime)
    runtime = DEFAULT_GPU_RUNTIME if runtime == "auto" else runtime
    if runtime == "openvino":
        raise UserInputError(
            "--target gpu serves on NVIDIA GPUs through TensorRT: use --runtime tensorrt (an engine built "
            "here) or --runtime onnxruntime (ONNX Runtime's TensorRT accelerator), or --target cpu"
        )
    if layout == "single":
        raise UserInputError(
            "the single layout runs the network on CPUs; --target gpu serves through --layout ensemble"
        )
    return ServingPlan(
        target=target,
        layout="ensemble",
        runtime=runtime,
        accelerator="tensorrt" if runtime == "onnxruntime" else None,
    )


@dataclass(frozen=True, kw_only=True)
class NetworkArtifact:
    """What the engine stage hands to the writer: the files the runtime serves, and how they were made."""

    plan: ServingPlan
    files: tuple[Path, ...]  # the network file first (model.xml then model.bin; model.onnx; model.plan)
    precision: str
    details: dict | None = None  # engine facts for the build report (TensorRT profile and flags)

    @property
    def path(self) -> Path:
        return self.files[0]
