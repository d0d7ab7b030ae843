"""The wire protocol without I/O: parsing client frames, building server frames."""

from __future__ import annotations

import json

import pytest

from immortus_async import JobState, JobStatus
from immortus_async.bridge import (
    MAX_JOB_ID_LENGTH,
    ErrorCode,
    Rejection,
    Subscribe,
    Unsubscribe,
    check_job_id,
    error_frame,
    parse_connect_path,
    parse_message,
    state_frame,
)


def test_subscribe_and_unsubscribe_parse() -> None:
    """Well-formed messages become Subscribe and Unsubscribe, extra fields ignored."""
    raw = '{"type": "subscribe", "job_id": "7", "token": "t", "since_seq": 3, "x": 1}'
    assert parse_message(raw) == Subscribe("7", "t", 3)
    assert parse_message('{"type": "subscribe", "job_id": "7"}') == Subscribe("7")
    assert parse_message('{"type": "unsubscribe", "job_id": "7"}') == Unsubscribe("7")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{", ErrorCode.INVALID_JSON),
        ("", ErrorCode.INVALID_JSON),
        ("[]", ErrorCode.INVALID_MESSAGE),
        ('"subscribe"', ErrorCode.INVALID_MESSAGE),
        ("{}", ErrorCode.UNKNOWN_TYPE),
        ('{"type": "SUBSCRIBE", "job_id": "7"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "subscribe"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "subscribe", "job_id": null}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "subscribe", "job_id": ""}', ErrorCode.INVALID_JOB_ID),
        ('{"type": "subscribe", "job_id": "a\\u0000b"}', ErrorCode.INVALID_JOB_ID),
        ('{"type": "subscribe", "job_id": "a\\u0085b"}', ErrorCode.INVALID_JOB_ID),
        ('{"type": "subscribe", "job_id": "7", "token": 5}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "subscribe", "job_id": "7", "since_seq": -1}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "subscribe", "job_id": "7", "since_seq": true}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "subscribe", "job_id": "7", "since_seq": 1.5}', ErrorCode.INVALID_MESSAGE),
        (b"{}", ErrorCode.BINARY_FRAME),
        ("[" * 4000, ErrorCode.INVALID_JSON),
        ('{"a":' * 2000 + "1" + "}" * 2000, ErrorCode.INVALID_JSON),
        ('{"type": "subscribe", "job_id": "\\ud800x"}', ErrorCode.INVALID_JOB_ID),
        ('{"type": "unsubscribe", "job_id": "x\\udfff"}', ErrorCode.INVALID_JOB_ID),
    ],
)
def test_bad_messages_are_rejected_with_their_code(raw: str | bytes, code: ErrorCode) -> None:
    """Each malformed frame maps to one documented error code, never an exception."""
    result = parse_message(raw)
    assert isinstance(result, Rejection) and result.code is code


def test_job_id_length_limit() -> None:
    """A job id of exactly the limit passes; one character more is refused."""
    assert check_job_id("j" * MAX_JOB_ID_LENGTH) == "j" * MAX_JOB_ID_LENGTH
    refused = check_job_id("j" * (MAX_JOB_ID_LENGTH + 1))
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.INVALID_JOB_ID
    assert check_job_id("ünïcode id ✓") == "ünïcode id ✓"


def test_job_id_must_be_encodable_as_utf8() -> None:
    """A lone surrogate passes every str check but no Redis key can hold it: refused."""
    for job_id in ("\ud800x", "x\udc80", "\udfff"):
        refused = check_job_id(job_id)
        assert isinstance(refused, Rejection) and refused.code is ErrorCode.INVALID_JOB_ID
    assert check_job_id("\U0001f600") == "\U0001f600"  # a surrogate pair in JSON, one char


def test_connect_path() -> None:
    """/jobs/<id>?token=&since_seq= subscribes; / does not; a bad since_seq is refused."""
    assert parse_connect_path("/") is None
    assert parse_connect_path("/?token=t") is None
    assert parse_connect_path("/jobs/a%2Fb?token=t&since_seq=4") == Subscribe("a/b", "t", 4)
    assert parse_connect_path("/jobs/7") == Subscribe("7")
    for since in ("x", "%C2%B2", "-1", "1.5", "9" * 5000):
        # "²" passes str.isdigit(), and int() refuses it and 4300+ digits alike.
        bad_seq = parse_connect_path(f"/jobs/7?since_seq={since}")
        assert isinstance(bad_seq, Rejection) and bad_seq.code is ErrorCode.INVALID_MESSAGE
    empty = parse_connect_path("/jobs/")
    assert isinstance(empty, Rejection) and empty.code is ErrorCode.INVALID_JOB_ID


def test_state_frame_is_the_wire_form_plus_type() -> None:
    """A state frame is {"type": "state"} plus exactly the state's to_dict() fields."""
    state = JobState(job_id="7", status=JobStatus.STARTED, progress=0.5, seq=2)
    frame = json.loads(state_frame(state))
    assert frame.pop("type") == "state"
    assert frame == state.to_dict()


def test_state_frame_encodes_a_state_shared_by_many_followers_once() -> None:
    """The same state object gives the same frame object; an equal-looking other state is
    encoded on its own."""
    state = JobState(job_id="7", status=JobStatus.STARTED, seq=2)
    first = state_frame(state)
    assert state_frame(state) is first
    other = JobState(job_id="7", status=JobStatus.FINISHED, seq=3)
    assert json.loads(state_frame(other))["seq"] == 3
    assert json.loads(state_frame(state))["seq"] == 2


def test_error_frame_names_the_job_only_when_given() -> None:
    """An error frame has code and message, and job_id only for a subscription's error."""
    assert json.loads(error_frame(ErrorCode.INVALID_JSON, "m")) == {
        "type": "error",
        "code": "invalid_json",
        "message": "m",
    }
    rejection = Rejection(ErrorCode.TOKEN_EXPIRED, "m", "7")
    assert json.loads(rejection.frame())["job_id"] == "7"
