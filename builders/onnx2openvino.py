"""Served ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), what OpenVINO serves on the CPU.

Converting at build time means serving needs only the OpenVINO runtime (no ONNX front end, no
conversion on every model load), and the same files load in the python-backend model on the
embedded server and in Triton's native openvino backend (NGC). Weights stay in their precision (no
FP16 compression): INT8 networks keep their quantization, FP32 networks stay FP32.
"""

from __future__ import annotations

from pathlib import Path

from cvserve._extras import require
from cvserve.errors import BuildError


def convert(served_onnx: Path, out_xml: Path) -> Path:
    """Write the IR of ``served_onnx`` to ``out_xml`` (and the ``.bin`` beside it); return ``out_xml``."""
    ov = require("openvino", extra="build", purpose="to convert networks for OpenVINO (--runtime openvino)")
    try:
        model = ov.convert_model(str(served_onnx))
        out_xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(out_xml), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with long traces
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"OpenVINO could not convert {served_onnx.name}: {first}") from None
    return out_xml
