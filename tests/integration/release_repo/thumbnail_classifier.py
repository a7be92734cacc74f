"""A tiny real Triton python-backend classifier (contract v2) whose versions differ by their files.

Input ``IMAGE`` (BYTES, dims [1]) of encoded images; outputs ``CLASS_INDEX`` (INT64 [K]) and ``SCORE``
(FP32 [K], softmax, best first); the class names are the model config's ``labels`` parameter.

The "network" is a nearest-neighbour match of 16x16 grey thumbnails (mean removed, unit norm, so a
darker copy of a photo still matches it) against the reference images in the version folder,
``references/<class index>.png``. ``behaviour.json`` in the version folder can damage a version on
purpose: images darker than ``dark_below`` (mean grey level in [0, 1]) get class ``dark_class``. The
release tests build a baseline and candidates from it without training anything.
"""

import io
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError


def thumbnail(image):
    grey = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
    flat = grey.reshape(-1)
    centred = flat - flat.mean()
    return centred / (np.linalg.norm(centred) + 1e-6), float(flat.mean())


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.k = int(pb_utils.get_output_config_by_name(config, "SCORE")["dims"][0])
        labels = config.get("parameters", {}).get("labels", {}).get("string_value")
        self.labels = json.loads(labels) if labels else None
        refs = sorted(os.listdir(os.path.join(version_dir, "references")), key=lambda n: int(n.split(".")[0]))
        feats = []
        for name in refs:
            with Image.open(os.path.join(version_dir, "references", name)) as img:
                feats.append(thumbnail(img)[0])
        self.references = np.stack(feats)
        self.classes = np.array([int(n.split(".")[0]) for n in refs])
        self.num_classes = len(self.labels) if self.labels else int(self.classes.max()) + 1
        behaviour_file = os.path.join(version_dir, "behaviour.json")
        self.behaviour = {}
        if os.path.exists(behaviour_file):
            with open(behaviour_file) as f:
                self.behaviour = json.load(f)

    def execute(self, requests):
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                logits = np.stack([self._logits(i, len(blobs), b) for i, b in enumerate(blobs)])
            except ValueError as exc:
                err = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            order = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
            outputs = [
                pb_utils.Tensor("CLASS_INDEX", order.astype(np.int64)),
                pb_utils.Tensor("SCORE", np.take_along_axis(probs, order, axis=1).astype(np.float32)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def _logits(self, i, n, blob):
        try:
            with Image.open(io.BytesIO(bytes(blob))) as img:
                feature, brightness = thumbnail(img)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"image {i + 1} of {n}: not a decodable image ({exc})") from None
        logits = np.full(self.num_classes, -10.0, dtype=np.float32)
        np.maximum.at(logits, self.classes, (self.references @ feature) * 10.0)
        if brightness < float(self.behaviour.get("dark_below", -1.0)):
            logits[:] = 0.0
            logits[int(self.behaviour["dark_class"])] = 10.0
        return logits
