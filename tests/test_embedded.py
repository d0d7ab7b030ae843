"""The test servers themselves: a picked port that another process takes first."""

from __future__ import annotations

import socket

import pytest
from redis import Redis

from immortus_async import RedisServer


@pytest.mark.timeout(60)
def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again() -> None:
    """Another process listens on the port picked for the server: the first start
    picks another port, and a restart keeps that one (its clients know the URL)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer()
        server.port = taken.getsockname()[1]
        with server:
            assert server.port != taken.getsockname()[1]
            port = server.port
            assert Redis.from_url(server.url).ping()
            server.restart()
            assert server.port == port
            assert Redis.from_url(server.url).ping()


@pytest.mark.timeout(60)
def test_a_port_given_and_taken_is_an_error_that_says_so() -> None:
    """A port the caller chose is never changed: in use, the start fails saying why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(port=taken.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="already in use"):
                server.start()
        finally:
            server.close()
