"""Scrape benchmark: lsif_agg's /metrics beside the bare fetch floor and Prometheus's /federate.

`.venv/bin/python benchmarks/bench_scrape.py` runs the full matrix. It rewrites the results part
of docs/benchmarks.md and docs/img/latency-vs-n.png, which also explains what is measured.
`--quick` is a smoke run that writes only the JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
from workload import FEDERATE_SELECTOR

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "benchmarks" / "workload.py"
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "latency-vs-n.png"
DOC_BEGIN = "<!-- bench_scrape results: begin (written by benchmarks/bench_scrape.py) -->"
DOC_END = "<!-- bench_scrape results: end -->"

# The Accept header Prometheus 2.x sends when it scrapes a target with its default settings.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
TEXT_ACCEPT = "text/plain;version=0.0.4"
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0"

# The configuration the targets are judged at, and the targets themselves.
TARGET_WORKERS = 16
TARGET_SAMPLES = 10_000
TEXT_FLOOR_RATIO = 2.0
PROMETHEUS_FLOOR_RATIO = 4.0
FEDERATE_SPEEDUP = 10.0
RSS_LIMIT_MIB = 64.0
RSS_PROMETHEUS_FRACTION = 0.1

MIB = 1024 * 1024
# Ports below this are left alone: they are where services listen by convention.
PORT_SEARCH_START = 20_000


def _ephemeral_start() -> int:
    """Return where the kernel's range of ports for outgoing connections starts."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


# Servers listen below the ports the kernel gives outgoing connections. A port in that range
# may be free when it is picked and taken by a client connection a moment later, which made a
# worker fail to bind at 64 workers.
PORT_SEARCH_END = _ephemeral_start()
# Stopping lsif_agg takes up to its grace period (10 s by default) plus reaping.
STOP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Mode:
    """One way of fetching every sample once: from whom, with which request headers."""

    name: str
    title: str
    system: str  # floor, lsif_agg or prometheus: whose CPU and memory the request costs
    path: str
    headers: dict[str, str]


