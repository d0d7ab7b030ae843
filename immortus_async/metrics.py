"""Prometheus metrics: the browser side, the waiters' pub/sub, the job side's writes.

Off until :func:`enable` is called; needs ``pip install 'immortus-async[metrics]'``
(``prometheus-client``)::

    import prometheus_client
    import immortus_async.metrics

    immortus_async.metrics.enable()            # on prometheus_client.REGISTRY
    prometheus_client.start_http_server(9100)  # or the bridge's or mount's /metrics

:func:`enable` is process-wide: the Tracker, the bridge, the ASGI mount and the job
side of that process all count on the registry it is given, by default
``prometheus_client.REGISTRY`` (what ``start_http_server`` and most exporters
serve); pass a ``CollectorRegistry`` of your own to keep them apart. The bridge
(``serve(metrics_token=...)``) and the mount (``app(tracker, metrics_token=...)``)
serve that registry at ``/metrics`` to a scraper that sends
``Authorization: Bearer <token>``.

================================================  ========================================
metric                                            what it counts
================================================  ========================================
``immortus_connections_total{transport}``         websocket connections and event streams
                                                  opened (``transport``: ``websocket``,
                                                  ``events``)
``immortus_connections_open{transport}``          open now
``immortus_subscriptions_total``                  subscriptions to a job made by clients
``immortus_subscriptions_open``                   followed now
``immortus_frames_sent_total``                    frames (states, errors) sent to clients
``immortus_states_coalesced_total``               states a slow client skipped: a newer one
                                                  replaced them before they were sent
``immortus_slow_client_closes_total``             clients closed for not reading (4008)
``immortus_errors_total{code}``                   error frames and HTTP errors, by code
``immortus_pubsub_reconnects_total``              pub/sub connections made again after a
                                                  loss
``immortus_pubsub_resyncs_total``                 waiters that re-read their job's state
                                                  after a reconnect
``immortus_write_retries_total``                  job-side writes tried again (Redis did
                                                  not answer in time, or was unreachable)
``immortus_write_give_ups_total``                 job-side states given up on after
                                                  ``retry_for``
``immortus_fallback_mode{queue,mode}``            1 for how the queue's records are
                                                  watched (``arq``: ``keyspace`` or
                                                  ``poll``)
``immortus_wake_latency_seconds``                 from a job's end (its ``finished_at``) to
                                                  the moment :meth:`Tracker.completed
                                                  <immortus_async.Tracker.completed>`
                                                  returns it, for waiters that waited
================================================  ========================================

Counting never gets in tracking's way: with metrics off, each place that counts
makes one call that returns at once; with them on, whatever a metric raises is
logged at DEBUG and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["INSTALL", "disable", "enable", "enabled_registry"]

logger = logging.getLogger("immortus_async.metrics")

INSTALL = "pip install 'immortus-async[metrics]'"
"""The command that installs what metrics need (``prometheus-client``)."""

# Wake latency is a push through Redis: milliseconds when all is well, seconds
# when a waiter reconnected or rode out an outage.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Metrics:
    """The metrics of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        ns = "immortus"
        self.connections_total = Counter(
            "connections", "Connections opened by clients.", ["transport"], ns, registry=registry
        )
        self.connections = Gauge(
            "connections_open", "Connections open now.", ["transport"], ns, registry=registry
        )
        self.subscriptions_total = Counter(
            "subscriptions", "Subscriptions to a job made by clients.", (), ns, registry=registry
        )
        self.subscriptions = Gauge(
            "subscriptions_open", "Jobs followed by clients now.", (), ns, registry=registry
        )
        self.frames_sent = Counter(
            "frames_sent", "Frames sent to clients.", (), ns, registry=registry
        )
        self.states_coalesced = Counter(
            "states_coalesced",
            "States a slow client skipped, replaced by a newer one before they were sent.",
            (),
            ns,
            registry=registry,
        )
        self.slow_client_closes = Counter(
            "slow_client_closes",
            "Clients closed because they did not read.",
            (),
            ns,
            registry=registry,
        )
        self.errors = Counter(
            "errors", "Errors answered to clients, by code.", ["code"], ns, registry=registry
        )
        self.reconnects = Counter(
            "pubsub_reconnects",
            "Pub/sub connections made again after a loss.",
            (),
            ns,
            registry=registry,
        )
        self.resyncs = Counter(
            "pubsub_resyncs",
            "Waiters that re-read their job after a reconnect.",
            (),
            ns,
            registry=registry,
        )
        self.write_retries = Counter(
            "write_retries", "Job-side tracking writes tried again.", (), ns, registry=registry
        )
        self.write_give_ups = Counter(
            "write_give_ups", "Job-side tracking states given up on.", (), ns, registry=registry
        )
        self.fallback_mode = Gauge(
            "fallback_mode",
            "How the queue's records are watched.",
            ["queue", "mode"],
            ns,
            registry=registry,
        )
        self.wake_latency = Histogram(
            "wake_latency_seconds",
            "From a job's end to the moment a waiter returns it.",
            namespace=ns,
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self._collectors = [value for value in vars(self).values() if value is not registry]

    def unregister(self) -> None:
        for collector in self._collectors:
            self.registry.unregister(collector)

    def opened(self, transport: str) -> None:
        self.connections_total.labels(transport).inc()
        self.connections.labels(transport).inc()

    def subscribed(self) -> None:
        self.subscriptions_total.inc()
        self.subscriptions.inc()

    def mode(self, queue: str, mode: str, modes: tuple[str, ...]) -> None:
        for each in modes:
            self.fallback_mode.labels(queue, each).set(each == mode)


_on: _Metrics | None = None


def enable(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Count from now on, on ``registry`` (default ``prometheus_client.REGISTRY``).

    Idempotent for one registry; given another, the metrics move to it (they
    count from zero there). Returns the registry counted on. Call it before the
    servers start: the gauges of what is open count what opens and closes from
    then on.

    Raises:
        ImportError: ``prometheus-client`` is not installed; the message says
            how to install it.
    """
    global _on
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(f"Prometheus metrics need prometheus-client: {INSTALL}") from None
    target = prometheus_client.REGISTRY if registry is None else registry
    if _on is not None and _on.registry is target:
        return target
    disable()
    _on = _Metrics(target)
    return target


def disable() -> None:
    """Stop counting and take the metrics off their registry. Idempotent."""
    global _on
    metrics, _on = _on, None
    if metrics is not None:
        metrics.unregister()


def enabled_registry() -> CollectorRegistry | None:
    """The registry :func:`enable` counts on; None while metrics are off."""
    return None if _on is None else _on.registry


def exposition() -> tuple[bytes, str] | None:
    """The enabled registry in the Prometheus text format, and its content type."""
    if _on is None:
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_on.registry), CONTENT_TYPE_LATEST


def _safely(count: Callable[[], Any]) -> None:
    try:
        count()
    except Exception as exc:
        # A metric must never fail what it counts.
        logger.debug("a metric failed: %r", exc)


# What the package counts: each is one call where it happens, a no-op while off.


def connection_opened(transport: str) -> None:
    """A client connected (``websocket``) or opened an event stream (``events``)."""
    if (m := _on) is not None:
        _safely(lambda: m.opened(transport))


def connection_closed(transport: str) -> None:
    """That connection is over."""
    if (m := _on) is not None:
        _safely(m.connections.labels(transport).dec)


def subscribed() -> None:
    """A client began to follow a job."""
    if (m := _on) is not None:
        _safely(m.subscribed)


def unsubscribed() -> None:
    """That subscription is over."""
    if (m := _on) is not None:
        _safely(m.subscriptions.dec)


def frame_sent() -> None:
    """A frame went to a client."""
    if (m := _on) is not None:
        _safely(m.frames_sent.inc)


def state_coalesced() -> None:
    """A state waiting for a slow client was replaced by a newer one."""
    if (m := _on) is not None:
        _safely(m.states_coalesced.inc)


def slow_client_closed() -> None:
    """A client that did not read was closed."""
    if (m := _on) is not None:
        _safely(m.slow_client_closes.inc)


def error(code: str) -> None:
    """An error ``code`` was answered to a client."""
    if (m := _on) is not None:
        _safely(lambda: m.errors.labels(str(code)).inc())


def reconnected() -> None:
    """A pub/sub connection was made again after a loss."""
    if (m := _on) is not None:
        _safely(m.reconnects.inc)


def resynced() -> None:
    """A waiter was asked to re-read its job after a reconnect."""
    if (m := _on) is not None:
        _safely(m.resyncs.inc)


def write_retried() -> None:
    """The job side tried a tracking write again."""
    if (m := _on) is not None:
        _safely(m.write_retries.inc)


def write_given_up() -> None:
    """The job side gave up on a tracking state."""
    if (m := _on) is not None:
        _safely(m.write_give_ups.inc)


def fallback_mode(queue: str, mode: str, modes: tuple[str, ...]) -> None:
    """``queue``'s records are watched in ``mode`` (1), not in the other ``modes`` (0)."""
    if (m := _on) is not None:
        _safely(lambda: m.mode(queue, mode, modes))


def woke(finished_at: datetime | None) -> None:
    """A waiter returned a terminal state whose job ended at ``finished_at``."""
    if (m := _on) is not None and finished_at is not None:
        # Clocks of two machines: a waiter's may be behind the worker's.
        _safely(
            lambda: m.wake_latency.observe(
                max((datetime.now(UTC) - finished_at).total_seconds(), 0.0)
            )
        )
