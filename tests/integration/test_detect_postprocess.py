"""NAME_postprocess, the python step after a detector's ensemble network, on the real embedded Triton.

The whole detector ensemble needs a native backend (NGC); its last step is python, so it runs here alone:
the NMS rows a network would answer (input pixels) and each image's PLACEMENT in, the wire rows out, as
``detection.unpack_nms`` computes them (odd aspect ratios, a count of zero, K rows).
"""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from cvserve.builders import detection as det
from cvserve.builders import tasks
from cvserve.builders import triton_config as tc
from cvserve.builders.preprocessing import Placement, PreprocessSpec
from cvserve.builders.runtime import decide
from cvserve.client import contract

K = 4
SPEC = PreprocessSpec(input_size=(64, 64), resize_shorter=0, fit="letterbox")


def _repository(root):
    nms = det.NmsSettings(max_detections=K)
    plan = tasks.get("detect", nms=nms).serving_plan(decide(layout="ensemble", runtime="onnxruntime"))
    shape = tc.PipelineShape(pixels_shape=(64, 64, 3), top_k=K, labels=["a", "b"], task="detect", nms=nms)
    cfg = tc.postprocess_config("scenes", plan, shape, tc.VersionPolicy())
    cfg.max_batch_size = 4
    folder = root / cfg.name / "1"
    folder.mkdir(parents=True)
    (root / cfg.name / "config.pbtxt").write_text(tc.to_text(cfg))
    for package, name, copied in (
        ("cvserve.model_repository", "postprocess.py", "model.py"),
        ("cvserve.builders", "detection.py", "cvserve_detection.py"),
        ("cvserve.builders", "preprocessing.py", "cvserve_preprocessing.py"),
        ("cvserve.client", "contract.py", "cvserve_contract.py"),
    ):
        (folder / copied).write_bytes((importlib.resources.files(package) / name).read_bytes())
    return cfg.name


@pytest.mark.timeout(300)
def test_postprocess_step_maps_nms_rows_to_original_pixels(tmp_path):
    import tritonclient.grpc as grpcclient

    from cvserve.server import ServerSettings, TritonServer

    model = _repository(tmp_path / "models")
    placements = [Placement.of((1333, 411), SPEC), Placement.of((57, 301), SPEC)]
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 30, (2, K, 2)).astype(np.float32)
    inputs = {
        contract.NUM_DETECTIONS: np.int32([[3], [0]]),
        contract.DETECTION_BOXES: np.concatenate([corners, corners + 20], axis=2),
        contract.DETECTION_SCORES: np.float32([[0.9, 0.8, 0.5, 0], [0, 0, 0, 0]]),
        contract.DETECTION_CLASSES: np.int32([[1, 0, 1, 0], [0, 0, 0, 0]]),
        contract.PLACEMENT: np.stack([p.as_row() for p in placements]),
    }
    want = det.unpack_nms(*(inputs[n] for n in contract.NMS_OUTPUTS), placements, K)
    settings = ServerSettings.embedded(tmp_path / "models", exit_timeout_s=5)
    with TritonServer(settings) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensors = []
        for name, array in inputs.items():
            dtype = "INT32" if array.dtype == np.int32 else "FP32"
            tensors.append(grpcclient.InferInput(name, list(array.shape), dtype))
            tensors[-1].set_data_from_numpy(array)
        result = client.infer(model, tensors)
    assert result.as_numpy(contract.COUNT).tolist() == [[3], [0]]
    assert result.as_numpy(contract.CLASSES).dtype == np.int64
    np.testing.assert_array_equal(result.as_numpy(contract.CLASSES), want.classes)
    np.testing.assert_allclose(result.as_numpy(contract.BOXES), want.boxes, atol=1e-4)
    np.testing.assert_allclose(result.as_numpy(contract.SCORES), want.scores)
    boxes = result.as_numpy(contract.BOXES)[0, :3]
    assert boxes[:, 2].max() <= 1333 and boxes[:, 3].max() <= 411 and boxes.min() >= 0  # clipped
