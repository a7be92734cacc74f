"""Triton python-backend model NAME_preprocess (the ``ensemble`` layout): encoded images -> uint8 pixels.

Copied by ``cvserve build`` as ``NAME_preprocess/<version>/model.py`` with ``cvserve_contract.py`` (the
wire names), ``cvserve_decoding.py`` (decoding and answering, shared with the single layout's model),
``cvserve_preprocessing.py``, ``cvserve_runners.py`` (the thread budget) and ``preprocess.json``. The crops (uint8, [H, W, 3], RGB)
go to NAME_network, a native Triton backend whose graph normalises them.

A detector's decoder letterboxes, and its config declares a second output, ``PLACEMENT`` (FP32 [6],
``Placement.as_row``): where each image sits in its input, which the ensemble routes to
NAME_postprocess to map the boxes back to the original pixels (docs/detection.md).

The model does not batch (its config has no dynamic batching): each request is decoded alone, so a
request with malformed framing or an image that cannot be decoded fails alone with INVALID_ARGUMENT.
"""

import json

import numpy as np
from cvserve_contract import PIXELS, PLACEMENT
from cvserve_decoding import DecodingModel


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)
        outputs = json.loads(args["model_config"]).get("output", [])
        self.placement = any(o["name"] == PLACEMENT for o in outputs)

    def execute(self, requests):
        if not self.placement:
            batch, outcomes = self.decode(requests)
            return self.respond(outcomes, {PIXELS: batch} if batch is not None else {})
        placed, outcomes = self.decode_placed(requests)
        outputs = {}
        if placed:
            inputs, placements = zip(*placed, strict=True)
            outputs = {PIXELS: np.stack(inputs), PLACEMENT: np.stack([p.as_row() for p in placements])}
        return self.respond(outcomes, outputs)
