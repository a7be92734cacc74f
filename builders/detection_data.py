"""A small labelled detection task made from real photos, with a single-shot detector trained on it.

Used by the tests (and the detection benchmark) to build, serve and measure a detector whose truth is
known: real objects pasted at known boxes into real backgrounds, all from scikit-image's bundled data:

* objects: class 0 ``face`` (the 100 faces of ``lfw_subset``, Labeled Faces in the Wild, 25x25 grey),
  class 1 ``cat`` (Chelsea's head from ``chelsea``), rescaled to 14-40 pixels, mirrored at random;
* backgrounds: random crops of ``grass``, ``gravel``, ``brick``, ``camera``, ``coffee`` and ``rocket``,
  at odd aspect ratios (so the letterbox and the mapping back are exercised).

Scenes are PNG files (they reach the network through the served letterbox, for training as well).
The detector is anchor-free with the YOLO export layout ``[N, 4 + C, A]`` (cx, cy, w, h in input
pixels, then class scores), one anchor per cell of a stride-8 grid, trained with centre-cell
assignment (deterministic, CPU, seconds) and saved as TorchScript. Needs torch and scikit-image.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders.preprocessing import PreprocessSpec, normalize_batch, placed

DETECT_SPEC = PreprocessSpec(
    input_size=(96, 96), resize_shorter=0, fit="letterbox", stride=8, mean=(0.5,) * 3, std=(0.25,) * 3
)
CLASS_NAMES = ("face", "cat")
STRIDE = 8


@dataclass(frozen=True, kw_only=True)
class DetectionTask:
    """A trained detector and its labelled scenes (COCO-style ground truth per split)."""

    checkpoint: Path  # TorchScript, input [N, 3, H, W] normalised, output [N, 4 + C, A]
    spec: PreprocessSpec
    class_names: tuple[str, ...]
    calibration: Path  # folder of scenes
    validation: Path  # folder of held-out scenes
    truth: Path  # COCO JSON of the held-out scenes
    labels: Path  # class names, one per line


def _objects(rng: np.random.Generator) -> list[list[np.ndarray]]:
    skdata = require("skimage.data", extra="dev")
    faces = [
        np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2) for img in skdata.lfw_subset()[:100]
    ]
    cat = skdata.chelsea()[20:190, 100:290]  # Chelsea's head
    return [faces, [cat]]


def _backgrounds() -> list[np.ndarray]:
    skdata = require("skimage.data", extra="dev")
    out = []
    for name in ("grass", "gravel", "brick", "camera", "coffee", "rocket"):
        img = getattr(skdata, name)()
        out.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img)
    return out


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def compose_scene(rng: np.random.Generator, objects, backgrounds) -> tuple[np.ndarray, list[tuple]]:
    """One scene: (HWC uint8 RGB, [(x1, y1, x2, y2, class)]) in the scene's pixels."""
    sh, sw = (int(v) for v in rng.choice([(96, 128), (128, 96), (120, 200), (144, 112), (100, 100)]))
    bg = backgrounds[rng.integers(len(backgrounds))]
    y0, x0 = rng.integers(0, bg.shape[0] - sh), rng.integers(0, bg.shape[1] - sw)
    scene = bg[y0 : y0 + sh, x0 : x0 + sw].copy()
    boxes: list[tuple] = []
    for _ in range(rng.integers(1, 3)):
        cls = int(rng.integers(len(objects)))
        src = objects[cls][rng.integers(len(objects[cls]))]
        scale = max(sw, sh) / 96  # objects of 16-40 pixels once letterboxed into the 96x96 input
        size = int(rng.integers(16, 41) * scale)
        w, h = size, max(8, int(size * src.shape[0] / src.shape[1]))
        for _try in range(10):
            x, y = int(rng.integers(0, sw - w)), int(rng.integers(0, sh - h))
            if all(x + w <= b[0] or b[2] <= x or y + h <= b[1] or b[3] <= y for b in boxes):
                break
        else:
            continue
        patch = _resize(src[:, ::-1] if rng.random() < 0.5 else src, w, h)
        scene[y : y + h, x : x + w] = patch
        boxes.append((x, y, x + w, y + h, cls))
    return scene, boxes


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def coco(files: list[str], scenes: list[tuple[np.ndarray, list[tuple]]], names=CLASS_NAMES) -> dict:
    """COCO ground truth (boxes as x, y, w, h) of the scenes named ``files``."""
    images, annotations = [], []
    for i, (name, (img, boxes)) in enumerate(zip(files, scenes, strict=True)):
        images.append({"id": i + 1, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for x1, y1, x2, y2, cls in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def tiny_detector(num_classes: int, input_size: tuple[int, int] = (96, 96)):
    """Five convolutions to a stride-8 grid; forward returns the YOLO layout [N, 4 + C, A]."""
    torch = require("torch")
    nn = torch.nn
    gh, gw = input_size[0] // STRIDE, input_size[1] // STRIDE

    class TinyDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(i: int, o: int, s: int) -> list:
                return [nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU()]

            self.body = nn.Sequential(
                *block(3, 16, 2), *block(16, 32, 2), *block(32, 64, 2), *block(64, 64, 1),
                nn.Conv2d(64, 4 + num_classes, 1),
            )  # fmt: skip
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            self.register_buffer("grid", torch.stack([xs, ys]).reshape(1, 2, -1).float())

        def forward(self, x):
            out = self.body(x).flatten(2)  # [N, 4 + C, A]
            xy = (self.grid + torch.sigmoid(out[:, :2])) * STRIDE
            wh = torch.exp(out[:, 2:4].clamp(-4, 4)) * 2 * STRIDE
            return torch.cat([xy, wh, torch.sigmoid(out[:, 4:])], dim=1)

    return TinyDetector()


def _targets(placements, scene_boxes, num_classes: int, spec: PreprocessSpec):
    """Per cell: class target (N, C, A), box target (N, 4, A) in input pixels, assigned mask (N, A)."""
    gh, gw = spec.input_size[0] // STRIDE, spec.input_size[1] // STRIDE
    n = len(scene_boxes)
    cls_t = np.zeros((n, num_classes, gh * gw), np.float32)
    box_t = np.zeros((n, 4, gh * gw), np.float32)
    mask = np.zeros((n, gh * gw), bool)
    for i, (p, boxes) in enumerate(zip(placements, scene_boxes, strict=True)):
        sx, sy = p.resized[0] / p.size[0], p.resized[1] / p.size[1]
        for x1, y1, x2, y2, c in boxes:
            bx1, by1, bx2, by2 = (
                x1 * sx + p.offset[0],
                y1 * sy + p.offset[1],
                x2 * sx + p.offset[0],
                y2 * sy + p.offset[1],
            )
            cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
            a = min(int(cy // STRIDE), gh - 1) * gw + min(int(cx // STRIDE), gw - 1)
            cls_t[i, c, a], mask[i, a] = 1.0, True
            box_t[i, :, a] = (cx, cy, bx2 - bx1, by2 - by1)
    return cls_t, box_t, mask


def train(x: np.ndarray, placements, scene_boxes, spec: PreprocessSpec, epochs: int, out: Path) -> Path:
    torch = require("torch")
    torch.manual_seed(0)
    model = tiny_detector(len(CLASS_NAMES), spec.input_size)
    cls_t, box_t, mask = (
        torch.from_numpy(a) for a in _targets(placements, scene_boxes, len(CLASS_NAMES), spec)
    )
    xt = torch.from_numpy(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(32):
            pred_all = model(xt[idx])
            scores = pred_all[:, 4:].clamp(1e-6, 1 - 1e-6)
            cls_loss = torch.nn.functional.binary_cross_entropy(scores, cls_t[idx], reduction="sum") / len(
                idx
            )
            m = mask[idx]
            pred, want = pred_all[:, :4].permute(0, 2, 1)[m], box_t[idx].permute(0, 2, 1)[m]
            box_loss = (torch.abs(pred - want) / STRIDE).sum() / len(idx)
            opt.zero_grad()
            (cls_loss + box_loss).backward()
            opt.step()
    model.eval()
    torch.jit.trace(model, xt[:2]).save(str(out))
    return out


def make_scenes(
    root: Path, n_train: int = 320, n_cal: int = 60, n_val: int = 80, epochs: int = 60
) -> DetectionTask:
    """Compose the scenes (seed 0), write calibration and held-out folders with COCO truth, train."""
    rng = np.random.default_rng(0)
    objects, backgrounds = _objects(rng), _backgrounds()
    scenes = [compose_scene(rng, objects, backgrounds) for _ in range(n_train + n_cal + n_val)]
    root.mkdir(parents=True, exist_ok=True)
    folders = {"calibration": root / "calibration", "validation": root / "validation"}
    for f in folders.values():
        f.mkdir(exist_ok=True)
    train_scenes = scenes[:n_train]
    inputs = [placed(png(img), DETECT_SPEC) for img, _ in train_scenes]
    x = normalize_batch(np.stack([p[0] for p in inputs]), DETECT_SPEC)
    checkpoint = train(
        x, [p[1] for p in inputs], [b for _, b in train_scenes], DETECT_SPEC, epochs, root / "detector.pt"
    )
    for i, (img, _) in enumerate(scenes[n_train : n_train + n_cal]):
        (folders["calibration"] / f"scene_{i:04d}.png").write_bytes(png(img))
    held = scenes[n_train + n_cal :]
    files = [f"scene_{i:04d}.png" for i in range(len(held))]
    for name, (img, _) in zip(files, held, strict=True):
        (folders["validation"] / name).write_bytes(png(img))
    truth = root / "truth.json"
    truth.write_text(json.dumps(coco(files, held)))
    labels = root / "labels.txt"
    labels.write_text("\n".join(CLASS_NAMES) + "\n")
    return DetectionTask(
        checkpoint=checkpoint, spec=DETECT_SPEC, class_names=CLASS_NAMES,
        calibration=folders["calibration"], validation=folders["validation"], truth=truth, labels=labels,
    )  # fmt: skip


def end2end_checkpoint(checkpoint: Path, out: Path, rows: int = 100) -> Path:
    """The trained detector with an end-to-end head: ``[N, rows, 6]`` (x1, y1, x2, y2 in input pixels,
    score, class), the ``rows`` anchors of highest class score, best first, without NMS (the layout of
    NMS-free exports such as YOLOv10's; this detector was not trained one-to-one, so neighbouring
    anchors can repeat an object). Saved as TorchScript, like ``checkpoint``."""
    torch = require("torch")

    class End2End(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            head = self.net(x).transpose(1, 2)  # [N, A, 4 + C]
            scores, classes = head[..., 4:].max(dim=-1)
            top, index = scores.topk(rows, dim=1)
            cx, cy, w, h = (head[..., i].gather(1, index) for i in range(4))
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
            found = classes.gather(1, index).to(boxes.dtype)
            return torch.cat([boxes, top[..., None], found[..., None]], dim=-1)

    model = End2End(torch.jit.load(str(checkpoint)).eval()).eval()
    h, w = DETECT_SPEC.input_size
    with torch.no_grad():
        torch.jit.trace(model, torch.zeros(2, 3, h, w)).save(str(out))
    return out


def torch_detections(
    checkpoint: Path, images: dict[str, bytes], spec: PreprocessSpec, nms
) -> dict[str, list]:
    """In-process reference: the TorchScript detector on the served letterbox and postprocessing
    (``nms.head`` says how to read its output).

    Returns file name -> detections (:class:`cvserve.builders.detection_metrics.Box`, original pixels).
    """
    torch = require("torch")
    from cvserve.builders.detection import postprocess
    from cvserve.builders.detection_metrics import Box

    model = torch.jit.load(str(checkpoint)).eval()
    names = list(images)
    inputs = [placed(images[n], spec) for n in names]
    with torch.no_grad():
        raw = model(torch.from_numpy(normalize_batch(np.stack([i[0] for i in inputs]), spec))).numpy()
    found = postprocess(raw, [i[1] for i in inputs], nms)
    out = {}
    for k, name in enumerate(names):
        rows = found.rows(k)
        out[name] = [
            Box(tuple(map(float, b)), float(s), int(c))
            for b, s, c in zip(rows.boxes, rows.scores, rows.classes, strict=True)
        ]
    return out
