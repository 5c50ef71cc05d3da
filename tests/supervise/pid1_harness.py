"""Run a Supervisor as PID 1 of a new PID namespace, for the orphan test.

Run as `unshare --pid --fork --mount-proc python pid1_harness.py LOOP PIDFILE BASE_PORT`.
One worker double-forks an orphan that exits after 0.3 s. The harness prints `harness: reaped`
once that orphan is gone. Then it waits for SIGTERM, shuts down and prints what is left in /proc.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import uvloop

from lsif_agg.settings import Settings
from lsif_agg.supervise import ProcessState, Supervisor

CHILDREN = str(Path(__file__).with_name("children.py"))


def report(line: str) -> None:
    print(f"harness: {line}", flush=True)


def settings(pidfile: str, base_port: int) -> Settings:
    return Settings(
        workers=1,
        worker_command=(sys.executable, CHILDREN, "orphan", "0.3", pidfile),
        server_command=None,
        base_port=base_port,
        server_port=base_port - 1,
        listen_host="127.0.0.1",
        listen_port=base_port - 2,
        scrape_timeout=1.0,
        grace_period=1.0,
        on_exit="restart",
        backoff_initial=0.05,
        backoff_max=0.2,
        max_early_exits=3,
        early_exit_seconds=1.0,
        log_format="text",
        log_level="debug",
    )


async def wait_until(condition: object, what: str, seconds: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            report(f"timed out waiting for {what}")
            sys.exit(3)
        await asyncio.sleep(0.02)


def state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def read_pid(pidfile: str) -> int:
    """Return the pid in `pidfile`, or 0 while it is not written yet."""
    try:
        return int(Path(pidfile).read_text())
    except FileNotFoundError:
        return 0


def other_processes() -> list[int]:
    """Return every process of the namespace but PID 1, from /proc."""
    return sorted(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and entry.name != "1"
    )


async def main(pidfile: str, base_port: int) -> int:
    report(f"pid {os.getpid()}")
    supervisor = Supervisor(settings(pidfile, base_port))
    supervisor.install_signal_handlers()
    await supervisor.start()

    await wait_until(lambda: read_pid(pidfile), "the orphan's pid")
    orphan = read_pid(pidfile)
    await wait_until(lambda: state_of(orphan) is None, f"orphan {orphan} to be reaped")
    workers = supervisor.processes()
    report(f"reaped {orphan}; worker {workers[0].state.value}")
    if workers[0].state is not ProcessState.RUNNING:
        return 4

    await supervisor.wait_stop_requested()
    status = await supervisor.shutdown()
    report(f"left {other_processes()}")
    return status


if __name__ == "__main__":
    loop_kind, pidfile, base_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if loop_kind == "uvloop":
        uvloop.install()
    sys.exit(asyncio.run(main(pidfile, base_port)))
