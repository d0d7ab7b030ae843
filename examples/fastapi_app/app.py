"""A FastAPI app with its own login, whose page lists the user's jobs live: ``uvicorn app:app``.

One process: the app, the live status (``immortus_async.asgi.app`` mounted at
``/immortus``) and, unless ``RUN_WORKER=0``, the arq worker, run in the app's
lifespan. The app's login decides who sees what, through ``authorize`` (a job)
and ``authorize_owner`` (a user's feed of jobs): no token anywhere, so none in a
URL, none in an access log.

Routes:
    ``GET /``: the login form, or once logged in the page (``Immortus.feed``).
    ``POST /login``, ``POST /logout``: the session cookie.
    ``POST /reports``: enqueue a report for the user; answers ``{job_id}``.
    ``/immortus/...``: the mount (websocket, event streams, ``immortus.js``, and
    ``POST /immortus/jobs/<job_id>/abort``, the cancel button's, to the job's owner).

The report itself comes with the job's end (``state.result``: ``report_result``).

Environment: ``REDIS_URL`` (default ``redis://localhost:6379``), ``RUN_WORKER``
(``0``: run ``arq worker.WorkerSettings`` apart, e.g. to scale workers out).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from worker import build_report

import immortus_async.asgi
from immortus_async import Tracker

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
RUN_WORKER = os.environ.get("RUN_WORKER", "1") != "0"
HERE = Path(__file__).parent
PAGE = (HERE / "index.html").read_text()
LOGIN = (HERE / "login.html").read_text()

# The demo's users and their passwords: a real app has its own user store.
USERS = {"ada": "lovelace", "bob": "builder"}

# Signs the session cookie; a new one at each start logs everybody out.
SESSION_KEY = secrets.token_bytes(32)
COOKIE = "session"


def session_cookie(user: str) -> str:
    """``user.signature``: the server alone can make one."""
    signature = hmac.new(SESSION_KEY, user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{signature}"


def session_user(scope: MutableMapping[str, Any]) -> str | None:
    """The logged-in user of a request or websocket scope (its cookie), or None."""
    for name, value in scope.get("headers", ()):
        if name != b"cookie":
            continue
        morsel = SimpleCookie(value.decode("latin-1")).get(COOKIE)
        if morsel is None:
            continue
        user = morsel.value.rpartition(".")[0]
        if user in USERS and hmac.compare_digest(session_cookie(user), morsel.value):
            return user
    return None


tracker = Tracker(REDIS_URL)


async def can_see(scope: MutableMapping[str, Any], job_id: str) -> bool:
    """A user sees the jobs enqueued for them."""
    user = session_user(scope)
    return user is not None and await tracker.owner(job_id) == user


def is_me(scope: MutableMapping[str, Any], owner: str) -> bool:
    """A user follows their own feed of jobs, nobody else's."""
    return session_user(scope) == owner


class Services:
    """What the routes share, opened and closed with the app."""

    pool: ArqRedis


services = Services()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services.pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    worker = None
    running = None
    if RUN_WORKER:
        # arq's own Worker in this event loop: one process for a demo; run
        # `arq worker.WorkerSettings` apart instead to scale workers out.
        worker = Worker(
            functions=[build_report],
            redis_pool=services.pool,
            handle_signals=False,
            allow_abort_jobs=True,  # the cancel button aborts a running report
        )
        running = asyncio.create_task(worker.async_run())
    try:
        async with tracker:
            yield
    finally:
        if worker is not None and running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await worker.close()
        await services.pool.aclose()


app = FastAPI(lifespan=lifespan)
app.mount(
    "/immortus",
    # allow_abort: the cancel button. The session cookie is SameSite=strict, so no
    # other site's page can make a user's browser abort their jobs.
    immortus_async.asgi.app(tracker, authorize=can_see, authorize_owner=is_me, allow_abort=True),
)


def logged_in(request: Request) -> str:
    user = session_user(request.scope)
    if user is None:
        raise HTTPException(status_code=401, detail="log in first")
    return user


@app.get("/", response_class=HTMLResponse)
async def page(request: Request) -> str:
    """The user's page, or the login form."""
    user = session_user(request.scope)
    if user is None:
        return LOGIN
    return PAGE.replace("{{USER}}", user)


@app.post("/login")
async def login(request: Request) -> RedirectResponse:
    """Check the form's user and password; set the session cookie."""
    form = parse_qs((await request.body()).decode())
    user = form.get("user", [""])[0]
    password = form.get("password", [""])[0]
    answer = RedirectResponse("/", status_code=303)
    if user in USERS and hmac.compare_digest(USERS[user], password):
        answer.set_cookie(COOKIE, session_cookie(user), httponly=True, samesite="strict")
    return answer


@app.post("/logout")
async def logout() -> RedirectResponse:
    answer = RedirectResponse("/", status_code=303)
    answer.delete_cookie(COOKIE)
    return answer


class ReportRequest(BaseModel):
    """What the page posts."""

    pages: int = Field(default=12, ge=1, le=1000)


@app.post("/reports")
async def create_report(request: Request, report: ReportRequest) -> dict[str, str]:
    """Enqueue a report for the user: it joins their feed, queued, at once."""
    user = logged_in(request)
    job = await tracker.enqueue(services.pool, "build_report", report.pages, owner=user)
    assert job is not None  # arq's Job; None only for a duplicate _job_id
    return {"job_id": job.job_id}
