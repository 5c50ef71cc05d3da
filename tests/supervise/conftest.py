"""Fixtures of the supervisor tests: settings on free ports, a supervisor that is always shut
down, a deadline wait, and a check that no process of a test is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop
from tests.conftest import free_port_block

from lsif_agg.settings import Settings
from lsif_agg.supervise import Supervisor

CHILDREN = Path(__file__).with_name("children.py")
MARK_VARIABLE = "LSIF_AGG_SUPERVISE_TEST"
# How long the leftover check waits for processes to die and zombies to be reaped.
LEFTOVER_SECONDS = 5.0

Eventually = Callable[..., Awaitable[None]]
MakeSettings = Callable[..., Settings]
RunSupervisor = Callable[..., Awaitable[Supervisor]]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every supervisor test on the default loop and on uvloop, which the main program uses:
    the two spawn and reap children differently."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def child(kind: str, *args: str) -> tuple[str, ...]:
    """Return the command of a test child program; see children.py for the kinds."""
    return (sys.executable, str(CHILDREN), kind, *args)


@pytest.fixture
def child_command() -> Callable[..., tuple[str, ...]]:
    return child


@pytest.fixture
def make_settings() -> MakeSettings:
    """Return a factory of Settings on free ports with short delays; keywords override."""

    def make(**overrides: Any) -> Settings:
        base = free_port_block(40)
        values: dict[str, Any] = {
            "workers": 1,
            "worker_command": child("block"),
            "server_command": None,
            "base_port": base + 2,
            "server_port": base + 1,
            "listen_host": "127.0.0.1",
            "listen_port": base,
            "scrape_timeout": 1.0,
            "grace_period": 1.0,
            "on_exit": "restart",
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            "max_early_exits": 3,
            "early_exit_seconds": 1.0,
            "log_format": "text",
            "log_level": "debug",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def run_supervisor() -> AsyncIterator[RunSupervisor]:
    """Return a factory that starts a Supervisor; every one is shut down after the test."""
    started: list[Supervisor] = []

    async def run(settings: Settings, *, signals: bool = False) -> Supervisor:
        supervisor = Supervisor(settings)
        started.append(supervisor)
        if signals:
            supervisor.install_signal_handlers()
        await supervisor.start()
        return supervisor

    yield run

    for supervisor in started:
        await supervisor.shutdown()


@pytest.fixture
def eventually() -> Eventually:
    """Return an async wait for `condition()` to hold, failing with `what` after `seconds`."""

    async def wait(condition: Callable[[], object], what: str, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {seconds:g} s waiting for {what}")
            await asyncio.sleep(0.02)

    return wait


class CapturedOutput:
    """lsif_agg's stdout and stderr as captured so far, kept across reads."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd
        self._out: list[str] = []
        self._err: list[str] = []

    def out(self) -> str:
        self._read()
        return "".join(self._out)

    def err(self) -> str:
        self._read()
        return "".join(self._err)

    def _read(self) -> None:
        captured = self._capfd.readouterr()
        self._out.append(captured.out)
        self._err.append(captured.err)


@pytest.fixture
def output(capfd: pytest.CaptureFixture[str]) -> CapturedOutput:
    return CapturedOutput(capfd)


@pytest.fixture
def wait_ready(output: CapturedOutput, eventually: Eventually) -> Callable[[int], Awaitable[None]]:
    """Return a wait for `count` children in all to print their `ready` line."""

    async def wait(count: int) -> None:
        await eventually(lambda: output.out().count("| ready\n") >= count, f"{count} ready lines")

    return wait


def read_stat(pid: str) -> tuple[str, int] | None:
    """Return the state letter and parent pid of `pid` from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def marked_processes(mark: bytes) -> list[int]:
    """Return the live processes whose environment contains `mark`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mark in environ.split(b"\0") and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def own_zombies() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        stat = read_stat(entry.name) if entry.name.isdigit() else None
        if stat is not None and stat[0] == "Z" and stat[1] == os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def no_leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Mark the environment of every process a test spawns, and fail the test if one is still
    alive afterwards or a child of the test runner is a zombie. Leftovers are killed."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, value)
    mark = f"{MARK_VARIABLE}={value}".encode()

    yield

    deadline = time.monotonic() + LEFTOVER_SECONDS
    while (marked_processes(mark) or own_zombies()) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers, zombies = marked_processes(mark), own_zombies()
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes of the test still alive: {leftovers}"
    assert not zombies, f"zombie children of the test runner: {zombies}"
