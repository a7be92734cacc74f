"""Image preprocessing: the single source of truth for serving, verification and calibration.

A :class:`PreprocessSpec` is fixed once at build time and written next to the served models as
``preprocess.json``. This very file is copied next to the served python-backend model (as
``cvserve_preprocessing.py``), so serving runs the same code that the builder used to verify and
calibrate the network. It depends on numpy and Pillow only, never on cvserve.

What is served: :func:`pixels` turns encoded bytes into an HWC uint8 RGB crop. Only that uint8 crop
travels to the network, whose graph casts, normalises and transposes it (cvserve.builders.served_graph).
:func:`normalize_batch` is the same arithmetic in numpy: the float reference that verification and
calibration feed to the bare network.

Hostile input fails alone and cheaply: the byte size, the format (JPEG and PNG only, by default) and
the pixel count declared in the header are checked before anything is decoded, and error messages
name the limit, never the decoder's internals.

Throughput: large JPEGs are decoded at reduced size (``Image.draft``, libjpeg DCT scaling), and only
the region that survives the centre crop is resized (``Image.resize(box=...)``): the same pixels as
resizing the whole image and then cropping, at a third less work.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPEC_FILENAME = "preprocess.json"
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
FITS = ("crop", "letterbox")  # crop: resize the shorter side and centre-crop; letterbox: fit whole, pad
ORIGINAL_SIZE = "cvserve_original_size"  # decode() records the header's (width, height) in img.info
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024  # 20 MiB per encoded image
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # 40 megapixels: a 12000x12000 PNG bomb is refused unread
DEFAULT_FORMATS = ("JPEG", "PNG")


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (empty, truncated, corrupt or another format).

    ``reason`` is one word for counting rejections (``empty``, ``bytes``, ``format``, ``pixels``,
    ``corrupt``); the message is for people.
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


class Rejection(str):
    """The message that fails one request (a ``str``), with the reason it is counted under."""

    reason: str

    def __new__(cls, message: str, reason: str) -> Rejection:
        self = super().__new__(cls, message)
        self.reason = reason
        return self


# Command-line descriptions of the spec's fields for cvserve's settings helper (cvserve.settings),
# written as plain field metadata: this module runs inside Triton and imports nothing from cvserve.
_SETTINGS = "cvserve.settings"


def _flag(default, help: str, **spec):
    return field(default=default, metadata={_SETTINGS: {"help": help, **spec}})


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use one number (224) or HxW (224x224)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use one number (224) or HxW (224x224)")
    return parts[0], parts[1]


def _floats(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give three comma-separated numbers") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give three comma-separated numbers")
    return values  # type: ignore[return-value]


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().upper() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: name at least one image format, e.g. JPEG,PNG")
    return names


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How an encoded image becomes a network input tensor.

    Defaults are torchvision's ImageNet evaluation transform: resize the shorter side to 256,
    centre-crop 224x224, scale to [0, 1], normalise with ImageNet mean/std, RGB, NCHW, float32.
    """

    input_size: tuple[int, int] = _flag(
        (224, 224), "network input HxW, or one number for a square", parser=_size, metavar="HxW"
    )
    resize_shorter: int = _flag(
        256, "shorter side before the centre crop (0: resize straight to the input size)", flag="--resize"
    )
    mean: tuple[float, float, float] = _flag(
        (0.485, 0.456, 0.406), "per-channel mean in [0, 1] (ImageNet)", parser=_floats, metavar="R,G,B"
    )
    std: tuple[float, float, float] = _flag(
        (0.229, 0.224, 0.225), "per-channel std in [0, 1] (ImageNet)", parser=_floats, metavar="R,G,B"
    )
    color: str = _flag("RGB", "channel order the network expects", choices=("RGB", "BGR"))
    input_layout: str = _flag("NCHW", "the network input's tensor layout", choices=("NCHW", "NHWC"))
    interpolation: str = _flag("bilinear", "resampling filter", choices=_INTERPOLATIONS)
    fit: str = _flag(
        "crop",
        "how the image fits the input: centre crop (classifiers) or letterbox (the whole image, aspect "
        "ratio kept, padded; detectors)",
        choices=FITS,
    )
    pad_value: int = _flag(114, "letterbox: the grey level of the padding (0-255)")
    stride: int = _flag(32, "letterbox: the network's largest stride; the input size is a multiple of it")
    fast_jpeg_decode: bool = _flag(True, "decode large JPEGs at reduced size (libjpeg DCT scaling)")
    # Input limits, checked before decoding (a request over a limit fails alone with INVALID_ARGUMENT).
    max_image_bytes: int = _flag(DEFAULT_MAX_IMAGE_BYTES, "largest encoded image served, in bytes")
    max_image_pixels: int = _flag(
        DEFAULT_MAX_IMAGE_PIXELS, "largest width x height served, read from the header before decoding"
    )
    formats: tuple[str, ...] = _flag(
        DEFAULT_FORMATS, "image formats served (Pillow names)", parser=_names, metavar="JPEG,PNG"
    )
    extra: dict[str, str] = field(default_factory=dict, metadata={_SETTINGS: {"cli": False}})

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
        if self.input_layout not in ("NCHW", "NHWC"):
            raise ValueError(f"input_layout must be NCHW or NHWC, not {self.input_layout!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, not {self.interpolation!r}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {self.fit!r}")
        if self.fit == "letterbox" and (h % self.stride or w % self.stride):
            raise ValueError(f"a letterbox input size {h}x{w} must be a multiple of the stride {self.stride}")
        if not 0 <= self.pad_value <= 255 or self.stride < 1:
            raise ValueError("pad_value must be within 0..255 and stride at least 1")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ValueError("max_image_bytes and max_image_pixels must be positive")
        if not self.formats:
            raise ValueError("formats must name at least one image format, e.g. JPEG")

    # -- (de)serialisation --------------------------------------------------------------------------
    @property
    def tensor_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image (without the batch dimension)."""
        h, w = self.input_size
        return (3, h, w) if self.input_layout == "NCHW" else (h, w, 3)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        data = json.loads(text)
        if "layout" in data:  # specs written before the field was called input_layout
            data["input_layout"] = data.pop("layout")
        for key in ("input_size", "mean", "std", "formats"):
            if key in data:
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
    """Decode encoded image bytes into an RGB PIL image, at reduced size for large JPEGs.

    Raises :class:`ImageDecodeError` for an empty or oversized input, a format outside
    ``spec.formats``, a declared size above ``spec.max_image_pixels`` (checked from the header, before
    decoding) and corrupt or truncated data.
    """
    return decode_sized(data, spec)[0]


def decode_sized(data: bytes, spec: PreprocessSpec):
    """:func:`decode`, and the image's (width, height) as its header declares it (before DCT scaling)."""
    Image = _pil()
    if not data:
        raise ImageDecodeError("empty image (0 bytes)", "empty")
    if len(data) > spec.max_image_bytes:
        raise ImageDecodeError(
            f"image of {len(data)} bytes is larger than the limit of {spec.max_image_bytes} bytes", "bytes"
        )
    allowed = " or ".join(spec.formats)
    try:
        img = Image.open(io.BytesIO(data), formats=list(spec.formats))
    except Image.DecompressionBombError:  # Pillow's own hard limit, far above ours
        raise ImageDecodeError(
            f"image is larger than the limit of {spec.max_image_pixels} pixels", "pixels"
        ) from None
    except Exception:  # UnidentifiedImageError, or a header so broken that the plugin fails
        raise ImageDecodeError(f"not a {allowed} image ({len(data)} bytes)", "format") from None
    width, height = img.size
    if width < 1 or height < 1 or width * height > spec.max_image_pixels:
        raise ImageDecodeError(
            f"image of {width}x{height} pixels is larger than the limit of {spec.max_image_pixels} pixels"
            if width * height > spec.max_image_pixels
            else f"image of {width}x{height} pixels has no pixels",
            "pixels",
        )
    try:
        if spec.fast_jpeg_decode and img.format == "JPEG":
            img.draft("RGB", _resized_size(img.size, spec))  # DCT scaling: never smaller than needed
        img.load()
        img = img.convert("RGB") if img.mode != "RGB" else img
    except Exception:  # Pillow raises many types (OSError, SyntaxError, ValueError...) with internals
        raise ImageDecodeError(
            f"truncated or corrupt {img.format} data ({len(data)} bytes)", "corrupt"
        ) from None
    img.info[ORIGINAL_SIZE] = (width, height)  # before DCT scaling: what detections map back to
    return img, (width, height)


