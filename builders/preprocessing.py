"""Image preprocessing: the single source of truth for serving, verification and calibration.

A :class:`PreprocessSpec` is fixed once at build time and written next to the served models as
``preprocess.json``. This very file is copied into the preprocess model's version directory, so the
python backend runs the same code that the builder used to verify and calibrate the network.

It depends on numpy and Pillow only (both present in the serving environment), never on cvserve.

Throughput notes: JPEGs are decoded at reduced size with ``Image.draft`` (libjpeg DCT scaling, up to
8x fewer pixels decoded) when the image is much larger than needed; normalisation and layout changes
are one vectorised numpy operation over the whole batch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPEC_FILENAME = "preprocess.json"
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (empty, truncated, corrupt or another format)."""


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How an encoded image becomes a network input tensor.

    Defaults are torchvision's ImageNet evaluation transform: resize the shorter side to 256,
    centre-crop 224x224, scale to [0, 1], normalise with ImageNet mean/std, RGB, NCHW, float32.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width) of the network input
    resize_shorter: int = 256  # shorter side after resizing, before the centre crop; 0: resize to input_size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per channel, in the [0, 1] scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color: str = "RGB"  # channel order the network expects: RGB or BGR
    layout: str = "NCHW"  # NCHW or NHWC
    interpolation: str = "bilinear"
    fast_jpeg_decode: bool = True  # decode large JPEGs at reduced size (draft mode)
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if self.resize_shorter and self.resize_shorter < min(h, w):
            raise ValueError(
                f"resize_shorter ({self.resize_shorter}) is smaller than the crop {self.input_size}"
            )
        if self.color not in ("RGB", "BGR"):
            raise ValueError(f"color must be RGB or BGR, not {self.color!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, not {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")

    # -- (de)serialisation --------------------------------------------------------------------------
    @property
    def tensor_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image (without the batch dimension)."""
        h, w = self.input_size
        return (3, h, w) if self.layout == "NCHW" else (h, w, 3)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        data = json.loads(text)
        for key in ("input_size", "mean", "std"):
            data[key] = tuple(data[key])
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SPEC_FILENAME
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> PreprocessSpec:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        return cls.from_json(path.read_text())


# -- decoding -----------------------------------------------------------------------------------
def _pil():
    from PIL import Image

    return Image


def decode(data: bytes, spec: PreprocessSpec):
    """Decode encoded image bytes into an RGB PIL image, at reduced size for large JPEGs."""
    Image = _pil()
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        if spec.fast_jpeg_decode and img.format == "JPEG":
            target = _resized_size(img.size, spec)
            img.draft("RGB", target)  # DCT scaling: never smaller than target
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes): {exc}") from None


def _resized_size(size: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    w, h = size
    if not spec.resize_shorter:
        return spec.input_size[1], spec.input_size[0]
    scale = spec.resize_shorter / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_crop(img, spec: PreprocessSpec) -> np.ndarray:
    """Resize (shorter side) and centre-crop a PIL image; return HWC uint8 RGB."""
    Image = _pil()
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        spec.interpolation
    ]
    new_w, new_h = _resized_size(img.size, spec)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample)
    ch, cw = spec.input_size
    left, top = round((new_w - cw) / 2.0), round((new_h - ch) / 2.0)
    if left < 0 or top < 0:  # can only happen with resize_shorter=0 and odd aspect; pad by resizing
        img = img.resize((max(cw, new_w), max(ch, new_h)), resample)
        left, top = max(left, 0), max(top, 0)
    img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


def normalize_batch(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """NHWC uint8 RGB batch -> the network's float32 input (one vectorised pass)."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    if spec.color == "BGR":
        pixels, mean, inv_std = pixels[..., ::-1], mean[::-1], inv_std[::-1]
    out = (pixels.astype(np.float32) - mean) * inv_std
    if spec.layout == "NCHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def pixels(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """Encoded bytes -> HWC uint8 crop (decode + resize + crop)."""
    return resize_crop(decode(data, spec), spec)


def preprocess_batch(images: Sequence[bytes], spec: PreprocessSpec) -> np.ndarray:
    """Encoded images -> float32 network input batch. Raises :class:`ImageDecodeError` naming the image."""
    crops = []
    for i, data in enumerate(images):
        try:
            crops.append(pixels(data, spec))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {i + 1} of {len(images)}: {exc}") from None
    if not crops:
        return np.zeros((0, *spec.tensor_shape), dtype=np.float32)
    return normalize_batch(np.stack(crops), spec)


def preprocess_files(paths: Iterable[str | Path], spec: PreprocessSpec) -> np.ndarray:
    """Convenience for builders: image files -> network input batch."""
    return preprocess_batch([Path(p).read_bytes() for p in paths], spec)
