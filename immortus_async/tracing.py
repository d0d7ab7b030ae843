"""OpenTelemetry spans: a job's enqueue, its run on a worker, and a waiter's wait, linked.

With ``opentelemetry-api`` installed (``pip install 'immortus-async[otel]'``) the
package makes three spans, after the messaging semantic conventions; with no
tracer provider configured they are the API's no-op spans, and nothing is
recorded or written. Configure a provider (the SDK, an exporter) as for any
instrumented library::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())   # plus the exporter of your choice

================  ========  ==============================================================
span              kind      when
================  ========  ==============================================================
``publish <q>``   PRODUCER  :meth:`Tracker.enqueue <immortus_async.Tracker.enqueue>`,
                            around the queue's enqueue and the ``queued`` write
``process <q>``   CONSUMER  on the worker, from a job attempt's ``started`` to its end;
                            linked to its ``publish`` span; ERROR when the job failed
``wait``          INTERNAL  :meth:`Tracker.completed <immortus_async.Tracker.completed>`;
                            linked to the job's ``publish`` span
================  ========  ==============================================================

``<q>`` is the queue (``arq``, ``taskiq``, ``streaq``). Each span carries
``messaging.system`` (the queue), ``messaging.operation`` (``publish``,
``process``; ``messaging.operation.type`` as the current conventions name it:
``send``, ``process``) and ``messaging.message.id`` (the job id), and
``immortus.function``, ``immortus.attempt``, ``immortus.status`` where known.

How the context travels: at enqueue, when the ``publish`` span records, its W3C
``traceparent`` is written into the job's tracking record (a field of the
``redis_pub_sub`` hash, beside the state, so it expires with it). The worker
reads it as the attempt starts, within the job side's write deadline, only when
its own span records; the waiter likewise. A job that a worker starts before its
``queued`` state is written, or tracked by a strategy without a Redis record,
has no link. The job's own spans are not children of ``process``: a link, as
the conventions advise for a message that was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis

from .keys import Keys

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["INSTRUMENTATION", "TRACEPARENT_FIELD"]

logger = logging.getLogger("immortus_async.tracing")

INSTRUMENTATION = "immortus_async"
"""The instrumentation scope name of every span (``trace.get_tracer(INSTRUMENTATION)``)."""

TRACEPARENT_FIELD = "traceparent"
"""The field of a job's ``redis_pub_sub`` hash that holds its enqueue's W3C traceparent."""

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the [otel] extra is not installed: no spans at all
    _trace = None  # type: ignore[assignment]

# How long a waiter's read of the traceparent may take: as the job side's default
# write deadline; a link is not worth holding a wait longer.
_READ_TIMEOUT = 1.0

# Written only into a record that exists: a record made by this alone would have no TTL.
_CARRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""


def _attributes(queue: str, operation: str, job_id: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": queue.lower(),
        "messaging.operation": operation,
        "messaging.operation.type": "send" if operation == "publish" else operation,
    }
    if job_id is not None:
        attributes["messaging.message.id"] = job_id
    return attributes


def _record(strategy: object, job_id: str) -> tuple[Redis, str] | None:
    """Where ``strategy`` keeps the job's record: a Redis hash, or None (no place)."""
    keys, redis = getattr(strategy, "keys", None), getattr(strategy, "redis", None)
    if isinstance(keys, Keys) and isinstance(redis, Redis):
        return redis, keys.record(job_id)
    return None


@contextlib.contextmanager
def publishing(queue: str, function: object) -> Iterator[None]:
    """The current ``publish`` span around an enqueue (nothing without the API)."""
    if _trace is None:
        yield
        return
    name = function if isinstance(function, str) else getattr(function, "__name__", None)
    attributes = _attributes(queue, "publish", None)
    if name is not None:
        attributes["immortus.function"] = name
    tracer = _trace.get_tracer(INSTRUMENTATION)
    with tracer.start_as_current_span(
        f"publish {queue.lower()}", kind=_trace.SpanKind.PRODUCER, attributes=attributes
    ):
        yield


async def carry(strategy: object, job_id: str) -> None:
    """Name the job on the current ``publish`` span; store its traceparent in the record.

    Never raises: a context that cannot be stored costs the link, nothing else.
    """
    if _trace is None:
        return
    span = _trace.get_current_span()
    if not span.is_recording():
        return
    try:
        span.set_attribute("messaging.message.id", job_id)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        place = _record(strategy, job_id)
        if place is not None and TRACEPARENT_FIELD in carrier:
            redis, key = place
            carry_it = redis.register_script(_CARRY)
            await carry_it(keys=[key], args=[TRACEPARENT_FIELD, carrier[TRACEPARENT_FIELD]])
    except Exception as exc:
        logger.debug("the trace context of job %s was not stored: %r", job_id, exc)


async def link(
    span: Span | None, strategy: object, job_id: str, *, timeout: float = _READ_TIMEOUT
) -> None:
    """Link a recording ``span`` to the job's ``publish`` span, read within ``timeout``.

    Never raises, and reads nothing for a span that does not record.
    """
    if _trace is None or span is None or not span.is_recording():
        return
    place = _record(strategy, job_id)
    if place is None:
        return
    redis, key = place
    try:
        async with asyncio.timeout(timeout):
            stored = await cast(Awaitable[Any], redis.hget(key, TRACEPARENT_FIELD))
        if stored is None:
            return
        text = stored.decode() if isinstance(stored, bytes) else str(stored)
        context = TraceContextTextMapPropagator().extract({TRACEPARENT_FIELD: text})
        linked = _trace.get_current_span(context).get_span_context()
        if linked.is_valid:
            span.add_link(linked)
    except Exception as exc:
        logger.debug("the trace context of job %s was not read: %r", job_id, exc)


def processing(job_id: str, attempt: int, *, queue: str, function: str | None) -> Span | None:
    """A started ``process`` span for one attempt (not current); None without the API."""
    if _trace is None:
        return None
    attributes = _attributes(queue, "process", job_id)
    attributes["immortus.attempt"] = attempt
    if function is not None:
        attributes["immortus.function"] = function
    try:
        return _trace.get_tracer(INSTRUMENTATION).start_span(
            f"process {queue.lower()}", kind=_trace.SpanKind.CONSUMER, attributes=attributes
        )
    except Exception as exc:
        logger.debug("no span for job %s: %r", job_id, exc)
        return None


def finish(span: Span | None, status: str | None = None, error: str | None = None) -> None:
    """End ``span``, with the job's ``status``; ERROR (with ``error``) when it failed."""
    if _trace is None or span is None:
        return
    try:
        if status is not None:
            span.set_attribute("immortus.status", status)
        if status == "failed":
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, error))
        span.end()
    except Exception as exc:
        logger.debug("a span could not be ended: %r", exc)


@contextlib.contextmanager
def waiting(job_id: str) -> Iterator[Span | None]:
    """The current ``wait`` span of a waiter (None without the API)."""
    if _trace is None:
        yield None
        return
    tracer = _trace.get_tracer(INSTRUMENTATION)
    with tracer.start_as_current_span("wait", attributes={"messaging.message.id": job_id}) as span:
        yield span
