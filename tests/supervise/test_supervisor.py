"""Supervisor tests with real child processes: spawn, output, restart, stop, scale."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
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
    assert view.failure is not None
    assert "exited 3 times in a row" in view.failure
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


async def test_shutdown_kills_grandchild(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    wait_ready: WaitReady,
    caplog: Logs,
) -> None:
    grandchild = " ".join(child_command("ignore-term"))
    settings = make_settings(worker_command=("sh", "-c", f"{grandchild} & wait"), grace_period=0.5)
    supervisor = await run_supervisor(settings)
    await wait_ready(1)

    began = time.monotonic()
    with caplog.at_level(logging.INFO):
        await supervisor.shutdown()
    took = time.monotonic() - began

    # The shell exits at SIGTERM; its child ignores it and lives until the SIGKILL.
    assert took > 0.4, f"shutdown returned after {took:.2f} s, before the grace period ended"
    assert "SIGKILL" in caplog.text
    # The leftover check of the fixture then finds no process of the test.


async def test_on_exit_returns_exit_code(
    make_settings: MakeSettings, run_supervisor: RunSupervisor, child_command: Command
) -> None:
    settings = make_settings(
        workers=2,
        on_exit="exit",
        worker_command=child_command("block"),
        server_command=child_command("exit", "3"),
    )
    supervisor = await run_supervisor(settings)

    await asyncio.wait_for(supervisor.wait_stop_requested(), 10.0)
    assert await supervisor.shutdown() == 3
    assert states(supervisor) == [ProcessState.STOPPED] * 3


@pytest.mark.parametrize(("kind", "status"), [("exit", 0), ("kill-self", 128 + 9)])
async def test_on_exit_returns_status(
    *,
    kind: str,
    status: int,
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    caplog: Logs,
) -> None:
    argument = "0" if kind == "exit" else "SIGKILL"
    settings = make_settings(on_exit="exit", worker_command=child_command(kind, argument))
    with caplog.at_level(logging.INFO):
        supervisor = await run_supervisor(settings)
        await asyncio.wait_for(supervisor.wait_stop_requested(), 10.0)
        assert await supervisor.shutdown() == status

    exits = [record for record in caplog.records if record.message.startswith("process exited")]
    assert len(exits) == 1
    if kind == "exit":
        assert exits[0].levelname == "INFO"
    else:
        assert exits[0].levelname == "ERROR"
        assert "out of memory" in exits[0].message


async def test_exit_zero_restarts(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    eventually: Eventually,
) -> None:
    settings = make_settings(worker_command=child_command("exit", "0"), max_early_exits=2)
    supervisor = await run_supervisor(settings)

    await eventually(lambda: states(supervisor) == [ProcessState.FAILED], "worker-0 to fail")
    assert view_of(supervisor, "worker-0").restarts == 1


async def test_missing_command_fails_at_once(
    make_settings: MakeSettings, run_supervisor: RunSupervisor, caplog: Logs, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-program")
    with caplog.at_level(logging.INFO):
        supervisor = await run_supervisor(make_settings(worker_command=(missing, "{port}")))

    assert states(supervisor) == [ProcessState.FAILED]
    assert view_of(supervisor, "worker-0").restarts == 0
    assert view_of(supervisor, "worker-0").failure == (
        f"cannot start {missing}: No such file or directory")
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 2
    assert missing in errors[0].message
    assert "No such file or directory" in errors[0].message
    assert "could not start and will not be retried: worker-0" in errors[1].message


async def test_shutdown_counts_only_running_processes(
    make_settings: MakeSettings, run_supervisor: RunSupervisor, caplog: Logs, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-program")
    with caplog.at_level(logging.INFO):
        supervisor = await run_supervisor(make_settings(worker_command=(missing, "{port}")))
        await supervisor.shutdown()

    assert "stopping processes running=0 " in caplog.text


async def test_unexecutable_command_fails(
    make_settings: MakeSettings, run_supervisor: RunSupervisor, caplog: Logs, tmp_path: Path
) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    with caplog.at_level(logging.INFO):
        supervisor = await run_supervisor(make_settings(worker_command=(str(script),), on_exit="exit"))
        await asyncio.wait_for(supervisor.wait_stop_requested(), 10.0)

    assert states(supervisor) == [ProcessState.FAILED]
    assert "Permission denied" in caplog.text
    assert await supervisor.shutdown() == 126


async def test_busy_port_backs_off(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    eventually: Eventually,
    caplog: Logs,
) -> None:
    settings = make_settings(worker_command=child_command("hold-port"), max_early_exits=1)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", settings.base_port))
    holder.listen()
    with caplog.at_level(logging.INFO):
        supervisor = await run_supervisor(settings)
        await eventually(lambda: caplog.text.count("cannot bind port") >= 2, "two put-off starts")
        assert states(supervisor) == [ProcessState.BACKOFF]
        holder.close()

        await eventually(lambda: states(supervisor) == [ProcessState.RUNNING], "the start")

    busy = [record for record in caplog.records if "cannot bind port" in record.message]
    assert busy[0].levelname == "ERROR"
    assert f"port={settings.base_port}" in busy[0].message
    assert "worker=worker-0" in busy[0].message
    # A busy port is not the process's fault, so it never counts towards giving up.
    assert view_of(supervisor, "worker-0").restarts == 0


async def test_scaling_signals_in_a_row(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    eventually: Eventually,
) -> None:
    settings = make_settings(workers=1)
    supervisor = await run_supervisor(settings, signals=True)

    os.kill(os.getpid(), signal.SIGTTIN)
    os.kill(os.getpid(), signal.SIGTTIN)
    os.kill(os.getpid(), signal.SIGTTOU)

    def names() -> list[str]:
        return [view.name for view in supervisor.processes()]

    await eventually(lambda: names() == ["worker-0", "worker-1"], "two workers after +2 -1")
    await eventually(lambda: states(supervisor) == [ProcessState.RUNNING] * 2, "both workers running")
    assert view_of(supervisor, "worker-1").port == settings.base_port + 1


async def test_scaling_down_to_zero(
    make_settings: MakeSettings, run_supervisor: RunSupervisor, caplog: Logs
) -> None:
    supervisor = await run_supervisor(make_settings(workers=1))

    removed = await supervisor.remove_worker()
    assert removed is not None
    assert removed.name == "worker-0"
    assert removed.state is ProcessState.STOPPED
    assert supervisor.processes() == ()

    with caplog.at_level(logging.INFO):
        assert await supervisor.remove_worker() is None
    assert "no worker to remove" in caplog.text

    added = await supervisor.add_worker()
    assert added is not None
    assert added.name == "worker-0"
    assert added.state is ProcessState.RUNNING


async def test_stop_signal_during_start(make_settings: MakeSettings, eventually: Eventually) -> None:
    supervisor = Supervisor(make_settings(workers=30))
    supervisor.install_signal_handlers()
    starting = asyncio.create_task(supervisor.start())
    try:
        await eventually(lambda: supervisor.processes()[0].pid is not None, "a first spawn")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(starting, 10.0)
    finally:
        status = await supervisor.shutdown()

    assert status == 0
    never = [view for view in supervisor.processes() if view.started_at is None]
    assert never, "every worker was spawned despite the stop request"
    assert all(view.state is ProcessState.STOPPED for view in supervisor.processes())


async def test_second_sigterm_kills_at_once(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    wait_ready: WaitReady,
) -> None:
    settings = make_settings(workers=2, worker_command=child_command("ignore-term"), grace_period=30.0)
    supervisor = await run_supervisor(settings, signals=True)
    await wait_ready(2)

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(supervisor.wait_stop_requested(), 5.0)
    began = time.monotonic()
    stopping = asyncio.create_task(supervisor.shutdown())
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(stopping, 5.0)

    assert time.monotonic() - began < 3.0
    assert all(view.last_exit is not None for view in supervisor.processes())


async def test_forwards_sighup_to_all(
    *,
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    wait_ready: WaitReady,
    eventually: Eventually,
    output: Output,
) -> None:
    settings = make_settings(workers=2, worker_command=child_command("report-signals"))
    await run_supervisor(settings, signals=True)
    await wait_ready(2)

    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGUSR1)

    await eventually(lambda: output.out().count("| got SIG") == 4, "two signals to two workers")
    assert "worker-0 | got SIGHUP\n" in output.out()
    assert "worker-1 | got SIGUSR1\n" in output.out()
