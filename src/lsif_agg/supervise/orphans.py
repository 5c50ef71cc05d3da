"""Reap orphans that lsif_agg adopts as PID 1, and leave its own children to the event loop.

An orphan is re-parented to PID 1 when its parent exits; unless PID 1 waits for it, it stays a
zombie. The loop's child watcher must still get the exit status of lsif_agg's own children, so
waitpid(-1) is ruled out: the reaper waits only for zombie children it did not spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from lsif_agg.supervise.children import OwnChildren

# Sweeps run on SIGCHLD where the loop lets us handle it, and at least this often: uvloop 0.23
# rejects a SIGCHLD handler, and a sweep skipped during a spawn must be made up.
SWEEP_SECONDS = 1.0

log = logging.getLogger(__name__)


def is_pid1() -> bool:
    return os.getpid() == 1


def list_children() -> list[tuple[int, str]]:
    """Return the pid and state letter of each child of this process, from /proc.

    /proc/self/task/*/children would be shorter, but Linux has it only with
    CONFIG_PROC_CHILDREN, so every process's stat file is read instead.
    """
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # The command name in brackets may contain spaces and brackets, so split after the last.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            found.append((int(entry.name), fields[0]))
    return found


class OrphanReaper:
    """Waits for adopted orphans as they exit, and stops the rest at shutdown."""

    def __init__(self, children: OwnChildren) -> None:
        self._children = children
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_sigchld = False

    def start(self) -> None:
        """Start sweeping, on SIGCHLD where the loop allows a handler, else on a timer."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGCHLD, self._wake.set)
            self._on_sigchld = True
        except RuntimeError:
            log.debug("the event loop keeps SIGCHLD; sweeping for orphans every %g s", SWEEP_SECONDS)
        self._task = asyncio.create_task(self._run(), name="lsif_agg orphan reaper")

    async def stop(self) -> None:
        """Stop sweeping, after a last sweep."""
        if self._on_sigchld:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sweep()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP_SECONDS)
            self._wake.clear()
            self.sweep()

    def sweep(self) -> None:
        """Reap every zombie child that the supervisor did not spawn itself."""
        # NOTE: a child spawned by other code in lsif_agg, outside the supervisor, looks like
        # an orphan here, and its exit status would be taken from that code.
        for pid, state in list_children():
            if state == "Z" and self._children.may_reap(pid):
                self._reap(pid)

    def _reap(self, pid: int) -> None:
        try:
            _, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped since the listing
            return
        log.debug("reaped an adopted orphan pid=%d status=%d", pid, os.waitstatus_to_exitcode(status))

    def adopted(self) -> list[int]:
        """Return the live children that lsif_agg did not spawn: orphans it adopted."""
        return [
            pid
            for pid, state in list_children()
            if state != "Z" and self._children.may_reap(pid)
        ]

    def signal_adopted(self, signum: int) -> int:
        """Send `signum` to every adopted orphan; return how many there were."""
        pids = self.adopted()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return len(pids)