MODES = (
    Mode("floor", "floor: N bodies fetched concurrently", "floor", "/metrics",
         {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}),
    Mode("text", "lsif_agg text 0.0.4", "lsif_agg", "/metrics",
         {"Accept": TEXT_ACCEPT, "Accept-Encoding": "identity"}),
    Mode("openmetrics", "lsif_agg OpenMetrics", "lsif_agg", "/metrics",
         {"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "identity"}),
    Mode("as-prometheus", "lsif_agg as Prometheus asks (gzip)", "lsif_agg", "/metrics",
         {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}),
    Mode("federate", "Prometheus /federate text", "prometheus",
         f"/federate?match[]={quote(FEDERATE_SELECTOR)}",
         {"Accept": TEXT_ACCEPT, "Accept-Encoding": "identity"}),
    Mode("federate-gzip", "Prometheus /federate as Prometheus asks (gzip)", "prometheus",
         f"/federate?match[]={quote(FEDERATE_SELECTOR)}",
         {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}),
)
MODES_BY_NAME = {mode.name: mode for mode in MODES}


@dataclass(frozen=True, slots=True)
class Options:
    """Settings of one run: the matrix, the time each part takes, and whether the doc is rewritten."""

    workers: tuple[int, ...]
    samples: tuple[int, ...]
    rounds: int
    latency_seconds: float  # per configuration, shared by all modes and rounds
    max_requests_per_round: int
    load_seconds: int
    prometheus_interval: int
    soak_scrapes: int
    soak_workers: int
    soak_samples: int
    soak_concurrency: int
    soak_only: bool
    write_doc: bool
    lsif_agg: tuple[str, ...]
    command: str


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: N 1 and 4, S 1000, short rounds, a 1,000-scrape memory phase; writes the "
             "JSON only")
    add("--workers", help="comma-separated worker counts N (default 1,4,16,64)")
    add("--samples", help="comma-separated samples per worker S (default 1000,10000)")
    add("--rounds", type=int, help="interleaved latency rounds per configuration (default 3)")
    add("--latency-seconds", type=float,
        help="latency time budget per configuration, in seconds (default 30)")
    add("--load-seconds", type=int,
        help="wrk duration per mode, in seconds; modes slower than half of it are not loaded (default 10)")
    add("--prometheus-interval", type=int, help="Prometheus scrape_interval in seconds (default 5)")
    add("--soak-scrapes", type=int, help="scrapes in the memory phase; 0 skips it (default 10000)")
    add("--soak", metavar="NxS", help="configuration of the memory phase (default 16x10000)")
    add("--soak-concurrency", type=int, help="concurrent scrapes in the memory phase (default 4)")
    add("--soak-only", action="store_true",
        help="run only the memory phase, without the latency matrix; writes the JSON only")
    add("--write-doc", action=argparse.BooleanOptionalAction,
        help="rewrite docs/benchmarks.md's results and the PNG (default: yes, no with --quick)")
    add("--lsif-agg", default=f"{sys.executable} -m lsif_agg",
        help="command that starts lsif_agg (default: this Python's -m lsif_agg)")
    args = parser.parse_args(argv)

    quick = args.quick
    soak_scrapes = args.soak_scrapes
    if soak_scrapes is None:
        soak_scrapes = 1000 if quick else 10_000
    soak = (args.soak or ("2x1000" if quick else "16x10000")).lower().split("x")
    if len(soak) != 2:
        parser.error(f"invalid --soak {args.soak!r}: write it as NxS, such as 16x10000")
    if args.soak_only and soak_scrapes < 1:
        parser.error("--soak-only needs --soak-scrapes of 1 or more")
    return Options(
        workers=_int_list(args.workers or ("1,4" if quick else "1,4,16,64"), parser),
        samples=_int_list(args.samples or ("1000" if quick else "1000,10000"), parser),
        rounds=args.rounds or (2 if quick else 3),
        latency_seconds=args.latency_seconds or (6.0 if quick else 30.0),
        max_requests_per_round=20 if quick else 100,
        load_seconds=args.load_seconds or (2 if quick else 10),
        prometheus_interval=args.prometheus_interval or (1 if quick else 5),
        soak_scrapes=soak_scrapes,
        soak_workers=int(soak[0]),
        soak_samples=int(soak[1]),
        soak_concurrency=args.soak_concurrency or 4,
        soak_only=args.soak_only,
        write_doc=not args.soak_only and (args.write_doc if args.write_doc is not None else not quick),
        lsif_agg=tuple(args.lsif_agg.split()),
        command=" ".join(["benchmarks/bench_scrape.py", *argv]),
    )


def _int_list(text: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        parser.error(f"invalid list {text!r}: write comma-separated whole numbers, such as 1,4,16")
    if not values or min(values) < 1:
        parser.error(f"invalid list {text!r}: every number must be 1 or more")
    return values


# Ports and waiting


def is_port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_ports(count: int, *, avoid: Sequence[int] = ()) -> int:
    """Return the first port of `count` consecutive free ports on 127.0.0.1."""
    # Spread by process id, so runs side by side rarely probe the same ports first.
    start = PORT_SEARCH_START + os.getpid() * 20 % max(PORT_SEARCH_END - PORT_SEARCH_START - 1_000, 20)
    port = start
    while port + count < PORT_SEARCH_END:
        block = range(port, port + count)
        busy = next((p for p in block if p in avoid or not is_port_free(p)), None)
        if busy is None:
            return port
        port = busy + 1
    raise RuntimeError(f"no {count} consecutive free ports between {start} and {PORT_SEARCH_END}")


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Call `check` until it returns True, or raise TimeoutError naming `what` after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            # Polling, because the condition lives in another process and sends no event.
            while True:
                if await check():
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}") from None


async def is_status_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            await response.read()
            return response.status == 200
    except aiohttp.ClientError:
        return False


# Processes


async def stop_process(process: asyncio.subprocess.Process, name: str) -> None:
    """Send SIGTERM, wait up to STOP_TIMEOUT, then send SIGKILL. The process is reaped either way."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        print(f"{name} pid {process.pid} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it",
              file=sys.stderr)
        process.kill()
        await process.wait()


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    """Return the user plus system CPU time of `processes`, their threads included, in seconds."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def memory_mib(process: psutil.Process) -> tuple[float, float]:
    """Return the resident set now and its peak (VmRSS and VmHWM) in MiB."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


@dataclass(slots=True)
class Stack:
    """The processes of one configuration: lsif_agg with its workers, and maybe Prometheus."""

    workers: int
    samples: int
    lsif_agg_url: str
    worker_ports: tuple[int, ...]
    lsif_agg: psutil.Process
    worker_processes: list[psutil.Process]
    prometheus_url: str | None = None
    prometheus: psutil.Process | None = None

    def base_url(self, mode: Mode) -> str:
        if mode.system == "prometheus":
            assert self.prometheus_url is not None
            return self.prometheus_url
        return self.lsif_agg_url

    def serving(self, system: str) -> list[psutil.Process]:
        """Return the processes whose CPU a request of `system` costs."""
        if system == "floor":
            return self.worker_processes
        if system == "prometheus":
            return [self.prometheus] if self.prometheus is not None else []
        return [self.lsif_agg]


@asynccontextmanager
async def running_lsif_agg(options: Options, workers: int, samples: int, logs: Path
                           ) -> AsyncIterator[Stack]:
    """Start lsif_agg running `workers` benchmark workers, wait until it is ready, stop it after."""
    base_port = find_free_ports(workers)
    listen_port = find_free_ports(1, avoid=range(base_port, base_port + workers))
    command = [
        *options.lsif_agg, "--workers", str(workers), "--base-port", str(base_port),
        "--listen", f"127.0.0.1:{listen_port}", "--log-level", "warning", "--",
        sys.executable, str(WORKLOAD), "--port", "{port}", "--worker", "{worker}",
        "--samples", str(samples),
    ]
    log = (logs / f"lsif_agg-{workers}x{samples}.log").open("wb")
    process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=subprocess.STDOUT,
                                                   cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{listen_port}"
        async with aiohttp.ClientSession() as session:
            await wait_until(lambda: _is_ready(process, session, url), 120,
                             f"lsif_agg to be ready on {url}/-/ready (log: {log.name})")
        parent = psutil.Process(process.pid)
        yield Stack(workers, samples, url, tuple(range(base_port, base_port + workers)), parent,
                    parent.children(recursive=True))
    finally:
        await stop_process(process, "lsif_agg")
        log.close()


async def _is_ready(process: asyncio.subprocess.Process, session: aiohttp.ClientSession, url: str
                    ) -> bool:
    if process.returncode is not None:
        raise RuntimeError(f"lsif_agg exited with status {process.returncode} before it was ready")
    return await is_status_ok(session, f"{url}/-/ready")


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
scrape_configs:
  - job_name: workers
    static_configs:
      - targets: [{targets}]
"""


@asynccontextmanager
async def running_prometheus(options: Options, stack: Stack, logs: Path) -> AsyncIterator[None]:
    """Start Prometheus scraping the stack's workers, and wait until it has scraped each twice."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise RuntimeError("prometheus is not installed: apt-get install prometheus")
    port = find_free_ports(1, avoid=stack.worker_ports)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-prometheus-") as directory:
        config = Path(directory) / "prometheus.yml"
        targets = ", ".join(f"'127.0.0.1:{p}'" for p in stack.worker_ports)
        config.write_text(PROMETHEUS_CONFIG.format(interval=options.prometheus_interval, targets=targets))
        log = (logs / f"prometheus-{stack.workers}x{stack.samples}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={directory}/data",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            stdout=log, stderr=subprocess.STDOUT)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_until(lambda: _has_scraped_twice(process, session, url, stack.workers),
                                 options.prometheus_interval * 4 + 60,
                                 f"Prometheus on {url} to scrape every worker twice")
            stack.prometheus_url = url
            stack.prometheus = psutil.Process(process.pid)
            yield
        finally:
            stack.prometheus = None
            await stop_process(process, "prometheus")
            log.close()


async def _has_scraped_twice(process: asyncio.subprocess.Process, session: aiohttp.ClientSession,
                             url: str, workers: int) -> bool:
    if process.returncode is not None:
        raise RuntimeError(f"prometheus exited with status {process.returncode} before it scraped")
    # Each worker must be up now and have at least two scrapes recorded.
    query = (f'count(up{{job="workers"}} == 1) == {workers} and '
             f'min(count_over_time(up{{job="workers"}}[10m])) >= 2')
    try:
        async with session.get(f"{url}/api/v1/query", params={"query": query}) as response:
            if response.status != 200:
                return False
            payload = await response.json()
    except aiohttp.ClientError:
        return False
    return bool(payload["data"]["result"])


# Measuring


def count_samples(body: bytes) -> int:
    """Count sample lines: every line that is neither empty nor a # comment."""
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


async def fetch(session: aiohttp.ClientSession, stack: Stack, mode: Mode) -> bytes:
    """Fetch every sample once in `mode`. aiohttp decompresses gzip bodies as it reads them."""
    if mode.system == "floor":
        bodies = await asyncio.gather(*(
            _get(session, f"http://127.0.0.1:{port}/metrics", mode.headers)
            for port in stack.worker_ports))
        return b"".join(bodies)
    return await _get(session, stack.base_url(mode) + mode.path, mode.headers)


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bytes:
    async with session.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url} returned status {response.status}: {body[:200]!r}")
        return body


