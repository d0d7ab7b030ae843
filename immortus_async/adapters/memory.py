"""The in-process adapter: jobs tracked by ``"memory"``, with no queue behind them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..exceptions import AbortUnsupported
from . import ADAPTERS, Aborted, Queued

__all__ = ["MemoryAdapter", "adapter"]


class MemoryAdapter:
    """No queue: nothing to read back, nothing to enqueue on (tests, one process)."""

    name = "memory"
    inferred_strategy = ADAPTERS["memory"].inferred_strategy
    records = None

    def accepts(self, target: object) -> bool:
        """Never: there is no queue object to enqueue on."""
        return False

    async def enqueue(
        self,
        target: Any,
        function: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        queued: Queued,
    ) -> Any:
        """Raises: there is no queue to enqueue on."""
        raise TypeError("the memory adapter has no queue to enqueue on")

    async def abort(self, target: Any, job_id: str, aborted: Aborted) -> None:
        """Raises: there is no queue to abort a job in."""
        raise AbortUnsupported("the memory adapter has no queue to abort a job in")


adapter = MemoryAdapter()
"""The memory adapter, as :func:`immortus_async.adapters.load` returns it."""
