"""MTCNN built into a served face detector: three networks, each exported, checked and converted.

``python -m cvserve.builders.mtcnn_build --name faces -r models``

Each of P-Net, R-Net and O-Net (:mod:`cvserve.builders.architectures.mtcnn`, facenet-pytorch's
weights) goes through the build's stages: ONNX export (checked by the ONNX checker; P-Net with dynamic
height and width, for the image pyramid; R-Net and O-Net with a dynamic batch), ONNX Runtime vs PyTorch
on real image data (the astronaut photo, resized and cropped as the cascade does), OpenVINO IR. Then
the whole served cascade (:mod:`cvserve.builders.mtcnn` with the OpenVINO networks) is checked against
the published implementation, facenet-pytorch's own ``detect_face`` with its own networks
(:mod:`cvserve.builders.mtcnn_reference`), on real photos: the same number of faces, each reference
face matched at IoU >= 0.9. The version is written atomically: ``--layout single`` (default), one
python model NAME (``model_repository/mtcnn.py``) that decodes each image, runs the cascade with the
three networks in-process and answers the detection contract with ``LANDMARKS``; ``--layout bls``,
the same NAME calling the networks as Triton models NAME_pnet, NAME_rnet, NAME_onet through BLS
(``model_repository/mtcnn_network.py``; docs/detection.md, "Layouts"). With
``--precision int8`` the three networks are quantized behind a gate on the faces found
(:mod:`cvserve.builders.mtcnn_int8`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvserve.builders import tasks
from cvserve.builders.detection import NmsSettings
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.builders.runtime import CASCADE_STAGES
from cvserve.client import contract

if TYPE_CHECKING:
    from cvserve.builders.mtcnn_int8 import Int8Gate
    from cvserve.builders.scheduling import Scheduling

NETWORKS = CASCADE_STAGES  # the files pnet.xml, ...; in the bls layout the models NAME_pnet, ...
INPUTS = {"pnet": (3, 64, 80), "rnet": (3, 24, 24), "onet": (3, 48, 48)}  # the export's example
# What each network takes and returns, without the batch (-1: any): the IR's and the bls models' shapes.
DIMS = {
    "pnet": ((3, -1, -1), (6, -1, -1)),
    "rnet": ((3, 24, 24), (6,)),
    "onet": ((3, 48, 48), (16,)),
}
TENSORS = ("input", "output")  # the networks' tensor names (ONNX, IR, the bls models' configs)
LAYOUTS = ("single", "bls")
# single: the cascade and its networks in one python model; faster here (docs/detection.md, "Layouts").
DEFAULT_LAYOUT = "single"
# The bls layout's network models: crops per call (a stage with more is sent in several calls) and
# instances. Each instance gets the cores divided among the instances as intra-op threads.
STAGE_MAX_BATCH = 256
STAGE_INSTANCES = 1
MAX_FACES = 32
SPEC = PreprocessSpec(resize_shorter=0, fast_jpeg_decode=False)  # the decode limits; the cascade resizes
MIN_IOU = 0.9
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True, kw_only=True)
class MtcnnBuild:
    name: str
    version: int
    report: dict


def _export(net, name: str, path: Path) -> Path:
    torch = __import__("torch")
    dynamic = {0: "batch", 2: "height", 3: "width"} if name == "pnet" else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.zeros((2, *INPUTS[name])),), str(path), input_names=[TENSORS[0]],
            output_names=[TENSORS[1]],
            dynamic_axes={
                TENSORS[0]: dynamic, TENSORS[1]: {0: "batch", **({2: "h", 3: "w"} if name == "pnet" else {})},
            },
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


def _real_inputs(name: str) -> np.ndarray:
    """The astronaut photo as each network sees it: whole (P-Net) or crops resized to 24/48 pixels."""
    from skimage import data

    from cvserve.builders.mtcnn import area_resize

    img = data.astronaut()
    if name == "pnet":
        return area_resize(img, 96, 96)[None]
    size = INPUTS[name][1]
    boxes = [(60, 180, 172, 268), (0, 0, 256, 256), (200, 200, 400, 400), (100, 300, 300, 500)]
    return np.stack([area_resize(img[y1:y2, x1:x2], size, size) for y1, x1, y2, x2 in boxes])


def runner_cascade(folder: Path, runtime: str = "openvino", threads: int = 0):
    """The cascade's networks as served: the files in ``folder`` in ``runtime``, float layers in f32."""
    from cvserve.builders.runners import open_runner
    from cvserve.builders.runtime import NETWORK_FILES

    suffix = Path(NETWORK_FILES[runtime]).suffix
    runners = [
        open_runner(folder / f"{n}{suffix}", runtime, threads=threads, precision="f32") for n in NETWORKS
    ]
    return tuple((lambda x, r=r: next(iter(r.run(np.ascontiguousarray(x)).values()))) for r in runners)