@dataclass(slots=True)
class ModeFigures:
    """Figures of one mode in one configuration, with the raw latencies kept for the JSON."""

    latencies: list[float] = field(default_factory=list)  # seconds, one a request
    cpu_seconds: float = 0.0  # of the serving processes, over the latency rounds
    elapsed_seconds: float = 0.0
    prometheus_cpu_seconds: float = 0.0  # Prometheus's CPU over the same time, scraping or not
    requests_per_round: int = 0
    response_bytes: int = 0
    response_samples: int = 0
    load: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile: with fewer than 100 values, p99 is the maximum."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def warm_up(session: aiohttp.ClientSession, stack: Stack, modes: Sequence[Mode],
                  options: Options) -> dict[str, ModeFigures]:
    """Fetch each mode up to three times, record its sizes, and size its requests per round.

    A mode whose first fetch already takes a whole round's share of the budget is fetched once
    here, so a slow mode cannot stretch the run by much more than its minimum of one per round.
    """
    figures: dict[str, ModeFigures] = {}
    budget = options.latency_seconds / options.rounds / len(modes)
    for mode in modes:
        durations: list[float] = []
        while len(durations) < 3 and sum(durations) < budget:
            started = time.perf_counter()
            body = await fetch(session, stack, mode)
            durations.append(time.perf_counter() - started)
        per_round = int(budget / statistics.median(durations))
        figures[mode.name] = ModeFigures(
            requests_per_round=max(1, min(options.max_requests_per_round, per_round)),
            response_bytes=len(body), response_samples=count_samples(body))
    return figures


