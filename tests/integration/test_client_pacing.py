"""Flow control against a real Triton: ordinary concurrency is served, not rejected (issue 22).

``paced_classifier`` has the config a build writes (one request per execution, two instances, the
default queue bound: one max batch of 4 for a model whose throughput is not measured), so without
pacing a burst of calls overfills its queue at once. ``gate`` holds each request until the test lets it
go, so "a request is in flight" is a state the test sets up, not a matter of timing
(``_client_fixtures.write_paced_repository``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cvserve.client import AsyncClient, Client, ClientMetrics, DeadlineExceeded
from tests.integration import _client_fixtures as fx
from tests.integration._stats import requests_served

COLOURS = list(fx.COLOURS)
colour_pngs = fx.colour_pngs  # the module's fixture
LONG_S = 300.0  # the calls' deadline: these tests check outcomes, a busy 2-core machine sets the pace
WAIT_S = 60.0  # upper bound of waits on observable state


@pytest.fixture(scope="module")
def release_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate") / "release"


@pytest.fixture(scope="module")
def paced_server(tmp_path_factory: pytest.TempPathFactory, release_file: Path) -> Iterator[object]:
    from cvserve.server import ServerSettings, TritonServer

    repo = fx.write_paced_repository(tmp_path_factory.mktemp("paced_repo") / "models", release_file)
    settings = ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    with TritonServer(settings) as server:
        yield server


def _metrics():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    return ClientMetrics(registry=registry), registry


def _no_rejection(registry, model: str = fx.PACED) -> None:
    """Nothing was turned away by the server: no retry, no error."""
    for name in ("cvserve_client_retries_total", "cvserve_client_errors_total"):
        found = [s for m in registry.collect() for s in m.samples if s.name == name]
        assert not [s for s in found if s.labels.get("model") == model and s.value], found


def test_the_client_reads_the_models_admission_from_the_server(paced_server):
    with Client(paced_server.grpc_url, model=fx.PACED) as client:
        info = client.model_info()
    assert (info.max_queue_size, info.instances) == (fx.TOY_MAX_BATCH, 2)


@pytest.mark.parametrize("calls", [200, 2000])
def test_a_burst_of_concurrent_async_calls_is_paced_and_every_call_answered(paced_server, colour_pngs, calls):
    metrics, registry = _metrics()

    async def main() -> list:
        async with AsyncClient(paced_server.grpc_url, model=fx.PACED, timeout=LONG_S, metrics=metrics) as ac:
            images = [colour_pngs[COLOURS[i % 3]] for i in range(calls)]
            return await asyncio.gather(*(ac.classify([image], top_k=1) for image in images))

    results = asyncio.run(main())
    assert [r[0][0].label for r in results] == [COLOURS[i % 3] for i in range(calls)]
    _no_rejection(registry)
    waits = registry.get_sample_value("cvserve_client_local_wait_seconds_count", {"model": fx.PACED})
    assert waits == calls  # every request went through the client's slots
    assert registry.get_sample_value("cvserve_client_in_flight", {"model": fx.PACED}) == 0


def test_64_threads_of_sync_calls_share_the_bound_and_every_call_is_answered(paced_server, colour_pngs):
    metrics, registry = _metrics()

    with Client(paced_server.grpc_url, model=fx.PACED, timeout=LONG_S, metrics=metrics) as client:

        def caller(worker: int) -> list[str]:
            colour = COLOURS[worker % 3]
            return [client.classify([colour_pngs[colour]], top_k=1)[0][0].label for _ in range(10)]

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(caller, range(64)))
    assert answers == [[COLOURS[w % 3]] * 10 for w in range(64)]
    _no_rejection(registry)


def test_the_parts_of_a_split_call_are_paced_like_separate_requests(paced_server, colour_pngs):
    metrics, registry = _metrics()
    colours = [COLOURS[i % 3] for i in range(3 * fx.TOY_MAX_BATCH)]  # three requests of 4 images

    async def main() -> list:
        async with AsyncClient(paced_server.grpc_url, model=fx.PACED, max_in_flight=1, metrics=metrics) as ac:
            return await ac.classify([colour_pngs[c] for c in colours], top_k=1)

    assert [top[0].label for top in asyncio.run(main())] == colours
    assert registry.get_sample_value("cvserve_client_local_wait_seconds_count", {"model": fx.PACED}) == 3


def test_a_call_whose_deadline_passes_while_it_waits_locally_says_so(paced_server, release_file):
    metrics, registry = _metrics()
    url, x = paced_server.grpc_url, {"X": np.ones((1, 1), np.float32)}
    served = requests_served(url, "gate")
    with (
        Client(url, timeout=WAIT_S, max_in_flight=1, metrics=metrics) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        client.model_info("gate")
        holder = pool.submit(client.infer, "gate", x)  # takes the only slot; the gate holds it there
        ticks = threading.Event()
        while registry.get_sample_value("cvserve_client_in_flight", {"model": "gate"}) != 1:
            assert not holder.done(), holder.result()
            ticks.wait(0.01)
        with pytest.raises(DeadlineExceeded) as caught:
            client.infer("gate", x, timeout=0.2)  # waits in the client for the slot the held request keeps
        release_file.touch()
        assert holder.result(WAIT_S)["Y"].tolist() == [[1.0]]
    message = str(caught.value)
    assert "waited" in message and "in this client" in message and "max_in_flight" in message
    assert caught.value.attempts == 0 and caught.value.code == "DEADLINE_EXCEEDED"
    assert requests_served(url, "gate", at_least=served + 1) == served + 1  # the second was never sent
    assert registry.get_sample_value("cvserve_client_local_wait_seconds_count", {"model": "gate"}) == 2
