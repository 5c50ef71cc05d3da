"""lsif_agg's own series, collected in one place from the supervisor's view and the scrapes.

They are rendered as one more exposition with their labels already set, and joined to the merged
output of the targets.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_latest_openmetrics,
)
from prometheus_client.registry import Collector

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


class _SupervisedCollector(Collector):
    """Collects the per-process and per-scrape series on each render."""

    def __init__(self, processes: Callable[[], Sequence[ProcessView]], ledger: ScrapeLedger
                 ) -> None:
        self._processes = processes
        self._ledger = ledger

    def collect(self) -> Iterable[Metric]:
        views = self._processes()
        yield from self._process_families(views)
        yield from self._scrape_families(views)

        info = GaugeMetricFamily("lsif_agg_build_info", "lsif_agg's version; always 1.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _process_families(self, views: Sequence[ProcessView]) -> Iterable[Metric]:
        restarts = CounterMetricFamily(
            "lsif_agg_worker_restarts", "Times the process was restarted after it exited.",
            labels=["worker"])
        start_time = GaugeMetricFamily(
            "lsif_agg_worker_start_time_seconds",
            "Unix time of the process's latest start.", labels=["worker"])
        exit_code = GaugeMetricFamily(
            "lsif_agg_worker_last_exit_code",
            "Exit status of the process's latest exit; 128 + N when signal N killed it.",
            labels=["worker"])
        state = GaugeMetricFamily(
            "lsif_agg_worker_state", "1 for the state the process is in, 0 for the others.",
            labels=["worker", "state"])

        for view in views:
            restarts.add_metric([view.label], view.restarts)
            if view.started_at is not None:
                start_time.add_metric([view.label], view.started_at)
            if view.last_exit is not None:
                cause = view.last_exit
                code = 128 + cause.signal if cause.signal is not None else cause.code or 0
                exit_code.add_metric([view.label], code)
            for candidate in ProcessState:
                state.add_metric([view.label, candidate.value], float(candidate is view.state))
        return (restarts, start_time, exit_code, state)

    def _scrape_families(self, views: Sequence[ProcessView]) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "lsif_agg_worker_up",
            "1 when the process's latest scrape succeeded, 0 when it was down, slow or broken.",
            labels=["worker"])
        duration = GaugeMetricFamily(
            "lsif_agg_scrape_duration_seconds", "Duration of the process's latest scrape.",
            labels=["worker"])
        samples = GaugeMetricFamily(
            "lsif_agg_scrape_samples", "Samples of the process in the latest scrape.",
            labels=["worker"])
        body_bytes = GaugeMetricFamily(
            "lsif_agg_scrape_body_bytes",
            "Size of the process's latest exposition, uncompressed.", labels=["worker"])
        errors = CounterMetricFamily(
            "lsif_agg_scrape_errors",
            "Scrapes of the process that failed, by reason.", labels=["worker", "reason"])
        conflicts = CounterMetricFamily(
            "lsif_agg_merge_conflicts",
            "Families whose TYPE, HELP or UNIT differed between targets, counted per scrape.",
            labels=["family", "kind"])

        for view in views:
            figures = self._ledger.latest.get(view.label)
            up.add_metric([view.label], float(figures is not None and figures.up))
            if figures is not None:
                duration.add_metric([view.label], figures.duration)
                samples.add_metric([view.label], figures.samples)
                body_bytes.add_metric([view.label], figures.body_bytes)
        for (label, reason), count in sorted(self._ledger.errors.items()):
            errors.add_metric([label, reason], count)
        for (family, kind), count in sorted(self._ledger.conflicts.items()):
            conflicts.add_metric([family, kind], count)
        return (up, duration, samples, body_bytes, errors, conflicts)


class SelfMetrics:
    """Renders lsif_agg's own series, its process figures included, in either format."""

    def __init__(self, processes: Callable[[], Sequence[ProcessView]], ledger: ScrapeLedger
                 ) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_SupervisedCollector(processes, ledger))
        # Prefixed so that lsif_agg's own CPU and memory never merge into the workers' process_*
        # families, where they would look like one more worker's.
        ProcessCollector(namespace="lsif_agg", registry=self._registry)

    def render(self, output: OutputFormat) -> bytes:
        if output is OutputFormat.OPENMETRICS:
            body: bytes = generate_latest_openmetrics(self._registry)  # type: ignore[no-untyped-call]
            return body
        return generate_latest(self._registry)

