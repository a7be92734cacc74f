"""Triton python-backend model NAME (the ``single`` layout): encoded images in, top-k classes out.

Copied by ``cvserve build`` as ``NAME/<version>/model.py`` with ``cvserve_decoding.py`` (decoding and
answering, shared with the ensemble's decoder), ``cvserve_preprocessing.py`` (the builder's
preprocessing), ``cvserve_runners.py`` (how the builder runs networks), ``preprocess.json`` (the spec
the build verified) and the served network (``model.xml`` for OpenVINO, ``model.onnx`` for ONNX
Runtime), whose graph takes uint8 pixels and does the normalisation, softmax and top-k itself.

Per batch that Triton's dynamic batcher forms: the images of every request are decoded and cropped on
a thread pool, the crops of the good requests run through the network in one call, and each request
gets its rows back; a request with an image that cannot be decoded fails alone with INVALID_ARGUMENT.

Threads: ``cvserve_runners.thread_budget`` splits the cores this process may use between the
instances of this model (intra-op threads x instances <= cores), unless the config's
``intra_op_threads`` / ``decode_threads`` parameters say otherwise.

Precision: the network's float layers compute in the config's ``inference_precision`` (f32 or bf16,
the build's decision), never in the runtime's per-CPU default; a bf16 network on a CPU without bf16
units fails to load with a message naming the feature (``cvserve_hardware``). What the compiled
network actually runs in is read back and exported as Prometheus metrics on Triton's metrics port:
``cvserve_network_info{model, version, runtime, precision} 1`` and
``cvserve_network_layers{model, version, precision}`` (compute layers per precision, e.g. ``i8``).
"""

from cvserve_decoding import DecodingModel


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)
        self.open_network(args)

    def execute(self, requests):
        batch, outcomes = self.decode(requests)
        outputs = {}
        if batch is not None:
            try:
                outputs = self.runner.run(batch)  # the served graph's CLASS_INDEX and SCORE
            except Exception as exc:  # reported on each request; the model keeps serving
                return self.failed(requests, exc)
        return self.respond(outcomes, outputs)
