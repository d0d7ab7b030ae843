"""A Lua script run by its SHA, loaded once however many callers run it at once.

redis-py's ``Script`` answers ``NOSCRIPT`` by loading the script itself, each caller
on its own: callers that all run it before the first load is answered (a hundred
waiters reading their first state at once, in a process that just started) each
send ``EVALSHA``, ``SCRIPT LOAD`` and ``EVALSHA`` again. Here the first call is made
alone while the others wait for its outcome, and a ``NOSCRIPT`` (a server that never
saw the script, restarted, or flushed its script cache) is answered by one load that
whoever else finds it missing meanwhile waits for too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

from redis.exceptions import ConnectionError, NoScriptError

from ._redis import Client, is_cluster

__all__ = ["SharedScript", "raced"]


class SharedScript:
    """``script`` on ``client``; awaited as ``await shared(keys, args)``."""

    __slots__ = ("_client", "_cluster", "_first", "_loaded", "_loading", "_tried", "script", "sha")

    def __init__(self, client: Client, script: str) -> None:
        self._client: Any = client
        self._cluster = is_cluster(client)
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._tried = False  # a first call was made (the script may be known since)
        self._first: asyncio.Future[None] | None = None  # done once that call is answered
        self._loading: asyncio.Future[Any] | None = None  # a SCRIPT LOAD in flight
        self._loaded = 0  # SCRIPT LOADs answered

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        first = self._first
        if first is not None and not first.done():
            await asyncio.shield(first)
        elif not self._tried:
            self._tried = True
            first = self._first = asyncio.get_running_loop().create_future()
            try:
                return await self._run(keys, args)
            finally:
                # Whatever its outcome: callers then run it themselves, so that one
                # caller stuck on an unreachable Redis does not hold back the rest.
                first.set_result(None)
        return await self._run(keys, args)

    async def _run(self, keys: list[Any], args: list[Any]) -> Any:
        loaded = self._loaded
        with raced(self._cluster):
            try:
                return await self._client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                if self._cluster:
                    # A replica promoted since never saw the SCRIPT LOAD (it is not
                    # replicated), and a load may go where the slot no longer is:
                    # the body goes to the node of the keys, which caches it.
                    return await self._client.eval(self.script, len(keys), *keys, *args)
            # Told NOSCRIPT by a server that ran this before a load answered since
            # (replies come back on many connections): it knows the script now.
            if self._loaded == loaded:
                await self._load()
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)

    async def _load(self) -> None:
        loading = self._loading
        if loading is None:
            loading = self._loading = asyncio.ensure_future(self._client.script_load(self.script))
            loading.add_done_callback(self._answered)
        await asyncio.shield(loading)

    def _answered(self, loading: asyncio.Future[Any]) -> None:
        if self._loading is loading:
            self._loading = None
        if loading.cancelled():
            return
        if loading.exception() is None:  # retrieved either way: each waiter raises it
            self._loaded += 1


@contextlib.contextmanager
def raced(cluster: bool) -> Iterator[None]:
    """redis-py's cluster client may close a node's connections (on a topology
    change) while another command opens one, which then fails on a socket gone
    (AttributeError): that is a lost connection, retried as one."""
    try:
        yield
    except AttributeError as exc:
        if not cluster:
            raise
        raise ConnectionError(f"the cluster client lost its connection: {exc}") from exc
