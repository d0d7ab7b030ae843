"""Redis key and channel names.

Every name carries the job id in a hash tag (``{...}``) so that in a Redis Cluster a
job's record, its tombstone and its channel all live in one slot, which the atomic
update script and sharded pub/sub both need. An owner's names carry the owner in
theirs: its index and its channel share a slot of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Keys"]

DEFAULT_PREFIX = "immortus:"


@dataclass(frozen=True, slots=True)
class Keys:
    """Names under one prefix: ``Keys("immortus:").record("42") == "immortus:job:{42}"``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise TypeError(f"prefix must be a str, got {type(self.prefix).__name__}")

    def record(self, job_id: str) -> str:
        """The hash holding the job's state."""
        return f"{self.prefix}job:{{{job_id}}}"

    def tombstone(self, job_id: str) -> str:
        """A small key that outlives the record, so an expired job reads ``expired``."""
        return f"{self.prefix}gone:{{{job_id}}}"

    def channel(self, job_id: str) -> str:
        """The pub/sub channel on which every state change of the job is published."""
        return f"{self.prefix}events:{{{job_id}}}"

    def job_id_from_channel(self, channel: str) -> str | None:
        """The job id a channel belongs to, or None for a channel not of this prefix."""
        head = f"{self.prefix}events:{{"
        if channel.startswith(head) and channel.endswith("}"):
            return channel[len(head) : -1]
        return None

    def owner_index(self, owner: str) -> str:
        """The sorted set of an owner's job ids, scored by when each was enqueued (µs)."""
        return f"{self.prefix}owner:{{{owner}}}"

    def owner_channel(self, owner: str) -> str:
        """The channel on which every state change of the owner's jobs is published too."""
        return f"{self.owner_channel_head}{owner}}}"

    @property
    def owner_channel_head(self) -> str:
        """What every owner channel starts with; the owner and ``}`` follow."""
        return f"{self.prefix}owner-events:{{"
