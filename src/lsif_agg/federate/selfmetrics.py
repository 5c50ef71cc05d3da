"""lsif_agg's own series, collected in one place from the supervisor's view and the scrapes.

They are rendered as one more exposition with their labels already set, and joined to the merged
output of the targets.
"""

from __future__ import annotations

import functools
import math
import os
import resource
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lsif_agg import __version__
from lsif_agg.exposition import OutputFormat
from lsif_agg.supervise.process import ProcessState, ProcessView


@dataclass(frozen=True, slots=True)
class TargetFigures:
    """One target's figures from the latest scrape."""

    error: str | None  # the reason token of a failed scrape, None when it succeeded
    duration: float
    samples: int
    body_bytes: int

    @property
    def up(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class ScrapeLedger:
    """Figures of the latest scrape of each target, and the counters that only grow."""

    latest: dict[str, TargetFigures] = field(default_factory=dict)
    errors: Tally[tuple[str, str]] = field(default_factory=Tally)  # (worker, reason)
    conflicts: Tally[tuple[str, str]] = field(default_factory=Tally)  # (family, kind)

    def record(self, label: str, figures: TargetFigures) -> None:
        self.latest[label] = figures
        if figures.error is not None:
            self.errors[(label, figures.error)] += 1

    def forget_except(self, labels: Iterable[str]) -> None:
        """Drop the figures and counters of targets that no longer exist, after scaling down.

        Their series then end, as those of a target that Prometheus no longer discovers do.
        """
        alive = set(labels)
        for label in [label for label in self.latest if label not in alive]:
            del self.latest[label]
        for key in [key for key in self.errors if key[0] not in alive]:
            del self.errors[key]


# A family as rendered: name, type, HELP text, and its samples as (sample name suffix, label
# pairs, value). Counters get _total on their samples, and in text on their TYPE too.
Sample = tuple[str, tuple[tuple[str, str], ...], float]
Family = tuple[str, str, str, list[Sample]]


def _process_families(views: Sequence[ProcessView]) -> list[Family]:
    restarts: list[Sample] = []
    start_time: list[Sample] = []
    exit_code: list[Sample] = []
    state: list[Sample] = []
    for view in views:
        worker = (("worker", view.label),)
        restarts.append(("_total", worker, view.restarts))
        if view.started_at is not None:
            start_time.append(("", worker, view.started_at))
        if view.last_exit is not None:
            cause = view.last_exit
            code = 128 + cause.signal if cause.signal is not None else cause.code or 0
            exit_code.append(("", worker, code))
        for candidate in ProcessState:
            labels = (("state", candidate.value), ("worker", view.label))
            state.append(("", labels, float(candidate is view.state)))

    return [
        ("lsif_agg_worker_restarts", "counter",
         "Times the process was restarted after it exited.", restarts),
        ("lsif_agg_worker_start_time_seconds", "gauge",
         "Unix time of the process's latest start.", start_time),
        ("lsif_agg_worker_last_exit_code", "gauge",
         "Exit status of the process's latest exit; 128 + N when signal N killed it.", exit_code),
        ("lsif_agg_worker_state", "gauge",
         "1 for the state the process is in, 0 for the others.", state),
    ]


def _scrape_families(views: Sequence[ProcessView], ledger: ScrapeLedger) -> list[Family]:
    up: list[Sample] = []
    duration: list[Sample] = []
    samples: list[Sample] = []
    body_bytes: list[Sample] = []
    for view in views:
        worker = (("worker", view.label),)
        figures = ledger.latest.get(view.label)
        up.append(("", worker, float(figures is not None and figures.up)))
        if figures is not None:
            duration.append(("", worker, figures.duration))
            samples.append(("", worker, figures.samples))
            body_bytes.append(("", worker, figures.body_bytes))
    errors: list[Sample] = [
        ("_total", (("reason", reason), ("worker", label)), count)
        for (label, reason), count in sorted(ledger.errors.items())
    ]
    conflicts: list[Sample] = [
        ("_total", (("family", family), ("kind", kind)), count)
        for (family, kind), count in sorted(ledger.conflicts.items())
    ]

    return [
        ("lsif_agg_worker_up", "gauge",
         "1 when the process's latest scrape succeeded, 0 when it was down, slow or broken.", up),
        ("lsif_agg_scrape_duration_seconds", "gauge",
         "Duration of the process's latest scrape.", duration),
        ("lsif_agg_scrape_samples", "gauge", "Samples of the process in the latest scrape.", samples),
        ("lsif_agg_scrape_body_bytes", "gauge",
         "Size of the process's latest exposition, uncompressed.", body_bytes),
        ("lsif_agg_scrape_errors", "counter",
         "Scrapes of the process that failed, by reason.", errors),
        ("lsif_agg_merge_conflicts", "counter",
         "Families whose TYPE, HELP or UNIT differed between targets, counted per scrape.",
         conflicts),
        ("lsif_agg_build_info", "gauge", "lsif_agg's version; always 1.",
         [("", (("version", __version__),), 1)]),
    ]


class ProcessFigures:
    """Reads lsif_agg's own CPU, memory, start time and file descriptors from /proc.

    Read here rather than through prometheus_client's ProcessCollector, which rereads
    /proc/self/limits and builds metric objects on every scrape: 150 us, about a tenth of a
    scrape of one worker of 1,000 samples. This takes about 40 us, most of it listing the fds.
    On a system without /proc it reports nothing, as ProcessCollector does.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._stat_path = f"{proc}/self/stat"
        self._fd_path = f"{proc}/self/fd"
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page_size = resource.getpagesize()
        self._boot_time = _boot_time(f"{proc}/stat")

    def families(self) -> list[Family]:
        if self._boot_time is None:
            return []
        try:
            with open(self._stat_path, "rb") as stat:
                line = stat.read()
            open_fds = len(os.listdir(self._fd_path))
        except OSError:
            return []

        # The command name in parentheses may hold spaces, so fields are counted after it; the
        # first of them is field 3 (state) in proc(5).
        fields = line[line.rindex(b")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime
        start = self._boot_time + int(fields[19]) / self._ticks
        virtual, resident = int(fields[20]), int(fields[21]) * self._page_size
        max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

        def gauge(name: str, help_text: str, value: float) -> Family:
            return (f"lsif_agg_process_{name}", "gauge", help_text, [("", (), value)])

        return [
            gauge("virtual_memory_bytes", "lsif_agg's virtual memory size, in bytes.", virtual),
            gauge("resident_memory_bytes", "lsif_agg's resident memory, in bytes.", resident),
            gauge("start_time_seconds", "Unix time at which lsif_agg started.", start),
            ("lsif_agg_process_cpu_seconds", "counter",
             "CPU time lsif_agg spent in user and system mode, in seconds.",
             [("_total", (), cpu)]),
            gauge("open_fds", "File descriptors lsif_agg holds open.", open_fds),
            gauge("max_fds", "lsif_agg's soft limit on open file descriptors.",
                  float("inf") if max_fds == resource.RLIM_INFINITY else max_fds),
        ]


def _boot_time(path: str) -> float | None:
    """Return the boot time from /proc/stat, which start times in /proc are counted from."""
    try:
        with open(path, "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def render_families(families: Iterable[Family], output: OutputFormat) -> bytes:
    """Write families as prometheus_client's generate_latest writes them, in either format.

    Written by hand because prometheus_client's writers check and escape every name character
    by character. At 16 workers its OpenMetrics writer took 7 ms per scrape on the benchmark
    machine, and this function about 0.5 ms.
    """
    openmetrics = output is OutputFormat.OPENMETRICS
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        typed = name + "_total" if kind == "counter" and not openmetrics else name
        lines.append(f"# HELP {typed} {_escape_help(help_text, openmetrics)}\n")
        lines.append(f"# TYPE {typed} {kind}\n")
        for suffix, labels, value in samples:
            lines.append(f"{name}{suffix}{_label_set(labels)} {_format_value(value)}\n")
    if openmetrics:
        lines.append("# EOF\n")
    return "".join(lines).encode()


# The same label sets and values come back scrape after scrape, so their text is cached.
@functools.lru_cache(maxsize=1 << 14)
def _label_set(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{label}="{_escape_value(text)}"' for label, text in labels) + "}"


@functools.lru_cache(maxsize=1 << 12)
def _format_value(value: float) -> str:
    """Write a value as both formats read it: Python's shortest repr, or +Inf, -Inf and NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str, openmetrics: bool) -> str:
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n")
    return escaped.replace('"', '\\"') if openmetrics else escaped


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class SelfMetrics:
    """Renders lsif_agg's own series, its process figures included, in either format."""

    def __init__(self, processes: Callable[[], Sequence[ProcessView]], ledger: ScrapeLedger
                 ) -> None:
        self._processes = processes
        self._ledger = ledger
        # Prefixed so that lsif_agg's own CPU and memory never merge into the workers' process_*
        # families, where they would look like one more worker's.
        self._process_figures = ProcessFigures()

    def families(self) -> list[Family]:
        views = self._processes()
        return [
            *_process_families(views),
            *_scrape_families(views, self._ledger),
            *self._process_figures.families(),
        ]

    def render(self, output: OutputFormat) -> bytes:
        return render_families(self.families(), output)
