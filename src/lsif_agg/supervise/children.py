"""The pids of the children lsif_agg spawned itself, so the orphan reaper leaves them alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class OwnChildren:
    """Pids whose exit status belongs to the event loop's child watcher, not to the reaper."""

    def __init__(self) -> None:
        self._pids: set[int] = set()
        self._spawning = 0

    @contextmanager
    def spawning(self) -> Iterator[None]:
        """Mark a spawn in flight: its pid is not known until the spawn returns, and the child
        may already have exited by then, so nothing may be reaped meanwhile."""
        self._spawning += 1
        try:
            yield
        finally:
            self._spawning -= 1

    def add(self, pid: int) -> None:
        self._pids.add(pid)

    def discard(self, pid: int) -> None:
        self._pids.discard(pid)

    def may_reap(self, pid: int) -> bool:
        """Return whether `pid` may be reaped: it is not ours and no spawn is in flight."""
        return self._spawning == 0 and pid not in self._pids
