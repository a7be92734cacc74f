"""How one implementation serves both clients: each call is written once, as a plan, and run by either.

A *plan* is a generator that yields the I/O it needs as small effect objects and is sent each result
back (or has the error thrown in at the ``yield``):

* :class:`Rpc` - one tritonclient call, by method name;
* :class:`Sleep` - a backoff;
* :class:`Gather` - several sub-plans (the parts of a split batch): the asyncio client runs them
  concurrently, the blocking client one after the other;
* :class:`Exclusive` - a sub-plan run under the client's lock (metadata fetched once per model);
* :class:`Paced` - a sub-plan (one request, retried) run holding one of a bounded number of slots, so a
  client keeps at most that many requests of a model in flight (:mod:`cvserve.client._pacing`).

Request planning, retries, result parsing and error mapping live in the plans
(:class:`cvserve.client._core.ClientCore`); :class:`~cvserve.client.Client` and
:class:`~cvserve.client.AsyncClient` only perform effects, through :func:`run` and :func:`arun`. Their
public methods are made from the plans by :func:`blocking` and :func:`asynchronous`, which keep each
plan's signature and docstring.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeAlias, TypeVar

R = TypeVar("R")
P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Rpc:
    """Call ``method`` of the tritonclient ``InferenceServerClient`` with these arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Gather:
    """Run the sub-plans (concurrently where the client can) and send back the list of their results."""

    plans: tuple[Plan[Any], ...]


@dataclass(frozen=True, slots=True)
class Exclusive:
    """Run the sub-plan holding the client's lock; ``TimeoutError`` if the lock is not free in ``timeout`` s."""

    plan: Plan[Any]
    timeout: float


@dataclass(frozen=True, slots=True)
class Paced:
    """Run the sub-plan holding one of the slots of ``key`` (per client), as many as ``limit`` allows
    (an int, or a :class:`~cvserve.client._pacing.Window` that adapts); ``TimeoutError`` if no slot is
    free within ``timeout`` s. The first sub-plan of a key sets its limit."""

    plan: Plan[Any]
    key: Any
    limit: Any
    timeout: float


Effect: TypeAlias = Rpc | Sleep | Gather | Exclusive | Paced
Plan: TypeAlias = Generator[Effect, Any, R]


class _Step:
    """Drives a plan one effect at a time: send it the last outcome, get the next effect (``None``: done)."""

    __slots__ = ("error", "plan", "result", "value")

    def __init__(self, plan: Plan[Any]) -> None:
        self.plan, self.value, self.error, self.result = plan, None, None, None

    def next(self) -> Effect | None:
        value, error, self.value, self.error = self.value, self.error, None, None
        try:
            return self.plan.throw(error) if error is not None else self.plan.send(value)
        except StopIteration as done:
            self.result = done.value
            return None


def run(plan: Plan[R], perform: Callable[[Effect], Any]) -> R:
    """Run ``plan`` to its result, performing each effect with the blocking ``perform``."""
    step = _Step(plan)
    while (effect := step.next()) is not None:
        try:
            step.value = perform(effect)
        except Exception as exc:  # handed to the plan, which maps or retries it
            step.error = exc
        except BaseException:  # interrupted: the plan's finally blocks (slots, gauges) run now
            plan.close()
            raise
    return step.result  # type: ignore[return-value]


async def arun(plan: Plan[R], perform: Callable[[Effect], Awaitable[Any]]) -> R:
    """Run ``plan`` to its result, awaiting ``perform`` for each effect."""
    step = _Step(plan)
    while (effect := step.next()) is not None:
        try:
            step.value = await perform(effect)
        except Exception as exc:  # handed to the plan, which maps or retries it
            step.error = exc
        except BaseException:  # cancelled: the plan's finally blocks (slots, gauges) run now
            plan.close()
            raise
    return step.result  # type: ignore[return-value]


def blocking(plan: Callable[Concatenate[Any, P], Plan[R]]) -> Callable[Concatenate[Any, P], R]:
    """A blocking method made from the plan method ``plan`` (``self._run`` runs it)."""

    @functools.wraps(plan)
    def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(plan(self, *args, **kwargs))

    return _public(method, plan)


def asynchronous(
    plan: Callable[Concatenate[Any, P], Plan[R]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """A coroutine method made from the plan method ``plan`` (``self._run`` awaits it)."""

    @functools.wraps(plan)
    async def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._run(plan(self, *args, **kwargs))

    return _public(method, plan)


def _public(method: Any, plan: Callable[..., Any]) -> Any:
    """Name the method after its plan (``_classify`` -> ``classify``) and show the result it returns."""
    name = plan.__name__.lstrip("_")
    method.__name__ = name
    method.__qualname__ = f"{plan.__qualname__.rsplit('.', 1)[0]}.{name}"
    signature = inspect.signature(plan)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Plan[") and returns.endswith("]"):
        returns = returns[len("Plan[") : -1]
    method.__signature__ = signature.replace(return_annotation=returns)
    return method


__all__ = [
    "Effect",
    "Exclusive",
    "Gather",
    "Paced",
    "Plan",
    "Rpc",
    "Sleep",
    "arun",
    "asynchronous",
    "blocking",
    "run",
]