async def measure_latency(session: aiohttp.ClientSession, stack: Stack, modes: Sequence[Mode],
                          figures: dict[str, ModeFigures], rounds: int) -> None:
    """Run the modes in interleaved rounds, rotating their order, one request at a time."""
    prometheus = [stack.prometheus] if stack.prometheus is not None else []
    for round_index in range(rounds):
        shift = round_index % len(modes)
        for mode in [*modes[shift:], *modes[:shift]]:
            entry = figures[mode.name]
            serving = stack.serving(mode.system)
            cpu_before, prometheus_before = cpu_seconds(serving), cpu_seconds(prometheus)
            round_started = time.perf_counter()
            for _ in range(entry.requests_per_round):
                started = time.perf_counter()
                await fetch(session, stack, mode)
                entry.latencies.append(time.perf_counter() - started)
            entry.elapsed_seconds += time.perf_counter() - round_started
            entry.cpu_seconds += cpu_seconds(serving) - cpu_before
            entry.prometheus_cpu_seconds += cpu_seconds(prometheus) - prometheus_before


WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m),")
WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_PERCENTILE = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
SECONDS_PER_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(output: str) -> dict[str, float]:
    """Read requests, rate, errors and the p50 and p99 latency (seconds) from wrk 4's report."""
    requests = WRK_REQUESTS.search(output)
    rate = WRK_RATE.search(output)
    if requests is None or rate is None:
        raise ValueError(f"wrk's report has no request count or rate; it was:\n{output}")
    socket_errors = WRK_SOCKET_ERRORS.search(output)
    non_2xx = WRK_NON_2XX.search(output)
    result = {
        "requests": float(requests.group(1)),
        "seconds": float(requests.group(2)) * SECONDS_PER_UNIT[requests.group(3)],
        "requests_per_second": float(rate.group(1)),
        "socket_errors": float(sum(int(n) for n in socket_errors.groups())) if socket_errors else 0.0,
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
    }
    for percent, value, unit in WRK_PERCENTILE.findall(output):
        result[f"p{percent}_seconds"] = float(value) * SECONDS_PER_UNIT[unit]
    return result