def compare_faces(got, reference) -> dict:
    """Same number of faces, and each reference face matched by one with IoU >= MIN_IOU."""
    from cvserve.builders.detection import box_iou

    ious = (
        box_iou(reference.boxes, got.boxes).max(axis=1)
        if len(got.boxes) and len(reference.boxes)
        else np.zeros(0)
    )
    return {
        "faces": len(got.boxes), "reference_faces": len(reference.boxes),
        "min_iou": float(ious.min()) if len(ious) else None,
        "ok": len(got.boxes) == len(reference.boxes) and bool((ious >= MIN_IOU).all()),
    }  # fmt: skip


def build(
    name: str,
    repository: Path,
    photos: dict[str, np.ndarray],
    log=print,
    *,
    precision: str = "fp32",
    int8_gate: Int8Gate | None = None,
    layout: str = DEFAULT_LAYOUT,
) -> MtcnnBuild:
    """Export, check and convert the three networks, check the cascade, optionally quantize them to
    INT8 behind its gate (:mod:`cvserve.builders.mtcnn_int8`), time it for the queue bound, write
    NAME's next version in ``layout`` (``single`` or ``bls``)."""
    from cvserve.builders import mtcnn_int8, onnx2openvino
    from cvserve.builders import mtcnn_reference as reference
    from cvserve.builders import repository as repo
    from cvserve.builders.architectures.mtcnn import mtcnn
    from cvserve.builders.mtcnn import detect
    from cvserve.builders.pipeline import _write_report
    from cvserve.builders.runtime import ENTRY
    from cvserve.builders.verify import ort_session
    from cvserve.errors import BuildError, UserInputError

    torch = __import__("torch")
    if precision not in PRECISIONS:
        raise UserInputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if layout not in LAYOUTS:
        raise UserInputError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    report: dict = {
        "task": {
            "name": "detect",
            "head": "mtcnn",
            "max_detections": MAX_FACES,
            "returns": tasks.returns_detections(MAX_FACES, landmarks=5),
        },
        "precision": precision, "networks": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cvserve-mtcnn-") as tmp:
        scratch = Path(tmp)
        for n in NETWORKS:
            net = mtcnn(n)
            onnx_file = _export(net, n, scratch / f"{n}.onnx")
            onnx = __import__("onnx")
            onnx.checker.check_model(onnx.load(str(onnx_file)), full_check=True)
            x = _real_inputs(n)
            with torch.no_grad():
                want = net(torch.from_numpy(x)).numpy()
            session = ort_session(onnx_file)
            got = session.run(None, {TENSORS[0]: x})[0]
            diff = float(np.abs(got - want).max())
            if diff > 1e-3:
                raise BuildError(f"{n}: ONNX Runtime differs from PyTorch by {diff:.2e} on real image data")
            onnx2openvino.convert(onnx_file, scratch / "openvino" / f"{n}.xml")
            report["networks"][n] = {"verify_max_abs_diff": diff, "input": list(INPUTS[n])}
            log(f"[{n}] exported, ONNX Runtime vs PyTorch max |diff| {diff:.2e}, OpenVINO IR")
        served = runner_cascade(scratch / "openvino")
        checks = {}
        for photo, image in photos.items():
            checks[photo] = compare_faces(detect(image, *served), reference.detect(image))
            if not checks[photo]["ok"]:
                raise BuildError(
                    f"the served cascade differs from facenet-pytorch's detect_face on {photo}: {checks[photo]}"
                )
        report["verification"] = {"fp32_vs_reference": checks, "reference": "facenet-pytorch detect_face"}
        log(f"[check] served OpenVINO cascade vs facenet-pytorch's detect_face: {checks}")
        networks = scratch / "openvino"
        if precision == "int8":
            networks = scratch / "int8"
            calibration = mtcnn_int8.calibration_inputs(served, mtcnn_int8.calibration_photos())
            onnx_files = {n: scratch / f"{n}.onnx" for n in NETWORKS}
            report["quantization"] = mtcnn_int8.quantize(onnx_files, calibration, networks, log)
            verdict = mtcnn_int8.gate(
                runner_cascade(networks), served, photos, int8_gate or mtcnn_int8.Int8Gate()
            )
            report["verification"]["int8_gate"] = verdict
            log(f"[gate] INT8 vs FP32 faces: {verdict['photos']}: {verdict['decision']}")
            if verdict["decision"] != "passed":
                raise BuildError(
                    f"INT8 gate failed: matched-box F1 at IoU {verdict['iou']} of INT8's faces against "
                    f"FP32's is {verdict['min_f1_found']} < {verdict['min_f1']} on some photo "
                    f"({verdict['photos']}); nothing was written to the repository"
                )
        scheduling, report["admission"] = _admission(networks, photos, log)
        configs = serving_configs(name, layout, scheduling)
        report["layout"] = layout
        report["scheduling"] = scheduling.as_dict()
        report["models"] = {role: cfg.name for role, cfg in configs.items()}
        with repo.staged_build(repository, name) as staged:
            _write(staged, layout, networks)
            for role, cfg in configs.items():
                staged.write_config(role, cfg)
            report["version"] = staged.version
            _write_report(staged.version_dir(ENTRY), {**report, "name": name})
    return MtcnnBuild(name=name, version=report["version"], report=report)


def _admission(networks: Path, photos: dict[str, np.ndarray], log) -> tuple[Scheduling, dict]:
    """NAME's settings: the build's defaults (:class:`~cvserve.builders.triton_config.Batching`), the
    queue bound from the admission rule (:mod:`cvserve.builders.admission`) with the cascade's measured
    throughput: the photos decoded from PNG and detected with ``networks`` on one instance's threads,
    for ``admission.MEASURE_S`` seconds after a warm-up, times the instances."""
    import io
    import time

    from PIL import Image

    from cvserve import hardware
    from cvserve.builders import admission
    from cvserve.builders import triton_config as tc
    from cvserve.builders.mtcnn import detect
    from cvserve.builders.preprocessing import decode
    from cvserve.builders.runners import thread_budget
    from cvserve.builders.runtime import LAYOUT

    batching = tc.Batching()
    budget = thread_budget(tc.NETWORK_INSTANCES)
    cascade = runner_cascade(networks, threads=budget.intra_op)
    encoded = []
    for image in photos.values():
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        encoded.append(buf.getvalue())

    def one(data: bytes) -> None:
        detect(np.asarray(decode(data, SPEC)), *cascade)

    one(encoded[0])  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < admission.MEASURE_S or done < 3:
        one(encoded[done % len(encoded)])
        done += 1
    instances, why = admission.network_instances(batching, 1000.0 * elapsed / done)
    img_s = done / elapsed * admission.lanes(instances, budget.cores, budget.intra_op)
    scheduling = admission.resolve(batching, LAYOUT["single"], img_s, instances)
    log(
        f"[admission] max_queue_size {scheduling.max_queue_size} (cascade {img_s:.1f} img/s, {budget.describe()}); "
        f"{instances} instances ({why})"
    )
    return scheduling, {
        "slo_p95_ms": batching.slo_p95_ms,
        "queue_timeout_ms": scheduling.queue_timeout_us / 1000,
        "max_queue_size": scheduling.max_queue_size,
        "source": "derived from the SLO and the measured throughput of the cascade",
        "queueing_share": admission.QUEUEING_SHARE,
        "max_batch_size": batching.max_batch_size,
        "network_instances": instances,
        "instances_source": why,
        "throughput": {
            "what": "the cascade on the build's photos, PNG decode included, in-process",
            "img_s_per_instance": round(done / elapsed, 1),
            "img_s": round(img_s, 1),
            "instances": instances,
            "threads_per_instance": budget.intra_op,
            "cpu": hardware.summary(),
        },
    }


def _stage_config(model: str, stage: str):
    """NAME_<stage> of the bls layout: float32 NCHW ``input`` -> ``output``, batched by Triton, run by
    ``model_repository/mtcnn_network.py`` on the IR. The same config with ``backend: "openvino"``
    (and ``default_model_filename``) serves the IR on Triton's native OpenVINO backend (NGC)."""
    from cvserve.builders import triton_config as tc

    mc = tc.mc
    (ins, outs), (name_in, name_out) = DIMS[stage], TENSORS
    cfg = mc.ModelConfig(
        name=model,
        backend="python",
        version_policy=tc.VersionPolicy().proto(),
        input=[mc.ModelInput(name=name_in, data_type=mc.TYPE_FP32, dims=list(ins))],
        output=[mc.ModelOutput(name=name_out, data_type=mc.TYPE_FP32, dims=list(outs))],
        dynamic_batching=mc.ModelDynamicBatching(),
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    cfg.parameters["runtime"].string_value = "openvino"
    cfg.parameters["network_file"].string_value = f"{stage}.xml"
    return cfg


def serving_configs(name: str, layout: str, scheduling: Scheduling) -> dict:
    """Role -> config of NAME in ``layout``; NAME's scheduling is ``scheduling`` (one request per
    execution, its queue bound and timeout), each network model's is its own: :data:`STAGE_MAX_BATCH`,
    :data:`STAGE_INSTANCES`, no queue policy (a request NAME admitted is never rejected half-way)."""
    from cvserve.builders import triton_config as tc
    from cvserve.builders.runtime import ENTRY, Layout, decide, model_names
    from cvserve.builders.scheduling import Scheduling

    shape = tc.PipelineShape(
        pixels_shape=(1, 1, 3), top_k=MAX_FACES, labels=["face"], task="detect",
        nms=NmsSettings(head="end2end", max_detections=MAX_FACES),
    )  # fmt: skip
    entry = tc.pipeline_configs(name, decide(), shape, scheduling, tc.VersionPolicy())[ENTRY]
    entry.output.add(name=contract.LANDMARKS, data_type=tc.mc.TYPE_FP32, dims=[MAX_FACES, 5, 2])
    if layout == "single":
        entry.parameters["network_file"].string_value = f"{NETWORKS[0]}.xml"
        return {ENTRY: entry}
    del entry.parameters["network_file"]
    names = model_names(name)
    entry.parameters["cascade_models"].string_value = json.dumps(
        {"models": [names[n] for n in NETWORKS], "input": TENSORS[0], "output": TENSORS[1],
         "max_batch_size": STAGE_MAX_BATCH}
    )  # fmt: skip
    stage = Scheduling(max_batch_size=STAGE_MAX_BATCH, network_instances=STAGE_INSTANCES)
    configs: dict = {}
    for n in NETWORKS:  # each network model scheduled as a layout of its own, without a queue policy
        alone = Layout(name="bls", roles=(n,), network=n, decode=n, queues=())
        configs.update(stage.apply(alone, {n: _stage_config(names[n], n)}))
    return {**configs, ENTRY: entry}


def _write(staged, layout: str, networks: Path) -> None:
    """The model files of ``layout`` into the staged version folders."""
    from cvserve.builders.pipeline import _copy_resource
    from cvserve.builders.runtime import ENTRY

    shared = (
        ("cvserve.builders", "runners.py", "cvserve_runners.py"),
        ("cvserve", "hardware.py", "cvserve_hardware.py"),
        ("cvserve.client", "contract.py", "cvserve_contract.py"),
    )
    folder = staged.version_dir(ENTRY)
    _copy_resource("cvserve.model_repository", "mtcnn.py", folder / "model.py")
    for package, file, copied in (
        ("cvserve.builders", "mtcnn.py", "cvserve_mtcnn.py"),
        ("cvserve.builders", "detection.py", "cvserve_detection.py"),
        ("cvserve.builders", "preprocessing.py", "cvserve_preprocessing.py"),
        ("cvserve.model_repository", "decoding.py", "cvserve_decoding.py"),
        *shared,
    ):
        _copy_resource(package, file, folder / copied)
    SPEC.save(folder)
    for n in NETWORKS:
        if layout == "bls":
            folder = staged.version_dir(n)
            _copy_resource("cvserve.model_repository", "mtcnn_network.py", folder / "model.py")
            for package, file, copied in shared:
                _copy_resource(package, file, folder / copied)
        for f in networks.glob(f"{n}.*"):
            (folder / f.name).write_bytes(f.read_bytes())


def paste_faces(background: np.ndarray, faces: list[tuple[int, int, int, int]]) -> np.ndarray:
    """``background`` (HWC RGB) with scikit-image's LFW faces pasted: (face index, x, y, side) each."""
    from PIL import Image
    from skimage import data

    scene, lfw = background.copy(), data.lfw_subset()
    for k, x, y, s in faces:
        face = np.asarray(Image.fromarray((lfw[k] * 255).astype(np.uint8)).resize((s, s)))
        scene[y : y + s, x : x + s] = face[..., None]
    return scene


def composed_scene() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The astronaut's head and three LFW faces pasted into the rocket photo (scikit-image's sample
    data); the pasted boxes x1, y1, x2, y2."""
    from skimage import data

    scene = data.rocket()[0:400, 0:600].copy()
    scene[100:320, 50:260] = data.astronaut()[0:220, 120:330]
    faces = [(0, 320, 60, 80), (1, 450, 200, 64), (2, 330, 250, 100)]
    pasted = [(50, 100, 260, 320)] + [(x, y, x + s, y + s) for _, x, y, s in faces]
    return paste_faces(scene, faces), pasted


def sample_photos() -> dict[str, np.ndarray]:
    """The photos the build checks the served cascade on: the astronaut, and the composed scene."""
    from skimage import data

    return {"astronaut": data.astronaut(), "composed": composed_scene()[0]}


def main(argv: list[str] | None = None) -> int:
    from cvserve.defaults import DEFAULT_REPOSITORY

    p = argparse.ArgumentParser(
        prog="python -m cvserve.builders.mtcnn_build", description=__doc__.split("\n")[0]
    )
    p.add_argument("--name", default="faces")
    p.add_argument("-r", "--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="int8: quantize the three networks (NNCF), gated on INT8's faces against FP32's",
    )  # fmt: skip
    p.add_argument(
        "--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
        help="single: the cascade runs its networks in-process; bls: each network is a Triton model "
        "(NAME_pnet, NAME_rnet, NAME_onet) that NAME calls through BLS",
    )  # fmt: skip
    args = p.parse_args(argv)
    result = build(args.name, args.repository, sample_photos(), precision=args.precision, layout=args.layout)
    print(json.dumps({"name": result.name, "version": result.version}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
