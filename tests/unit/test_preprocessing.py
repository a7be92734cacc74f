"""The preprocessing spec: one source of truth, real decoding, the torchvision reference transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvserve.builders.preprocessing import (
    ImageDecodeError,
    PreprocessSpec,
    decode,
    decode_requests,
    normalize_batch,
    pixels,
    preprocess_batch,
    preprocess_files,
)
from cvserve.builders.samples import sample_images


def _jpeg(w: int, h: int, quality: int = 95) -> bytes:
    rng = np.random.default_rng(0)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_spec_round_trips_through_json(tmp_path):
    spec = PreprocessSpec(input_size=(192, 160), resize_shorter=200, color="BGR", layout="NHWC")
    spec.save(tmp_path)
    assert PreprocessSpec.load(tmp_path) == spec
    assert spec.tensor_shape == (192, 160, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"color": "RGBA"},
        {"layout": "CHW"},
        {"resize_shorter": 100},
        {"std": (1.0, 0.0, 1.0)},
        {"input_size": (0, 5)},
    ],
)
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PreprocessSpec(**kwargs)


def test_real_photos_become_normalised_nchw_batch():
    paths = list(sample_images().values())
    batch = preprocess_files(paths, PreprocessSpec())
    assert batch.shape == (len(paths), 3, 224, 224) and batch.dtype == np.float32
    # ImageNet normalisation of real photos: roughly zero-centred, within the normalised range
    assert -2.2 < batch.min() < -1.0 and 1.0 < batch.max() < 2.7
    assert abs(float(batch.mean())) < 1.0


def test_matches_the_torchvision_reference_transform():
    """Resize(256) + CenterCrop(224) + ToTensor + Normalize, written out with PIL and numpy.

    The served decode resamples only the crop's region (same filter, same sample positions), so
    pixels may differ from the full resize by one grey level of rounding, no more.
    """
    path = sample_images(["chelsea"])["chelsea"]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    left, top = round((img.width - 224) / 2), round((img.height - 224) / 2)
    ref = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    ref = ((ref - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(2, 0, 1)
    got = preprocess_files([path], PreprocessSpec())[0]
    one_grey_level = 1 / 255 / 0.224  # in normalised units, for the smallest std
    assert np.abs(got - ref).max() <= one_grey_level + 1e-4
    assert np.mean(np.abs(got - ref) > 1e-4) < 0.01  # and only on a few pixels


def test_large_jpeg_is_decoded_at_reduced_size():
    data = _jpeg(2048, 1536)
    fast = decode(data, PreprocessSpec())
    full = decode(data, PreprocessSpec(fast_jpeg_decode=False))
    assert full.size == (2048, 1536)
    assert min(fast.size) >= 256 and fast.size[0] < 2048  # DCT-scaled, never below what the resize needs


def test_bgr_and_nhwc_are_channel_and_layout_swaps():
    data = sample_images(["coffee"])["coffee"].read_bytes()
    rgb = preprocess_batch([data], PreprocessSpec())[0]
    bgr_nhwc = preprocess_batch([data], PreprocessSpec(color="BGR", layout="NHWC"))[0]
    np.testing.assert_allclose(bgr_nhwc.transpose(2, 0, 1)[::-1], rgb, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a JPEG or PNG image"),
        (_jpeg(64, 64)[:300], "not a JPEG or PNG image|truncated or corrupt JPEG data"),
    ],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_bad_bytes_name_the_image(data, needle):
    good = _jpeg(64, 64)
    with pytest.raises(ImageDecodeError, match=needle) as info:
        preprocess_batch([good, data], PreprocessSpec())
    assert "image 2 of 2" in str(info.value)


def test_grayscale_and_rgba_are_converted():
    for mode in ("L", "RGBA", "P"):
        buf = io.BytesIO()
        Image.new(mode, (300, 260)).save(buf, "PNG")
        assert preprocess_batch([buf.getvalue()], PreprocessSpec()).shape == (1, 3, 224, 224)


def _png(w: int, h: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, "PNG")
    return buf.getvalue()


def test_limits_are_checked_before_decoding_and_named():
    spec = PreprocessSpec(max_image_bytes=1000, max_image_pixels=500 * 400)
    with pytest.raises(ImageDecodeError, match=r"larger than the limit of 1000 bytes"):
        decode(_jpeg(64, 64) + b"\0" * 1000, spec)
    with pytest.raises(ImageDecodeError, match=r"501x400 pixels is larger than the limit of 200000 pixels"):
        decode(_png(501, 400, "L"), PreprocessSpec(max_image_pixels=500 * 400))


def test_a_decompression_bomb_is_refused_from_its_header():
    """A small PNG that declares 12000x12000 pixels is refused without being decoded."""
    bomb = _png(12000, 12000, "1")  # 1-bit, compresses to a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError, match="12000x12000 pixels is larger than the limit of 40000000"):
        decode(bomb, PreprocessSpec())


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"])
def test_only_jpeg_and_png_are_served(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, fmt)
    with pytest.raises(ImageDecodeError, match=r"not a JPEG or PNG image \(\d+ bytes\)$"):
        decode(buf.getvalue(), PreprocessSpec())
    assert decode(buf.getvalue(), PreprocessSpec(formats=("JPEG", "PNG", fmt))).size == (64, 64)


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, _jpeg(64, 64)[:2000], b"GIF89a" + b"\x01" * 50]
)
def test_error_messages_never_leak_internals(data):
    with pytest.raises(ImageDecodeError) as info:
        decode(data, PreprocessSpec())
    message = str(info.value)
    assert "0x" not in message and "<" not in message and "Error" not in message


def test_decode_requests_fails_only_the_request_with_a_bad_image():
    good, bad = _jpeg(300, 260), b"junk"
    batch, outcomes = decode_requests([[good], [good, bad], [], [good, good]], PreprocessSpec())
    assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.uint8
    assert outcomes[0] == 1 and outcomes[3] == 2
    assert outcomes[1].startswith("image 2 of 2 in the request: not a JPEG or PNG image")
    assert outcomes[2] == "the request has no images"
    assert decode_requests([[bad]], PreprocessSpec())[0] is None


def test_pixels_and_normalize_batch_are_the_float_pipeline():
    data = sample_images(["coffee"])["coffee"].read_bytes()
    crop = pixels(data, PreprocessSpec())
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(
        normalize_batch(crop[None], PreprocessSpec()), preprocess_batch([data], PreprocessSpec())
    )
