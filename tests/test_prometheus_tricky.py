"""A real Prometheus in front of lsif_agg whose workers serve tricky expositions.

Prometheus 2.42 always prefers OpenMetrics and has no setting to ask for text, so the text case
puts a small forwarder between them that only replaces the Accept header.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.conftest import LsifAgg, http_get, wait_for

PROGRAMS = Path(__file__).parent / "programs"
TEXT_ACCEPT = "text/plain;version=0.0.4"

# Escaped quotes and backslashes, `}`, `,`, `#` and `{` inside values, blanks and a trailing
# comma inside braces, CRLF line ends, a worker label of its own, a repeated series, a comment,
# NaN and a denormal value.
TRICKY_TEXT = (
    "# HELP tricky_requests_total Requests, with \"quotes\" and \\\\ in the help.\r\n"
    "# TYPE tricky_requests_total counter\r\n"
    'tricky_requests_total{path="/a}b,c#d{e",quote="say \\"hi\\" \\\\o/"} 1\r\n'
    'tricky_requests_total{worker="w7",path="/x"} 2\r\n'
    'tricky_requests_total{worker="w7",path="/x"} 2\r\n'
    "# just a comment\r\n"
    "# TYPE tricky_latency_seconds histogram\r\n"
    'tricky_latency_seconds_bucket{le="0.1"} 1\r\n'
    'tricky_latency_seconds_bucket{le="+Inf"} 2\r\n'
    "tricky_latency_seconds_sum 0.3\r\n"
    "tricky_latency_seconds_count 2\r\n"
    'tricky_untyped{ a = "1" ,} NaN\r\n'
    "tricky_denormal 1e-320"
)

# Exemplars, _created, info, stateset and UNIT, which only OpenMetrics has.
TRICKY_OPENMETRICS = (
    "# TYPE tricky_jobs counter\n"
    "# HELP tricky_jobs Jobs done.\n"
    'tricky_jobs_total{kind="a"} 3 # {trace_id="abc"} 1.0 1700000000.5\n'
    'tricky_jobs_created{kind="a"} 1700000000.0\n'
    "# TYPE tricky_build info\n"
    'tricky_build_info{version="1.2"} 1\n'
    "# TYPE tricky_state stateset\n"
    'tricky_state{tricky_state="on"} 1\n'
    'tricky_state{tricky_state="off"} 0\n'
    "# TYPE tricky_size_bytes gauge\n"
    "# UNIT tricky_size_bytes bytes\n"
    "tricky_size_bytes 42\n"
    "# EOF\n"
)

Series = frozenset[tuple[str, str]]


def series(name: str, **labels: str) -> Series:
    return frozenset({("__name__", name), *labels.items()})


EXPECTED = {
    series("tricky_requests_total", path="/a}b,c#d{e", quote='say "hi" \\o/', worker="0"),
    series("tricky_requests_total", exported_worker="w7", path="/x", worker="0"),
    series("tricky_latency_seconds_bucket", le="0.1", worker="0"),
    series("tricky_latency_seconds_bucket", le="+Inf", worker="0"),
    series("tricky_latency_seconds_sum", worker="0"),
    series("tricky_latency_seconds_count", worker="0"),
    series("tricky_untyped", a="1", worker="0"),
    series("tricky_denormal", worker="0"),
    series("tricky_jobs_total", kind="a", worker="1"),
    series("tricky_build_info", version="1.2", worker="1"),
    series("tricky_state", tricky_state="on", worker="1"),
    series("tricky_state", tricky_state="off", worker="1"),
    series("tricky_size_bytes", worker="1"),
}


@pytest.fixture
def accept_forwarder() -> Iterator[Callable[[int], int]]:
    """Start forwarders that fetch lsif_agg's /metrics with a text Accept header; yield a starter."""
    servers: list[ThreadingHTTPServer] = []

    def start(target_port: int) -> int:
        class Forward(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{target_port}{self.path}",
                    headers={"Accept": TEXT_ACCEPT})
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = response.read()
                    content_type = response.headers["Content-Type"]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return int(server.server_address[1])

    yield start

    for server in servers:
        server.shutdown()
        server.server_close()


def start_tricky_workers(start_lsif_agg: Callable[..., LsifAgg], tmp_path: Path) -> LsifAgg:
    """Run lsif_agg with worker 0 serving TRICKY_TEXT and worker 1 TRICKY_OPENMETRICS."""
    (tmp_path / "0.prom").write_bytes(TRICKY_TEXT.encode())
    (tmp_path / "1.prom").write_bytes(TRICKY_OPENMETRICS.encode())
    wrapper = tmp_path / "worker.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$WORKER_INDEX" = 1 ]; then type="application/openmetrics-text; version=1.0.0"; '
        'else type="text/plain; version=0.0.4"; fi\n'
        f'exec {sys.executable} {PROGRAMS / "serve_exposition.py"} "$WORKER_METRICS_PORT" '
        f'{tmp_path}/"$WORKER_INDEX".prom "$type"\n')
    wrapper.chmod(0o755)
    return start_lsif_agg("--", str(wrapper), workers=2)


def stored_series(prometheus_url: str) -> set[Series]:
    query = urllib.parse.urlencode({"match[]": '{__name__=~"tricky_.+"}'})
    status, _, body = http_get(f"{prometheus_url}/api/v1/series?{query}")
    assert status == 200, body
    return {frozenset(labels.items()) - {("job", "lsif_agg"), ("instance", labels["instance"])}
            for labels in json.loads(body)["data"]}


@pytest.mark.slow
@pytest.mark.parametrize("negotiated", ["openmetrics", "text"])
def test_prometheus_stores_tricky_series(
        negotiated: str, start_lsif_agg: Callable[..., LsifAgg],
        prometheus_server: Callable[[int], str], accept_forwarder: Callable[[int], int],
        tmp_path: Path) -> None:
    agg = start_tricky_workers(start_lsif_agg, tmp_path)
    target_port = agg.listen_port if negotiated == "openmetrics" else accept_forwarder(
        agg.listen_port)
    prometheus = prometheus_server(target_port)

    def has_every_series() -> set[Series] | None:
        stored = stored_series(prometheus)
        return stored if stored >= EXPECTED else None

    stored = wait_for(has_every_series, f"Prometheus to store every tricky series ({negotiated})",
                      timeout=60)
    assert all(("exported_exported_worker" not in dict(labels)) for labels in stored)

    status, _, body = http_get(f"{prometheus}/api/v1/query?query=up")
    assert status == 200
    assert [sample["value"][1] for sample in json.loads(body)["data"]["result"]] == ["1"]
