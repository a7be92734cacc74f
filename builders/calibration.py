"""Calibration and held-out data: image folders -> network input batches, through the served preprocessing.

Every image reaches the network through :func:`cvserve.builders.preprocessing.preprocess_batch`, the
code the preprocess model runs in Triton, so the ranges calibrated and the accuracy measured here are
those of what is served.

When no folders are given, :func:`sample_sets` makes real data from the photos bundled with
scikit-image, scikit-learn and matplotlib, extended by deterministic crops, flips and rescales. The
source photos are split between calibration and validation, so the two sets share no photo at all.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve.builders.preprocessing import PreprocessSpec, pixels, preprocess_batch
from cvserve.defaults import IMAGE_SUFFIXES
from cvserve.errors import NotFoundError, UserInputError

# Photos that ship inside packages (package, file). Colour and grey, natural and man-made scenes.
SOURCE_PHOTOS = (
    ("skimage", "astronaut.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "motorcycle_right.png"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "retina.jpg"),
    ("skimage", "ihc.png"),
    ("skimage", "brick.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "camera.png"),
    ("skimage", "coins.png"),
    ("skimage", "moon.png"),
    ("skimage", "page.png"),
    ("skimage", "clock_motion.png"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
    ("matplotlib", "Minduka_Present_Blue_Pack.png"),
)
_MAX_SIDE = 320  # augmented images are stored no larger: the served preprocessing resizes to 256 anyway


@dataclass(frozen=True, kw_only=True)
class ImageSet:
    """Encoded images with names, in a fixed order."""

    names: tuple[str, ...]
    data: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.names)

    def head(self, n: int) -> ImageSet:
        return ImageSet(names=self.names[:n], data=self.data[:n])

    def tensors(self, spec: PreprocessSpec) -> np.ndarray:
        """The network input batch, exactly as the preprocess model computes it."""
        return preprocess_batch(list(self.data), spec)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_folder(folder: Path, limit: int | None = None) -> ImageSet:
    """The first ``limit`` images of ``folder`` (sorted), named by their path relative to it."""
    files = list_images(folder)[:limit]
    return ImageSet(
        names=tuple(p.relative_to(folder).as_posix() for p in files),
        data=tuple(p.read_bytes() for p in files),
    )


def check_disjoint(calibration: ImageSet, validation: ImageSet, spec: PreprocessSpec) -> None:
    """Raise :class:`UserInputError` if an image is in both sets (same pixels after preprocessing)."""
    seen = {_digest(d, spec): n for n, d in zip(calibration.names, calibration.data, strict=True)}
    both = [
        f"{seen[h]} = {n}"
        for n, d in zip(validation.names, validation.data, strict=True)
        if (h := _digest(d, spec)) in seen
    ]
    if both:
        raise UserInputError(
            f"{len(both)} validation image(s) are also calibration images ({', '.join(both[:3])}"
            f"{', ...' if len(both) > 3 else ''}): the accuracy gate needs held-out images, remove them"
        )


def _digest(data: bytes, spec: PreprocessSpec) -> str:
    return hashlib.sha256(pixels(data, spec).tobytes()).hexdigest()


# -- the calibration data reader ---------------------------------------------------------------------
class BatchReader:
    """ONNX Runtime ``CalibrationDataReader`` over a preprocessed batch, ``batch_size`` images per feed.

    Implements the reader protocol (``get_next``, ``rewind``, ``set_range``) that ONNX Runtime's
    calibrators call; a chunk of the data can be selected with ``set_range`` to bound memory.
    """

    def __init__(self, tensors: np.ndarray, input_name: str, batch_size: int = 8) -> None:
        self.tensors, self.input_name, self.batch_size = tensors, input_name, max(1, batch_size)
        self.start, self.end = 0, len(tensors)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.tensors)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.tensors))
        self._it = None

    def rewind(self) -> None:
        self._it = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.start, self.end, self.batch_size):
            yield {self.input_name: self.tensors[i : min(i + self.batch_size, self.end)]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def __iter__(self):
        self.rewind()
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


# -- real sample data, deterministically augmented ----------------------------------------------------
def source_photos() -> dict[str, Path]:
    """Name -> path of the package-bundled photos that are installed here."""
    roots = {}
    for package, attr in (("skimage", "data"), ("sklearn", "datasets"), ("matplotlib", None)):
        try:
            module = __import__(f"{package}.{attr}" if attr else package, fromlist=["_"])
        except ImportError:
            continue
        root = Path(module.__file__).parent
        if package == "sklearn":
            root = root / "images"
        elif package == "matplotlib":
            root = Path(module.get_data_path()) / "sample_data"
        roots[package] = root
    found = {}
    for package, filename in SOURCE_PHOTOS:
        path = roots.get(package, Path("/nonexistent")) / filename
        if path.is_file():
            found[Path(filename).stem] = path
    if not found:
        raise NotFoundError(
            "no bundled sample photos found: pip install scikit-image scikit-learn matplotlib, "
            "or pass --calibration and --validation folders"
        )
    return found


def split_sources(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Alternate photos between (calibration, validation): the two sets never share a photo."""
    return list(names[0::2]), list(names[1::2])


def augment(data: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` deterministic variants of one photo: random crop, flip and rescale, as PNG bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.open(io.BytesIO(data))
    img.load()
    img = img.convert("RGB")
    out = []
    for _ in range(count):
        w, h = img.size
        area = rng.uniform(0.25, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, max(32, round(np.sqrt(area * aspect)))))
        ch = int(min(h, max(32, round(np.sqrt(area / aspect)))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.6, 1.4) * min(1.0, _MAX_SIDE / max(cw, ch))
        size = (max(16, round(cw * scale)), max(16, round(ch * scale)))
        crop = crop.resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        crop.save(buf, format="PNG", compress_level=1)  # fast; lossless all the same
        out.append(buf.getvalue())
    return out


def sample_set(sources: Sequence[str], count: int, seed: int) -> ImageSet:
    """``count`` augmented images spread evenly over the named source photos (see :func:`source_photos`)."""
    photos = source_photos()
    missing = [s for s in sources if s not in photos]
    if missing:
        raise NotFoundError(f"sample photos {missing} are not installed")
    names, data = [], []
    per, extra = divmod(count, len(sources))
    for i, source in enumerate(sources):
        n = per + (1 if i < extra else 0)
        blob = photos[source].read_bytes()
        for j, variant in enumerate(augment(blob, n, seed=seed * 1000 + i)):
            names.append(f"{source}_{j:03d}.png")
            data.append(variant)
    return ImageSet(names=tuple(names), data=tuple(data))


def sample_sets(calibration: int, validation: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(calibration, validation) sets of real augmented photos, made from disjoint source photos."""
    cal_sources, val_sources = split_sources(sorted(source_photos()))
    return sample_set(cal_sources, calibration, seed + 1), sample_set(val_sources, validation, seed + 2)


def write_set(images: ImageSet, folder: Path) -> Path:
    """Write an :class:`ImageSet` as files (for ``--calibration`` / ``--validation``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in zip(images.names, images.data, strict=True):
        (folder / name).write_bytes(blob)
    return folder
