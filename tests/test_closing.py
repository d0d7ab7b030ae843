"""close_all: every closer runs, whatever stops one of them."""

from __future__ import annotations

import asyncio

import pytest

from immortus_async._closing import close_all


async def test_a_closer_cancelled_meanwhile_still_closes_the_rest_then_is_cancelled() -> None:
    closed: list[str] = []
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    async def quick() -> None:
        closed.append("quick")

    closing = asyncio.create_task(close_all([slow, None, quick]))
    await asyncio.wait_for(started.wait(), 10)
    closing.cancel()
    await asyncio.wait([closing], timeout=10)
    assert closing.cancelled()
    assert closed == ["quick"]


async def test_errors_are_raised_once_all_are_closed_or_told() -> None:
    closed: list[str] = []

    async def broken() -> None:
        raise OSError("gone")

    async def fine() -> None:
        closed.append("fine")

    with pytest.raises(OSError, match="gone"):
        await close_all([broken, fine])
    assert closed == ["fine"]
    told: list[Exception] = []
    await close_all([broken, fine], on_error=lambda close, exc: told.append(exc))
    assert [str(exc) for exc in told] == ["gone"] and closed == ["fine", "fine"]
