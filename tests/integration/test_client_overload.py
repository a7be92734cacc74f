"""Overload against a real Triton whose queue policy rejects (``_client_fixtures.write_overload_repository``).

``queue_full`` (one instance, 0.3 s a request, ``max_queue_size: 1``) and ``queue_timeout`` (50 ms queue
timeout, REJECT) turn requests away with the statuses Triton 2.51 really returns; the tests check how
the client maps them, that it retries only within ``max_attempts`` and its retry budget, and that
nothing a caller gets back is wrong. A client paced to the queue bound (the default) sends no more than
it admits, so these clients let every caller's request out; with pacing, see test_client_pacing.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cvserve.client import AsyncClient, Client, ClientError, ClientMetrics, RetryPolicy, ServerUnavailable
from tests.integration import _client_fixtures as fx

CALLERS = 8  # concurrent callers against a capacity of one running and at most one queued request
# The client would pace its callers to the queue bound (max_in_flight, tests/integration/
# test_client_pacing.py); these tests let every caller's request out, to meet the server's admission.
UNPACED = CALLERS


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from cvserve.server import ServerSettings, TritonServer

    repo = fx.write_overload_repository(tmp_path_factory.mktemp("overload_repo") / "models")
    settings = ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    with TritonServer(settings) as server:
        yield server


def flood(client: Client, model: str, calls: int) -> list[np.ndarray | ClientError]:
    """``calls`` concurrent infer calls, each with its own value; their outputs or errors, in order."""

    def one(i: int) -> np.ndarray | ClientError:
        x = np.full((1, 1), i, np.float32)
        try:
            return client.infer(model, {"X": x})["Y"]
        except ClientError as exc:
            return exc

    with ThreadPoolExecutor(CALLERS) as pool:
        return list(pool.map(one, range(calls)))


def split(outcomes: list) -> tuple[list[int], list[ClientError]]:
    ok = [i for i, o in enumerate(outcomes) if not isinstance(o, ClientError)]
    for i in ok:
        assert outcomes[i].tolist() == [[float(i)]]  # every answer is the caller's own
    return ok, [o for o in outcomes if isinstance(o, ClientError)]


@pytest.mark.parametrize(
    ("model", "message"),
    [("queue_full", "Exceeds maximum queue size"), ("queue_timeout", "Request timeout expired")],
)
def test_queue_policy_rejections_are_server_unavailable(busy_server, model, message):
    with Client(busy_server.grpc_url, timeout=30, retry=False, max_in_flight=UNPACED) as client:
        client.model_info(model)
        ok, errors = split(flood(client, model, CALLERS))
    assert ok, "the server ran nothing"
    assert errors, f"{model}: no request was rejected by the queue policy"
    for err in errors:
        assert isinstance(err, ServerUnavailable), err
        assert err.code == "UNAVAILABLE" and err.attempts == 1 and err.retryable
        assert message in str(err) and "overloaded" in str(err)
    print(f"\n{model}: {len(errors)} of {CALLERS} rejected: UNAVAILABLE: {errors[0]}")


def test_retries_stay_within_max_attempts_and_the_retry_budget(busy_server):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
    with Client(
        busy_server.grpc_url,
        timeout=30,
        retry=policy,
        metrics=ClientMetrics(registry=registry),
        max_in_flight=UNPACED,
    ) as c:
        ok, errors = split(flood(c, "queue_full", 4 * CALLERS))
        tokens = c.retry_budget.tokens
    retries = registry.get_sample_value(
        "cvserve_client_retries_total", {"model": "queue_full", "code": "UNAVAILABLE"}
    )
    successes = len(ok) + 2  # each call's answer, and the metadata and config fetched once
    print(
        f"\nqueue_full with retries: {len(ok)} answered, {len(errors)} rejected, {retries:g} retries, "
        f"budget {tokens:.1f} of {policy.max_tokens:g} tokens"
    )
    assert ok and errors
    assert all(isinstance(e, ServerUnavailable) and 1 <= e.attempts <= policy.max_attempts for e in errors)
    # A retry is sent only while more than half the budget is left: each rejection takes a token and
    # each success gives back token_ratio, so no more than this many retries can have been sent.
    assert retries <= policy.max_tokens / 2 + policy.token_ratio * successes + 1e-9
    assert any("retry budget is spent" in str(e) for e in errors)
    assert tokens <= policy.max_tokens / 2 + policy.token_ratio * successes


def test_a_request_rejected_from_the_queue_is_retried_and_answered(busy_server):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    # Two callers: one runs for 0.3 s while the other waits in the queue past its 50 ms timeout; Triton
    # rejects it when the instance frees up, and the client's retry finds the model idle.
    with Client(busy_server.grpc_url, timeout=30, metrics=ClientMetrics(registry=registry)) as client:
        client.model_info("queue_timeout")
        ok, errors = split(flood(client, "queue_timeout", 2))
    assert not errors and ok == [0, 1]
    get = registry.get_sample_value
    assert get("cvserve_client_retries_total", {"model": "queue_timeout", "code": "UNAVAILABLE"}) == 1


def test_async_client_under_overload(busy_server):
    async def main() -> list[object]:
        async with AsyncClient(busy_server.grpc_url, timeout=30, retry=False, max_in_flight=UNPACED) as ac:
            await ac.model_info("queue_full")

            async def one(i: int) -> object:
                try:
                    return (await ac.infer("queue_full", {"X": np.full((1, 1), i, np.float32)}))["Y"]
                except ClientError as exc:
                    return exc

            return await asyncio.gather(*(one(i) for i in range(CALLERS)))

    ok, errors = split(asyncio.run(main()))
    assert ok and errors
    assert all(isinstance(e, ServerUnavailable) and "Exceeds maximum queue size" in str(e) for e in errors)


def test_by_default_the_client_sends_no_more_than_the_queue_admits(busy_server):
    """The same callers with the default pacing (queue bound 1, one instance: one request out at a
    time): every call is answered, none is turned away."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    with Client(busy_server.grpc_url, timeout=60, metrics=ClientMetrics(registry=registry)) as client:
        assert client.model_info("queue_full").max_queue_size == 1
        ok, errors = split(flood(client, "queue_full", CALLERS))
    assert not errors and ok == list(range(CALLERS))
    assert (
        registry.get_sample_value(
            "cvserve_client_retries_total", {"model": "queue_full", "code": "UNAVAILABLE"}
        )
        is None
    )


