"""The main job end to end: real workers under lsif_agg, scraped by a real Prometheus."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import (
    LsifAgg,
    http_get,
    pids_alive,
    require_tool,
    wait_for,
)

PROGRAMS = Path(__file__).parent / "programs"
StartLsifAgg = Callable[..., LsifAgg]


def node_exporter_command() -> list[str]:
    # Only cheap collectors, so that each scrape of a worker takes milliseconds.
    return [require_tool("prometheus-node-exporter"), "--collector.disable-defaults",
            "--collector.cpu", "--collector.meminfo", "--collector.loadavg",
            "--web.listen-address=127.0.0.1:{port}"]


def samples_by_worker(exposition: str) -> dict[str, set[str]]:
    """Map each worker label value to the sample names it has in a text exposition."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found.setdefault(sample.labels.get("worker", ""), set()).add(sample.name)
    return found


def worker_up(exposition: str, worker: str) -> float | None:
    match = re.search(rf'^lsif_agg_worker_up{{worker="{worker}"}} (\S+)$', exposition, re.M)
    return float(match.group(1)) if match else None


def healthz(agg: LsifAgg) -> dict[str, dict[str, object]]:
    _, _, body = agg.get("/healthz")
    return {process["worker"]: process for process in json.loads(body)["processes"]}


def test_sample_worker_default_is_merged(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=3)
    exposition = agg.metrics()

    by_worker = samples_by_worker(exposition)
    for worker in ("0", "1", "2"):
        assert "lsif_sample_queue_depth" in by_worker[worker]
        assert "lsif_sample_uploads_processed_total" in by_worker[worker]
        assert "lsif_sample_upload_duration_seconds_bucket" in by_worker[worker]
        assert "lsif_sample_upload_size_bytes_count" in by_worker[worker]
        assert worker_up(exposition, worker) == 1.0
    assert exposition.count("# TYPE lsif_sample_queue_depth ") == 1
    assert exposition.count("# HELP lsif_sample_queue_depth ") == 1


def test_child_output_is_prefixed(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=2)
    wait_for(lambda: "worker-1 | sample worker 1 serving metrics" in agg.log(),
             "the prefixed start line of worker 1")


def test_merged_output_passes_promtool(start_lsif_agg: StartLsifAgg) -> None:
    promtool = require_tool("promtool")
    agg = start_lsif_agg("--", *node_exporter_command(), workers=3)
    exposition = agg.metrics()

    result = subprocess.run([promtool, "check", "metrics"], input=exposition, text=True,
                            capture_output=True, timeout=60, check=False)
    assert "error" not in result.stdout.lower() + result.stderr.lower(), result.stderr
    assert len(samples_by_worker(exposition)) >= 4  # three workers and lsif_agg's own series


def test_openmetrics_and_gzip_negotiated(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=2)
    status, headers, body = agg.get("/metrics", {
        "Accept": "application/openmetrics-text;version=1.0.0",
        "Accept-Encoding": "gzip",
    })
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"

    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    families = {family.name: family for family in parse_openmetrics(text)}
    workers = {sample.labels.get("worker") for sample in families["lsif_sample_queue_depth"].samples}
    assert workers == {"0", "1"}


def test_text_content_type(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=1)
    status, headers, _ = agg.get("/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_federate_filters_by_match(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=2)
    query = urllib.parse.urlencode([("match[]", '{__name__="lsif_sample_queue_depth",worker="1"}'),
                                    ("match[]", "lsif_agg_worker_up")])
    status, _, body = agg.get(f"/federate?{query}")
    assert status == 200
    names = {(family.name, tuple(sorted(sample.labels.items())))
             for family in text_string_to_metric_families(body.decode())
             for sample in family.samples}
    assert names == {
        ("lsif_sample_queue_depth", (("worker", "1"),)),
        ("lsif_agg_worker_up", (("worker", "0"),)),
        ("lsif_agg_worker_up", (("worker", "1"),)),
    }


def test_federate_rejects_invalid_selector(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=1)
    status, _, body = agg.get("/federate?" + urllib.parse.urlencode({"match[]": "up{"}))
    assert status == 400
    assert b"up{" in body


def test_broken_worker_left_out(start_lsif_agg: StartLsifAgg, tmp_path: Path) -> None:
    good = tmp_path / "good.prom"
    good.write_text("# TYPE good_total counter\ngood_total 1\n")
    # Worker 0 serves an exposition, worker 1 garbage: one wrapper picks by WORKER_INDEX.
    wrapper = tmp_path / "worker.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$WORKER_INDEX" = 1 ]; then body=-; else body={good}; fi\n'
        f'exec {sys.executable} {PROGRAMS / "serve_exposition.py"} "$WORKER_METRICS_PORT" "$body"\n')
    wrapper.chmod(0o755)
    agg = start_lsif_agg("--", str(wrapper), workers=2, wait_ready=False)

    def worker_0_up() -> str | None:
        text = agg.metrics()
        return text if worker_up(text, "0") == 1 else None

    exposition = wait_for(worker_0_up, "worker 0 to be up")
    assert 'good_total{worker="0"} 1' in exposition
    assert worker_up(exposition, "1") == 0.0
    assert 'lsif_agg_scrape_errors_total{reason="invalid_exposition",worker="1"}' in exposition \
        or re.search(r'lsif_agg_scrape_errors_total\{[^}]*worker="1"', exposition)
    status, _, _ = agg.get("/-/ready")
    assert status == 503