def _resized_size(size: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    w, h = size
    if spec.fit == "letterbox":
        return Placement.of(size, spec).resized
    if not spec.resize_shorter:
        return spec.input_size[1], spec.input_size[0]
    scale = spec.resize_shorter / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_crop(img, spec: PreprocessSpec) -> np.ndarray:
    """Resize (shorter side to ``resize_shorter``) and centre-crop a PIL image; return HWC uint8 RGB.

    Only the crop's region of the source is resampled (``box``), with the filter of the full resize.
    """
    Image = _pil()
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        spec.interpolation
    ]
    width, height = img.size
    new_w, new_h = _resized_size(img.size, spec)
    ch, cw = spec.input_size
    left, top = round((new_w - cw) / 2.0), round((new_h - ch) / 2.0)
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    return np.asarray(img.resize((cw, ch), resample, box=box), dtype=np.uint8)


@dataclass(frozen=True)
class Placement:
    """Where a letterboxed image sits in the network input, to map boxes back to the original pixels.

    The image of ``size`` (width, height) is resized by ``scale`` (x and y, from the rounded size) to
    ``resized`` and pasted at ``offset`` (left, top) into the padded input.
    """

    size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def of(cls, size: tuple[int, int], spec: PreprocessSpec) -> Placement:
        w, h = size
        ih, iw = spec.input_size
        r = min(iw / w, ih / h)
        nw, nh = min(iw, max(1, round(w * r))), min(ih, max(1, round(h * r)))
        return cls(size=(w, h), resized=(nw, nh), offset=((iw - nw) // 2, (ih - nh) // 2))

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) as x1, y1, x2, y2 in input pixels -> original pixels, clipped to the image."""
        sx, sy = self.resized[0] / self.size[0], self.resized[1] / self.size[1]
        out = (boxes.astype(np.float32) - np.tile(np.float32(self.offset), 2)) / np.float32([sx, sy, sx, sy])
        return np.clip(out, 0, np.float32([*self.size, *self.size]))

    def as_row(self) -> np.ndarray:
        """FP32 [6]: width, height, resized width, resized height, offset x, offset y (exact: integers),
        the ``PLACEMENT`` tensor a detector's ensemble passes from its decoder to its postprocess step."""
        return np.float32([*self.size, *self.resized, *self.offset])

    @classmethod
    def from_row(cls, row: np.ndarray) -> Placement:
        """:meth:`as_row`'s inverse."""
        w, h, rw, rh, ox, oy = (round(float(v)) for v in np.asarray(row).reshape(6))
        return cls(size=(w, h), resized=(rw, rh), offset=(ox, oy))

    def points_to_original(self, points: np.ndarray) -> np.ndarray:
        """Points (..., 2) in input pixels -> original pixels."""
        scale = np.float32([self.resized[0] / self.size[0], self.resized[1] / self.size[1]])
        return (points.astype(np.float32) - np.float32(self.offset)) / scale


def letterbox(img, spec: PreprocessSpec) -> tuple[np.ndarray, Placement]:
    """Fit a decoded PIL image whole into the input, aspect ratio kept, centred on ``spec.pad_value``.

    Returns the HWC uint8 RGB input and its :class:`Placement` (relative to the original size that
    :func:`decode` recorded, even when a JPEG was decoded at reduced size).
    """
    Image = _pil()
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        spec.interpolation
    ]
    placement = Placement.of(img.info.get(ORIGINAL_SIZE, img.size), spec)
    ih, iw = spec.input_size
    out = np.full((ih, iw, 3), spec.pad_value, dtype=np.uint8)
    (nw, nh), (left, top) = placement.resized, placement.offset
    out[top : top + nh, left : left + nw] = np.asarray(img.resize((nw, nh), resample), dtype=np.uint8)
    return out, placement


