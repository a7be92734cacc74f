"""Triton python-backend model NAME_postprocess (a detector's ``ensemble`` layout): NMS rows -> the wire.

Copied by ``cvserve build --task detect --layout ensemble`` as ``NAME_postprocess/<version>/model.py``
with ``cvserve_detection.py``, ``cvserve_preprocessing.py`` and ``cvserve_contract.py``.

NAME_network's graph ends in NMS (``cvserve.builders.detection_graph``: TensorRT's EfficientNMS plugin or
ONNX's NonMaxSuppression) and answers ``num_detections``, ``detection_boxes`` (input pixels),
``detection_scores`` and ``detection_classes``; NAME_preprocess answers each image's ``PLACEMENT`` in its
letterboxed input. This step maps the boxes back to the original pixels, clips them to the image and
answers the wire contract: BOXES [K, 4], SCORES [K], CLASSES INT64 [K], COUNT [1]
(``cvserve_detection.unpack_nms``, the same packing as the single layout's model).
"""

import json

import triton_python_backend_utils as pb_utils
from cvserve_contract import (
    BOXES,
    CLASSES,
    COUNT,
    DETECTION_BOXES,
    DETECTION_CLASSES,
    DETECTION_SCORES,
    NUM_DETECTIONS,
    PLACEMENT,
    SCORES,
)
from cvserve_detection import NmsSettings, unpack_nms
from cvserve_preprocessing import Placement


def wire_rows(inputs, k):
    """Input name -> batch array (the NMS outputs and PLACEMENT) -> output name -> the wire rows."""
    placements = [Placement.from_row(row) for row in inputs[PLACEMENT]]
    found = unpack_nms(
        inputs[NUM_DETECTIONS],
        inputs[DETECTION_BOXES],
        inputs[DETECTION_SCORES],
        inputs[DETECTION_CLASSES],
        placements,
        k,
    )
    return {BOXES: found.boxes, SCORES: found.scores, CLASSES: found.classes, COUNT: found.count}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: v["string_value"] for key, v in config.get("parameters", {}).items()}
        self.k = NmsSettings.from_parameters(params).max_detections

    def execute(self, requests):
        names = (NUM_DETECTIONS, DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES, PLACEMENT)
        responses = []
        for request in requests:
            try:
                inputs = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in names}
                outputs = wire_rows(inputs, self.k)
            except Exception as exc:  # reported on this request; the model keeps serving
                error = pb_utils.TritonError(f"postprocessing failed: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
