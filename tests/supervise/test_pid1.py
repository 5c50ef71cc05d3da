"""The supervisor as PID 1 of a PID namespace: it reaps adopted orphans and stops on SIGTERM."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lsif_agg.settings import Settings

HARNESS = Path(__file__).with_name("pid1_harness.py")
HARNESS_SECONDS = 20.0


def read_line(process: subprocess.Popen[str], prefix: str, seconds: float) -> str:
    """Return the first output line of `process` that starts with `prefix`, within `seconds`."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stdout], [], [], left)
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    pytest.fail(f"no line starting with {prefix!r} within {seconds:g} s; output: {seen}")


def harness_pid(unshare_pid: int) -> int:
    """Return the pid, in our namespace, of the child that unshare forked: the harness."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == unshare_pid:
                return int(entry.name)
    pytest.fail(f"unshare (pid {unshare_pid}) has no child")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pid1_reaps_orphans(loop: str, tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.fail("this test needs root and unshare(1) (util-linux) to create a PID namespace")
    base_port = make_settings().base_port  # a free block of ports
    command = [
        unshare,
        "--pid",
        "--fork",
        "--kill-child",  # should the test kill unshare, the harness dies with it
        "--mount-proc",
        sys.executable,
        str(HARNESS),
        loop,
        str(tmp_path / "orphan.pid"),
        str(base_port),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert read_line(process, "harness: pid", HARNESS_SECONDS) == "harness: pid 1"
            reaped = read_line(process, "harness: reaped", HARNESS_SECONDS)
            assert reaped.endswith("worker running"), reaped

            os.kill(harness_pid(process.pid), signal.SIGTERM)
            assert read_line(process, "harness: left", HARNESS_SECONDS) == "harness: left []"
            assert process.wait(HARNESS_SECONDS) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(HARNESS_SECONDS)
