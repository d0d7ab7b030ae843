"""``immortus-async bridge``: options, the secret from the environment, clean stops."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from immortus_async import JobStatus, JobUpdate, RedisPubSubStrategy, RedisServer
from immortus_async.adapters import ADAPTERS, installed
from immortus_async.bridge import cli as bridge_cli
from immortus_async.cli import main

from ..conftest import NOT_INSTALLED
from ..utils import SCALE, free_port
from .conftest import start_bridge_process
from .helpers import SECRET, BridgeProcess, http_get, token

IMMORTUS = str(Path(sys.executable).with_name("immortus-async"))


async def bridge_command(*args: str, redis_url: str | None = None) -> asyncio.subprocess.Process:
    """``immortus-async bridge ...`` with the secret set and $REDIS_URL as given."""
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return await asyncio.create_subprocess_exec(
        IMMORTUS, "bridge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**env, "IMMORTUS_SECRET": SECRET},
    )  # fmt: skip


def test_options_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented options parse; --allowed-origin repeats; there is no --secret."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("QUEUE_REDIS_URL", raising=False)
    parser = argparse.ArgumentParser()
    bridge_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--allowed-origin", "https://a.x", "--allowed-origin", "https://b.x", "--port", "0"]
    )
    assert args.allowed_origin == ["https://a.x", "https://b.x"]
    assert (args.redis, args.host, args.port) == ("redis://127.0.0.1:6379/0", "127.0.0.1", 0)
    assert (args.insecure_no_auth, args.prefix) == (False, "immortus:")
    assert (args.queue_redis, args.redis_timeout) == (None, 5.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--secret", "x"])


@pytest.mark.parametrize(
    ("secret", "says"), [(None, "set $IMMORTUS_SECRET"), ("short", "at least 32 bytes")]
)
def test_refuses_to_start_without_a_good_secret(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secret: str | None,
    says: str,
) -> None:
    """With auth on, a missing or short $IMMORTUS_SECRET exits 2 with a clear message."""
    if secret is None:
        monkeypatch.delenv("IMMORTUS_SECRET", raising=False)
    else:
        monkeypatch.setenv("IMMORTUS_SECRET", secret)
    assert main(["bridge", "--port", "0"]) == 2
    assert says in capsys.readouterr().err


async def test_runs_until_sigterm_then_stops_cleanly(redis_server: RedisServer) -> None:
    """The CLI's bridge serves /healthz, and exits 0 on SIGTERM after closing."""
    running = await start_bridge_process(redis_server.url, "--allowed-origin", "https://a.x")
    status, _, body = await http_get(running, "/healthz")
    assert (status, json.loads(body)["redis"]) == (200, "up")
    assert await running.stop() == 0
    assert "bridge closed" in "".join(running.output)


async def test_allow_abort_turns_the_abort_endpoint_on(redis_server: RedisServer) -> None:
    """Without --allow-abort an abort is abort_disabled; with it, it is answered (a job
    no one knows: not_found)."""
    path = f"/jobs/nobody/abort?token={token('nobody')}"
    for options, expected in (
        ((), (403, "abort_disabled")),
        (("--allow-abort",), (404, "not_found")),
    ):
        running = await start_bridge_process(redis_server.url, *options)
        status, _, body = await http_get(running, path, method="POST")
        assert (status, json.loads(body)["code"]) == expected
        assert await running.stop() == 0


def test_the_bridge_process_tunes_its_garbage_collector() -> None:
    """Serving, the CLI freezes its start-up objects and collects young objects less often."""
    saved = gc.get_threshold()
    try:
        bridge_cli._tune_garbage_collector()
        assert gc.get_threshold() == bridge_cli._GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


async def test_a_port_out_of_range_is_one_line_and_the_usage_exit_code() -> None:
    """--port 99999: one line naming --port and exit 2, not an OverflowError."""
    process = await bridge_command("--port", "99999")
    _, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert process.returncode == 2, err.decode()
    assert re.fullmatch(r"immortus-async bridge: argument --port: [^\n]+\n", err.decode()), err


