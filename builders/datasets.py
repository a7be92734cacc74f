"""Small labelled image tasks made from data that ships in packages, with a classifier trained on them.

Used by the quantization benchmark (:mod:`cvserve.builders.bench_quant`) and the tests to check INT8
builds against ground truth:

* ``digits``: scikit-learn's 1797 handwritten digits (8x8 grey, 10 classes);
* ``lfw``: scikit-image's ``lfw_subset`` (100 faces and 100 non-faces from Labeled Faces in the Wild,
  25x25 grey, 2 classes).

Each maker writes the images as PNG files (they reach the network through the served preprocessing, for
training as well as for calibration and the gate), splits them into disjoint training, calibration and
held-out sets, trains a small CNN on the training set (deterministic, CPU, seconds) and saves it as
TorchScript. Needs torch and scikit-learn / scikit-image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders.preprocessing import PreprocessSpec, preprocess_batch

DIGITS_SPEC = PreprocessSpec(input_size=(8, 8), resize_shorter=0, mean=(0.5,) * 3, std=(0.5,) * 3)
LFW_SPEC = PreprocessSpec(input_size=(25, 25), resize_shorter=0, mean=(0.5,) * 3, std=(0.25,) * 3)


@dataclass(frozen=True, kw_only=True)
class LabelledTask:
    """A trained classifier with its disjoint calibration and labelled held-out folders."""

    name: str
    checkpoint: Path  # TorchScript
    spec: PreprocessSpec
    class_names: tuple[str, ...]
    calibration: Path
    validation: Path
    labels: Path  # IMAGE<TAB>CLASS_INDEX per held-out image
    held_out: int


def small_cnn(num_classes: int):
    """Three 3x3 convolutions (16, 32, 64 channels, ReLU, one 2x2 max-pool), global mean, a linear head."""
    torch = require("torch")

    class SmallCnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = torch.nn.Conv2d
            self.features = torch.nn.Sequential(
                c(3, 16, 3, padding=1), torch.nn.ReLU(), c(16, 32, 3, padding=1), torch.nn.ReLU(),
                torch.nn.MaxPool2d(2), c(32, 64, 3, padding=1), torch.nn.ReLU(),
            )  # fmt: skip
            self.classifier = torch.nn.Linear(64, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    return SmallCnn()


def _png(image: np.ndarray) -> bytes:
    """A grey image with values in [0, 1] as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _train(x: np.ndarray, y: np.ndarray, num_classes: int, epochs: int, flips: bool, out: Path) -> Path:
    torch = require("torch")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    if flips:  # mirror images keep their class (faces, scenes); doubles a small training set
        xt, yt = torch.cat([xt, xt.flip(-1)]), torch.cat([yt, yt])
    torch.manual_seed(0)
    model = small_cnn(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    torch.jit.trace(model, xt[:2]).save(str(out))
    return out


def _write(
    root: Path,
    name: str,
    encoded: Sequence[bytes],
    target: np.ndarray,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    spec: PreprocessSpec,
    class_names: Sequence[str],
    epochs: int,
    flips: bool,
) -> LabelledTask:
    train, calib, held = split
    root.mkdir(parents=True, exist_ok=True)
    x = preprocess_batch([encoded[i] for i in train], spec)
    checkpoint = _train(x, target[train], len(class_names), epochs, flips, root / f"{name}.pt")
    folders = {"calibration": root / "calibration", "validation": root / "validation"}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    for i in calib:
        (folders["calibration"] / f"{name}_{i:04d}.png").write_bytes(encoded[i])
    lines = []
    for i in held:
        (folders["validation"] / f"{name}_{i:04d}.png").write_bytes(encoded[i])
        lines.append(f"{name}_{i:04d}.png\t{int(target[i])}")
    labels = root / "validation_labels.tsv"
    labels.write_text("\n".join(lines) + "\n")
    return LabelledTask(
        name=name,
        checkpoint=checkpoint,
        spec=spec,
        class_names=tuple(class_names),
        calibration=folders["calibration"],
        validation=folders["validation"],
        labels=labels,
        held_out=len(held),
    )


def make_digits(root: Path, n_train: int = 1000, n_cal: int = 200, epochs: int = 30) -> LabelledTask:
    """scikit-learn's digits: the first ``n_train`` train, the next ``n_cal`` calibrate, the rest (597) are held out."""
    load_digits = require("sklearn.datasets", extra="dev").load_digits
    data = load_digits()
    encoded = [_png(img / 16.0) for img in data.images]
    n = len(encoded)
    split = (np.arange(n_train), np.arange(n_train, n_train + n_cal), np.arange(n_train + n_cal, n))
    names = [str(i) for i in range(10)]
    return _write(root, "digit", encoded, data.target, split, DIGITS_SPEC, names, epochs, flips=False)


def make_lfw(root: Path, n_train: int = 100, n_cal: int = 20, epochs: int = 40) -> LabelledTask:
    """scikit-image's lfw_subset (faces 0-99, non-faces 100-199), shuffled once with a fixed seed and split
    into ``n_train`` training, ``n_cal`` calibration and the remaining held-out images, half faces each."""
    skdata = require("skimage.data", extra="dev")
    images = skdata.lfw_subset()
    target = np.repeat([1, 0], 100)  # class 0: not a face, class 1: a face
    encoded = [_png(img) for img in images]
    rng = np.random.default_rng(0)
    faces, others = rng.permutation(100), 100 + rng.permutation(100)

    def take(lo: int, hi: int) -> np.ndarray:
        return np.concatenate([faces[lo:hi], others[lo:hi]])

    half_train, half_cal = n_train // 2, n_cal // 2
    split = (take(0, half_train), take(half_train, half_train + half_cal), take(half_train + half_cal, 100))
    return _write(root, "lfw", encoded, target, split, LFW_SPEC, ("not a face", "face"), epochs, flips=True)


TASKS = {"digits": make_digits, "lfw": make_lfw}