async def measure_load_wrk(stack: Stack, mode: Mode, seconds: int) -> dict[str, float]:
    """Run `wrk -t2 -c4` against one lsif_agg or Prometheus URL for `seconds`."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    headers = [arg for name, value in mode.headers.items() for arg in ("-H", f"{name}: {value}")]
    serving = stack.serving(mode.system)
    cpu_before = cpu_seconds(serving)
    process = await asyncio.create_subprocess_exec(
        wrk, "-t2", "-c4", f"-d{seconds}s", "--timeout", "60s", "--latency", *headers,
        stack.base_url(mode) + mode.path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    # wrk stops by itself after `seconds`; the margin covers requests still in flight.
    output, _ = await asyncio.wait_for(process.communicate(), seconds + 90)
    result = parse_wrk(output.decode())
    result["cpu_seconds"] = cpu_seconds(serving) - cpu_before
    return result


async def measure_load_floor(session: aiohttp.ClientSession, stack: Stack, seconds: int
                             ) -> dict[str, float]:
    """Fetch all N bodies in 4 concurrent loops for `seconds`, as wrk -c4 does for one URL."""
    mode = MODES_BY_NAME["floor"]
    deadline = time.monotonic() + seconds
    latencies: list[float] = []

    async def loop() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await fetch(session, stack, mode)
            latencies.append(time.perf_counter() - started)

    cpu_before = cpu_seconds(stack.worker_processes)
    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(4)))
    elapsed = time.monotonic() - started
    return {"requests": float(len(latencies)), "seconds": elapsed,
            "requests_per_second": len(latencies) / elapsed, "socket_errors": 0.0, "non_2xx": 0.0,
            "p50_seconds": percentile(latencies, 0.5), "p99_seconds": percentile(latencies, 0.99),
            "cpu_seconds": cpu_seconds(stack.worker_processes) - cpu_before}


async def wait_for_idle(processes: Sequence[psutil.Process], limit_seconds: float = 60) -> None:
    """Wait until `processes` use under a tenth of a core, or `limit_seconds` have passed.

    wrk stops at its duration, but the server may still be working on the requests wrk dropped.
    The next measurement must not share the CPU with that work.
    """
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        before = cpu_seconds(processes)
        await asyncio.sleep(0.5)
        if cpu_seconds(processes) - before < 0.05:
            return
    print(f"  still busy after {limit_seconds:.0f} s; measuring on", file=sys.stderr, flush=True)


def record_memory(memory: dict[str, list[float]], stack: Stack) -> None:
    for name, process in (("lsif_agg", stack.lsif_agg), ("prometheus", stack.prometheus)):
        if process is not None:
            rss, peak = memory_mib(process)
            memory.setdefault(f"{name}_rss_mib", []).append(rss)
            memory[f"{name}_peak_mib"] = [peak]


async def run_configuration(options: Options, workers: int, samples: int, logs: Path
                            ) -> dict[str, Any]:
    """Measure every mode at N workers x S samples: latency rounds, then load, then memory."""
    memory: dict[str, list[float]] = {}
    async with (running_lsif_agg(options, workers, samples, logs) as stack,
                running_prometheus(options, stack, logs),
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session):
        figures = await warm_up(session, stack, MODES, options)
        record_memory(memory, stack)
        await measure_latency(session, stack, MODES, figures, options.rounds)
        record_memory(memory, stack)

        for mode in MODES:
            if statistics.median(figures[mode.name].latencies) > options.load_seconds / 2:
                # A load run shorter than two scrapes measures wrk's cut-off, not a rate.
                continue
            if mode.system == "floor":
                figures[mode.name].load = await measure_load_floor(session, stack, options.load_seconds)
            else:
                figures[mode.name].load = await measure_load_wrk(stack, mode, options.load_seconds)
            record_memory(memory, stack)
            await wait_for_idle(stack.serving(mode.system))
    return {"workers": workers, "samples": samples, "memory": memory,
            "modes": {name: asdict(entry) for name, entry in figures.items()}}


SOAK_BATCH = 500
SOAK_MODES = ("text", "openmetrics", "as-prometheus")
# The memory phase reads each response in pieces of this size and drops them without
# decompressing, so the client takes less of the CPU that it shares with lsif_agg.
SOAK_READ_BYTES = 1024 * 1024


async def run_soak(options: Options, logs: Path) -> dict[str, Any]:
    """Scrape lsif_agg `soak_scrapes` times, cycling the output modes, in batches of SOAK_BATCH.

    After each batch, when no scrape is in flight, it records the RSS that lsif_agg kept and
    the peak RSS during the batch (VmHWM, reset through /proc/PID/clear_refs before the batch).
    """
    modes = [MODES_BY_NAME[name] for name in SOAK_MODES]
    # scrapes done, seconds since start, RSS after the batch and peak RSS during it, in MiB
    points: list[tuple[int, float, float, float | None]] = []
    async with (running_lsif_agg(options, options.soak_workers, options.soak_samples, logs) as stack,
                aiohttp.ClientSession(auto_decompress=False) as session):
        rss, start_peak = memory_mib(stack.lsif_agg)
        started = time.monotonic()
        points.append((0, 0.0, rss, start_peak))
        done = 0
        while done < options.soak_scrapes:
            batch = min(SOAK_BATCH, options.soak_scrapes - done)
            is_reset = reset_peak_rss(stack.lsif_agg)
            await _scrape_concurrently(session, stack, modes, batch, options.soak_concurrency)
            done += batch
            rss, peak = memory_mib(stack.lsif_agg)
            points.append((done, time.monotonic() - started, rss, peak if is_reset else None))
            print(f"  memory phase: {done} scrapes in {points[-1][1]:.0f} s, RSS {rss:.1f} MiB, "
                  f"peak {peak:.1f} MiB", flush=True)
    peaks = [point[3] for point in points if point[3] is not None]
    return {"workers": options.soak_workers, "samples": options.soak_samples,
            "concurrency": options.soak_concurrency, "points": points,
            "peak_mib": max(peaks) if peaks else peak}


def reset_peak_rss(process: psutil.Process) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux 4.0 and later); return whether it was."""
    try:
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")
    except OSError as error:
        print(f"  failed to reset the peak RSS of pid {process.pid}, so this batch's peak is not "
              f"recorded: {error}", file=sys.stderr)
        return False
    return True


