"""The restart policy: exponential backoff with jitter, and giving up after early exits in a row."""

from __future__ import annotations

import random
from dataclasses import dataclass

from lsif_agg.settings import Settings

# Up to this fraction of each delay is taken off at random, so processes that died together
# (a shared dependency went away) do not all restart in the same instant.
JITTER = 0.25


@dataclass(slots=True, kw_only=True)
class RestartPolicy:
    """The restart state of one process: how long to wait next, and whether to give up."""

    backoff_initial: float
    backoff_max: float
    early_exit_seconds: float
    max_early_exits: int  # 0 restarts forever
    early_exits: int = 0  # early exits in a row; decides when to give up
    failures: int = 0  # early exits and busy ports in a row; sets the delay

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            early_exit_seconds=settings.early_exit_seconds,
            max_early_exits=settings.max_early_exits,
        )

    def record_exit(self, runtime: float) -> None:
        """Count an exit after `runtime` seconds; a run past the early exit time starts afresh."""
        if runtime >= self.early_exit_seconds:
            self.early_exits = 0
            self.failures = 0
            return
        self.early_exits += 1
        self.failures += 1

    def record_busy_port(self) -> None:
        """Count a start put off because the port was in use: it grows the delay only."""
        self.failures += 1

    @property
    def should_give_up(self) -> bool:
        return self.max_early_exits > 0 and self.early_exits >= self.max_early_exits

    def next_delay(self) -> float:
        """Return the seconds to wait before the next start: the initial delay doubled per failure
        after the first, capped at the maximum, less up to JITTER of it at random."""
        doublings = max(self.failures - 1, 0)
        # Cap the exponent too, so a process that fails for days cannot overflow the float.
        delay = min(self.backoff_max, self.backoff_initial * 2.0 ** min(doublings, 64))
        return delay * random.uniform(1.0 - JITTER, 1.0)
