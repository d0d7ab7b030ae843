"""One connection: its subscriptions, its outbox and the task that sends it.

The protocol's logic lives here once, for every server that speaks it (the
websockets bridge, the ASGI mount's websocket and event streams); what each
server brings is a :class:`Transport`, the connection's I/O face.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, MutableMapping
from functools import partial
from typing import Any, Protocol

import anyio
from redis.exceptions import RedisError

from .. import metrics
from .._stoppable import Stoppable
from ..exceptions import AbortUnsupported, JobLost, JobNotFound, RedisUnavailable
from ..state import JobState
from ..status import JobStatus
from ..tracker import Tracker
from .auth import Gatekeeper, not_found, owner_not_found
from .logs import RedactingLogger
from .outbox import Outbox
from .protocol import (
    Abort,
    AbortReply,
    ClientMessage,
    CloseCode,
    ErrorCode,
    Rejection,
    Subscribe,
    SubscribeOwner,
    Unsubscribe,
    UnsubscribeOwner,
    parse_connect_path,
    parse_message,
)

__all__ = ["Disconnected", "Session", "Transport", "abort_job"]

logger = RedactingLogger(logging.getLogger("immortus_async.bridge"))

# Errors of a Redis that does not answer, as an abort request meets them.
_REDIS_DOWN = (RedisError, OSError, TimeoutError)


class Disconnected(Exception):
    """Raised by a :class:`Transport` once the connection is over, whoever ended it."""


class Transport(Protocol):
    """The I/O face of one connection, all a :class:`Session` needs from a server.

    The protocol's logic (what to answer, limits, error codes) is in the session;
    a transport only moves frames, and enforces what only the server can: the
    frame size limit, keepalive pings, and the client's own framing errors.
    """

    @property
    def peer(self) -> object:
        """Who is at the other end, for log lines (an address)."""
        ...

    async def receive(self) -> str | bytes:
        """The client's next frame: ``str`` for a text frame, ``bytes`` for a binary one.

        Raises:
            Disconnected: the connection is over.
        """
        ...

    async def send(self, frame: str, timeout: float) -> None:
        """Send one text frame.

        Raises:
            TimeoutError: the client left the send blocked for ``timeout`` seconds.
            Disconnected: the connection is over.
        """
        ...

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close with ``code``; abort the connection if the client does not read.

        Returns within the server's close timeout; idempotent.
        """
        ...