async def _scrape_concurrently(session: aiohttp.ClientSession, stack: Stack, modes: Sequence[Mode],
                               count: int, concurrency: int) -> None:
    numbers = iter(range(count))

    async def loop() -> None:
        for number in numbers:
            mode = modes[number % len(modes)]
            await _drain(session, stack.base_url(mode) + mode.path, mode.headers)

    await asyncio.gather(*(loop() for _ in range(concurrency)))


async def _drain(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    """GET `url` and read the whole body, dropping it as it arrives."""
    async with session.get(url, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url} returned status {response.status}: "
                               f"{(await response.read())[:200]!r}")
        size = 0
        async for piece in response.content.iter_chunked(SOAK_READ_BYTES):
            size += len(piece)
        if size == 0:
            raise RuntimeError(f"GET {url} returned an empty body")


# Reporting


def slope_per_thousand(points: Sequence[Sequence[float]]) -> float:
    """Return the least-squares slope of RSS (MiB) over scrapes, per 1,000 scrapes."""
    xs = [p[0] for p in points]
    ys = [p[2] for p in points]
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope * 1000


def machine_facts() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
                  if line.startswith("Model name")), "unknown")
    prometheus = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "prometheus": (prometheus.stdout or prometheus.stderr).splitlines()[0],
        # Other work may be in progress in the tree, so a dirty commit is marked as such.
        "lsif_agg": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                   capture_output=True, text=True, check=False).stdout.strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                              check=False).stdout.splitlines()[0],
    }


def _median_ms(entry: dict[str, Any]) -> float:
    return float(statistics.median(entry["latencies"])) * 1000


def _server_cpu_ms(configuration: dict[str, Any], name: str) -> float:
    """Return the serving processes' CPU per request in ms; Prometheus's idle scraping is taken out.

    Prometheus keeps scraping the workers while the other modes run, so its CPU rate over their
    rounds is its background rate, which is subtracted from its CPU over the /federate rounds.
    """
    entry = configuration["modes"][name]
    spent = entry["cpu_seconds"]
    if MODES_BY_NAME[name].system == "prometheus":
        others = [e for n, e in configuration["modes"].items()
                  if MODES_BY_NAME[n].system != "prometheus"]
        background = (sum(e["prometheus_cpu_seconds"] for e in others)
                      / sum(e["elapsed_seconds"] for e in others))
        spent = max(0.0, spent - background * entry["elapsed_seconds"])
    return float(spent) / len(entry["latencies"]) * 1000


