"""lsif_agg's own series: written by hand for speed, read back by prometheus_client's parsers and
promtool with every value and label intact, in both formats.
"""

import subprocess

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as read_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as read_text
from tests.conftest import require_tool

from lsif_agg.exposition import OutputFormat
from lsif_agg.federate.selfmetrics import ScrapeLedger, SelfMetrics, TargetFigures
from lsif_agg.supervise.process import ExitCause, ProcessState, ProcessView

ODD_LABEL = 'q"\\x\ny'


def views() -> list[ProcessView]:
    exits = [None, ExitCause(code=3, signal=None), ExitCause(code=None, signal=9)]
    return [
        ProcessView(
            name=f"worker-{index}",
            label=label,
            port=9200 + index,
            state=state,
            pid=100 + index,
            restarts=index,
            started_at=1.7e9 + index,
            running_since=1.0,
            last_exit=last_exit,
        )
        for index, (label, state, last_exit) in enumerate(
            zip(
                ["0", "server", ODD_LABEL],
                [ProcessState.RUNNING, ProcessState.BACKOFF, ProcessState.FAILED],
                exits,
                strict=True,
            )
        )
    ]


def self_metrics() -> SelfMetrics:
    ledger = ScrapeLedger()
    ledger.record("0", TargetFigures(None, 0.25, 1000, 120_000))
    ledger.record("server", TargetFigures("timeout", 2.5, 0, 0))
    ledger.record(ODD_LABEL, TargetFigures("invalid_exposition", 1e-7, 0, 12))
    ledger.conflicts[("http_requests", "help")] += 2
    snapshot = views()
    return SelfMetrics(lambda: snapshot, ledger)


SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def samples_by_name(exposition: str, openmetrics: bool) -> dict[SampleKey, float]:
    families = read_openmetrics(exposition) if openmetrics else read_text(exposition)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_own_series_read_back_with_their_values(output: OutputFormat) -> None:
    openmetrics = output is OutputFormat.OPENMETRICS
    read = samples_by_name(self_metrics().render(output).decode(), openmetrics)

    assert read[("lsif_agg_worker_up", (("worker", "0"),))] == 1.0
    assert read[("lsif_agg_worker_up", (("worker", ODD_LABEL),))] == 0.0
    assert read[("lsif_agg_scrape_duration_seconds", (("worker", ODD_LABEL),))] == 1e-7
    assert read[("lsif_agg_scrape_errors_total", (("reason", "timeout"), ("worker", "server")))] == 1
    assert read[("lsif_agg_worker_restarts_total", (("worker", ODD_LABEL),))] == 2
    assert read[("lsif_agg_worker_last_exit_code", (("worker", "server"),))] == 3
    assert read[("lsif_agg_worker_last_exit_code", (("worker", ODD_LABEL),))] == 128 + 9
    assert read[("lsif_agg_worker_state", (("state", "backoff"), ("worker", "server")))] == 1
    assert read[("lsif_agg_merge_conflicts_total", (("family", "http_requests"), ("kind", "help")))] == 2
    assert read[("lsif_agg_process_resident_memory_bytes", ())] > 0


def test_own_series_pass_promtool() -> None:
    promtool = require_tool("promtool")
    exposition = self_metrics().render(OutputFormat.TEXT).decode()

    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
    )

    assert "error" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr


def test_openmetrics_counters_are_typed_without_total() -> None:
    exposition = self_metrics().render(OutputFormat.OPENMETRICS).decode()

    assert "# TYPE lsif_agg_worker_restarts counter\n" in exposition
    assert 'lsif_agg_worker_restarts_total{worker="0"} 0.0\n' in exposition
    assert exposition.endswith("# EOF\n")
    assert exposition.count("# EOF") == 1
