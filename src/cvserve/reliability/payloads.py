"""What a hostile or unlucky caller sends: bad requests of many kinds, and the good ones mixed with them.

Each :class:`Kind` knows how to send itself (raw gRPC protobuf, raw HTTP, or tritonclient) and which
answers are clean: ``INVALID_ARGUMENT`` (HTTP 400) naming what is wrong, ``NOT_FOUND`` for an unknown
model. "Accept" kinds are unusual but valid images (odd modes, extreme shapes): they must be classified.
Malformed framing is built by hand because tritonclient cannot produce it: a BYTES element is a 4-byte
little-endian length followed by that many bytes.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from cvserve.client import contract

INPUT = contract.IMAGE
MiB = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What one request got: ``ok`` (and the top-1 class), or an error status and its message."""

    status: str  # "OK", a gRPC status name, or "HTTP <code>"
    message: str = ""
    top1: int | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass(frozen=True)
class Kind:
    """One kind of request: its name, how it is sent, and what counts as a clean answer."""

    name: str
    send: Callable[[Target], Outcome]
    expect: tuple[str, ...]  # acceptable statuses: "OK" for accept kinds
    must_mention: str = ""  # a clean rejection names the problem (case-insensitive substring)

    @property
    def accept(self) -> bool:
        return "OK" in self.expect


@dataclass
class Target:
    """Where requests go; ``grpc_stub`` and ``http`` are made lazily per thread by the caller."""

    model: str
    grpc_url: str
    http_host: str
    http_port: int
    timeout_s: float = 60.0


# -- images -------------------------------------------------------------------------------------------
def _pil():
    from PIL import Image

    return Image


def encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@cache
def good_images() -> list[tuple[bytes, int]]:
    """Real photos (scikit-image's samples) as JPEG and PNG, with the ImageNet class MobileNetV2 gives."""
    from cvserve.builders.samples import expected_labels, imagenet_labels, sample_images

    Image = _pil()
    labels = imagenet_labels()
    out = []
    for name, path in sample_images(list(expected_labels())).items():
        img = Image.open(path).convert("RGB")
        cls = labels.index(expected_labels()[name])
        out += [(encode(img, "JPEG", quality=90), cls), (path.read_bytes(), cls)]
    return out