class Session:
    """Serves one client: reads its messages, follows its jobs, sends their states.

    Each subscription is a task that follows the job through the bridge's one
    :class:`~immortus_async.Tracker` and drops every state into the connection's
    :class:`Outbox`, which keeps only the latest per job; one sender task drains
    the outbox. Following never waits on the client, so a client that reads
    slowly holds back nobody else, and costs at most one state per job it follows.
    A send that the client's socket leaves blocked for ``send_timeout`` seconds
    closes the connection with :attr:`CloseCode.SLOW_CLIENT`.

    With ``once=True`` the session serves the subscription of its connect path
    and nothing else: it reads no frames, and closes the transport (code 1000)
    once that subscription's last frame is sent. That is an event stream.

    Args:
        transport: the open connection.
        tracker: the server's tracker (one Redis pub/sub connection for all).
        gate: checks each subscription's token, and asks the app's ``authorize``.
        path: the request path (query included) relative to where the protocol is
            served; ``/jobs/<job_id>?...`` subscribes on connect.
        scope: what the app's ``authorize`` callable is given (the ASGI scope).
        max_subscriptions: subscriptions a connection may hold at once, jobs and
            owner feeds together; one whose last frames are still waiting to be
            sent holds its slot.
        send_timeout: seconds one frame may wait for the client to read.
        once: serve the connect path's subscription only, then close.
        app_checked: the server has asked the app's ``authorize`` about the
            connect path's job already (an event stream answers a refusal in HTTP).
    """

    def __init__(
        self,
        transport: Transport,
        tracker: Tracker,
        gate: Gatekeeper,
        *,
        path: str | None = None,
        scope: MutableMapping[str, Any] | None = None,
        max_subscriptions: int,
        send_timeout: float,
        once: bool = False,
        app_checked: bool = False,
    ) -> None:
        self._transport = transport
        self._tracker = tracker
        self._gate = gate
        self._path = path
        self._scope = scope
        self._max_subscriptions = max_subscriptions
        self._send_timeout = send_timeout
        self._once = once
        self._app_checked = app_checked
        self.outbox = Outbox()
        self._subscriptions: dict[str, Stoppable] = {}
        self._feeds: dict[str, Stoppable] = {}
        # The abort requests in flight, by job: at most max_subscriptions of them.
        self._aborts: dict[str, Stoppable] = {}
        # Stopped subscriptions stay here until they have finished unwinding.
        self._tasks: set[Stoppable] = set()

    @property
    def subscriptions(self) -> int:
        """How many jobs and owner feeds this connection follows now."""
        return len(self._subscriptions) + len(self._feeds)

    async def run(self) -> None:
        """Serve the connection until it closes; then cancel and await every task."""
        if self._path is not None:
            self._receive(partial(parse_connect_path, self._path))
        sender = asyncio.create_task(self._send_loop(), name="immortus-bridge-sender")
        metrics.connection_opened("events" if self._once else "websocket")
        try:
            if self._once:
                # Nothing to read: the stream ends with its subscription, or the
                # client leaves, which the sender sees.
                await sender
                return
            while True:
                message = await self._transport.receive()
                self._receive(partial(parse_message, message))
        except Disconnected:
            pass  # the client left, or a limit closed the connection: nothing to tell
        finally:
            sender.cancel()
            children = list(self._tasks)
            for child in children:
                child.stop()
            tasks = [sender, *(child.task for child in children)]
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception):
                    logger.error("a connection task failed", exc_info=result)
            metrics.connection_closed("events" if self._once else "websocket")

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close with ``code``; abort the connection if the client does not read."""
        await self._transport.close(code, reason)

    # Messages

    def _receive(self, parse: Callable[[], ClientMessage | Rejection | None]) -> None:
        """Handle one input (the connect path or a frame); whatever it raises fails it alone."""
        try:
            message = parse()
            if message is not None:
                self._handle(message)
        except Exception:
            # A bug, not the client's mistake: answer it as such, and let the
            # connection and every subscription go on.
            logger.exception("handling a client's input failed")
            self.outbox.reject(
                Rejection(ErrorCode.INTERNAL_ERROR, "the bridge could not handle this input")
            )

    def _handle(self, message: ClientMessage | Rejection) -> None:
        if isinstance(message, Rejection):
            self.outbox.reject(message)
        elif isinstance(message, SubscribeOwner):
            self._subscribe_owner(message)
        elif isinstance(message, UnsubscribeOwner):
            self._stop_owner(message.owner)
            self.outbox.discard_owner(message.owner)
        elif isinstance(message, Abort):
            self._abort(message)
        elif isinstance(message, Unsubscribe):
            self._stop(message.job_id)
            self.outbox.discard(message.job_id)
        else:
            self._subscribe(message)

    def _subscribe(self, request: Subscribe) -> None:
        job_id = request.job_id
        expires_at = self._gate.authorize(job_id, request.token)
        ask_app = self._gate.asks_app(request.token) and not self._app_checked
        if isinstance(expires_at, Rejection):
            self.outbox.reject(expires_at)
            return
        held = self._subscriptions.keys() | self.outbox.jobs()
        if job_id not in held and len(held) + self._feeds_held() >= self._max_subscriptions:
            self.outbox.reject(
                Rejection(
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"a connection may follow at most {self._max_subscriptions} jobs at once",
                    job_id,
                )
            )
            return
        # Subscribing again replaces the subscription: that is how a client
        # renews its token, with since_seq so it gets nothing twice.
        self._stop(job_id)
        self.outbox.discard(job_id)
        self._subscriptions[job_id] = self._start(
            self._follow(job_id, request.since_seq, expires_at, ask_app=ask_app),
            "immortus-bridge-follow",
        )

    def _abort(self, request: Abort) -> None:
        """Answer an ``abort`` in a task of its own: it waits on the app and on Redis."""
        job_id = request.job_id
        if not self._gate.allow_abort:
            self.outbox.reject(_abort_disabled(job_id))
            return
        if job_id in self._aborts:
            return  # the request in flight answers this one too
        if len(self._aborts) >= self._max_subscriptions:
            self.outbox.reject(
                Rejection(
                    ErrorCode.TOO_MANY_ABORTS,
                    f"a connection may have at most {self._max_subscriptions} aborts in flight",
                    job_id,
                )
            )
            return
        self._aborts[job_id] = self._start(self._answer_abort(request), "immortus-bridge-abort")

    async def _answer_abort(self, request: Abort) -> None:
        try:
            answer = await abort_job(self._tracker, self._gate, request, self._scope)
        finally:
            del self._aborts[request.job_id]
        if isinstance(answer, Rejection):
            self.outbox.reject(answer)
        else:
            self.outbox.reply(answer)

    def _start(self, body: Coroutine[Any, Any, None], name: str) -> Stoppable:
        child = Stoppable(body, name)
        self._tasks.add(child)
        child.task.add_done_callback(lambda _: self._tasks.discard(child))
        return child

    def _stop(self, job_id: str) -> None:
        child = self._subscriptions.pop(job_id, None)
        if child is not None:
            child.stop()

    def _feeds_held(self) -> int:
        return len(self._feeds.keys() | self.outbox.owners())

    def _subscribe_owner(self, request: SubscribeOwner) -> None:
        owner = request.owner
        expires_at = self._gate.authorize_owner(owner, request.token)
        if isinstance(expires_at, Rejection):
            self.outbox.reject(expires_at)
            return
        ask_app = self._gate.asks_app(request.token, owner=True) and not self._app_checked
        held = self._subscriptions.keys() | self.outbox.jobs()
        feeds = self._feeds.keys() | self.outbox.owners()
        if owner not in feeds and len(held) + len(feeds) >= self._max_subscriptions:
            self.outbox.reject(
                Rejection(
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"a connection may follow at most {self._max_subscriptions} jobs "
                    "and owners at once",
                    owner=owner,
                )
            )
            return
        # Subscribing again replaces the feed (a new token), with a new snapshot.
        self._stop_owner(owner)
        self.outbox.discard_owner(owner)
        self._feeds[owner] = self._start(
            self._follow_owner(owner, expires_at, ask_app=ask_app), "immortus-bridge-feed"
        )

    def _stop_owner(self, owner: str) -> None:
        child = self._feeds.pop(owner, None)
        if child is not None:
            child.stop()

    # Tasks

    async def _follow(
        self, job_id: str, since_seq: int | None, expires_at: float | None, *, ask_app: bool
    ) -> None:
        """Forward the job's states to the outbox until its terminal state or an end.

        A subscription ends once, with its terminal state or with one ``error``
        frame, and nothing of it is queued after either. When the app's
        ``authorize`` refuses the job, that frame is ``not_found``, the same bytes
        whether the job exists or not: nothing about it is read before the app says yes.
        """
        scope = _until(expires_at)
        states: AsyncIterator[JobState] | None = None
        metrics.subscribed()
        try:
            try:
                with scope:
                    if ask_app and not await self._gate.app_allows(self._scope, job_id):
                        self.outbox.end(not_found(job_id))
                        return
                    states = self._tracker.watch(job_id)
                    await self._forward(states, since_seq)
            except Exception as exc:
                self.outbox.end(_ending(job_id, exc))
                return
            if scope.cancelled_caught:
                self.outbox.end(_token_expired(job_id))
                return
            # The terminal state is queued: let the sender take it before tearing
            # the subscription down, so that when a job many clients follow ends,
            # every frame goes out before any teardown. The token may expire
            # meanwhile: the subscription is over already, nothing more is said.
            await self.outbox.taken(job_id)
        finally:
            metrics.unsubscribed()
            if _is_current(self._subscriptions.get(job_id)):
                del self._subscriptions[job_id]
            await _close(states, "the subscription to job", job_id)

    async def _follow_owner(self, owner: str, expires_at: float | None, *, ask_app: bool) -> None:
        """Forward the owner's feed to the outbox until an error ends it.

        A feed has no terminal state: it ends when the client unsubscribes, with
        its token's expiry (``token_expired``), or with the error that stopped it.
        A feed the app's ``authorize_owner`` refuses ends with ``not_found``
        before anything of the owner is read.
        """
        scope = _until(expires_at)
        states: AsyncIterator[JobState] | None = None
        try:
            with scope:
                if ask_app and not await self._gate.app_allows_owner(self._scope, owner):
                    self.outbox.end_owner(owner_not_found(owner))
                    return
                states = self._tracker.watch_owner(owner)
                async for state in states:
                    self.outbox.put_owner_state(owner, state)
            if scope.cancelled_caught:
                ending = _token_expired(owner)
                self.outbox.end_owner(dataclasses.replace(ending, job_id=None, owner=owner))
        except Exception as exc:
            ending = _ending(owner, exc)
            self.outbox.end_owner(dataclasses.replace(ending, job_id=None, owner=owner))
        finally:
            if _is_current(self._feeds.get(owner)):
                del self._feeds[owner]
            await _close(states, "the feed of owner", owner)

    async def _forward(self, states: AsyncIterator[JobState], since_seq: int | None) -> None:
        """Queue every state to send, up to the terminal one, then return.

        Raises:
            JobLost: the client has seen states of the job (``since_seq`` > 0) and
                Redis has no record of it any more.
        """
        snapshot = True
        async for state in states:
            if snapshot and since_seq is not None:
                if state.status is JobStatus.UNKNOWN and since_seq > 0:
                    raise JobLost(state.job_id)
                # The client already has the state of seq since_seq: skip it. Any
                # other seq is news: a higher one is newer, a lower one starts a
                # new history (Redis lost the old one). A terminal state always
                # goes: it ends the subscription, and the client must hear that.
                if state.seq == since_seq and not state.completed:
                    snapshot = False
                    continue
            snapshot = False
            self.outbox.put_state(state)
            if state.completed:
                return

    async def _send_loop(self) -> None:
        try:
            while True:
                if self._once and self._over():
                    await self.close(CloseCode.NORMAL_CLOSURE, "the job's stream is over")
                    return
                for frame in await self._next_frames():
                    await self._transport.send(frame, self._send_timeout)
                    metrics.frame_sent()
        except Disconnected:
            pass  # the reading side sees it too and ends the session
        except TimeoutError:
            logger.warning(
                "closing a client that read nothing for %.1fs (%s)",
                self._send_timeout,
                self._transport.peer,
            )
            await self.close(CloseCode.SLOW_CLIENT, "the client does not read")
        except Exception:
            # Without its sender the client would wait forever: end the connection.
            logger.exception("sending to a client failed")
            await self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _over(self) -> bool:
        """Whether every subscription has ended and its last frame is sent."""
        waiting = self.outbox.statistics()
        pending = waiting.jobs or waiting.errors or waiting.feeds
        return not pending and all(child.task.done() for child in self._tasks)

    async def _next_frames(self) -> list[str]:
        """What the outbox has to send; in ``once`` mode, [] when a subscription ends first."""
        running = [child.task for child in self._tasks if not child.task.done()]
        if not self._once or not running:
            return await self.outbox.take()
        # The subscription may end without a frame left to send (its terminal
        # state already taken): wake up for that too, to close the stream.
        take = asyncio.ensure_future(self.outbox.take())
        try:
            await asyncio.wait([take, *running], return_when=asyncio.FIRST_COMPLETED)
        finally:
            take.cancel()  # it has no effect before it returns
        return [] if take.cancelled() else take.result()


def _is_current(child: Stoppable | None) -> bool:
    return child is not None and child.task is asyncio.current_task()


def _until(expires_at: float | None) -> anyio.CancelScope:
    """A scope that ends a subscription when its token expires (None: never); its
    ``cancelled_caught`` says that it did.

    Not ``asyncio.timeout``: its one cancellation can be lost in a Redis write
    (see :mod:`immortus_async._stoppable`), and the subscription would outlive
    its token. The scope cancels again at each await until it is left.
    """
    deadline = math.inf
    if expires_at is not None:
        deadline = anyio.current_time() + (expires_at - time.time())
    return anyio.CancelScope(deadline=deadline)


async def _close(states: AsyncIterator[JobState] | None, what: str, name: str) -> None:
    close = getattr(states, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            logger.exception("closing %s %r failed", what, name)


def _abort_disabled(job_id: str | None) -> Rejection:
    return Rejection(ErrorCode.ABORT_DISABLED, "this server does not take abort requests", job_id)


async def abort_job(
    tracker: Tracker,
    gate: Gatekeeper,
    request: Abort,
    scope: MutableMapping[str, Any] | None,
) -> AbortReply | Rejection:
    """The answer to an abort request, for every server (a websocket message, HTTP).

    Refused with ``abort_disabled`` unless the gate allows aborts, before anything
    else; then authorised as a subscription is (the token, else the app's
    ``authorize``): a job the caller may not see, and a job no one knows, are
    both ``not_found``. Then :meth:`Tracker.abort <immortus_async.Tracker.abort>`.
    """
    job_id = request.job_id
    if not gate.allow_abort:
        return _abort_disabled(job_id)
    grant = gate.authorize(job_id, request.token)
    if isinstance(grant, Rejection):
        return grant
    try:
        if gate.asks_app(request.token) and not await gate.app_allows(scope, job_id):
            return not_found(job_id)
        requested = await tracker.abort(job_id)
    except JobNotFound:
        return not_found(job_id)
    except AbortUnsupported as exc:
        return Rejection(ErrorCode.ABORT_UNSUPPORTED, str(exc), job_id)
    except _REDIS_DOWN as exc:
        logger.warning("cannot abort job %r: %s", job_id, exc)
        return Rejection(
            ErrorCode.REDIS_UNAVAILABLE, "Redis cannot be reached: try again later", job_id
        )
    except Exception:
        logger.exception("aborting job %r failed", job_id)
        return Rejection(ErrorCode.INTERNAL_ERROR, "the server could not abort this job", job_id)
    return AbortReply(job_id, requested)


def _token_expired(job_id: str) -> Rejection:
    """The ``error`` frame that ends a subscription whose token has expired."""
    return Rejection(
        ErrorCode.TOKEN_EXPIRED,
        "the token has expired: subscribe again with a new token and since_seq",
        job_id,
    )


def _ending(job_id: str, exc: Exception) -> Rejection:
    """The ``error`` frame that ends a subscription the watch ended with ``exc``."""
    if isinstance(exc, JobLost):
        logger.info("job %r was lost by Redis; ending its subscription", job_id)
        return Rejection(ErrorCode.JOB_LOST, str(exc), job_id)
    if isinstance(exc, RedisUnavailable):
        logger.warning("ending the subscription to job %r: %s", job_id, exc)
        return Rejection(
            ErrorCode.REDIS_UNAVAILABLE,
            "Redis cannot be reached: subscribe again later with since_seq",
            job_id,
        )
    # Not a lost connection (the tracker rides those out) but a corrupt record
    # or a closed tracker: this subscription cannot go on.
    logger.error("following job %r failed", job_id, exc_info=exc)
    return Rejection(ErrorCode.INTERNAL_ERROR, "the bridge could not follow this job", job_id)