def render_table(results: dict[str, Any]) -> str:
    lines = [
        "| N | S | mode | median ms | p99 ms | requests | server CPU ms/scrape | scrapes/s (wrk -c4) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for configuration in results["configurations"]:
        for name, entry in configuration["modes"].items():
            latencies = entry["latencies"]
            lines.append(
                f"| {configuration['workers']} | {configuration['samples']:,} | {name} "
                f"| {_median_ms(entry):.2f} | {percentile(latencies, 0.99) * 1000:.2f} "
                f"| {len(latencies)} | {_server_cpu_ms(configuration, name):.2f} "
                f"| {_rate(entry['load'])} |")
    return "\n".join(lines)


def _rate(load: dict[str, float]) -> str:
    return f"{load['requests_per_second']:.1f}" if load else "not run"


def render_memory(results: dict[str, Any]) -> str:
    lines = ["| N | S | lsif_agg RSS MiB (peak) | Prometheus RSS MiB (peak) | lsif_agg / Prometheus |",
             "|---:|---:|---:|---:|---:|"]
    for configuration in results["configurations"]:
        memory = configuration["memory"]
        rss, prometheus_rss = max(memory["lsif_agg_rss_mib"]), max(memory["prometheus_rss_mib"])
        lines.append(
            f"| {configuration['workers']} | {configuration['samples']:,} "
            f"| {rss:.1f} ({memory['lsif_agg_peak_mib'][0]:.1f}) "
            f"| {prometheus_rss:.1f} ({memory['prometheus_peak_mib'][0]:.1f}) "
            f"| {rss / prometheus_rss:.2f} |")
    return "\n".join(lines)


def render_speedups(results: dict[str, Any]) -> str:
    lines = ["| N | S | text / floor | as Prometheus asks / floor | federate / text "
             "| federate-gzip / as Prometheus asks |", "|---:|---:|---:|---:|---:|---:|"]
    for configuration in results["configurations"]:
        median = {name: _median_ms(entry) for name, entry in configuration["modes"].items()}
        lines.append(
            f"| {configuration['workers']} | {configuration['samples']:,} "
            f"| {median['text'] / median['floor']:.2f}x "
            f"| {median['as-prometheus'] / median['floor']:.2f}x "
            f"| {median['federate'] / median['text']:.1f}x "
            f"| {median['federate-gzip'] / median['as-prometheus']:.1f}x |")
    return "\n".join(lines)


def judge_targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Return (target, measured, met) for each target the doc states."""
    configurations = results["configurations"]
    at_target = next((c for c in configurations
                      if (c["workers"], c["samples"]) == (TARGET_WORKERS, TARGET_SAMPLES)), None)
    verdicts: list[tuple[str, str, bool]] = []
    where = f"{TARGET_WORKERS} x {TARGET_SAMPLES:,}"
    if at_target is not None:
        median = {name: _median_ms(entry) for name, entry in at_target["modes"].items()}
        text_ratio = median["text"] / median["floor"]
        verdicts.append((f"text /metrics median <= {TEXT_FLOOR_RATIO:g}x the floor at {where}",
                         f"{text_ratio:.2f}x ({median['text']:.1f} ms vs {median['floor']:.1f} ms)",
                         text_ratio <= TEXT_FLOOR_RATIO))
        asks_ratio = median["as-prometheus"] / median["floor"]
        verdicts.append((f"as Prometheus asks median <= {PROMETHEUS_FLOOR_RATIO:g}x the floor at {where}",
                         f"{asks_ratio:.2f}x ({median['as-prometheus']:.1f} ms vs {median['floor']:.1f} ms)",
                         asks_ratio <= PROMETHEUS_FLOOR_RATIO))
        rss = max(at_target["memory"]["lsif_agg_rss_mib"])
        prometheus_rss = max(at_target["memory"]["prometheus_rss_mib"])
        verdicts.append((f"lsif_agg RSS <= {RSS_LIMIT_MIB:g} MiB at {where}", f"{rss:.1f} MiB",
                         rss <= RSS_LIMIT_MIB))
        verdicts.append((f"lsif_agg RSS <= {RSS_PROMETHEUS_FRACTION:g} of Prometheus's at {where}",
                         f"{rss / prometheus_rss:.3f} ({rss:.1f} / {prometheus_rss:.1f} MiB)",
                         rss <= RSS_PROMETHEUS_FRACTION * prometheus_rss))
    speedups = []
    for configuration in configurations:
        median = {name: _median_ms(entry) for name, entry in configuration["modes"].items()}
        speedups.append((min(median["federate"] / median["text"],
                             median["federate-gzip"] / median["as-prometheus"]),
                         f"{configuration['workers']} x {configuration['samples']:,}"))
    slowest = min(speedups)
    verdicts.append((f">= {FEDERATE_SPEEDUP:g}x faster than Prometheus's /federate at every N and S",
                     f"lowest {slowest[0]:.1f}x, at {slowest[1]}", slowest[0] >= FEDERATE_SPEEDUP))
    return verdicts


def render_results(results: dict[str, Any]) -> str:
    machine = results["machine"]
    options = results["options"]
    parts = [
        f"Measured {results['finished']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory']} RAM, Linux {machine['kernel']}, Python {machine['python']}, "
        f"{machine['prometheus']}, {machine['wrk'].split(' Copyright')[0]}; lsif_agg at commit "
        f"{machine['lsif_agg']}.",
        "", f"Command: `.venv/bin/python {options['command']}` "
        f"({options['rounds']} interleaved rounds, {options['latency_seconds']:g} s of latency "
        f"requests per configuration, wrk for {options['load_seconds']} s per mode, Prometheus "
        f"scrape_interval {options['prometheus_interval']} s). Took {results['minutes']:.1f} minutes.",
        "", "### Targets", "", "| target | measured | |", "|---|---|---|",
        *(f"| {target} | {measured} | {'met' if met else '**missed**'} |"
          for target, measured, met in judge_targets(results)),
        "", "### Latency, CPU, throughput and memory", "", render_table(results),
        "", "### Ratios of medians", "", render_speedups(results),
        "", "### Memory", "", "Largest RSS sampled after the warm-up, the latency rounds and each load "
        "run; peak is VmHWM at the end.", "", render_memory(results),
    ]
    soak = results.get("soak")
    if soak:
        parts += ["", render_soak(soak)]
    return "\n".join(parts)


def render_soak(soak: dict[str, Any]) -> str:
    """Render the memory phase: its summary, then RSS after and peak RSS during each batch."""
    points = soak["points"]
    half = points[len(points) // 2:]
    lines = [
        "### Memory over repeated scrapes", "",
        f"{soak['workers']} workers x {soak['samples']:,} samples, {points[-1][0]:,} scrapes "
        f"({soak['concurrency']} at a time, cycling text, OpenMetrics and as Prometheus asks) "
        f"in {points[-1][1]:.0f} s. Slope of the RSS after each batch: "
        f"{slope_per_thousand(points):+.3f} MiB per 1,000 scrapes over all points, "
        f"{slope_per_thousand(half):+.3f} over the second half. Peak (VmHWM) "
        f"{soak['peak_mib']:.1f} MiB.",
        "", "| scrapes | seconds | RSS after, MiB | peak during, MiB |", "|---:|---:|---:|---:|",
    ]
    for point in points:
        # The JSON of runs made before the peak was recorded per batch has three figures a point.
        peak = point[3] if len(point) > 3 and point[3] is not None else None
        lines.append(f"| {point[0]:,} | {point[1]:.0f} | {point[2]:.1f} | "
                     f"{'' if peak is None else f'{peak:.1f}'} |")
    return "\n".join(lines)


def write_doc(rendered: str) -> None:
    """Replace the text between the result markers of docs/benchmarks.md, or append the markers."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{DOC_BEGIN}\n{rendered}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        before, rest = text.split(DOC_BEGIN, 1)
        after = rest.split(DOC_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


LINE_STYLES = {"floor": ":", "lsif_agg": "-", "prometheus": "--"}


def plot_latency(results: dict[str, Any], path: Path) -> None:
    """Plot median latency against N for every mode, one panel per S, on log-log axes."""
    import matplotlib  # noqa: PLC0415 - only the full run needs it, and Agg must be chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    sample_sizes = sorted({c["samples"] for c in results["configurations"]})
    figure, axes = plt.subplots(1, len(sample_sizes), figsize=(6 * len(sample_sizes), 4.8),
                                squeeze=False, sharey=True)
    for axis, samples in zip(axes[0], sample_sizes, strict=True):
        configurations = sorted((c for c in results["configurations"] if c["samples"] == samples),
                                key=lambda c: c["workers"])
        workers = [c["workers"] for c in configurations]
        for mode in MODES:
            medians = [_median_ms(c["modes"][mode.name]) for c in configurations]
            style = LINE_STYLES[mode.system]
            axis.plot(workers, medians, style, marker="o", label=mode.title)
        axis.set(xscale="log", yscale="log", xlabel="workers N", title=f"S = {samples:,} samples a worker")
        axis.set_xticks(workers, [str(n) for n in workers])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median latency of one scrape, ms")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3 if len(sample_sizes) > 1 else 2,
                  fontsize="small")
    figure.suptitle("Fetching every sample once: floor, lsif_agg and Prometheus /federate")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


@contextmanager
def results_directory() -> Iterator[tuple[Path, Path]]:
    """Yield the JSON path for this run and the folder for its process logs."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS_DIR / f"scrape-{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    yield RESULTS_DIR / f"scrape-{stamp}.json", logs


async def run(options: Options) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_facts(), "options": asdict(options),
                               "configurations": []}
    with results_directory() as (json_path, logs):
        sample_sizes = () if options.soak_only else options.samples
        for samples in sample_sizes:
            for workers in options.workers:
                print(f"measuring {workers} workers x {samples:,} samples", flush=True)
                results["configurations"].append(await run_configuration(options, workers, samples, logs))
                json_path.write_text(json.dumps(results))
        if options.soak_scrapes > 0:
            print(f"memory phase: {options.soak_scrapes:,} scrapes at {options.soak_workers} x "
                  f"{options.soak_samples:,}", flush=True)
            results["soak"] = await run_soak(options, logs)
        results["minutes"] = (time.monotonic() - started) / 60
        results["finished"] = time.strftime("%Y-%m-%d %H:%M")
        json_path.write_text(json.dumps(results, indent=1))
        print(f"raw results: {json_path.relative_to(ROOT)}")
    return results


def main() -> None:
    options = parse_options(sys.argv[1:])
    try:
        import uvloop  # noqa: PLC0415 - lsif_agg's own event loop, so the client is as fast
    except ImportError:
        results = asyncio.run(run(options))
    else:
        results = uvloop.run(run(options))

    if options.soak_only:
        print(render_soak(results["soak"]))
        return
    rendered = render_results(results)
    print(rendered)
    if options.write_doc:
        write_doc(rendered)
        plot_latency(results, PLOT)
        print(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
