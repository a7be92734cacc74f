"""Deadlines, the retry plan, backoff and the retry budget (gRPC A6), without a server.

Attempts fail with the statuses and messages Triton 2.51 and gRPC really return (recorded in
``cvserve.client.errors``); the plan is run by the same driver the blocking client uses.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from tritonclient.utils import InferenceServerException

from cvserve.client import DeadlineExceeded, InvalidInput, RetryBudget, RetryPolicy, ServerUnavailable
from cvserve.client._effects import Rpc, Sleep, arun, run
from cvserve.client._retry import Deadline, retrying
from cvserve.client.errors import ClientError, map_error

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.004)
NOT_CONNECTED = ("UNAVAILABLE", "failed to connect to all addresses; last error: Connection refused")
QUEUE_FULL = ("UNAVAILABLE", "[request id: <id_unknown>] Exceeds maximum queue size")
QUEUE_TIMEOUT = ("UNAVAILABLE", "Request timeout expired")
STOPPING = (
    "UNAVAILABLE",
    "Server is stopping, scheduler for model has stopped accepting new inference requests",
)
SOCKET_CLOSED = ("UNAVAILABLE", "Stream removed (Socket closed)")
RELOADING = ("NOT_FOUND", "Request for unknown model: 'm' has no available versions")


def err(code: str, msg: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg, status=f"StatusCode.{code}")


def mapper(exc, attempts, note=""):
    return map_error(exc, model="m", url="h:1", timeout=1.0, attempts=attempts, note=note)


class Server:
    """Answers attempts with the failures given, in turn, then with the time it was left."""

    def __init__(self, *failures: tuple[str, str]) -> None:
        self.failures = list(failures)
        self.calls: list[float] = []
        self.sleeps: list[float] = []

    def perform(self, effect):
        if isinstance(effect, Sleep):
            self.sleeps.append(effect.seconds)
            return time.sleep(effect.seconds)
        assert isinstance(effect, Rpc)
        self.calls.append(effect.kwargs["client_timeout"])
        if self.failures:
            raise err(*self.failures.pop(0))
        return effect.kwargs["client_timeout"]


def call(server: Server, *, timeout=5.0, policy=FAST, budget=None, deadline=None, expired=None):
    plan = retrying(
        lambda remaining: Rpc("infer", (), {"client_timeout": remaining}),
        deadline=deadline or Deadline(timeout),
        policy=policy,
        budget=budget or RetryBudget(),
        map_error=mapper,
        expired=expired,
    )
    return run(plan, server.perform)


def test_backoff_is_full_jitter_under_a_growing_cap():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2)
    rng = random.Random(0)
    for retry, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)):
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= cap
        assert max(delays) > cap * 0.8  # spread over the whole range


def test_policy_defaults_and_validation():
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.max_tokens, policy.token_ratio) == (4, 10.0, 0.1)
    assert (policy.initial_backoff_s, policy.max_backoff_s, policy.multiplier) == (0.05, 1.0, 2.0)
    assert policy.wait_for_ready
    for bad in ({"max_attempts": 0}, {"max_attempts": 6}, {"multiplier": 0.5}, {"max_tokens": 0}):
        with pytest.raises(InvalidInput):
            RetryPolicy(**bad)
    for bad in (0, -1, None, "1", True):
        with pytest.raises(InvalidInput):
            Deadline(bad)


def test_budget_is_a6_token_bucket():
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    assert budget.tokens == 10 and budget.allows_retry()
    for _ in range(5):
        budget.failed()
    assert budget.tokens == 5 and not budget.allows_retry()  # retries need more than half
    budget.succeeded()
    assert budget.allows_retry()
    for _ in range(100):
        budget.failed()
    assert budget.tokens == 0
    for _ in range(1000):
        budget.succeeded()
    assert budget.tokens == 10  # never above max_tokens


@pytest.mark.parametrize(("failure", "cost"), [(QUEUE_FULL, 1), (QUEUE_TIMEOUT, 1), (SOCKET_CLOSED, 0)])
def test_turned_away_or_lost_is_retried_with_backoff(failure, cost):
    server = Server(failure, failure)
    budget = RetryBudget()
    assert call(server, budget=budget) > 0
    assert len(server.calls) == 3 and len(server.sleeps) == 2
    assert server.calls == sorted(server.calls, reverse=True)  # each attempt gets the time left
    assert budget.tokens == pytest.approx(min(10, 10 - 2 * cost + 0.1))


def test_a_lost_connection_spends_no_budget_but_counts_attempts():
    budget = RetryBudget(max_tokens=2)
    server = Server(*[SOCKET_CLOSED] * 10)
    with pytest.raises(ServerUnavailable, match="after 4 attempts") as info:
        call(server, budget=budget)  # e.g. a killed server with many requests in flight
    assert info.value.attempts == 4 and budget.tokens == 2


def test_at_most_max_attempts_then_the_mapped_error_with_the_count():
    server = Server(*[QUEUE_FULL] * 10)
    with pytest.raises(ServerUnavailable, match="overloaded after 3 attempts") as info:
        call(server, policy=RetryPolicy(max_attempts=3, initial_backoff_s=0))
    assert len(server.calls) == 3 and info.value.attempts == 3 and info.value.code == "UNAVAILABLE"


def test_the_budget_stops_retries_when_the_server_keeps_failing():
    budget = RetryBudget(max_tokens=4, token_ratio=1)
    server = Server(*[QUEUE_FULL] * 10)
    with pytest.raises(ServerUnavailable):
        call(server, budget=budget)  # tokens 4 -> 3 -> 2: the second failure stops the retries
    assert len(server.calls) == 2
    with pytest.raises(ServerUnavailable, match="retry budget is spent") as info:
        call(server, budget=budget)  # no retry at all now
    assert len(server.calls) == 3 and info.value.attempts == 1
    server.failures.clear()
    assert call(server, budget=budget) and budget.tokens == 2  # a success gives back token_ratio
    server.failures[:] = [QUEUE_FULL]
    with pytest.raises(ServerUnavailable, match="retry budget"):
        call(server, budget=budget)


def test_waiting_for_the_server_is_not_an_attempt_and_costs_no_budget():
    budget = RetryBudget()
    server = Server(*[STOPPING] * 3, *[RELOADING] * 2, *[NOT_CONNECTED] * 3, QUEUE_FULL)
    assert call(server, budget=budget, policy=RetryPolicy(max_attempts=2, initial_backoff_s=0.001)) > 0
    assert len(server.calls) == 10  # 8 waits for a server, 1 retried rejection, the success
    assert budget.tokens == pytest.approx(10 - 1 + 0.1)


def test_waiting_for_the_server_stops_at_the_deadline_or_when_turned_off():
    server = Server(*[NOT_CONNECTED] * 100_000)
    with pytest.raises(ServerUnavailable, match=r"cannot reach.*attempts") as info:
        call(server, timeout=0.2)
    assert info.value.attempts > 3
    server = Server(NOT_CONNECTED)
    with pytest.raises(ServerUnavailable):
        call(server, policy=RetryPolicy(wait_for_ready=False))
    assert len(server.calls) == 1


@pytest.mark.parametrize(
    "failure",
    [
        ("INVALID_ARGUMENT", "image 1 of 1: not a decodable image"),
        ("NOT_FOUND", "Request for unknown model: 'm' is not found"),
        ("NOT_FOUND", "Request for unknown model: 'm' version 3 is not found"),
        ("INTERNAL", "onnxruntime failed"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded"),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (5 vs. 4)"),
        ("RESOURCE_EXHAUSTED", "quota exceeded"),
        ("UNAUTHENTICATED", "bad token"),
    ],
)
def test_bad_processed_or_too_large_is_never_retried(failure):
    server = Server(failure)
    budget = RetryBudget()
    with pytest.raises(ClientError) as info:
        call(server, budget=budget)
    assert len(server.calls) == 1 and info.value.code == failure[0] and info.value.attempts == 1
    assert budget.tokens == 10  # only retryable failures spend the budget


def test_retries_off():
    server = Server(QUEUE_FULL)
    with pytest.raises(ServerUnavailable):
        call(server, policy=None)
    assert len(server.calls) == 1


def test_retries_stop_inside_the_deadline():
    server = Server(*[QUEUE_FULL] * 100)
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=1.0)
    with pytest.raises(ServerUnavailable):
        call(server, timeout=0.05, policy=policy)
    # every backoff drawn so far fitted in the 50 ms left: no sleep was planned past the deadline
    assert sum(server.sleeps) < 0.05 and len(server.calls) == len(server.sleeps) + 1


def test_no_attempt_once_the_deadline_has_passed():
    deadline = Deadline(1.0)
    deadline.expires = time.monotonic() - 0.001  # it passed a moment ago
    server = Server()
    with pytest.raises(DeadlineExceeded):
        call(server, deadline=deadline)
    assert server.calls == []


def test_the_same_plan_runs_under_asyncio():
    server = Server(QUEUE_FULL, NOT_CONNECTED)

    async def perform(effect):
        if isinstance(effect, Sleep):
            return await asyncio.sleep(effect.seconds)
        return server.perform(effect)

    plan = retrying(
        lambda remaining: Rpc("infer", (), {"client_timeout": remaining}),
        deadline=Deadline(5),
        policy=FAST,
        budget=RetryBudget(),
        map_error=mapper,
    )
    assert asyncio.run(arun(plan, perform)) > 0
    assert len(server.calls) == 3


def test_a_request_dropped_from_the_queue_for_its_own_deadline_is_deadline_exceeded_and_not_retried():
    """The client sends each request a queue timeout taken from the call's deadline; when the server
    drops it for that, the caller's deadline is what failed: no retry, and no budget spent."""
    server, budget = Server(QUEUE_TIMEOUT, QUEUE_TIMEOUT), RetryBudget()
    with pytest.raises(DeadlineExceeded, match="dropped it from the model's queue") as info:
        call(server, budget=budget, expired=lambda exc: True)
    assert len(server.calls) == 1 and info.value.attempts == 1 and budget.tokens == 10
    # The model's own queue timeout (overload, with more of the deadline left) is retried as before.
    server = Server(QUEUE_TIMEOUT)
    assert call(server, expired=lambda exc: False) > 0 and len(server.calls) == 2