async def test_an_unreachable_redis_at_start_is_one_line_and_exit_69() -> None:
    """A Redis nobody serves: one line and exit 69 instead of listening."""
    # Needs Bridge.start()'s PING and serve(queue_redis=), from the bridge's branch.
    url = f"redis://127.0.0.1:{free_port()}/0"
    process = await bridge_command("--redis", url, "--port", "0", "--redis-timeout", "1")
    _, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert process.returncode == 69, err.decode()
    assert re.fullmatch(r"immortus-async bridge: [^\n]*Redis[^\n]*\n", err.decode()), err


async def test_reads_redis_url_from_the_environment(
    redis_server: RedisServer, redis: Redis
) -> None:
    """Without --redis the bridge serves the Redis of $REDIS_URL, as status and watch do."""
    process = await bridge_command("--port", "0", redis_url=redis_server.url)
    assert process.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(20 * SCALE):
        while not (found := re.search(r"listening on ws://[^:]+:(\d+)", "".join(lines))):
            line = await process.stderr.readline()
            assert line, "the bridge exited:\n" + "".join(lines)
            lines.append(line.decode())
    running = BridgeProcess(process, int(found.group(1)), lines)
    # A job only that Redis knows (another one may answer on the default port).
    await RedisPubSubStrategy(redis).apply(JobUpdate(job_id="e1", status=JobStatus.STARTED))
    status, _, body = await http_get(running, f"/verify/e1?token={token('e1')}")
    assert (status, json.loads(body)["status"]) == (200, "started")
    assert await running.stop() == 0


def _not_installed() -> str:
    """An adapter whose queue this environment lacks (arq's has no taskiq, and back)."""
    return next(name for name in ADAPTERS if not installed(name))


@pytest.mark.parametrize("command", [["bridge", "--port", "0"], ["status", "j"], ["watch", "j"]])
async def test_a_queue_adapter_not_installed_is_the_install_command_and_exit_2(
    command: list[str],
) -> None:
    """--queue-adapter naming a queue missing here: one line with its install command,
    exit 2, whichever command."""
    name = _not_installed()
    process = await asyncio.create_subprocess_exec(
        IMMORTUS, *command, "--queue-adapter", name,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "IMMORTUS_SECRET": SECRET},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert (process.returncode, out) == (2, b""), err.decode()
    install = re.escape(ADAPTERS[name].install)
    line = rf"immortus-async {command[0]}: --queue-adapter {name}: [^\n]*{install}\n"
    assert re.fullmatch(line, err.decode()), err


async def test_an_unknown_queue_adapter_is_one_line_with_the_choices_and_exit_2() -> None:
    """--queue-adapter celery: argparse's one line, naming every adapter, exit 2."""
    process = await bridge_command("--queue-adapter", "celery", "--port", "0")
    _, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert process.returncode == 2, err.decode()
    assert "invalid choice: 'celery'" in err.decode()
    assert all(repr(name) in err.decode() for name in ADAPTERS)


async def test_the_queue_adapter_s_records_answer_for_a_job_we_never_saw(
    redis_server: RedisServer,
) -> None:
    """--queue-adapter streaq: a streaQ task enqueued by code that never heard of us
    reads queued from streaQ's records, on the bridge and in status; without it, it
    is unknown (the default adapter, arq, is not streaQ)."""
    if not installed("streaq"):
        pytest.skip(f"streaq: {NOT_INSTALLED}")
    from streaq import Worker

    client: Worker[Any] = Worker(redis_url=redis_server.url)
    async with client:
        # One for status, one for the bridge: a state read from the queue's records
        # is kept in a record of ours, which would answer the second reader.
        job_id, bridged = [(await client.enqueue_unsafe("import_csv", 100)).id for _ in "ab"]

    async def status(*options: str) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            IMMORTUS, "status", job_id, "--redis", redis_server.url, *options,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
        return process.returncode, out.decode().strip() or err.decode()

    assert await status() == (5, f"{job_id}: unknown")
    assert await status("--queue-adapter", "streaq") == (3, f"{job_id}: queued")
    running = await start_bridge_process(redis_server.url, "--queue-adapter", "streaq")
    code, _, body = await http_get(running, f"/verify/{bridged}?token={token(bridged)}")
    assert (code, json.loads(body)["status"]) == (200, "queued")
    assert await running.stop() == 0
