"""No token reaches a log line: the redaction itself, and a real bridge at DEBUG level."""

from __future__ import annotations

import json
import logging

import pytest

from immortus_async import JobStatus, RedisPubSubStrategy
from immortus_async.bridge import REDACTED, Bridge, RedactingLogger, redact

from .helpers import advance, http_get, open_client, receive, subscribe, token

JWT = token("7")


@pytest.mark.parametrize(
    "text",
    [
        f"GET /jobs/7?token={JWT} HTTP/1.1",
        f"GET /verify/7?since_seq=1&token={JWT}&x=1",
        f'< TEXT \'{{"type":"subscribe","job_id":"7","token":"{JWT}"}}\' [200 bytes]',
        f'< TEXT \'{{"type":"subscribe","token":"{JWT[:40]}...\' [200 bytes]',
        f"Referer: https://app.example/?t={JWT}",
        'token="not-a-jwt-but-secret" token=abc',
    ],
)
def test_redact_removes_every_token_form(text: str) -> None:
    """Query parameters, JSON fields (even truncated) and bare JWTs are all blanked."""
    redacted = redact(text)
    assert JWT[30:50] not in redacted and "abc" not in redacted.split("token=")[-1]
    assert REDACTED in redacted


def test_redacting_logger_formats_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Arguments and an exception's traceback go through redaction too."""
    log = RedactingLogger(logging.getLogger("immortus_async.test"))
    caplog.set_level(logging.DEBUG, logger="immortus_async.test")
    log.debug("path %s (%d frames)", f"/jobs/7?token={JWT}", 3)
    try:
        raise ValueError(f"bad path /jobs/7?token={JWT}")
    except ValueError:
        log.exception("failed")
    assert JWT not in caplog.text
    assert "path /jobs/7?token=[redacted] (3 frames)" in caplog.text
    assert caplog.records[1].exc_info is None and "ValueError" in caplog.records[1].getMessage()


async def test_no_token_in_any_log_line_of_a_real_bridge(
    bridge: Bridge, strategy: RedisPubSubStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, websockets logs paths, headers and frames: no bridge-side line shows a token."""
    caplog.set_level(logging.DEBUG)
    await advance(strategy, "7", JobStatus.STARTED)
    async with await open_client(bridge, f"/jobs/7?token={JWT}") as client:
        await receive(client)
        await client.send(subscribe("7"))
        await receive(client)
    second = token("7", ttl=100)
    await http_get(bridge, f"/verify/7?token={second}")
    await http_get(bridge, f"/verify/7?token={second}", {"Origin": "https://evil.example"})
    assert any("/verify/7?token=[redacted]" in r.getMessage() for r in caplog.records)
    bridge_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any(r.name == "websockets.server" and r.levelno == logging.DEBUG for r in bridge_side)
    for record in bridge_side:
        message = record.getMessage()
        assert "eyJ" not in message, message
        assert JWT.split(".")[2][:16] not in message and second.split(".")[2][:16] not in message


async def test_no_piece_of_a_token_in_frame_logs(
    bridge: Bridge, strategy: RedisPubSubStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, a frame whose log line websockets elides, or sent in 10-byte fragments, shows
    no piece of its token: frames are logged as opcode and length only."""
    caplog.set_level(logging.DEBUG)
    # A long job id before the token: websockets' elided line keeps the
    # signature's end but not the "token" key that would show what it is.
    job_id = "j" * 150
    await advance(strategy, job_id, JobStatus.STARTED)
    frame = subscribe(job_id)
    async with await open_client(bridge) as client:
        await client.send(frame)
        await receive(client)
        await client.send([frame[i : i + 10] for i in range(0, len(frame), 10)])
        await receive(client)
    signature = json.loads(frame)["token"].split(".")[2]
    pieces = {signature[i : i + 8] for i in range(len(signature) - 7)}
    server_side = [r.getMessage() for r in caplog.records if r.name == "websockets.server"]
    for message in server_side:
        assert not [piece for piece in pieces if piece in message], message
    assert any("< TEXT [" in message for message in server_side), "frames are still logged"
