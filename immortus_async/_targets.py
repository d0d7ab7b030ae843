"""What ``Tracker.enqueue`` is given, by its shape: for the type checker only.

``Tracker.enqueue``'s overloads are keyed on these, so that a user's type checker
sees the queue's own job type come back (arq's ``Job | None``, taskiq's
``AsyncTaskiqTask``, streaQ's ``Task``). Each is a protocol rather than the
queue's class: where a queue is not installed, its classes are ``Any`` to the
type checker, and an overload keyed on ``Any`` would take every call, whatever
the queue. Each names a method only its queue's object has.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = ["ArqPool", "J", "P", "R", "StreaqWorker", "TaskiqBroker"]

J = TypeVar("J", covariant=True)
"""The job type a queue's enqueue returns."""
P = ParamSpec("P")
"""A task function's parameters."""
R = TypeVar("R")
"""A task function's result."""


class ArqPool(Protocol[J]):
    """An ``arq.ArqRedis``: what its ``enqueue_job`` returns is the job (``Job | None``)."""

    def enqueue_job(self, function: str, *args: Any, **kwargs: Any) -> Awaitable[J]:
        """arq's enqueue."""
        ...


class TaskiqBroker(Protocol):
    """A taskiq ``AsyncBroker``."""

    def find_task(self, task_name: str) -> Any:
        """The broker's task of that name."""
        ...


class StreaqWorker(Protocol):
    """A ``streaq.Worker``."""

    def enqueue_unsafe(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """streaQ's enqueue by name."""
        ...
