"""JobState's wire form and apply_update, without I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from immortus_async import InvalidStateError, JobState, JobStatus, JobUpdate, apply_update


@pytest.mark.parametrize("status", list(JobStatus))
def test_round_trip_every_status(status: JobStatus) -> None:
    """to_json/from_json give back an equal state, for every status."""
    state = JobState(
        job_id="job-1",
        status=status,
        progress=0.25,
        meta={"rows": 3, "names": [], "nested": {"a": None}},
        error="boom" if status is JobStatus.FAILED else None,
        attempt=2,
        seq=7,
        function="process_csv",
        enqueued_at=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        started_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        finished_at=None,
        result={"rows": [], "total": 10**30} if status is JobStatus.FINISHED else None,
    )
    wire = json.loads(state.to_json())
    assert wire["completed"] is status.terminal
    assert wire["status"] == status.value
    assert wire["enqueued_at"] == "2026-01-02T03:04:05.006Z"
    assert JobState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"job_id": "x", "status": "exploded"}', "unknown job status 'exploded'"),
        ('{"status": "queued"}', "job_id"),
        ('{"job_id": "x", "progress": 2}', "progress"),
        ('{"job_id": "x", "seq": -1}', "seq"),
        ('{"job_id": "x", "meta": [1]}', "meta"),
        ('{"job_id": "x", "started_at": "yesterday"}', "started_at"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"job_id": "x", "result": NaN}', "result must be a JSON value"),
        ('{"job_id": "x", "result": [1, Infinity]}', "result must be a JSON value"),
    ],
)
def test_malformed_wire_form_raises_clear_error(raw: str | bytes, match: str) -> None:
    """Malformed JSON or a bad field raises InvalidStateError naming the problem."""
    with pytest.raises(InvalidStateError, match=match):
        JobState.from_json(raw)


def test_update_validates_progress_and_meta() -> None:
    """Progress outside [0, 1] or meta that is not a dict is a ValueError."""
    for progress in (-0.1, 1.5, float("nan"), "half", True):
        with pytest.raises(ValueError, match="progress"):
            JobUpdate(job_id="x", status=JobStatus.STARTED, progress=progress)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="meta"):
        JobUpdate(job_id="x", status=JobStatus.STARTED, meta=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never written"):
        JobUpdate(job_id="x", status=JobStatus.EXPIRED)


def test_apply_update_merges_and_counts() -> None:
    """Meta merges key by key, seq grows by one, finished sets progress to 1."""
    state = apply_update(None, JobUpdate(job_id="j", status=JobStatus.QUEUED, attempt=0))
    assert state is not None and state.seq == 1 and state.enqueued_at is not None
    state = apply_update(
        state, JobUpdate(job_id="j", status=JobStatus.STARTED, progress=0.5, meta={"a": 1})
    )
    assert state is not None and (state.seq, state.progress, state.meta) == (2, 0.5, {"a": 1})
    state = apply_update(state, JobUpdate(job_id="j", status=JobStatus.STARTED, meta={"b": 2}))
    assert state is not None and state.meta == {"a": 1, "b": 2} and state.progress == 0.5
    state = apply_update(state, JobUpdate(job_id="j", status=JobStatus.FINISHED))
    assert state is not None and state.progress == 1.0 and state.completed
    assert apply_update(state, JobUpdate(job_id="j", status=JobStatus.STARTED)) is None