def png_header_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A valid, tiny PNG that declares ``width`` x ``height`` pixels (all one colour): the kind of
    decompression bomb that stays below Pillow's own limit but costs seconds and gigabytes to decode."""
    row = b"\x00" + b"\x00" * (width * 3)
    data = zlib.compress(row * min(height, 64), 9)  # enough rows for a real decoder to start

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_header_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` (the SOF0 fields patched)."""
    Image = _pil()
    data = bytearray(encode(Image.new("RGB", (64, 64), (90, 120, 200)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@cache
def odd_images() -> dict[str, bytes]:
    """Valid images in unusual modes and shapes: each must be classified, not refused."""
    Image = _pil()
    base = Image.open(io.BytesIO(good_images()[0][0]))
    return {
        "cmyk-jpeg": encode(base.convert("CMYK"), "JPEG"),
        "grey-16bit-png": encode(base.convert("L").point(lambda v: v * 256).convert("I;16"), "PNG"),
        "palette-png": encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "rgba-png": encode(base.convert("RGBA"), "PNG"),
        "1x1-png": encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "1x3000-jpeg": encode(base.resize((3000, 1)), "JPEG"),
        "progressive-jpeg": encode(base, "JPEG", progressive=True),
    }


@cache
def other_formats() -> dict[str, bytes]:
    """Valid images in formats the contract does not allow (JPEG and PNG only)."""
    Image = _pil()
    small = Image.new("RGB", (48, 48), (40, 160, 90))
    out = {"gif": encode(small, "GIF"), "bmp": encode(small, "BMP"), "tiff": encode(small, "TIFF")}
    try:
        out["webp"] = encode(small, "WEBP")
    except (KeyError, OSError):  # Pillow built without WebP
        pass
    return out


# -- ways to send ---------------------------------------------------------------------------------
def framed(*elements: bytes) -> bytes:
    """BYTES tensor contents: each element prefixed by its little-endian uint32 length."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _request(model: str, raw: bytes, *, shape=(1, 1), datatype="BYTES", name=INPUT):
    """A ModelInfer request built from Triton's protobuf, with ``raw`` as the input's raw contents."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = name, datatype
    tensor.shape.extend(shape)
    request.raw_input_contents.append(raw)
    return request


def framed_request(model: str, image: bytes):
    """A well-framed ModelInfer request of one encoded image (for callers with their own channel)."""
    return _request(model, framed(image))


def grpc_raw(
    target: Target, raw: bytes, *, shape=(1, 1), datatype="BYTES", name=INPUT, model=None
) -> Outcome:
    """A ModelInfer request with ``raw`` as the input's raw contents, sent; its outcome."""
    import grpc

    request = _request(model or target.model, raw, shape=shape, datatype=datatype, name=name)
    try:
        response = _stub(target).ModelInfer(request, timeout=target.timeout_s)
    except grpc.RpcError as exc:
        return Outcome(exc.code().name, exc.details() or "")
    return Outcome("OK", top1=top1(response))


def top1(response) -> int | None:
    """The best class index in a classifier's ModelInfer response."""
    import numpy as np

    for i, out in enumerate(response.outputs):
        if out.name == contract.CLASS_INDEX and i < len(response.raw_output_contents):
            return int(np.frombuffer(response.raw_output_contents[i], dtype=np.int64)[0])
    return None


_local = __import__("threading").local()


def _stub(target: Target):
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pbg

    key = ("grpc", target.grpc_url)
    if getattr(_local, "key", None) != key:
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        _local.key, _local.stub = (
            key,
            pbg.GRPCInferenceServiceStub(grpc.insecure_channel(target.grpc_url, options=options)),
        )
    return _local.stub


def http_raw(target: Target, body: bytes, headers: dict[str, str], *, model=None) -> Outcome:
    """A POST to ``/v2/models/MODEL/infer`` with a hand-built body."""
    import http.client

    conn = http.client.HTTPConnection(target.http_host, target.http_port, timeout=target.timeout_s)
    try:
        conn.request("POST", f"/v2/models/{model or target.model}/infer", body, headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return Outcome("HTTP-ERROR", str(exc))
    finally:
        conn.close()
    if resp.status != 200:
        try:
            message = json.loads(data).get("error", "")
        except ValueError:
            message = data[:300].decode("utf-8", "replace")
        return Outcome(f"HTTP {resp.status}", message)
    return Outcome("OK")


def http_binary(target: Target, elements: bytes, *, count: int = 1, size: int | None = None) -> Outcome:
    """The binary-data extension: a JSON header then ``elements`` (BYTES framing, possibly broken)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": [count, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(elements) if size is None else size},
                }
            ]
        }
    ).encode()
    return http_raw(
        target,
        header + elements,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )


def image_request(target: Target, *images: bytes, model=None) -> Outcome:
    """A well-framed request carrying ``images`` (one row each), however bad the images are."""
    return grpc_raw(target, framed(*images), shape=(len(images), 1), model=model)


# -- the kinds ------------------------------------------------------------------------------------
def _truncated_jpeg() -> bytes:
    return good_images()[0][0][: len(good_images()[0][0]) // 3]


def _random(n: int = 4096) -> bytes:
    return random.Random(n).randbytes(n)


def kinds(max_batch: int = 32, max_image_bytes: int = 20 * MiB) -> list[Kind]:
    """Every kind R1 sends. ``max_batch``/``max_image_bytes``: the served model's limits."""
    bad, missing = ("INVALID_ARGUMENT",), ("NOT_FOUND", "UNAVAILABLE")
    good_jpeg = good_images()[0][0]
    out = [
        Kind("empty-image", lambda t: image_request(t, b""), bad, "empty"),
        Kind("random-bytes", lambda t: image_request(t, _random()), bad, "not a JPEG or PNG"),
        Kind("text", lambda t: image_request(t, b"definitely not an image"), bad, "not a JPEG or PNG"),
        Kind("truncated-jpeg", lambda t: image_request(t, _truncated_jpeg()), bad, "truncated or corrupt"),
        Kind(
            "png-header-only",
            lambda t: image_request(t, b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
            bad,
            "not a JPEG or PNG",
        ),
        Kind("png-bomb-12000x12000", lambda t: image_request(t, png_header_bomb()), bad, "pixels"),
        Kind("jpeg-bomb-30000x30000", lambda t: image_request(t, jpeg_header_bomb()), bad, "pixels"),
        Kind(
            "oversize-image",
            lambda t: image_request(t, good_jpeg + b"\0" * (max_image_bytes + 1 - len(good_jpeg))),
            bad,
            "bytes",
        ),
        Kind(
            "one-bad-in-many",
            lambda t: image_request(t, good_jpeg, good_jpeg, b"garbage", good_jpeg),
            bad,
            "image 3 of 4",
        ),
        Kind("wrong-dtype", lambda t: grpc_raw(t, b"\0" * 4, datatype="FP32"), bad, "data-type"),
        Kind("wrong-shape", lambda t: grpc_raw(t, framed(good_jpeg), shape=(1,)), bad, "shape"),
        Kind("no-batch-dim", lambda t: grpc_raw(t, framed(good_jpeg), shape=()), bad, ""),
        Kind(
            "oversize-batch",
            lambda t: grpc_raw(t, framed(*[b"x"] * (max_batch + 1)), shape=(max_batch + 1, 1)),
            bad,
            "batch-size",
        ),
        Kind(
            "wrong-input-name", lambda t: grpc_raw(t, framed(good_jpeg), name=contract.PIXELS), bad, "input"
        ),
        Kind(
            "unknown-model",
            lambda t: image_request(t, good_jpeg, model="no_such_model"),
            missing,
            "unknown model",
        ),
        Kind("framing-short-prefix", lambda t: grpc_raw(t, b"\x01\x02"), bad, "string length"),
        Kind(
            "framing-extra-element",
            lambda t: grpc_raw(t, framed(good_jpeg, good_jpeg)),
            bad,
            "string elements",
        ),
        Kind(
            "framing-trailing-bytes", lambda t: grpc_raw(t, framed(good_jpeg) + b"xyz"), bad, "string length"
        ),
        Kind(
            "framing-prefix-beyond-data",
            lambda t: grpc_raw(t, struct.pack("<I", len(good_jpeg) + 1000) + good_jpeg),
            bad,
            "incomplete string",
        ),
        Kind(
            "http-framing-prefix-beyond-data",
            lambda t: http_binary(t, struct.pack("<I", 0xFFFFFF00) + good_jpeg[:200]),
            ("HTTP 400",),
            "incomplete string",
        ),
        Kind(
            "http-binary-size-mismatch",
            lambda t: http_binary(t, framed(good_jpeg), size=len(good_jpeg) * 4),
            ("HTTP 400",),
            "",
        ),
        Kind(
            "http-bad-json",
            lambda t: http_raw(t, b'{"inputs": [{"name": "%s", "shape": [1, 1]' % INPUT.encode(), {}),
            ("HTTP 400",),
            "",
        ),
    ]
    out += [
        Kind(f"format-{fmt}", lambda t, d=data: image_request(t, d), bad, "not a JPEG or PNG")
        for fmt, data in other_formats().items()
    ]
    out += [
        Kind(f"odd-{name}", lambda t, d=data: image_request(t, d), ("OK",))
        for name, data in odd_images().items()
    ]
    return out


def is_clean(kind: Kind, outcome: Outcome) -> bool:
    """A clean answer: an expected status, a message naming the problem, and no process internals."""
    if outcome.status not in kind.expect:
        return False
    if outcome.ok:
        return True
    return kind.must_mention.lower() in outcome.message.lower() and not leaks_internals(outcome.message)


def leaks_internals(message: str) -> bool:
    """Object addresses, tracebacks or Pillow/Python internals in an error message."""
    markers = (" at 0x", "object at", "Traceback", 'File "', "PIL.", "site-packages", "Error(", "<class ")
    return any(m in message for m in markers)
