"""Subcommands of the ``immortus-async`` CLI that look at jobs."""

__all__: list[str] = []
