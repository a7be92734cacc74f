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

What the model sees and answers (``cvserve_signals``: classes, confidence, input statistics, the
feature summary, rejections by reason) is counted per batch in the process and added to Triton's
metrics at most every ``monitor_flush_s`` seconds (config parameter; 5 s by default): a metric update
is a message to the Triton process, too dear to send per image (docs/monitoring.md). The config
parameter ``monitor_signals: off`` turns the counting off (the A/B of python -m cvserve.monitor.bench_cost).
"""

import json
import time

import triton_python_backend_utils as pb_utils
from cvserve_contract import FEATURES, LABELS_PARAMETER
from cvserve_decoding import DecodingModel
from cvserve_signals import FLUSH_S, Counts, SignalExport, observe


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)
        warm = self.open_network(args)  # its outputs tell whether the graph has FEATURES
        self.num_classes = len(json.loads(self.params.get(LABELS_PARAMETER, "[]"))) or 1
        dims = warm[FEATURES].shape[-1] if FEATURES in warm else 0  # graphs built before it: none
        self.signals = Counts(num_classes=self.num_classes, feature_dims=dims)
        self.export = None  # monitor_signals: off (the A/B of python -m cvserve.monitor.bench_cost)
        if self.params.get("monitor_signals", "on") != "off":
            version = str(args["model_version"])
            self.export = SignalExport(_TritonMetrics(), args["model_name"], version, self.signals)
        self.flush_s = float(self.params.get("monitor_flush_s") or FLUSH_S)
        self.flushed = time.monotonic()

    def execute(self, requests):
        sizes = []
        batch, outcomes = self.decode(requests, sizes)
        outputs = {}
        if batch is not None:
            try:
                outputs = self.runner.run(batch)  # the served graph's CLASS_INDEX, SCORE (and FEATURES)
            except Exception as exc:  # reported on each request; the model keeps serving
                return self.failed(requests, exc)
            if self.export is not None:
                self.signals.add(observe(batch, sizes, outputs, self.num_classes))
        if self.export is not None:
            for outcome in outcomes:
                if isinstance(outcome, str):
                    self.signals.reject(getattr(outcome, "reason", "corrupt"))
            if time.monotonic() - self.flushed >= self.flush_s:
                self.export.flush()
                self.flushed = time.monotonic()
        return self.respond(outcomes, outputs)

    def finalize(self):
        if self.export is not None:
            self.export.flush()
        super().finalize()


class _TritonMetrics:
    """Triton's custom-metrics API in the shape :class:`cvserve_signals.SignalExport` asks for."""

    def family(self, name, description, counter):
        kind = pb_utils.MetricFamily.COUNTER if counter else pb_utils.MetricFamily.GAUGE
        return pb_utils.MetricFamily(name=name, description=description, kind=kind)
