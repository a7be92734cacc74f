"""Triton python-backend model NAME for ``--task detect`` (single layout): encoded images in, boxes out.

Copied by ``cvserve build --task detect`` as ``NAME/<version>/model.py`` with the files the classifier
has beside it (``cvserve_decoding.py``, ``cvserve_preprocessing.py``, ``cvserve_runners.py``,
``cvserve_hardware.py``, ``preprocess.json``, the served network) and ``cvserve_detection.py`` (the
heads, NMS and the wire rows) and ``cvserve_contract.py`` (the output names).

Per execution: every image is decoded and letterboxed on the thread pool (Pillow releases the GIL),
the good requests' inputs run through the network in one call (uint8 pixels in, the raw head out,
normalisation in the graph), then each image's raw head is decoded, thresholded and NMSed class by
class (``cvserve_detection.postprocess``, the config's ``nms_*`` parameters), its boxes mapped back to
its original pixels and padded to the fixed K rows of the wire contract: BOXES [K, 4], SCORES [K],
CLASSES [K], COUNT [1] (docs/detection.md). A request with an image that cannot be decoded fails alone
with INVALID_ARGUMENT; an image without detections gets COUNT 0.
"""

import numpy as np
from cvserve_contract import BOXES, CLASSES, COUNT, SCORES
from cvserve_decoding import DecodingModel
from cvserve_detection import NmsSettings, postprocess


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)
        self.open_network(args)
        self.nms = NmsSettings.from_parameters(self.params)

    def execute(self, requests):
        placed, outcomes = self.decode_placed(requests)
        outputs = {}
        if placed:
            inputs, placements = zip(*placed, strict=True)
            try:
                raw = self.runner.run(np.stack(inputs))["RAW"]
                found = postprocess(raw, placements, self.nms)
            except Exception as exc:  # reported on each request; the model keeps serving
                return self.failed(requests, exc)
            outputs = {BOXES: found.boxes, SCORES: found.scores, CLASSES: found.classes, COUNT: found.count}
        return self.respond(outcomes, outputs)
