"""Records of the supervised processes: what to spawn, and the read-only view others may see."""

from __future__ import annotations

import enum
import signal as signal_module
from collections.abc import Mapping
from dataclasses import dataclass


class ProcessState(enum.Enum):
    """The stage of a process's life: spawn, run, back off, give up or stop."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ExitCause:
    """The end of a process: its exit code, or the signal that killed it."""

    code: int | None
    signal: int | None

    def describe(self) -> str:
        """Return 'exit code 3' or 'signal SIGKILL', for logs and /healthz."""
        if self.signal is not None:
            try:
                return f"signal {signal_module.Signals(self.signal).name}"
            except ValueError:
                return f"signal {self.signal}"
        return f"exit code {self.code}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    """One process to spawn: its name in logs, its worker label value, port and command."""

    name: str  # "worker-3" or "server", the prefix of its output lines
    label: str  # the value of the worker label on its samples: "3" or "server"
    index: int | None  # the worker index; None for the server
    port: int  # its metrics port
    argv: tuple[str, ...]  # the command with {port} and {worker} already substituted
    env: Mapping[str, str]  # variables added to lsif_agg's own environment


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessView:
    """A snapshot of one process, published by the supervisor for scraping and health."""

    name: str
    label: str
    port: int
    state: ProcessState
    pid: int | None
    restarts: int
    started_at: float | None  # Unix time of the current or last start, for start_time_seconds
    running_since: float | None  # monotonic time of the current start, for uptime
    last_exit: ExitCause | None
    failure: str | None = None  # why the process was marked failed and is not restarted
