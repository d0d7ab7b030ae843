"""Fixtures of the fault suite: a Redis server that keeps its data across a SIGKILL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from immortus_async import RedisServer


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    """A Redis of the test's own with an append-only file, written before each reply
    (``appendfsync always``): what it acknowledged survives a SIGKILL and restart.

    ``RedisServer.restart`` starts the new server in the same folder, so it loads
    the file; the last ``--appendonly`` on the command line wins over the default.
    """
    with RedisServer(args=("--appendonly", "yes", "--appendfsync", "always")) as server:
        yield server
