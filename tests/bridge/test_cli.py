"""``immortus-async bridge``: options, the secret from the environment, clean stops."""

from __future__ import annotations

import argparse
import gc
import json

import pytest

from immortus_async import RedisServer
from immortus_async.bridge import cli as bridge_cli
from immortus_async.cli import main

from .conftest import start_bridge_process
from .helpers import http_get


def test_options_and_defaults() -> None:
    """The documented options parse; --allowed-origin repeats; there is no --secret."""
    parser = argparse.ArgumentParser()
    bridge_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--allowed-origin", "https://a.x", "--allowed-origin", "https://b.x", "--port", "0"]
    )
    assert args.allowed_origin == ["https://a.x", "https://b.x"]
    assert (args.redis, args.host, args.port) == ("redis://127.0.0.1:6379/0", "127.0.0.1", 0)
    assert (args.insecure_no_auth, args.prefix) == (False, "immortus:")
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
