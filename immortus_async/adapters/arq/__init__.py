"""The arq adapter: ``@tracked`` and :func:`track_worker` (the job side, through arq's
worker hooks), :class:`ArqStrategy` (arq's own records) and the enqueue helper behind
``Tracker.enqueue(pool, ...)``. Needs ``pip install 'immortus-async[arq]'``."""

from .. import require

# Before anything imports arq: without it, the error says how to install it.
require("arq")

from .adapter import ArqAdapter  # noqa: E402
from .strategy import ArqStrategy  # noqa: E402
from .worker import track_worker, tracked  # noqa: E402

__all__ = ["ArqAdapter", "ArqStrategy", "adapter", "track_worker", "tracked"]

adapter = ArqAdapter()
"""The arq adapter, as :func:`immortus_async.adapters.load` returns it."""
