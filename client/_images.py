"""Turn what callers pass as images (paths, bytes, numpy arrays, PIL images) into encoded bytes.

Paths and bytes are sent as they are: the server decodes them and reports an image it cannot decode.
Arrays and PIL images are encoded to PNG (lossless) with Pillow, imported only when needed. An image
larger than the client's ``max_image_bytes`` is refused before it is sent (a file before it is read).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvserve.client.errors import InvalidInput, MissingDependency

# What classify() accepts for one image.
ImageLike = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Any

_SINGLE = (str, os.PathLike, bytes, bytearray, memoryview)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependency(
            "Pillow is needed to send numpy arrays or PIL images but is not installed: "
            "pip install 'cvserve[images]' (or pass file paths or encoded bytes)"
        ) from None
    return Image


def _is_pil_image(obj: object) -> bool:
    # Checked by module name so that Pillow is never imported just to look.
    return any(cls.__module__.startswith("PIL.") and cls.__name__ == "Image" for cls in type(obj).__mro__)


def as_image_list(images: object) -> list[Any]:
    """Check that ``images`` is a sequence of images (not one image) and return it as a list."""
    if isinstance(images, _SINGLE) or _is_pil_image(images):
        raise InvalidInput(
            f"classify() takes a list of images, got a single {type(images).__name__}: "
            "wrap it in a list, e.g. classify([image])"
        )
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)  # a batch of HWC images
        raise InvalidInput(
            f"classify() takes a list of images; a numpy array must be a batch (N, H, W, C), got shape "
            f"{images.shape}: wrap a single image in a list, e.g. classify([array])"
        )
    if not isinstance(images, Sequence):
        try:
            return list(images)  # type: ignore[call-overload]
        except TypeError:
            raise InvalidInput(f"classify() takes a list of images, got {type(images).__name__}") from None
    return list(images)


def encode_image(image: object, position: int, total: int, max_bytes: int | None = None) -> bytes:
    """Encoded bytes for one image; ``position`` (1-based) and ``total`` name it in error messages.

    Raises:
        InvalidInput: not an image, empty, or larger than ``max_bytes`` (the client's ``max_image_bytes``).
    """
    where = f"image {position} of {total}"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            _check_size(path.stat().st_size, max_bytes, where)
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInput(f"{where}: file not found: {path}") from None
        except OSError as exc:
            raise InvalidInput(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, np.ndarray):
        data = _encode_array(image, where)
    elif _is_pil_image(image):
        data = _encode_pil(image, where)
    else:
        raise InvalidInput(
            f"{where}: unsupported type {type(image).__name__}; pass a file path, encoded bytes "
            "(JPEG/PNG), a uint8 numpy array (H, W, 3) or (H, W), or a PIL image"
        )
    if not data:
        raise InvalidInput(f"{where} is empty (0 bytes): pass an encoded JPEG or PNG")
    _check_size(len(data), max_bytes, where)
    return data


def _check_size(size: int, max_bytes: int | None, where: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise InvalidInput(
            f"{where} is {size} bytes, more than the client's max_image_bytes ({max_bytes} bytes, "
            f"{max_bytes / 2**20:g} MiB): send a smaller image, or raise max_image_bytes="
        )


def _encode_array(array: np.ndarray, where: str) -> bytes:
    if array.dtype != np.uint8:
        hint = (
            " (scale floats in [0, 1] with (a * 255).round().astype(np.uint8))"
            if array.dtype.kind == "f"
            else ""
        )
        raise InvalidInput(f"{where}: numpy images must be uint8, got {array.dtype}{hint}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidInput(
            f"{where}: numpy images must be (H, W) gray or (H, W, 3) RGB or (H, W, 4) RGBA, got shape "
            f"{array.shape}; channels-first (C, H, W) arrays need .transpose(1, 2, 0)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"{where}: numpy image has no pixels (shape {array.shape})")
    image = _pillow().fromarray(np.ascontiguousarray(array))
    return _png(image)


def _encode_pil(image: Any, where: str) -> bytes:
    _pillow()
    if image.width == 0 or image.height == 0:
        raise InvalidInput(f"{where}: PIL image has no pixels")
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        image = image.convert("RGB")  # CMYK, YCbCr, float... have no PNG form
    return _png(image)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast; the server decodes it once
    return buf.getvalue()


def encode_images(images: Sequence[object], max_bytes: int | None = None) -> list[bytes]:
    """Encode every image, naming the first bad one in the error (see :func:`encode_image`)."""
    total = len(images)
    return [encode_image(image, i + 1, total, max_bytes) for i, image in enumerate(images)]


__all__ = ["ImageLike", "as_image_list", "encode_image", "encode_images"]
