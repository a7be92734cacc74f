"""The client's TLS options against a real Triton server that requires mutual TLS on gRPC.

A throwaway CA, a server certificate for 127.0.0.1 / localhost and a client certificate are generated
per module with ``cryptography``; Triton serves the toy classifier (``_client_fixtures``) with
``--grpc-use-ssl-mutual``. HTTP stays plain, so the server fixture's readiness poll is unchanged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvserve.client import AsyncClient, Client, ServerUnavailable
from tests.integration import _client_fixtures as fx

x509 = pytest.importorskip(
    "cryptography.x509", reason="TLS tests need cryptography (pip install 'cvserve[dev]')"
)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

TOY = "toy_classifier"
LABELS = set(fx.COLOURS)


@dataclass(frozen=True)
class Pki:
    """PEM files of one throwaway CA and the server and client certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def make_pki(folder: Path, ca_name: str = "cvserve test CA") -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(ca_name, ca_key, _name(ca_name), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "localhost",
        server_key,
        ca_cert.subject,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "cvserve test client", client_key, ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key_path = _write(folder, "server", server, server_key)
    client_cert, client_key_path = _write(folder, "client", client, client_key)
    return Pki(ca_path, server_cert, server_key_path, client_cert, client_key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA with its own server and client certificates."""
    return make_pki(tmp_path_factory.mktemp("other_pki"), "some other CA")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[object]:
    """The toy classifier on a real Triton whose gRPC endpoint requires mutual TLS."""
    from cvserve.server import ServerSettings, TritonServer

    repo = fx.write_repository(tmp_path_factory.mktemp("tls_repo") / "models", only={"toy_classifier"})
    tls_args = [
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={pki.server_cert}",
        f"--grpc-server-key={pki.server_key}",
        f"--grpc-root-cert={pki.ca}",
    ]
    settings = ServerSettings(
        repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5, extra_args=tls_args
    )
    with TritonServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def images(sample_images) -> list[object]:
    """A real photo and a solid red PNG (whose answer the toy model's mean-colour rule fixes)."""
    return [sample_images["coffee"], fx.png(fx.COLOURS["red"])]


def _tls(pki: Pki) -> dict[str, object]:
    return {
        "ssl": True,
        "root_certificates": pki.ca,
        "private_key": pki.client_key,
        "certificate_chain": pki.client_cert,
    }


def _check(results: list) -> None:
    assert len(results) == 2
    assert all({c.label for c in r} == LABELS and len(r) == fx.TOY_K for r in results)
    assert all(r[0].score >= r[-1].score for r in results)
    assert results[1][0].label == "red"


def test_mutual_tls_classify(tls_server, pki, images):
    with Client(tls_server.grpc_url, model=TOY, timeout=30, **_tls(pki)) as client:
        assert client.is_ready(TOY)
        _check(client.classify(images))
        assert client.model_info(TOY).max_batch_size == fx.TOY_MAX_BATCH


def test_mutual_tls_classify_async_with_grpcs_url(tls_server, pki, images):
    async def main() -> list:
        # grpcs:// and the certificates imply ssl=True
        kw = {k: v for k, v in _tls(pki).items() if k != "ssl"}
        async with AsyncClient(f"grpcs://{tls_server.grpc_url}", model=TOY, timeout=30, **kw) as client:
            assert await client.is_ready(TOY)
            return await client.classify(images)

    _check(asyncio.run(main()))


def test_plain_client_is_refused(tls_server, images):
    with Client(tls_server.grpc_url, model=TOY, timeout=3, retry=False) as client:
        assert not client.is_ready(timeout=3)
        with pytest.raises(ServerUnavailable, match="cannot reach"):
            client.classify(images)


@pytest.mark.parametrize(
    "case",
    ["server signed by an unknown CA", "no client certificate", "client certificate of another CA"],
)
def test_tls_client_with_wrong_trust_or_identity_is_refused(tls_server, pki, other_pki, images, case):
    kw = _tls(pki)
    if case == "server signed by an unknown CA":
        kw["root_certificates"] = other_pki.ca
    elif case == "no client certificate":
        del kw["private_key"], kw["certificate_chain"]
    else:
        kw["private_key"], kw["certificate_chain"] = other_pki.client_key, other_pki.client_cert
    # gRPC names the failed handshake when the client rejects the server; a server that rejects the
    # client just closes the socket.
    match = "(?i)handshake|certificate" if case == "server signed by an unknown CA" else None
    with Client(tls_server.grpc_url, model=TOY, timeout=3, retry=False, **kw) as client:
        assert not client.is_ready(timeout=3)
        with pytest.raises(ServerUnavailable, match=match):
            client.classify(images)


def test_async_plain_client_is_refused(tls_server, images):
    async def main() -> None:
        async with AsyncClient(tls_server.grpc_url, model=TOY, timeout=3, retry=False) as client:
            assert not await client.is_ready(timeout=3)
            with pytest.raises(ServerUnavailable):
                await client.classify(images)

    asyncio.run(main())