def placed(data: bytes, spec: PreprocessSpec) -> tuple[np.ndarray, Placement]:
    """Encoded bytes -> letterboxed HWC uint8 input and its :class:`Placement` (detectors)."""
    return letterbox(decode(data, spec), spec)


def normalize_batch(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """NHWC uint8 RGB batch -> the network's float32 input (one vectorised pass)."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    if spec.color == "BGR":
        pixels, mean, inv_std = pixels[..., ::-1], mean[::-1], inv_std[::-1]
    out = (pixels.astype(np.float32) - mean) * inv_std
    if spec.input_layout == "NCHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _fitted(img, spec: PreprocessSpec) -> np.ndarray:
    return letterbox(img, spec)[0] if spec.fit == "letterbox" else resize_crop(img, spec)


def pixels(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """Encoded bytes -> HWC uint8 network input (decode, then centre crop or letterbox: ``spec.fit``)."""
    return _fitted(decode(data, spec), spec)


def _pixels_and_size(data: bytes, spec: PreprocessSpec) -> tuple[np.ndarray, tuple[int, int]]:
    img, size = decode_sized(data, spec)
    return _fitted(img, spec), size


def decode_requests(
    requests: Sequence[Sequence[bytes]],
    spec: PreprocessSpec,
    map_fn: Callable = map,
    sizes: list[tuple[int, int]] | None = None,
) -> tuple[np.ndarray | None, list[int | Rejection]]:
    """Encoded images of several requests -> one uint8 batch of crops, and each request's outcome.

    The outcome of a request is its number of rows in the batch, or the :class:`Rejection` (a message
    with a reason) that fails it, and only it, when one of its images cannot be decoded. ``map_fn``
    decodes the images, e.g. a thread pool's ``map``: Pillow releases the GIL while it decodes and
    resizes. ``sizes``, when given, receives the (width, height) of each row of the batch.
    """
    good, outcomes = decode_each(requests, spec, map_fn, _pixels_and_size)
    if sizes is not None:
        sizes.extend(size for _, size in good)
    return (np.stack([crop for crop, _ in good]) if good else None), outcomes


def decode_each(
    requests: Sequence[Sequence[bytes]], spec: PreprocessSpec, map_fn: Callable, transform: Callable
) -> tuple[list, list[int | Rejection]]:
    """``transform(data, spec)`` of every image of the good requests, in order, and each request's
    outcome (its row count, or the :class:`Rejection` that fails it alone); see :func:`decode_requests`."""
    jobs = [(r, i, data) for r, images in enumerate(requests) for i, data in enumerate(images)]

    def one(job: tuple[int, int, bytes]):
        r, i, data = job
        try:
            return transform(data, spec)
        except ImageDecodeError as exc:
            return Rejection(f"image {i + 1} of {len(requests[r])} in the request: {exc}", exc.reason)

    done = list(map_fn(one, jobs))
    good: list = []
    outcomes: list[int | Rejection] = []
    start = 0
    for images in requests:
        mine, start = done[start : start + len(images)], start + len(images)
        error = next((c for c in mine if isinstance(c, Rejection)), None)
        if not images:
            outcomes.append(Rejection("the request has no images", "no_images"))
        elif error is not None:
            outcomes.append(error)
        else:
            outcomes.append(len(mine))
            good.extend(mine)
    return good, outcomes


def preprocess_batch(images: Sequence[bytes], spec: PreprocessSpec) -> np.ndarray:
    """Encoded images -> float32 network input batch. Raises :class:`ImageDecodeError` naming the image."""
    crops = []
    for i, data in enumerate(images):
        try:
            crops.append(pixels(data, spec))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {i + 1} of {len(images)}: {exc}", exc.reason) from None
    if not crops:
        return np.zeros((0, *spec.tensor_shape), dtype=np.float32)
    return normalize_batch(np.stack(crops), spec)


def preprocess_files(paths: Iterable[str | Path], spec: PreprocessSpec) -> np.ndarray:
    """Convenience for builders: image files -> network input batch."""
    return preprocess_batch([Path(p).read_bytes() for p in paths], spec)
