"""OpenTelemetry: enqueue, the job's run on a real arq worker and the waiter's wait are
spans of the messaging conventions, linked through the job's record; off, nothing is."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq workers: skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

from arq.connections import ArqRedis
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from immortus_async import JobStatus, Keys, Tracker, tracked
from immortus_async.tracing import TRACEPARENT_FIELD

from .utils import SCALE, run_worker


@tracked
async def traced_add(ctx: dict[str, Any], a: int, b: int) -> int:
    return a + b


@tracked
async def traced_explode(ctx: dict[str, Any]) -> None:
    raise ValueError("bad row 3")


class _Switch(Sampler):
    """Records while ``on``; otherwise every span is the API's non-recording one, as
    with no provider, so the rest of the suite runs as if none were configured."""

    on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP
        return SamplingResult(decision, attributes if self.on else None)

    def get_description(self) -> str:
        return "on in tests/test_tracing.py only"


_SWITCH = _Switch()
_EXPORTER = InMemorySpanExporter()


def _provider() -> None:
    """The SDK's provider with the in-memory exporter, set once for the process (the API
    allows one global provider)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans recorded during the test, in the SDK's in-memory exporter."""
    _provider()
    _EXPORTER.clear()
    _SWITCH.on = True
    try:
        yield _EXPORTER
    finally:
        _SWITCH.on = False
        _EXPORTER.clear()


def _one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


async def test_enqueue_the_job_and_the_wait_are_linked_spans(
    pool: ArqRedis, spans: InMemorySpanExporter
) -> None:
    """publish (PRODUCER) at enqueue, process (CONSUMER) on the worker and the waiter's
    wait, with the messaging attributes; process and wait link to publish."""
    async with Tracker(pool) as tracker:
        job = await tracker.enqueue(pool, "traced_add", 1, 2)
        assert job is not None
        waiter = asyncio.create_task(tracker.completed(job.job_id, timeout=20 * SCALE))
        await run_worker(pool, [traced_add])
        assert (await waiter).status is JobStatus.FINISHED
    recorded = spans.get_finished_spans()
    publish = _one(recorded, "publish arq")
    process = _one(recorded, "process arq")
    wait = _one(recorded, "wait")
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert publish.attributes is not None and process.attributes is not None
    for span, operation in ((publish, "publish"), (process, "process")):
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "arq"
        assert span.attributes["messaging.operation"] == operation
        assert span.attributes["messaging.message.id"] == job.job_id
    assert publish.attributes["immortus.function"] == "traced_add"
    assert process.attributes["immortus.status"] == "finished"
    assert process.attributes["immortus.attempt"] == 1
    assert publish.context is not None
    for span in (process, wait):
        assert [link.context.span_id for link in span.links] == [publish.context.span_id]
        assert span.links[0].context.trace_id == publish.context.trace_id
    print(
        f"\npublish {publish.context.trace_id:032x}/{publish.context.span_id:016x}; "
        f"process and wait link to it: {[s.name for s in recorded]}"
    )


async def test_a_failed_job_s_span_is_an_error(pool: ArqRedis, spans: InMemorySpanExporter) -> None:
    """The process span of a job that raised has status ERROR and the job's error."""
    async with Tracker(pool) as tracker:
        job = await tracker.enqueue(pool, "traced_explode")
        assert job is not None
        await run_worker(pool, [traced_explode])
        assert (await tracker.completed(job.job_id, timeout=10 * SCALE)).status is JobStatus.FAILED
    process = _one(spans.get_finished_spans(), "process arq")
    assert process.status.status_code is StatusCode.ERROR
    assert "bad row 3" in (process.status.description or "")


async def test_without_a_recording_provider_nothing_is_recorded_or_written(
    pool: ArqRedis,
) -> None:
    """Spans that do not record (no provider, or one that samples nothing) export
    nothing and write no traceparent into the job's record."""
    _provider()
    _EXPORTER.clear()
    async with Tracker(pool) as tracker:
        job = await tracker.enqueue(pool, "traced_add", 2, 3)
        assert job is not None
        await run_worker(pool, [traced_add])
        await tracker.completed(job.job_id, timeout=10 * SCALE)
    assert _EXPORTER.get_finished_spans() == ()
    assert await pool.hget(Keys().record(job.job_id), TRACEPARENT_FIELD) is None
