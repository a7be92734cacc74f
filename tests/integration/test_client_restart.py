"""A server restart while clients keep calling: retried calls succeed once it is back; without retries
they raise ServerUnavailable. The restarted server is a new TritonServer on the same ports. A graceful
stop (SIGTERM) and a kill -9 with requests in flight are both covered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cvserve.client import AsyncClient, Client, ClientMetrics, ServerUnavailable
from cvserve.server import ServerSettings, TritonServer
from tests.integration._client_fixtures import png, write_repository
from tests.integration._stats import pending_requests, wait_for

TOY = "toy_classifier"


def _start_again(first: TritonServer) -> TritonServer:
    """A new server on the same repository and ports as ``first``, once ready."""
    s = first.settings
    second = TritonServer(
        ServerSettings(
            repository=s.repository,
            grpc_port=first.grpc_port,
            http_port=first.http_port,
            metrics_port=first.metrics_port,
            exit_timeout_s=s.exit_timeout_s,
        )
    )
    second.start()
    second.wait_ready()
    return second


def test_calls_during_a_restart(tmp_path):
    repo = write_repository(tmp_path / "models", only={"toy_classifier"})
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
            time.sleep(0.02)  # pacing: about 50 calls a second, not a wait for a state

    def answered(sent_after: float = 0.0) -> bool:
        return any(o[0] >= sent_after and o[2] == "red" for o in list(outcomes))

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
        wait_for(answered, 30, "a call answered before the restart", poll_s=0.02)
        down_at = time.monotonic()
        first.stop()
        with pytest.raises(ServerUnavailable):
            no_retry.classify([image])
        async_caller = threading.Thread(target=async_call)
        async_caller.start()
        second = _start_again(first)
        up_at = time.monotonic()
        async_caller.join(15)
        wait_for(lambda: answered(up_at), 30, "a call sent after the restart answered", poll_s=0.02)
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


def _stub_debris(server: TritonServer) -> tuple[list[int], list[Path]]:
    """The python-backend stub processes of ``server`` and the shared-memory regions they use."""
    pids, regions = [], []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and argv and argv[0].endswith(b"triton_python_backend_stub"):
            if str(server.pid).encode() in argv:  # the stub names its parent's pid
                pids.append(int(proc.name))
                regions += [Path("/dev/shm") / a.decode() for a in argv if a.startswith(b"triton_python")]
    return pids, regions


def _clean_up_after_kill(pids: list[int], regions: list[Path]) -> None:
    """What a kill -9 of Triton can leave behind (see issue 14): its stubs and their shared memory."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for region in regions:
        region.unlink(missing_ok=True)


def test_requests_in_flight_when_the_server_is_killed_are_sent_again(tmp_path):
    from prometheus_client import CollectorRegistry

    repo = write_repository(tmp_path / "models", only={"slow_classifier"})
    settings = ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    first = TritonServer(settings)
    first.start()
    first.wait_ready()
    second: TritonServer | None = None
    registry = CollectorRegistry()
    client = Client(
        first.grpc_url, model="slow_classifier", timeout=30, metrics=ClientMetrics(registry=registry)
    )
    image = png((250, 10, 10))
    try:
        client.model_info()
        debris = _stub_debris(first)
        with ThreadPoolExecutor(4) as pool:  # one runs (0.3 s a request), three wait in the queue
            calls = [pool.submit(client.classify, [image], top_k=1) for _ in range(4)]
            wait_for(
                lambda: pending_requests(first.metrics_url, "slow_classifier") == 3,
                30,
                "three requests queued behind the running one",
                poll_s=0.02,
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            _clean_up_after_kill(*debris)
            second = _start_again(first)
            labels = [call.result(timeout=60)[0][0].label for call in calls]
    finally:
        client.close()
        first.stop()
        if second is not None:
            second.stop()
    lost = registry.get_sample_value(
        "cvserve_client_retries_total", {"model": "slow_classifier", "code": "UNAVAILABLE"}
    )
    print(f"\nkill -9 with 4 requests in flight: all answered after the restart, {lost:g} retries and waits")
    assert labels == ["0"] * 4  # slow_classifier has no labels: class 0 is red
    assert lost >= 4  # every request in flight was lost once and sent again
    assert client.retry_budget.tokens == client.retry_budget.max_tokens  # lost connections cost no budget
