"""One supervised process: spawn it, forward its output, restart it by the policy, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Literal

from lsif_agg.settings import Settings
from lsif_agg.supervise.children import OwnChildren
from lsif_agg.supervise.output import forward_lines
from lsif_agg.supervise.ports import LOOPBACK, port_error
from lsif_agg.supervise.process import ExitCause, ProcessSpec, ProcessState, ProcessView
from lsif_agg.supervise.restart import RestartPolicy

# The statuses a shell gives a command it cannot run; on_exit="exit" reports them the same way.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
# Spawn errors that retrying cannot cure: the command is missing or not executable. Other
# errors, such as EAGAIN or EMFILE, may pass, so they are retried with backoff.
PERMANENT_SPAWN_ERRORS = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR, errno.EISDIR,
    errno.ELOOP, errno.ENAMETOOLONG,
})

log = logging.getLogger(__name__)

# Called with the handle and the status lsif_agg should exit with, under on_exit="exit".
ExitListener = Callable[["ProcessHandle", int], None]


def exit_cause(returncode: int) -> ExitCause:
    """Turn an asyncio returncode into an ExitCause; asyncio reports signal N as -N."""
    if returncode < 0:
        return ExitCause(code=None, signal=-returncode)
    return ExitCause(code=returncode, signal=None)


def exit_status(cause: ExitCause) -> int:
    """Return the status a shell would report: the exit code, or 128 plus the signal number."""
    if cause.signal is not None:
        return 128 + cause.signal
    return cause.code or 0


class ProcessHandle:
    """One process of the supervisor: spawns its spec, restarts it with backoff, stops it."""

    def __init__(
        self,
        spec: ProcessSpec,
        settings: Settings,
        *,
        environ: Mapping[str, str],
        children: OwnChildren,
        on_exit: ExitListener,
    ) -> None:
        self.spec = spec
        self._settings = settings
        self._env = {**environ, **spec.env}
        self._children = children
        self._on_exit = on_exit
        self._policy = RestartPolicy.from_settings(settings)

        self._state = ProcessState.STARTING
        self._process: asyncio.subprocess.Process | None = None
        # The process group of the current or last run, kept while it may still have members.
        self._group: int | None = None
        self._spawns = 0
        self._started_at: float | None = None
        self._running_since: float | None = None
        self._last_exit: ExitCause | None = None
        self._failure: str | None = None  # why the process was given up, for the health endpoints
        self._kill_requested = False
        self._killed = False  # whether our SIGKILL reached the group

        self._stop = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._life: asyncio.Task[None] | None = None
        self._forwarders: set[asyncio.Task[None]] = set()

    def view(self) -> ProcessView:
        """Return a snapshot of this process for scraping and health checks."""
        return ProcessView(
            name=self.spec.name,
            label=self.spec.label,
            port=self.spec.port,
            state=self._state,
            pid=self.pid,
            restarts=max(self._spawns - 1, 0),
            started_at=self._started_at,
            running_since=self._running_since,
            last_exit=self._last_exit,
            failure=self._failure,
        )

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def group(self) -> int | None:
        """The process group of the current or last run, while it may still have members."""
        return self._group

    # Life: spawn, wait, decide, back off, again.

    def start(self) -> None:
        """Start the life of this process in a task; it runs until stopped or given up."""
        self._life = asyncio.create_task(self._live(), name=f"lsif_agg {self.spec.name}")

    async def wait_first_attempt(self) -> None:
        """Wait until the first spawn has succeeded, failed or been put off."""
        await self._first_attempt.wait()

    async def _live(self) -> None:
        try:
            while not self._stop.is_set():
                delay = await self._run_once()
                if delay is None:
                    return
                await self._back_off(delay)
        finally:
            self._first_attempt.set()
            if self._state is not ProcessState.FAILED:
                self._state = ProcessState.STOPPED

    async def _run_once(self) -> float | None:
        """Spawn the process once and wait for its exit. Return the delay before the next
        spawn, or None when it must not be spawned again."""
        error = port_error(self.spec.port)
        if error is not None:
            self._first_attempt.set()
            return self._put_off(error)

        outcome = await self._spawn()
        self._first_attempt.set()
        if isinstance(outcome, OSError):
            return self._after_spawn_error(outcome)

        returncode = await outcome.wait()
        runtime = time.monotonic() - (self._running_since or 0.0)
        self._children.discard(outcome.pid)
        self._process = None
        return self._after_exit(exit_cause(returncode), runtime, outcome.pid)

    async def _spawn(self) -> asyncio.subprocess.Process | OSError:
        self._state = ProcessState.STARTING
        try:
            with self._children.spawning():
                process = await asyncio.create_subprocess_exec(
                    *self.spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self._env,
                    # A session and process group of its own: stop signals go to the whole
                    # group, so a shell wrapper's children stop too, and a Ctrl-C at a
                    # terminal reaches only lsif_agg, which then stops everything in order.
                    start_new_session=True,
                )
                self._children.add(process.pid)
        except OSError as error:
            return error

        self._record_start(process)
        self._forward_output(process)

        # A stop requested while the spawn was in flight found no process to signal.
        if self._kill_requested:
            self.kill()
        elif self._stop.is_set():
            self.terminate()
        return process

    def _record_start(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._group = process.pid  # start_new_session makes the child its group's leader
        self._spawns += 1
        self._started_at = time.time()
        self._running_since = time.monotonic()
        self._state = ProcessState.RUNNING
        log.info(
            "%s process worker=%s pid=%d port=%d restarts=%d",
            "started" if self._spawns == 1 else "restarted",
            self.spec.name, process.pid, self.spec.port, self._spawns - 1,
        )

    def _forward_output(self, process: asyncio.subprocess.Process) -> None:
        streams: tuple[tuple[asyncio.StreamReader | None, Literal["stdout", "stderr"]], ...] = (
            (process.stdout, "stdout"),
            (process.stderr, "stderr"),
        )
        for reader, stream in streams:
            if reader is None:
                continue
            task = asyncio.create_task(forward_lines(reader, self.spec.name, stream))
            self._forwarders.add(task)
            task.add_done_callback(self._forwarders.discard)

    async def _back_off(self, delay: float) -> None:
        self._state = ProcessState.BACKOFF
        log.info(
            "backing off %.2f s before the next start worker=%s early_exits=%d",
            delay, self.spec.name, self._policy.early_exits,
        )
        # A stop ends the wait early, so a shutdown never waits out a backoff.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    # Decisions after an exit, a failed spawn or a busy port.

    def _after_exit(self, cause: ExitCause, runtime: float, pid: int) -> float | None:
        self._last_exit = cause
        self._running_since = None
        if self._stop.is_set():
            self._log_stopped(cause, pid)
            return None

        self._kill_leftovers(pid)
        if self._settings.on_exit == "exit":
            self._log_exit(cause, pid, runtime, expected=cause.code == 0)
            self._on_exit(self, exit_status(cause))
            return None

        self._log_exit(cause, pid, runtime, expected=False)
        self._policy.record_exit(runtime)
        return self._next_delay_or_give_up()

    def _after_spawn_error(self, error: OSError) -> float | None:
        reason = os.strerror(error.errno) if error.errno is not None else str(error)
        if error.errno not in PERMANENT_SPAWN_ERRORS:
            log.error(
                "cannot spawn %s: %s; retrying with backoff worker=%s",
                self.spec.argv[0], reason, self.spec.name,
            )
            self._policy.record_exit(0.0)
            return self._next_delay_or_give_up()

        log.error(
            "cannot start %s: %s; fix the command, it will not be retried worker=%s",
            self.spec.argv[0], reason, self.spec.name,
        )
        self._failure = f"cannot start {self.spec.argv[0]}: {reason}"
        self._state = ProcessState.FAILED
        if self._settings.on_exit == "exit":
            status = EXIT_NOT_FOUND if error.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
            self._on_exit(self, status)
        return None

    def _put_off(self, error: OSError) -> float:
        self._policy.record_busy_port()
        delay = self._policy.next_delay()
        log.error(
            "cannot bind port %d on %s: %s. Another program may hold it: stop that program or "
            "pass another --base-port. The start is retried with backoff worker=%s port=%d",
            self.spec.port, LOOPBACK, error.strerror or error, self.spec.name, self.spec.port,
        )
        return delay

    def _next_delay_or_give_up(self) -> float | None:
        if not self._policy.should_give_up:
            return self._policy.next_delay()
        log.error(
            "process exited %d times in a row within %g s of its start; giving up, it will "
            "not be restarted worker=%s",
            self._policy.early_exits, self._settings.early_exit_seconds, self.spec.name,
        )
        self._failure = (f"exited {self._policy.early_exits} times in a row within "
                         f"{self._settings.early_exit_seconds:g} s of its start")
        self._state = ProcessState.FAILED
        return None

    def _kill_leftovers(self, pid: int) -> None:
        """Kill what is left of the group of a process that exited on its own, so its helpers
        neither hold its port against the restart nor outlive it."""
        if self._signal_group(signal.SIGKILL):
            log.warning(
                "killed the processes left in the group of an exited process "
                "worker=%s pid=%d pgid=%d",
                self.spec.name, pid, pid,
            )

    # Logs of a death: the level follows the cause.

    def _log_exit(self, cause: ExitCause, pid: int, runtime: float, *, expected: bool) -> None:
        level = logging.INFO if expected else logging.ERROR
        if cause.code == 0 and not expected:
            level = logging.WARNING
        hint = ""
        if cause.signal == signal.SIGKILL:
            hint = "; SIGKILL from outside often means the kernel ran out of memory"
        log.log(
            level, "process exited with %s after %.2f s%s worker=%s pid=%d status=%d",
            cause.describe(), runtime, hint, self.spec.name, pid, exit_status(cause),
        )

    def _log_stopped(self, cause: ExitCause, pid: int) -> None:
        if self._killed:
            log.warning(
                "process killed with SIGKILL: the grace period ended or a second stop signal "
                "arrived worker=%s pid=%d",
                self.spec.name, pid,
            )
        elif cause.signal == signal.SIGKILL:
            log.error(
                "process killed by SIGKILL while stopping; the kernel may have run out of "
                "memory worker=%s pid=%d",
                self.spec.name, pid,
            )
        else:
            log.info(
                "process stopped with %s worker=%s pid=%d",
                cause.describe(), self.spec.name, pid,
            )

    # Stopping: requested by the supervisor, for a shutdown or a scale-down.

    def terminate(self) -> None:
        """Stop restarting, and send SIGTERM to the process group if one may be alive."""
        self._stop.set()
        if self._life is None:  # never started: a stop came during start-up
            self._state = ProcessState.STOPPED
        elif self._process is not None:
            self._state = ProcessState.STOPPING
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """Stop restarting, and send SIGKILL to the process group if one may be alive."""
        self._stop.set()
        self._kill_requested = True
        if self._signal_group(signal.SIGKILL):
            self._killed = True

    def send_signal(self, signum: int) -> None:
        """Forward `signum` to the process group of the running process, if one runs."""
        if self._process is not None:
            self._signal_group(signum)

    def has_members(self) -> bool:
        """Return whether the process group may still have members, zombies included."""
        return self._signal_group(0)

    def is_done(self) -> bool:
        """Return whether the life task has ended: stopped, given up, or never started."""
        return self._life is None or self._life.done()

    async def wait_done(self) -> None:
        """Wait until the life task ends: after the process exited and was not restarted."""
        if self._life is not None:
            await asyncio.shield(self._life)

    async def drain_output(self, seconds: float) -> None:
        """Wait up to `seconds` for the output to be forwarded, then drop the rest."""
        if self._forwarders:
            _, pending = await asyncio.wait(set(self._forwarders), timeout=seconds)
            for task in pending:
                task.cancel()

    def _signal_group(self, signum: int) -> bool:
        """Send `signum` to the process group; return whether the group still existed."""
        if self._group is None:
            return False
        try:
            os.killpg(self._group, signum)
        except ProcessLookupError:
            self._group = None
            return False
        except PermissionError as error:
            log.warning(
                "cannot signal the process group: %s worker=%s pgid=%d",
                error.strerror, self.spec.name, self._group,
            )
            return False
        return True