def test_a_request_that_could_no_longer_answer_in_time_is_dropped_from_the_queue_unrun(busy_server):
    """Each request carries a queue timeout: the call's deadline less what a request takes outside the
    queue. 8 calls at once with a 2 s deadline at a model that runs one per 0.6 s: the ones that would
    answer too late are dropped from Triton's queue instead of run, and fail as the deadline they are."""
    import tritonclient.grpc as grpcclient

    from cvserve.client import DeadlineExceeded

    stats = grpcclient.InferenceServerClient(busy_server.grpc_url.removeprefix("grpc://"))

    def runs() -> int:
        model = stats.get_inference_statistics("deadline").model_stats[0]
        return model.inference_stats.success.count

    budget = RetryPolicy().max_tokens
    with Client(busy_server.grpc_url, timeout=2.0, max_in_flight=UNPACED) as client:
        for i in range(2):  # what a request takes when it does not wait: 0.6 s
            client.infer("deadline", {"X": np.full((1, 1), i, np.float32)})
        before = runs()
        ok, errors = split(flood(client, "deadline", CALLERS))
        tokens = client.retry_budget.tokens
    assert ok and errors
    assert all(isinstance(e, DeadlineExceeded) for e in errors), errors
    dropped = [e for e in errors if "dropped it from the model's queue" in str(e)]
    assert dropped, errors  # dropped by the server, not timed out waiting for an answer
    assert runs() - before == len(ok)  # nothing ran whose answer came too late
    assert tokens == budget  # no retry budget spent on the caller's own deadline
    print(f"\ndeadline: {len(ok)} answered, {len(dropped)} dropped from the queue, {len(errors)} late")
