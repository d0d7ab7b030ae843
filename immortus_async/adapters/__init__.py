"""Queue adapters: everything about one queue, in one folder, loaded on first use.

A queue adapter (Immortus: the ActiveJob queue adapter) holds what is about one
queue: the job-side integration through the queue's own extension point (built on
:mod:`immortus_async.jobside`), the strategy that reads the queue's own records,
the enqueue helper and the strategy inferred for it. The rest of the package names
no queue: it finds an adapter here, by name (:func:`load`,
``configure(queue_adapter=...)``) or from the object a caller gives
(:func:`for_target`, ``Tracker.enqueue(pool, ...)``).

=========  =================  ===============================  ====================
adapter    inferred strategy  what it reads                    install
=========  =================  ===============================  ====================
``arq``    ``redis_pub_sub``  arq's job, in-progress, retry    ``[arq]``
                              and result keys (``"arq"``)
``taskiq`` ``redis_pub_sub``  taskiq's result backend and its  ``[taskiq]``
                              progress records (``"taskiq"``)
``streaq`` ``redis_pub_sub``  streaQ's task status and         ``[streaq]``
                              results (``"streaq"``)
``memory`` ``memory``         nothing (in-process)             (none)
=========  =================  ===============================  ====================

An adapter module exposes ``adapter``, an object of the :class:`QueueAdapter`
protocol, and its names in ``__all__``. Importing an adapter whose queue is not
installed raises ImportError with the command that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from redis.asyncio import Redis

__all__ = [
    "ADAPTERS",
    "DEFAULT",
    "Aborted",
    "AdapterEntry",
    "QueueAdapter",
    "Queued",
    "for_target",
    "installed",
    "load",
    "records_of",
    "require",
]

Queued = Callable[[str, str | None], Awaitable[None]]
"""``await queued(job_id, function)``: records the ``queued`` state of a job."""

Aborted = Callable[[str], Awaitable[None]]
"""``await aborted(job_id)``: records the ``aborted`` state of a job that the queue
took out before it ran (no worker will record it)."""


@runtime_checkable
class QueueAdapter(Protocol):
    """What the core asks of a queue adapter."""

    name: str
    """The adapter's name, as ``configure(queue_adapter=...)`` takes it."""

    inferred_strategy: str
    """The strategy a job of this queue is tracked with when nothing else is set."""

    records: Callable[[Redis], object] | None
    """Makes the strategy that reads the queue's own records on a given Redis (the
    fallback of ``redis_pub_sub``); None for a queue that keeps none. A class is
    built like any strategy, with the arguments its constructor takes."""

    def accepts(self, target: object) -> bool:
        """True when ``target`` (what ``Tracker.enqueue`` is given) is this queue's."""
        ...

    async def enqueue(
        self,
        target: Any,
        function: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        queued: Queued,
    ) -> Any:
        """Enqueue on ``target``; once the queue has the job, ``await queued(id,
        function name)``; return the queue's own job object (None when the queue
        refused it, with nothing recorded)."""
        ...

    async def abort(self, target: Any, job_id: str, aborted: Aborted) -> None:
        """Ask the queue to abort ``job_id``, a job not yet ended, through ``target``
        (the ``queue`` given to the Tracker, else its queue Redis). A job the queue
        takes out before it runs is recorded with ``await aborted(job_id)``; a
        running one records its own end as the queue cancels it.

        Raises:
            AbortUnsupported: the queue cannot abort the job, or ``target`` is not
                what it aborts through (the message says what is).
        """
        ...


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    """One row of the adapters table: where an adapter lives and what it needs."""

    module: str
    """The adapter's module, imported on first use."""
    inferred_strategy: str
    """The strategy inferred for its jobs (readable without importing the queue)."""
    package: str | None = None
    """The queue's own package, None when the adapter needs none."""
    extra: str | None = None
    """The install extra that brings ``package``."""
    strategy: tuple[str, str] | None = None
    """The name and ``"module:Class"`` path of the strategy reading the queue's records."""

    @property
    def install(self) -> str:
        """The command that installs the queue."""
        return f"pip install 'immortus-async[{self.extra}]'"


ADAPTERS: dict[str, AdapterEntry] = {
    "arq": AdapterEntry(
        "immortus_async.adapters.arq",
        "redis_pub_sub",
        package="arq",
        extra="arq",
        strategy=("arq", "immortus_async.adapters.arq.strategy:ArqStrategy"),
    ),
    "taskiq": AdapterEntry(
        "immortus_async.adapters.taskiq",
        "redis_pub_sub",
        package="taskiq",
        extra="taskiq",
        strategy=("taskiq", "immortus_async.adapters.taskiq.strategy:TaskiqStrategy"),
    ),
    "streaq": AdapterEntry(
        "immortus_async.adapters.streaq",
        "redis_pub_sub",
        package="streaq",
        extra="streaq",
        strategy=("streaq", "immortus_async.adapters.streaq.strategy:StreaqStrategy"),
    ),
    "memory": AdapterEntry("immortus_async.adapters.memory", "memory"),
}
"""Every adapter by name."""

DEFAULT = "arq"
"""The adapter assumed when ``configure(queue_adapter=...)`` chose none."""


def _entry(name: str) -> AdapterEntry:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown queue adapter {name!r}; choose one of {', '.join(sorted(ADAPTERS))}"
        ) from None


def installed(name: str) -> bool:
    """True when the queue of adapter ``name`` can be imported here.

    Raises:
        ValueError: no adapter has that name.
    """
    package = _entry(name).package
    return package is None or importlib.util.find_spec(package) is not None


def require(name: str) -> None:
    """What an adapter module calls first: fail with the install command when its
    queue is missing.

    Raises:
        ImportError: the queue of adapter ``name`` is not installed.
    """
    entry = _entry(name)
    if not installed(name):
        raise ImportError(
            f"the {name} adapter needs {entry.package}, which is not installed: {entry.install}"
        )


def load(name: str) -> QueueAdapter:
    """The adapter called ``name``, its module imported on first use.

    Raises:
        ValueError: no adapter has that name.
        ImportError: its queue is not installed (the message has the install command).
    """
    entry = _entry(name)
    require(name)
    return cast(QueueAdapter, importlib.import_module(entry.module).adapter)


def records_of(name: str | None) -> Callable[[Redis], object] | None:
    """What makes the reader of the records of adapter ``name``'s queue (None: the
    queue keeps none). For ``name`` None (none configured), the default adapter's,
    if its queue is installed here, else None.

    Raises:
        ValueError: no adapter has that name.
        ImportError: its queue is not installed (the message has the install command).
    """
    if name is None:
        name = DEFAULT
        if not installed(name):
            return None
    return load(name).records


def for_target(target: object) -> QueueAdapter:
    """The adapter whose queue ``target`` belongs to (an arq pool, a taskiq broker...).

    Only adapters whose queue this process has already imported are asked: an
    object of a queue comes from an imported module, and no other queue is imported.

    Raises:
        TypeError: no adapter accepts ``target``.
    """
    for name, entry in ADAPTERS.items():
        if entry.package is not None and entry.package in sys.modules:
            adapter = load(name)
            if adapter.accepts(target):
                return adapter
    raise TypeError(
        f"no queue adapter takes {type(target).__name__!r}: pass an arq pool, a taskiq "
        "broker or a streaQ worker (with its queue installed)"
    )
