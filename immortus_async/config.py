"""Which strategy tracks a job: inline, else global, else inferred from the queue.

The order is Immortus's: a strategy given on the job itself
(``@tracked(strategy=...)``) wins over the one set with :func:`configure`, which
wins over the one inferred from the queue adapter.

=============  ====================
queue adapter  inferred strategy
=============  ====================
``"arq"``      ``"redis_pub_sub"``
``"taskiq"``   ``"redis_pub_sub"``
``"streaq"``   ``"redis_pub_sub"``
``"memory"``   ``"memory"``
=============  ====================

(the table of :mod:`immortus_async.adapters`; ``"arq"`` when none is configured.)

It also holds the process-wide retention of ``"redis_pub_sub"`` records
(``configure(ttl=..., tombstone_ttl=..., active_ttl=...)``): the worker writes
records and the web process writes ``queued`` ones too, so both must set the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from . import adapters
from .registry import StrategySpec, resolve_strategy

__all__ = ["INFERRED_STRATEGIES", "configure", "queue_adapter", "strategy_for"]

INFERRED_STRATEGIES: dict[str, str] = {
    name: entry.inferred_strategy for name, entry in adapters.ADAPTERS.items()
}
"""The strategy inferred from each queue adapter."""

_UNSET: Any = object()


@dataclass(frozen=True)
class _Retention:
    """Seconds a ``"redis_pub_sub"`` record is kept; see :func:`configure`."""

    # arq keeps a result an hour (keep_result=3600): a record outlives it no longer.
    ttl: float = 3600
    tombstone_ttl: float = 3600
    # arq gives up on a job not started within a day (expires_extra_ms).
    active_ttl: float = 86_400

    def __post_init__(self) -> None:
        for name, value in (("ttl", self.ttl), ("active_ttl", self.active_ttl)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        tombstone = self.tombstone_ttl
        if isinstance(tombstone, bool) or not isinstance(tombstone, int | float) or tombstone < 0:
            raise ValueError(f"tombstone_ttl must be a number of seconds >= 0, got {tombstone!r}")


_retention = _Retention()
_global_strategy: StrategySpec | None = None
# None until configure() chooses one: then the default adapter's, if installed.
_queue_adapter: str | None = None
# Function name (as the queue knows it) -> its inline strategy, filled by @tracked,
# so that a waiter holding only a function name finds the job's strategy.
_inline: dict[str, StrategySpec] = {}


def configure(
    *,
    tracking_strategy: StrategySpec | None = _UNSET,
    queue_adapter: str = _UNSET,
    # Retention
    ttl: float = _UNSET,
    tombstone_ttl: float = _UNSET,
    active_ttl: float = _UNSET,
) -> None:
    """Set process-wide defaults. Only the arguments given change.

    The retention (``ttl``, ``tombstone_ttl``, ``active_ttl``) is read by every
    :class:`~immortus_async.RedisPubSubStrategy` built afterwards without its own
    values: the ones a :class:`~immortus_async.Tracker`, ``@tracked`` and the
    bridge build by name. Call it in the worker's module and in the web process
    alike (both write records: the worker every change, the web process the
    ``queued`` state of :meth:`Tracker.enqueue <immortus_async.Tracker.enqueue>`)::

        configure(ttl=600, tombstone_ttl=600)  # keep finished jobs ten minutes

    Args:
        tracking_strategy: the global strategy (a name, a ``"module:Class"``
            path, a class or an instance), or None to fall back to inference.
            It is resolved now, so a typo fails here rather than at first use.
        queue_adapter: ``"arq"`` (the default), ``"taskiq"``, ``"streaq"`` or
            ``"memory"``: decides the inferred strategy and the queue whose own
            records answer for jobs with no record of ours.
        ttl: seconds a job's record is kept after its terminal state (default
            3600, as long as arq keeps a result).
        tombstone_ttl: seconds a small tombstone outlives the record, so that
            the job reads ``expired`` rather than ``unknown`` (default 3600).
        active_ttl: seconds a job's record is kept after its last change (or
            heartbeat) while it has not ended (default 86400, as long as arq
            waits for a queued job to start).

    Raises:
        StrategyNotFound: ``tracking_strategy`` names nothing.
        ValueError: unknown ``queue_adapter``; ``ttl`` or ``active_ttl`` not a
            positive number; ``tombstone_ttl`` negative.
    """
    global _global_strategy, _queue_adapter, _retention
    given = {
        name: value
        for name, value in (
            ("ttl", ttl),
            ("tombstone_ttl", tombstone_ttl),
            ("active_ttl", active_ttl),
        )
        if value is not _UNSET
    }
    retention = replace(_retention, **given)
    if tracking_strategy is not _UNSET:
        if tracking_strategy is not None:
            resolve_strategy(tracking_strategy)
        _global_strategy = tracking_strategy
    if queue_adapter is not _UNSET:
        if queue_adapter not in adapters.ADAPTERS:
            raise ValueError(
                f"unknown queue_adapter {queue_adapter!r}; "
                f"choose one of {', '.join(sorted(adapters.ADAPTERS))}"
            )
        _queue_adapter = queue_adapter
    _retention = retention


def queue_adapter() -> str | None:
    """The queue adapter :func:`configure` chose; None when it chose none (then
    ``"arq"``'s strategy is inferred, and arq's records answer where arq is installed)."""
    return _queue_adapter


def set_inline_strategy(function_name: str, spec: StrategySpec) -> None:
    """Record the inline strategy of a job function (what ``@tracked`` does)."""
    resolve_strategy(spec)
    _inline[function_name] = spec


def _inline_for(function: Callable[..., Any] | str | None) -> StrategySpec | None:
    if function is None:
        return None
    if isinstance(function, str):
        return _inline.get(function)
    spec: StrategySpec | None = getattr(function, "__immortus_strategy__", None)
    if spec is not None:
        return spec
    return _inline.get(getattr(function, "__qualname__", ""))


def strategy_for(
    function: Callable[..., Any] | str | None = None,
    *,
    override: StrategySpec | None = None,
) -> StrategySpec:
    """The spec that tracks jobs of ``function``: inline, else global, else inferred.

    ``override`` (a Tracker's own ``tracking_strategy``) stands in for the global
    one. ``function`` is the job function or the name the queue knows it by.
    """
    return (
        _inline_for(function)
        or override
        or _global_strategy
        or INFERRED_STRATEGIES[_queue_adapter or adapters.DEFAULT]
    )
