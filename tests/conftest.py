"""Shared helpers: free ports, deadline waits, real tools, and lsif_agg run as a real process."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

# Ephemeral ports on Linux start at 32768; blocks are picked below that to avoid clashes with
# client sockets, and far above the defaults 9090 and 3187.
PORT_BLOCK_RANGE = (20000, 32000)


def free_port() -> int:
    """Return a port that was free on 127.0.0.1 a moment ago (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def is_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(size: int) -> int:
    """Return the first port of `size` consecutive ports that are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(PORT_BLOCK_RANGE[0], PORT_BLOCK_RANGE[1] - size)
        if all(is_port_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError(f"found no block of {size} free ports in {PORT_BLOCK_RANGE}")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 20.0,
             interval: float = 0.05) -> T:
    """Call `condition` until it returns a true value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as error:  # a condition may raise while a server is still starting
            last_error = error
        else:
            if result:
                return result
        time.sleep(interval)
    suffix = f" (last error: {last_error!r})" if last_error else ""
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}{suffix}")


def require_tool(name: str) -> str:
    """Return the path of a real program the test needs; fail, never skip, when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: run `make test-tools` (as root) to install "
                    f"Debian's prometheus and prometheus-node-exporter packages")
    return path


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
             ) -> tuple[int, dict[str, str], bytes]:
    """GET `url`; return status, headers and body, for error statuses too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def process_table() -> dict[int, tuple[str, int]]:
    """Map each process's pid to its state letter and parent pid, read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may hold blanks and brackets, so split after the last one.
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        table[int(entry.name)] = (state, int(parent))
    return table


def descendants(pid: int) -> list[int]:
    """Return every live descendant of `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for child, (_, parent) in process_table().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def pids_alive(pids: list[int]) -> list[int]:
    """Return the pids of `pids` that still exist and are not zombies."""
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(pid)
    return alive


@dataclass
class LsifAgg:
    """lsif_agg running as a real child process, with the ports it was given."""

    process: subprocess.Popen[bytes]
    listen_port: int
    base_port: int
    log_path: Path
    children_seen: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.url + path, headers)

    def metrics(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200, f"/metrics returned {status}: {body[:500]!r}"
        return body.decode()

    def track_children(self) -> list[int]:
        pids = descendants(self.process.pid)
        self.children_seen.update(pids)
        return pids

    def stop(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit status."""
        self.track_children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start_lsif_agg(tmp_path: Path) -> Iterator[Callable[..., LsifAgg]]:
    """Start lsif_agg with free ports; afterwards stop it and fail if any child outlives it."""
    started: list[LsifAgg] = []

    def start(*args: str, workers: int = 2, env: dict[str, str] | None = None,
              wait_ready: bool = True) -> LsifAgg:
        listen_port = free_port()
        base_port = free_port_block(max(workers, 1) + 4)
        log_path = tmp_path / f"lsif_agg-{len(started)}.log"
        command = [sys.executable, "-m", "lsif_agg", "--workers", str(workers),
                   "--base-port", str(base_port), "--listen", f"127.0.0.1:{listen_port}",
                   "--grace-period", "5", *args]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})})
        agg = LsifAgg(process, listen_port, base_port, log_path)
        started.append(agg)
        if wait_ready:
            wait_for(lambda: agg.get("/-/ready")[0] == 200 or agg.process.poll() is not None,
                     f"lsif_agg on port {listen_port} to be ready")
            assert agg.process.poll() is None, f"lsif_agg exited early:\n{agg.log()}"
            agg.track_children()
        return agg

    yield start

    for agg in started:
        if agg.process.poll() is None:
            agg.stop()
        leftovers = pids_alive(sorted(agg.children_seen))
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes outlived lsif_agg: {leftovers}\n{agg.log()}"


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start a real Prometheus that scrapes a given port every second; yield its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        binary = require_tool("prometheus")
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: lsif_agg\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(url + "/-/ready")[0] == 200, "Prometheus to be ready")
        return url

    yield start

    for process in processes:
        process.terminate()
        process.wait(timeout=30)
