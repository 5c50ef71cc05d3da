"""Supervisor tests with real child processes: spawn, output: Output, restart, stop, scale."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest

from lsif_agg.settings import Settings
from lsif_agg.supervise import ProcessState, ProcessView, Supervisor

# The types of the fixtures in conftest.py, which tests cannot import.
Command = Callable[..., tuple[str, ...]]
MakeSettings = Callable[..., Settings]
RunSupervisor = Callable[..., Awaitable[Supervisor]]
Eventually = Callable[..., Awaitable[None]]
WaitReady = Callable[[int], Awaitable[None]]
Logs = pytest.LogCaptureFixture


class Output(Protocol):
    def out(self) -> str: ...
    def err(self) -> str: ...


def states(supervisor: Supervisor) -> list[ProcessState]:
    return [view.state for view in supervisor.processes()]


def view_of(supervisor: Supervisor, name: str) -> ProcessView:
    return next(view for view in supervisor.processes() if view.name == name)


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_start_spawns_server_then_workers(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    wait_ready: WaitReady,
    output: Output,
) -> None:
    settings = make_settings(
        workers=2,
        worker_command=child_command("show-env", "{port}", "{worker}"),
        server_command=child_command("show-env", "{port}", "{worker}"),
    )
    supervisor = await run_supervisor(settings)

    views = supervisor.processes()
    assert [view.name for view in views] == ["server", "worker-0", "worker-1"]
    assert [view.label for view in views] == ["server", "0", "1"]
    assert [view.port for view in views] == [settings.server_port, settings.base_port, settings.base_port + 1]
    assert all(view.state is ProcessState.RUNNING for view in views)
    assert all(view.pid is not None for view in views)

    await wait_ready(3)
    text = output.out()
    assert f"worker-1 | argv {settings.base_port + 1} 1\n" in text
    assert f"server | argv {settings.server_port} server\n" in text
    assert f"worker-0 | WORKER_METRICS_PORT {settings.base_port}\n" in text
    assert "worker-0 | WORKER_INDEX 0\n" in text
    assert "server | WORKER_INDEX server\n" in text
    assert "worker-1 | PYTHONUNBUFFERED 1\n" in text


async def test_shutdown_stops_all_at_once(make_settings: MakeSettings, run_supervisor: RunSupervisor) -> None:
    supervisor = await run_supervisor(make_settings(workers=3, grace_period=5.0))
    pids = [view.pid for view in supervisor.processes()]

    began = time.monotonic()
    status = await supervisor.shutdown()
    took = time.monotonic() - began

    assert status == 0
    assert took < 2.0, f"shutdown of processes that obey SIGTERM took {took:.2f} s"
    assert states(supervisor) == [ProcessState.STOPPED] * 3
    assert not [pid for pid in pids if pid is not None and is_alive(pid)]
    assert all(view.last_exit is not None for view in supervisor.processes())
    assert view_of(supervisor, "worker-0").last_exit.signal == signal.SIGTERM  # type: ignore[union-attr]


async def test_shutdown_kills_after_grace(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    wait_ready: WaitReady,
    caplog: Logs,
) -> None:
    settings = make_settings(workers=2, worker_command=child_command("ignore-term"), grace_period=0.5)
    supervisor = await run_supervisor(settings)
    await wait_ready(2)  # the children ignore SIGTERM from then on

    began = time.monotonic()
    with caplog.at_level(logging.INFO):
        await supervisor.shutdown()
    took = time.monotonic() - began

    # Both share one deadline: one grace period in all, not one per process.
    assert 0.4 < took < 1.5, f"shutdown took {took:.2f} s with a 0.5 s grace period"
    assert "SIGKILL" in caplog.text


async def test_restart_gives_up_after_early_exits(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    eventually: Eventually,
    caplog: Logs,
) -> None:
    settings = make_settings(worker_command=child_command("exit", "1"), max_early_exits=3)
    with caplog.at_level(logging.INFO):
        supervisor = await run_supervisor(settings)
        await eventually(lambda: states(supervisor) == [ProcessState.FAILED], "worker-0 to be marked failed")

    view = view_of(supervisor, "worker-0")
    assert view.restarts == 2
    assert view.pid is None
    assert view.last_exit is not None
    assert view.last_exit.code == 1
    assert "giving up" in caplog.text
    assert [r.levelname for r in caplog.records if "giving up" in r.message] == ["ERROR"]
    assert caplog.text.count("backing off") == 2


async def test_restart_keeps_the_port(
    make_settings: MakeSettings, run_supervisor: RunSupervisor, child_command: Command, eventually: Eventually
) -> None:
    settings = make_settings(worker_command=child_command("hold-port"), max_early_exits=0)
    supervisor = await run_supervisor(settings)
    first = view_of(supervisor, "worker-0")
    assert first.pid is not None

    os.kill(first.pid, signal.SIGKILL)
    await eventually(
        lambda: (
            view_of(supervisor, "worker-0").restarts == 1
            and view_of(supervisor, "worker-0").state is ProcessState.RUNNING
        ),
        "worker-0 to be restarted",
    )
    second = view_of(supervisor, "worker-0")
    assert second.port == first.port
    assert second.pid != first.pid
    assert second.last_exit is not None
    assert second.last_exit.signal == signal.SIGKILL
