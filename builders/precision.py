"""Which precision a network is built and served in, decided once, before any stage runs.

Two facts make a network's precision:

* ``precision`` (``--precision``): what the build makes of the FP32 network. ``fp32`` as it is;
  ``int8`` quantized behind the accuracy gate; ``fp16`` converted (GPUs); ``bf16`` the FP32 network
  computed in bfloat16 by OpenVINO on a CPU with native bf16 (AVX512-BF16 or AMX), behind the same gate.
* ``float_parts`` (the runtime's inference precision, :data:`cvserve.builders.runners.FLOAT_PRECISIONS`):
  what the runtime computes the float layers in. ``f32`` for every build unless it asks otherwise:
  ``bf16`` builds compute in bf16, and an INT8 build may ask for bf16 float parts (``--float-parts
  bf16``), gated and measured like the rest.

Nothing is left to a runtime's per-CPU default: OpenVINO's CPU plugin would run "FP32" networks in
bf16 on CPUs with native bf16. The served model is told the precision (a config parameter of the
``single`` layout; ``HINT_BF16`` of Triton's openvino backend), and the runner reads it back from the
compiled network. Triton's openvino backend can ask for bf16 but has no parameter for f32, so the
``ensemble`` layout serves OpenVINO networks only in bf16; f32 networks go to the ``single`` layout
or to ONNX Runtime (docs/hardware.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvserve import hardware
from cvserve.builders.runners import DEFAULT_FLOAT_PRECISION, FLOAT_PRECISIONS
from cvserve.builders.runtime import ServingPlan
from cvserve.errors import UserInputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The inference precision each build precision computes its float layers in; int8 may choose.
FLOAT_PARTS = {"fp32": ("f32",), "fp16": ("f32",), "bf16": ("bf16",), "int8": FLOAT_PRECISIONS}


class MissingCpuFeature(UserInputError):
    """The build asks for a precision this CPU cannot compute natively (exit status 2)."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class NetworkPrecision:
    """The decision: the network's build precision and its runtime's float precision."""

    precision: str
    float_parts: str

    @property
    def gated(self) -> bool:
        """Whether the build changes the FP32 network's answers, so the accuracy gate runs."""
        return self.precision != "fp32" or self.float_parts != "f32"


def decide(
    precision: str,
    plan: ServingPlan,
    *,
    float_parts: str | None = None,
    machine: hardware.Cpu | None = None,
) -> NetworkPrecision:
    """The network precision for ``--precision`` / ``--float-parts`` on ``plan``, checked on this CPU.

    Raises:
        UserInputError: a combination no runtime serves, naming the fix.
        MissingCpuFeature: bf16 asked for on a CPU without native bf16 (one line, exit status 2).
    """
    if precision not in PRECISIONS:
        raise UserInputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    allowed = FLOAT_PARTS[precision]
    parts = float_parts or (allowed[0] if precision != "int8" else DEFAULT_FLOAT_PRECISION)
    if parts not in allowed:
        raise UserInputError(
            f"--float-parts {parts} does not apply to --precision {precision} (it computes in "
            f"{allowed[0]}): use --precision bf16 for a bf16 network"
        )
    if parts == "bf16":
        if plan.target != "cpu" or plan.runtime != "openvino":
            raise UserInputError(
                f"bf16 is served by OpenVINO on CPUs; --target {plan.target} --runtime {plan.runtime} "
                "cannot: use --target cpu --runtime openvino"
            )
        try:
            hardware.require_native_bf16(f"--precision {precision} with bf16 float layers", machine)
        except hardware.MissingFeatureError as exc:
            raise MissingCpuFeature(str(exc)) from None
    elif plan.layout == "ensemble" and plan.runtime == "openvino":
        raise UserInputError(
            "Triton's openvino backend cannot be told to compute in f32 (its only precision parameter "
            "is HINT_BF16), so CPUs with native bf16 would run this network in bf16: serve it with "
            "--layout single (f32 pinned), --runtime onnxruntime, or build --precision bf16"
        )
    return NetworkPrecision(precision=precision, float_parts=parts)
