"""A server restart while clients keep calling: retried calls succeed once it is back; without retries
they raise ServerUnavailable. The restarted server is a new TritonServer on the same ports."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cvserve.client import AsyncClient, Client, ServerUnavailable
from cvserve.server import ServerSettings, TritonServer
from tests.integration._client_fixtures import png, write_repository

TOY = "toy_classifier"


def test_calls_during_a_restart(tmp_path):
    repo = write_repository(tmp_path / "models", toy_only=True)
    first = TritonServer(
        ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    )
    first.start()
    first.wait_ready()
    second: TritonServer | None = None
    image = png((250, 10, 10))
    outcomes: list[tuple[float, float, str]] = []  # (start, end, label or error)
    stop = threading.Event()
    retrying = Client(first.grpc_url, model=TOY, timeout=10)
    no_retry = Client(first.grpc_url, model=TOY, timeout=10, retry=False)
    async_result: list[object] = []

    def keep_calling() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                label = retrying.classify([image], top_k=1)[0][0].label
            except Exception as exc:  # recorded and asserted on below
                label = f"{type(exc).__name__}: {exc}"
            outcomes.append((start, time.monotonic(), label))
            time.sleep(0.02)

    def async_call() -> None:
        async def main() -> str:
            async with AsyncClient(first.grpc_url, model=TOY, timeout=10) as ac:
                return (await ac.classify([image], top_k=1))[0][0].label

        try:
            async_result.append(asyncio.run(main()))
        except Exception as exc:
            async_result.append(exc)

    try:
        assert retrying.classify([image])[0][0].label == "red"
        assert no_retry.classify([image])[0][0].label == "red"
        caller = threading.Thread(target=keep_calling)
        caller.start()
        time.sleep(0.3)
        down_at = time.monotonic()
        first.stop()
        with pytest.raises(ServerUnavailable):
            no_retry.classify([image])
        async_caller = threading.Thread(target=async_call)
        async_caller.start()
        second = TritonServer(
            ServerSettings(
                repository=repo,
                grpc_port=first.grpc_port,
                http_port=first.http_port,
                metrics_port=first.metrics_port,
                exit_timeout_s=5,
            )
        )
        second.start()
        second.wait_ready()
        up_at = time.monotonic()
        async_caller.join(15)
        time.sleep(0.3)
        stop.set()
        caller.join(15)
        assert no_retry.classify([image])[0][0].label == "red"  # the same channel reconnects
    finally:
        stop.set()
        retrying.close()
        no_retry.close()
        first.stop()
        if second is not None:
            second.stop()

    during = [o for o in outcomes if down_at <= o[0] <= up_at]
    failures = [o for o in outcomes if o[2] != "red"]
    print(
        f"\nrestart: down for {up_at - down_at:.1f} s; {len(outcomes)} calls, {len(during)} made during "
        f"the restart, longest {max(o[1] - o[0] for o in outcomes):.1f} s, failures {len(failures)}"
    )
    assert not failures, failures[:3]
    assert during, "no call was made while the server was down"
    assert async_result == ["red"]