def test_killed_worker_leaves_and_returns(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg("--backoff-initial", "2", "--", *node_exporter_command(), workers=3)
    pid = healthz(agg)["1"]["pid"]
    assert isinstance(pid, int)

    os.kill(pid, signal.SIGKILL)
    exposition = agg.metrics()
    assert worker_up(exposition, "1") == 0.0
    assert "node_cpu_seconds_total" not in samples_by_worker(exposition).get("1", set())
    assert "node_cpu_seconds_total" in samples_by_worker(exposition)["0"]

    def back() -> str | None:
        text = agg.metrics()
        return text if worker_up(text, "1") == 1.0 else None

    exposition = wait_for(back, "worker 1 to be restarted and up again", timeout=30)
    assert "node_cpu_seconds_total" in samples_by_worker(exposition)["1"]
    assert healthz(agg)["1"]["pid"] != pid
    assert re.search(r'^lsif_agg_worker_restarts_total\{worker="1"\} 1(\.0)?$', exposition, re.M)


def test_sigterm_stops_every_child(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg("--", *node_exporter_command(), workers=3)
    children = agg.track_children()
    assert len(children) >= 3

    assert agg.stop() == 0
    assert pids_alive(children) == []


def query(prometheus_url: str, expression: str) -> list[dict[str, object]]:
    url = prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    status, _, body = http_get(url)
    assert status == 200, body
    result: list[dict[str, object]] = json.loads(body)["data"]["result"]
    return result


@pytest.mark.slow
def test_prometheus_sees_three_node_exporters(start_lsif_agg: StartLsifAgg,
                                              prometheus_server: Callable[[int], str]) -> None:
    agg = start_lsif_agg("--", *node_exporter_command(), workers=3)
    prometheus = prometheus_server(agg.listen_port)

    def three_workers() -> bool:
        result = query(prometheus, "count(count by (worker) (node_cpu_seconds_total))")
        return bool(result) and result[0]["value"][1] == "3"  # type: ignore[index]

    wait_for(three_workers, "Prometheus to store node_cpu_seconds_total of 3 workers", timeout=60)
    up = query(prometheus, 'up{job="lsif_agg"}')
    assert [sample["value"][1] for sample in up] == ["1"]  # type: ignore[index]
    worker_ups = query(prometheus, "lsif_agg_worker_up == 1")
    assert len(worker_ups) == 3


def test_health_endpoints(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=2)
    assert agg.get("/-/healthy")[0] == 200
    assert agg.get("/-/ready")[0] == 200

    status, headers, body = agg.get("/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    processes = json.loads(body)["processes"]
    assert [process["name"] for process in processes] == ["worker-0", "worker-1"]
    for process in processes:
        assert process["state"] == "running"
        assert isinstance(process["pid"], int)
        assert process["restarts"] == 0
        assert isinstance(process["uptime_seconds"], float)
        assert process["last_exit"] is None


def test_missing_command_not_ready(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg("--", "/nonexistent/worker", "{port}", workers=1, wait_ready=False)

    def failed() -> bool:
        return healthz(agg).get("0", {}).get("state") == "failed"

    wait_for(failed, "the missing command to be marked failed")
    status, _, reasons = agg.get("/-/ready")
    assert status == 503
    assert b"worker-0: failed (cannot start /nonexistent/worker: No such file" in reasons
    assert str(healthz(agg)["0"]["failure"]).startswith("cannot start /nonexistent/worker")
    assert agg.get("/-/healthy")[0] == 200
    assert "/nonexistent/worker" in agg.log()
    assert worker_up(agg.metrics(), "0") == 0.0


def test_json_log_format(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg("--log-format", "json", workers=1)
    records = [json.loads(line) for line in agg.log().splitlines() if line.startswith("{")]
    assert records, agg.log()
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)


def test_scaling_signals_followed(start_lsif_agg: StartLsifAgg) -> None:
    agg = start_lsif_agg(workers=1)

    # The kernel merges a pending signal with a second one of the same kind, so each SIGTTIN is
    # sent once the previous one has taken effect.
    agg.process.send_signal(signal.SIGTTIN)
    wait_for(lambda: "1" in healthz(agg), "worker 1 to be added")
    agg.process.send_signal(signal.SIGTTIN)

    def two_added() -> str | None:
        text = agg.metrics()
        return text if worker_up(text, "1") == 1.0 and worker_up(text, "2") == 1.0 else None

    exposition = wait_for(two_added, "workers 1 and 2 to be added and scraped")
    assert 'lsif_sample_queue_depth{worker="2"}' in exposition
    agg.track_children()

    agg.process.send_signal(signal.SIGTTOU)

    def newest_removed() -> bool:
        return "2" not in healthz(agg)

    wait_for(newest_removed, "worker 2 to be removed")
    exposition = agg.metrics()
    assert worker_up(exposition, "2") is None
    assert 'worker="2"' not in exposition
    assert worker_up(exposition, "1") == 1.0
