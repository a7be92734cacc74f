"""Triton python-backend model NAME for MTCNN face detection (``cvserve.builders.mtcnn_build``).

Copied as ``NAME/<version>/model.py`` beside ``cvserve_mtcnn.py`` (the cascade), the three OpenVINO
networks (``pnet.xml``, ``rnet.xml``, ``onet.xml``), ``cvserve_detection.py`` (the fixed-K rows),
``cvserve_preprocessing.py`` (the decode and its limits), ``cvserve_runners.py`` and the contract.

Two layouts (``mtcnn_build --layout``): ``single`` runs the three networks in-process; ``bls`` calls them
as the Triton models named by the config's ``cascade_models`` parameter (NAME_pnet, NAME_rnet,
NAME_onet, ``model_repository/mtcnn_network.py``) through BLS: one call per pyramid scale, one for all
of an image's R-Net crops and one for its O-Net crops (split into the networks' max batch). The cascade
(decode, pyramid, NMS between the stages, crops) runs here in both.

Per request: each image is decoded whole (no resize: the cascade builds its own pyramid), the cascade
runs the three networks (image pyramid -> P-Net -> NMS -> R-Net -> NMS -> O-Net), and the faces are
answered in the detection contract: BOXES, SCORES, CLASSES (0: face), COUNT, LANDMARKS [K, 5, 2], all
in the image's pixels. A request with an image that cannot be decoded fails alone.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from cvserve_contract import BOXES, CLASSES, COUNT, LANDMARKS, SCORES
from cvserve_decoding import DecodingModel
from cvserve_detection import Candidates, pack
from cvserve_mtcnn import detect
from cvserve_preprocessing import Placement, decode, decode_each
from cvserve_runners import open_runner


def _whole(data, spec):
    return np.asarray(decode(data, spec))


def _bls(model, input_name, output_name, max_batch):
    """A network as a callable that sends its batch to the Triton model ``model`` (BLS)."""

    def run(x):
        parts = []
        for start in range(0, len(x), max_batch):
            request = pb_utils.InferenceRequest(
                model_name=model,
                requested_output_names=[output_name],
                inputs=[pb_utils.Tensor(input_name, np.ascontiguousarray(x[start : start + max_batch]))],
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"{model}: {response.error().message()}")
            parts.append(pb_utils.get_output_tensor_by_name(response, output_name).as_numpy())
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return run


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)
        self.k = int(self.params["nms_max_detections"])
        if self.params.get("cascade_models"):  # the bls layout: the networks are Triton models
            cascade = json.loads(self.params["cascade_models"])
            self.networks = [
                _bls(m, cascade["input"], cascade["output"], int(cascade["max_batch_size"]))
                for m in cascade["models"]
            ]
            return
        runners = [
            open_runner(os.path.join(self.version_dir, f"{n}.xml"), "openvino", threads=self.budget.intra_op)
            for n in ("pnet", "rnet", "onet")
        ]
        self.networks = [lambda x, r=r: next(iter(r.run(np.ascontiguousarray(x)).values())) for r in runners]

    def execute(self, requests):
        images, mapper = self._images(requests)
        decoded, outcomes = decode_each(images, self.spec, mapper, _whole)
        outputs = {}
        if decoded:
            try:
                faces = [detect(image, *self.networks) for image in decoded]
            except Exception as exc:  # reported on each request; the model keeps serving
                return self.failed(requests, exc)
            kept = [
                Candidates(f.boxes, f.scores, np.zeros(len(f.scores), np.int64), f.landmarks) for f in faces
            ]
            sizes = [(im.shape[1], im.shape[0]) for im in decoded]
            found = pack(kept, [Placement(size=s, resized=s, offset=(0, 0)) for s in sizes], self.k, points=5)
            outputs = {
                BOXES: found.boxes, SCORES: found.scores, CLASSES: found.classes, COUNT: found.count,
                LANDMARKS: found.landmarks,
            }  # fmt: skip
        return self.respond(outcomes, outputs)
