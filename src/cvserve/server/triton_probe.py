"""Kubernetes probes for Triton that tell the truth (runs inside the Triton container; stdlib only).

    python3 triton_probe.py ready  [--port 8000] [--timeout S]
    python3 triton_probe.py live   [--port 8000] [--timeout S]
    python3 triton_probe.py canary --model NAME [--version N] [--port 8000] [--timeout S]
                                   [--header admin-key] [--key-env CVSERVE_RESTRICTED_API_KEY]

``ready`` / ``live`` ask ``/v2/health/ready`` / ``/v2/health/live`` on localhost (used when the chart binds
HTTP to 127.0.0.1, where the kubelet's httpGet probes cannot reach it). ``canary`` sends one tiny PNG,
generated here, to the served model (input ``IMAGE``, BYTES, shape [1, 1]: the cvserve classifier
contract) over HTTP on localhost, and checks that ``SCORE`` comes back as probabilities; it sends up to
SHOTS of them one after another and fails at the first failure, because each instance of the model is
its own stub and one canary can go to a healthy instance while another's stub is dead. A python-backend
stub that died or wedged answers health checks but fails this request, or never answers it: before
Triton 2.65 a dead stub does not even make the model unready, and it is never restarted.

Exit status 0 means healthy; anything else is a failure and the one line printed says why (the kubelet
puts it in the pod's events). An HTTP 503 (UNAVAILABLE: the queue is full or its timeout expired, the
admission control working) counts as alive: the server answered and shed load, and restarting an
overloaded pod would only make the overload worse. The restricted-API key, when the environment variable
named by ``--key-env`` holds one, is sent in ``--header`` (needed if ``inference`` is a restricted group).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

HOST = "127.0.0.1"
INPUT = "IMAGE"
# Canary image size: big enough for every decoder and resizer, small enough to cost nothing.
SIDE = 32
# Canaries per check (cvserve.server.canary.SHOTS): the instances of a model take turns when idle.
SHOTS = 4


def canary_png(side: int = SIDE) -> bytes:
    """A ``side`` x ``side`` RGB gradient encoded as PNG with zlib alone (no Pillow in the probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(side) for v in (x * 8 % 256, y * 8 % 256, 128)) for y in range(side)
    )
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def infer_request(image: bytes) -> tuple[bytes, int]:
    """Body and JSON-header length of a KServe v2 binary-tensor request carrying one BYTES element."""
    element = struct.pack("<I", len(image)) + image  # BYTES tensors: 4-byte little-endian length, data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)},
                }
            ]
        }
    ).encode()
    return header + element, len(header)


def check_outputs(response: dict) -> str:
    """``""`` when the response carries probabilities in SCORE, else what is wrong with it."""
    outputs = {o.get("name"): o for o in response.get("outputs", [])}
    if "SCORE" not in outputs:
        return f"no SCORE output (got {sorted(n for n in outputs if n)})"
    scores = outputs["SCORE"].get("data")
    if not isinstance(scores, list) or not scores:
        return "SCORE has no data"
    for s in scores:
        if not isinstance(s, (int, float)) or math.isnan(s) or not -1e-3 <= s <= 1 + 1e-3:
            return f"SCORE holds {s!r}, not a probability"
    return ""


def _request(url: str, timeout: float, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    return urllib.request.urlopen(req, timeout=timeout)


def error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(2048).decode("utf-8", "replace")
        return json.loads(body).get("error", body).strip()
    except (OSError, ValueError, AttributeError):
        return exc.reason or ""


def health(port: int, which: str, timeout: float) -> tuple[bool, str]:
    url = f"http://{HOST}:{port}/v2/health/{which}"
    try:
        with _request(url, timeout) as resp:
            return resp.status == 200, f"{which}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{which}: HTTP {exc.code}"
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
        return False, f"{which}: {exc}"


def canary(
    port: int, model: str, version: str, timeout: float, header: str, key: str | None
) -> tuple[bool, str]:
    """Up to SHOTS canaries within ``timeout`` seconds in all (the kubelet's timeout is a few seconds
    more); the first failure is the answer. Time running out after a good answer is not a failure."""
    deadline = time.monotonic() + timeout
    ok, message = _canary_once(port, model, version, timeout, header, key)
    for _ in range(SHOTS - 1):
        left = deadline - time.monotonic()
        if not ok or left <= 0.1:
            break
        ok, message = _canary_once(port, model, version, left, header, key)
    return ok, message


def _canary_once(
    port: int, model: str, version: str, timeout: float, header: str, key: str | None
) -> tuple[bool, str]:
    quoted = urllib.parse.quote(model, safe="")
    path = f"/v2/models/{quoted}" + (f"/versions/{version}" if version else "") + "/infer"
    body, header_len = infer_request(canary_png())
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_len),
    }
    if key:
        headers[header] = key
    try:
        with _request(f"http://{HOST}:{port}{path}", timeout, body, headers) as resp:
            raw = resp.read()
            json_len = resp.headers.get("Inference-Header-Content-Length")
            response = json.loads(raw[: int(json_len)] if json_len else raw)
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return True, f"canary {model}: shed by admission control (HTTP 503: {error_text(exc)})"
        return False, f"canary {model}: HTTP {exc.code}: {error_text(exc)}"
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
        return False, f"canary {model}: no answer within {timeout:g} s ({exc})"
    except ValueError as exc:
        return False, f"canary {model}: unreadable response ({exc})"
    problem = check_outputs(response)
    if problem:
        return False, f"canary {model}: {problem}"
    return True, f"canary {model}: ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=("ready", "live", "canary"))
    parser.add_argument("--port", type=int, default=8000, help="Triton's HTTP port on 127.0.0.1")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    parser.add_argument("--model", default="", help="canary: the served model (cvserve contract)")
    parser.add_argument("--version", default="", help="canary: a model version (default: Triton's policy)")
    parser.add_argument("--header", default="admin-key", help="canary: the restricted-API header name")
    parser.add_argument(
        "--key-env", default="CVSERVE_RESTRICTED_API_KEY", help="canary: variable holding the key"
    )
    args = parser.parse_args(argv)
    if args.check == "canary":
        if not args.model:
            parser.error("canary needs --model")
        if args.version and not args.version.isdigit():
            parser.error(f"--version must be a version number, not {args.version!r}")
        ok, message = canary(
            args.port, args.model, args.version, args.timeout, args.header, os.environ.get(args.key_env)
        )
    else:
        ok, message = health(args.port, args.check, args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
