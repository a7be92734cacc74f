"""The public surface of cvserve.client: __all__, light imports, options, the CLI, behaviour with no server."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import cvserve.client as client_pkg
from cvserve.client import (
    AsyncClient,
    Client,
    ClientError,
    ClientOptions,
    InvalidInput,
    RetryPolicy,
    ServerUnavailable,
)
from cvserve.server import free_port

PUBLIC_API = {
    "AccessDenied",
    "AsyncClient",
    "Classification",
    "Client",
    "ClientError",
    "ClientMetrics",
    "ClientOptions",
    "DeadlineExceeded",
    "Detection",
    "InvalidInput",
    "MissingDependency",
    "ModelInfo",
    "ModelNotFound",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailable",
    "TensorSpec",
}


def test_public_api_is_listed_in_all_and_documented():
    assert set(client_pkg.__all__) == PUBLIC_API
    for name in client_pkg.__all__:
        obj = getattr(client_pkg, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"
    for cls in (Client, AsyncClient):
        for method in ("classify", "detect", "infer", "is_ready", "wait_until_ready", "model_info", "close"):
            assert inspect.getdoc(getattr(cls, method)), f"{cls.__name__}.{method}"


def test_constructor_and_methods_show_their_typed_signatures():
    for cls in (Client, AsyncClient):
        params = inspect.signature(cls).parameters
        assert list(params)[:4] == ["url", "model", "timeout", "retry"]
        assert {"max_image_bytes", "max_request_bytes", "token", "metrics"} <= set(params)
        assert all(p.kind is not p.VAR_KEYWORD for p in params.values())
        assert params["timeout"].annotation == "float" and params["timeout"].default == 30.0
        assert "max_request_bytes" in inspect.getdoc(cls.__init__)
    for method in ("classify", "detect", "infer", "model_info", "is_ready", "wait_until_ready"):
        sync, aio = getattr(Client, method), getattr(AsyncClient, method)
        assert inspect.signature(sync) == inspect.signature(aio)
        assert not inspect.iscoroutinefunction(sync) and inspect.iscoroutinefunction(aio)
        assert sync.__name__ == aio.__name__ == method
    assert inspect.signature(Client.classify).return_annotation == "list[list[Classification]]"
    assert inspect.signature(Client.detect).return_annotation == "list[list[Detection]]"
    for method in ("classify", "infer", "model_info"):
        assert "model_version" in inspect.signature(getattr(Client, method)).parameters


def test_importing_the_client_imports_nothing_heavy():
    code = (
        "import sys, cvserve.client, cvserve.client.cli;"
        "heavy = ['torch', 'onnx', 'onnxruntime', 'locust', 'PIL', 'prometheus_client', 'cvserve.server',"
        " 'cvserve.builders', 'cvserve.loadtests', 'kubernetes'];"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_url_forms_and_bad_options():
    assert Client("grpc://example:8001").url == "example:8001"
    c = Client("grpcs://example:443")
    assert c.url == "example:443" and c._opts.ssl
    c = Client("h:1", token="s3cret", headers={"X-Tenant": "a"}, compression="gzip")
    assert c._opts.headers == {"x-tenant": "a", "authorization": "Bearer s3cret"}
    with pytest.raises(InvalidInput, match="host:port"):
        Client("http://localhost:8000")
    with pytest.raises(InvalidInput, match="does not exist"):
        Client("h:1", root_certificates="/no/such/ca.pem")
    with pytest.raises(InvalidInput, match="compression"):
        Client("h:1", compression="brotli")
    with pytest.raises(InvalidInput, match="timeout"):
        Client("h:1", timeout=0)
    with pytest.raises(InvalidInput, match="timeout"):
        Client("h:1").classify([b"x"], timeout=-1)
    with pytest.raises(TypeError, match="unexpected keyword arguments: tiemout"):
        Client("h:1", tiemout=3)


def test_options_are_one_value_the_clients_and_predict_take():
    options = ClientOptions(url="grpc://h:1", model="m", timeout=5, token="t")
    assert (options.url, options.timeout, options.retry, options.token) == ("h:1", 5.0, RetryPolicy(), None)
    assert options.headers == {"authorization": "Bearer t"}  # the token travels in the metadata only
    c = Client("h:2", options=options, retry=False)  # url and keywords replace the options' fields
    assert (c.url, c._opts.model, c._opts.timeout, c._opts.retry) == ("h:2", "m", 5.0, None)
    assert c._opts.headers == {"authorization": "Bearer t"}


def test_url_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("CVSERVE_URL", "triton.internal:9001")
    assert Client().url == "triton.internal:9001"


def test_unreachable_server_without_retries_raises_server_unavailable_at_once():
    url = f"127.0.0.1:{free_port()}"
    with Client(url, model="m", retry=False, timeout=30) as c:
        assert c.is_ready() is False
        # Not DeadlineExceeded: a call that waited for the server would have ended at the 30 s deadline.
        with pytest.raises(ServerUnavailable, match="cannot reach") as info:
            c.classify([b"\x89PNG"])
        assert info.value.code == "UNAVAILABLE" and info.value.retryable and info.value.attempts == 1


def test_unreachable_server_with_retries_waits_for_it_until_the_deadline():
    url = f"127.0.0.1:{free_port()}"
    policy = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
    with Client(url, model="m", retry=policy, timeout=0.6) as c:
        with pytest.raises(ServerUnavailable, match="attempts") as info:
            c.classify([b"\x89PNG"])
        assert info.value.attempts > policy.max_attempts  # waiting for a connection is not an attempt
        assert c.retry_budget.tokens == policy.max_tokens  # and spends no budget


def test_wait_until_ready_times_out_with_server_unavailable():
    with Client(f"127.0.0.1:{free_port()}") as c:
        with pytest.raises(ServerUnavailable, match=r"not ready after 0\.5 s"):
            c.wait_until_ready(timeout=0.5)


def test_async_client_against_no_server():
    async def main() -> None:
        async with AsyncClient(f"127.0.0.1:{free_port()}", model="m", retry=False) as ac:
            assert await ac.is_ready() is False
            assert await ac.classify([]) == []
            with pytest.raises(ServerUnavailable):
                await ac.classify([b"\x89PNG"])
            with pytest.raises(ServerUnavailable):
                await ac.wait_until_ready(timeout=0.3)

    asyncio.run(main())


def test_closed_client_says_so():
    c = Client("127.0.0.1:1")
    c.close()
    with pytest.raises(ClientError, match="closed"):
        c.is_ready()


def test_empty_list_returns_empty_without_a_round_trip():
    with Client("127.0.0.1:1", retry=False) as c:  # nothing listens there
        assert c.classify([]) == []


def test_predict_cli_is_registered(monkeypatch):
    from cvserve.client import cli

    monkeypatch.delenv("CVSERVE_URL", raising=False)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", "mobilenet_v2", "a.jpg", "b.png", "--top-k", "3", "--json"])
    assert (args.model, args.images, args.top_k, args.json, args.func) == (
        "mobilenet_v2",
        [Path("a.jpg"), Path("b.png")],
        3,
        True,
        cli.run,
    )
    settings = cli.from_args(cli.PredictSettings, args)  # flags derived from the settings dataclass
    assert settings.images == [Path("a.jpg"), Path("b.png")] and settings.client.url == "localhost:8001"


def test_predict_cli_reports_client_errors_with_exit_1(capsys):
    from cvserve.cli import main

    code = main(["predict", "m", "/no/such/image.jpg", "--url", "127.0.0.1:1"])
    assert code == 1
    assert "file not found: /no/such/image.jpg" in capsys.readouterr().err
