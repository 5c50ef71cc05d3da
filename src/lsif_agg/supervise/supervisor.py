"""The supervisor: spawns the server and the workers, scales them, and stops them all together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine, Iterable
from typing import Any

from lsif_agg.settings import MAX_PORT, Settings
from lsif_agg.supervise.children import OwnChildren
from lsif_agg.supervise.handle import ProcessHandle
from lsif_agg.supervise.orphans import OrphanReaper, is_pid1
from lsif_agg.supervise.process import ProcessSpec, ProcessState, ProcessView
from lsif_agg.supervise.specs import server_spec, worker_spec

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
FORWARDED_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2})
SCALE_SIGNALS = frozenset({signal.SIGTTIN, signal.SIGTTOU})
# After SIGKILL a process dies at once unless it is stuck in the kernel, in a hung NFS read for
# example. Past this bound shutdown logs what is left and returns instead of hanging.
KILL_WAIT_SECONDS = 5.0
# How often a stop checks whether a process group has emptied after its leader exited: no event
# tells us when processes that are not our own children exit.
GROUP_POLL_SECONDS = 0.05
# Output still in the pipes when a process exits gets this long to be forwarded.
DRAIN_SECONDS = 1.0

log = logging.getLogger(__name__)


class Supervisor:
    """Spawns the server (if any) and the workers, restarts them, scales and stops them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Read once here: children inherit lsif_agg's environment as it was at start-up.
        self._environ = dict(os.environ)
        self._children = OwnChildren()
        server = server_spec(settings)
        self._server = None if server is None else self._make_handle(server)
        self._workers = [
            self._make_handle(worker_spec(settings, index)) for index in range(settings.workers)
        ]
        # Removed workers that are still stopping; a shutdown must stop them too.
        self._retiring: set[ProcessHandle] = set()

        self._stop_requested = asyncio.Event()
        self._stop_signalled = False  # a first SIGTERM, SIGINT or request_stop came
        self._force_kill = asyncio.Event()
        self._exit_status: int | None = None
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: OrphanReaper | None = None

    def _make_handle(self, spec: ProcessSpec) -> ProcessHandle:
        return ProcessHandle(
            spec,
            self._settings,
            environ=self._environ,
            children=self._children,
            on_exit=self._on_process_exit,
        )

    def install_signal_handlers(self) -> None:
        """Route stop, forwarded and scaling signals to the supervisor on the running loop.

        The handlers only queue the signal; a task acts on it and logs. As PID 1, lsif_agg has
        no default action for SIGTERM or SIGINT, so these handlers are what stops it.
        """
        loop = asyncio.get_running_loop()
        for signum in (*STOP_SIGNALS, *FORWARDED_SIGNALS, *SCALE_SIGNALS):
            loop.add_signal_handler(signum, self._signals.put_nowait, signum)
        self._run_task(self._handle_signals())
        self._start_reaper()

    async def start(self) -> None:
        """Spawn the server, then the workers in index order. A stop requested meanwhile
        ends the start-up: the processes not yet spawned are never spawned."""
        self._start_reaper()
        for handle in self._live_handles():
            if self._stop_requested.is_set():
                log.info("stop requested during start-up; not spawning the rest")
                return
            handle.start()
            await self._wait_any(handle.wait_first_attempt(), self._stop_requested.wait())
        failed = [handle.spec.name for handle in self._live_handles()
                  if handle.view().state is ProcessState.FAILED]
        if failed:
            log.error("start-up done, but these processes could not start and will not be "
                      "retried: %s; fix their command and restart lsif_agg", ", ".join(failed))
        else:
            log.info("started all processes workers=%d server=%s",
                     len(self._workers), self._server is not None)

    def _start_reaper(self) -> None:
        """As PID 1, start reaping adopted orphans; no other process would."""
        if is_pid1() and self._reaper is None:
            self._reaper = OrphanReaper(self._children)
            self._reaper.start()
            log.info("running as PID 1; adopted orphans will be reaped")

    def processes(self) -> tuple[ProcessView, ...]:
        """Return a snapshot of the live processes: the server first, then workers by index."""
        return tuple(handle.view() for handle in self._live_handles())

    def request_stop(self) -> None:
        """Request a graceful stop, as a first SIGTERM does."""
        self._stop_signalled = True
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        """Return once a stop is requested: by a signal, request_stop, or under
        on_exit="exit" by the exit of a process."""
        await self._stop_requested.wait()

    # Scaling.

    async def add_worker(self) -> ProcessView | None:
        """Spawn one more worker with the next index; return its view, or None if refused."""
        if self._stop_requested.is_set():
            log.warning("not adding a worker: lsif_agg is stopping")
            return None
        index = len(self._workers)
        port = self._settings.worker_port(index)
        conflict = self._port_conflict(port)
        if conflict is not None:
            log.error("not adding worker-%d: port %d %s workers=%d", index, port, conflict, index)
            return None

        handle = self._make_handle(worker_spec(self._settings, index))
        self._workers.append(handle)
        log.info("adding a worker worker=%s workers=%d", handle.spec.name, len(self._workers))
        handle.start()
        await handle.wait_first_attempt()
        return handle.view()

    async def remove_worker(self) -> ProcessView | None:
        """Stop the newest worker gracefully; return its final view, or None if none is left."""
        if not self._workers:
            log.warning("no worker to remove workers=0")
            return None
        handle = self._workers.pop()
        self._retiring.add(handle)
        log.info("removing a worker worker=%s workers=%d", handle.spec.name, len(self._workers))

        try:
            await self._stop_handles([handle])
        finally:
            self._retiring.discard(handle)
        return handle.view()

    def _port_conflict(self, port: int) -> str | None:
        """Return why a new worker cannot have `port`, or None if it can."""
        if port > MAX_PORT:
            return f"is past {MAX_PORT}"
        if port == self._settings.listen_port:
            return "is the listen port"
        if self._server is not None and port == self._server.spec.port:
            return "is the server's port"
        return None

    # Signals, acted on in the loop.

    async def _handle_signals(self) -> None:
        while True:
            signum = await self._signals.get()
            self._handle_signal(signum)

    def _handle_signal(self, signum: signal.Signals) -> None:
        if signum in STOP_SIGNALS and not self._stop_signalled:
            log.info("received %s; stopping all processes gracefully", signum.name)
            self.request_stop()
        elif signum in STOP_SIGNALS:
            log.warning("received %s again; killing all processes now", signum.name)
            self._force_kill.set()
        elif signum in FORWARDED_SIGNALS:
            handles = self._live_handles()
            log.info("forwarding %s to %d processes", signum.name, len(handles))
            for handle in handles:
                handle.send_signal(signum)
        elif signum == signal.SIGTTIN:
            self._run_task(self.add_worker())
        elif signum == signal.SIGTTOU:
            self._run_task(self.remove_worker())

    def _on_process_exit(self, handle: ProcessHandle, status: int) -> None:
        """Under on_exit="exit", request a stop with the status of the first process to exit."""
        if self._exit_status is not None:
            return
        self._exit_status = status
        log.info(
            "a process exited and on_exit is 'exit'; stopping lsif_agg worker=%s status=%d",
            handle.spec.name, status,
        )
        self._stop_requested.set()

    # Shutdown.

    async def shutdown(self) -> int:
        """Stop every process gracefully and reap them all. Return the status lsif_agg should
        exit with: 0, or under on_exit="exit" the status of the process that exited."""
        self._stop_requested.set()
        handles = [*self._live_handles(), *self._retiring]
        # Failed processes and those waiting to restart have no process to stop.
        running = sum(1 for handle in handles if handle.pid is not None)
        log.info("stopping processes running=%d grace_period=%g", running,
                 self._settings.grace_period)
        await self._stop_handles(handles, orphans=self._reaper)

        # The last lines still in the pipes, then the tasks of signals, scaling and reaping.
        await asyncio.gather(*(handle.drain_output(DRAIN_SECONDS) for handle in handles))
        await self._close()
        if self._reaper is not None:
            await self._reaper.stop()
        status = self._exit_status or 0
        log.info("all processes stopped status=%d", status)
        return status

    async def _stop_handles(
        self, handles: list[ProcessHandle], *, orphans: OrphanReaper | None = None
    ) -> None:
        """Stop `handles`, and the adopted `orphans` if given, together: SIGTERM, a wait up to
        the grace period, SIGKILL, reap."""
        loop = asyncio.get_running_loop()

        # Signal every process group at once, so all stop in parallel under one deadline.
        for handle in handles:
            handle.terminate()
        if orphans is not None and (count := orphans.signal_adopted(signal.SIGTERM)):
            log.info("sent SIGTERM to %d adopted orphans", count)

        # Wait for the groups to empty, until the deadline or a second stop signal.
        deadline = loop.time() + self._settings.grace_period
        await self._wait_gone(handles, orphans, deadline, forceable=True)

        # Kill what is left, and wait for it to be reaped.
        left = [handle for handle in handles if not handle.is_done() or handle.has_members()]
        reason = ("a second stop signal arrived" if self._force_kill.is_set()
                  else "process group did not stop within the grace period")
        for handle in left:
            log.warning(
                "%s; sending SIGKILL worker=%s pid=%s pgid=%s",
                reason, handle.spec.name, handle.pid, handle.group,
            )
            handle.kill()
        if orphans is not None and (count := orphans.signal_adopted(signal.SIGKILL)):
            log.warning("sent SIGKILL to %d adopted orphans that outlived the grace period", count)
        await self._wait_gone(left, orphans, loop.time() + KILL_WAIT_SECONDS, forceable=False)
        self._log_survivors(left)

    async def _wait_gone(
        self,
        handles: list[ProcessHandle],
        orphans: OrphanReaper | None,
        deadline: float,
        *,
        forceable: bool,
    ) -> None:
        """Wait until every handle's process is reaped, its group is empty and no orphan is
        left, or until the deadline, or (if `forceable`) until a second stop signal."""
        loop = asyncio.get_running_loop()
        forced = self._force_kill.wait() if forceable else None
        await self._wait_any(
            asyncio.gather(*(handle.wait_done() for handle in handles)),
            forced,
            seconds=max(deadline - loop.time(), 0.0),
        )

        # A grandchild that ignores SIGTERM outlives its group's leader.
        def is_any_left() -> bool:
            return any(handle.has_members() for handle in handles) or (
                orphans is not None and bool(orphans.adopted())
            )

        while is_any_left() and loop.time() < deadline:
            if forceable and self._force_kill.is_set():
                return
            await asyncio.sleep(GROUP_POLL_SECONDS)

    def _log_survivors(self, handles: Iterable[ProcessHandle]) -> None:
        for handle in handles:
            if not handle.is_done() or handle.has_members():
                log.error(
                    "processes survived SIGKILL for %g s; they may be stuck in the kernel "
                    "worker=%s pid=%s pgid=%s",
                    KILL_WAIT_SECONDS, handle.spec.name, handle.pid, handle.group,
                )

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (*STOP_SIGNALS, *FORWARDED_SIGNALS, *SCALE_SIGNALS):
            loop.remove_signal_handler(signum)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Helpers.

    def _live_handles(self) -> list[ProcessHandle]:
        return [*([self._server] if self._server is not None else []), *self._workers]

    def _run_task(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run `coroutine` in a task kept until it ends, so it is neither lost nor collected."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _wait_any(
        *awaitables: Coroutine[Any, Any, Any] | asyncio.Future[Any] | None,
        seconds: float | None = None,
    ) -> None:
        """Wait until the first of `awaitables` completes or `seconds` pass; cancel the rest."""
        tasks = [asyncio.ensure_future(item) for item in awaitables if item is not None]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            # Collect the outcomes, or asyncio logs a cancelled gather as "never retrieved".
            await asyncio.gather(*tasks, return_exceptions=True)
