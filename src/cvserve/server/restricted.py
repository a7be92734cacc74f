"""Triton's restricted API groups for ``cvserve serve`` on a non-loopback address.

Model control and the repository, shared memory, statistics, trace and logging need a key, sent in
the Helm chart's header (``restrictedApi`` in helm/cvserve/values.yaml); inference, metadata, health and
model configs stay open. Model configs stay open because cvserve's client reads the class names (the
``labels`` parameter) and the max batch size from them: restricting them would make every product
service hold the admin key (measured: ``Client.classify`` fails with "This protocol is restricted"
without it). The key comes from ``$CVSERVE_RESTRICTED_API_KEY`` or is
generated per run and written to a file only its owner can read (never printed, never logged).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cvserve.errors import UserInputError

KEY_ENV = "CVSERVE_RESTRICTED_API_KEY"
HEADER = "admin-key"  # HTTP header; gRPC callers send it as metadata "triton-grpc-protocol-admin-key"
GROUPS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
MODES = ("auto", "on", "off")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them (``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


@dataclass(frozen=True)
class RestrictedApi:
    """The key and where it can be read; ``flags()`` are Triton's command-line options."""

    key: str
    key_file: Path | None  # None when the key came from the environment

    def flags(self) -> list[str]:
        value = f"{','.join(GROUPS)}:{HEADER}={self.key}"
        return [f"--http-restricted-api={value}", f"--grpc-restricted-protocol={value}"]

    def describe(self) -> str:
        where = f"${KEY_ENV}" if self.key_file is None else f"the key in {self.key_file} (mode 0600)"
        return (
            f"restricted API groups ({', '.join(GROUPS)}) need header '{HEADER}' "
            f"(gRPC: 'triton-grpc-protocol-{HEADER}') with {where}"
        )


def restricted_api(mode: str, host: str, *, environ: dict[str, str] | None = None) -> RestrictedApi | None:
    """The restriction to apply for ``--restrict-api MODE`` on ``host``, or None.

    ``auto`` restricts unless ``host`` is a loopback address, as the chart does for every pod.
    """
    if mode not in MODES:
        raise UserInputError(f"--restrict-api must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off" or (mode == "auto" and is_loopback(host)):
        return None
    env = os.environ if environ is None else environ
    key = env.get(KEY_ENV, "").strip()
    if key:
        # Triton splits the flag on ':' and '=' and ',': anything else would silently change the groups.
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", key):
            raise UserInputError(
                f"${KEY_ENV} must be at least 16 letters, digits, '-' or '_' (Triton splits its flag on "
                "':', '=' and ','): e.g. export CVSERVE_RESTRICTED_API_KEY=$(openssl rand -hex 32)"
            )
        return RestrictedApi(key=key, key_file=None)
    key = secrets.token_hex(32)
    fd, name = tempfile.mkstemp(prefix="cvserve-admin-key-", suffix=".txt")
    with os.fdopen(fd, "w") as f:  # mkstemp creates the file with mode 0600
        f.write(key + "\n")
    return RestrictedApi(key=key, key_file=Path(name))
