"""Strategies that tests import by ``"module:Class"`` path."""

from __future__ import annotations


class OnlyCompleted:
    """The smallest custom strategy: only the mandatory method, backed by a dict."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.calls: list[str] = []

    async def completed(self, job_id: str) -> bool:
        self.calls.append("completed")
        return job_id in self.done

    def __getattr__(self, name: str) -> object:
        # Anything else the library looks up must be looked up, never called.
        self.calls.append(f"getattr:{name}")
        raise AttributeError(name)
