"""Triton python-backend model NAME_preprocess (the ``ensemble`` layout): encoded images -> uint8 pixels.

Copied by ``cvserve build`` as ``NAME_preprocess/<version>/model.py`` with ``cvserve_contract.py`` (the
wire names), ``cvserve_decoding.py`` (decoding and answering, shared with the single layout's model),
``cvserve_preprocessing.py``, ``cvserve_runners.py`` (the thread budget) and ``preprocess.json``. The crops (uint8, [H, W, 3], RGB)
go to NAME_network, a native Triton backend whose graph normalises them.

The model does not batch (its config has no dynamic batching): each request is decoded alone, so a
request with malformed framing or an image that cannot be decoded fails alone with INVALID_ARGUMENT.
"""

from cvserve_contract import PIXELS
from cvserve_decoding import DecodingModel


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)

    def execute(self, requests):
        batch, outcomes = self.decode(requests)
        return self.respond(outcomes, {PIXELS: batch} if batch is not None else {})
