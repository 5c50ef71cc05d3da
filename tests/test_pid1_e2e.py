"""The container entry point: `python -m lsif_agg` as PID 1 of a new PID namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import free_port, free_port_block, http_get, process_table, wait_for


def zombie_children(pid: int) -> list[int]:
    """Return the pids of zombie processes whose parent is `pid`."""
    return [child for child, (state, parent) in process_table().items()
            if state == "Z" and parent == pid]


def child_of(parent: int) -> int | None:
    """Return the pid of a child of `parent`, or None if it has none."""
    children = [child for child, (_, ppid) in process_table().items() if ppid == parent]
    return children[0] if children else None


def test_entry_point_as_pid1(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.fail("this test needs root and unshare(1) (util-linux) to create a PID namespace")
    listen_port = free_port()
    base_port = free_port_block(4)
    # Each worker leaves an orphan behind: the subshell exits at once, so its `sleep` is adopted
    # by PID 1 (lsif_agg) and must be reaped when it exits a moment later.
    worker = (f"(sleep 0.3 &); exec {sys.executable} -m lsif_agg.sample_worker "
              "--port {port} --worker {worker}")
    log_path = tmp_path / "lsif_agg.log"
    with log_path.open("wb") as log:
        namespace = subprocess.Popen(
            # --kill-child: should the test kill unshare, PID 1 of the namespace dies with it.
            [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-m",
             "lsif_agg",
             "--workers", "2", "--base-port", str(base_port),
             "--listen", f"127.0.0.1:{listen_port}", "--grace-period", "5",
             "--", "sh", "-c", worker],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{listen_port}"
        wait_for(lambda: http_get(url + "/-/ready")[0] == 200, "lsif_agg as PID 1 to be ready")
        pid1 = child_of(namespace.pid)
        assert pid1 is not None, "unshare has no child"

        # The orphans have exited by now; lsif_agg must have reaped them and still serve.
        wait_for(lambda: not zombie_children(pid1), "the adopted orphans to be reaped", 10)
        status, _, body = http_get(url + "/metrics")
        assert status == 200
        assert b'lsif_sample_queue_depth{worker="1"}' in body

        # As `docker stop` does: SIGTERM to PID 1 itself, which has no default handler for it.
        os.kill(pid1, signal.SIGTERM)
        assert namespace.wait(timeout=30) == 0
    finally:
        if namespace.poll() is None:
            namespace.kill()
            namespace.wait()
    output = log_path.read_text()
    assert "all processes stopped status=0" in output, output
