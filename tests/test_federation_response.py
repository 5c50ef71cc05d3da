"""The response of /metrics byte for byte: the merge of the workers' bodies, then lsif_agg's own.

The body is sent in slices and gzipped in slices, so these tests use bodies several slices long
and compare every byte with a merge done in the test.
"""

from __future__ import annotations

import gzip
import http.client
import re
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.conftest import LsifAgg

from lsif_agg.exposition import CONTENT_TYPES, OutputFormat, TargetBody, merge
from lsif_agg.federate.gzipped import SLICE_BYTES

PROGRAMS = Path(__file__).parent / "programs"
StartLsifAgg = Callable[..., LsifAgg]

WORKERS = 2
SERIES = 6000
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4"
OPENMETRICS_EOF = b"# EOF\n"
OWN_SERIES_START = b"# HELP lsif_agg_"

ACCEPT = {
    OutputFormat.TEXT: "text/plain;version=0.0.4",
    OutputFormat.OPENMETRICS: "application/openmetrics-text;version=1.0.0",
}


def large_exposition(series: int = SERIES) -> bytes:
    """Return a fixed text exposition of several hundred kilobytes, a counter and a histogram."""
    lines = ["# HELP big_requests_total Requests handled, by route and code.",
             "# TYPE big_requests_total counter"]
    lines += [f'big_requests_total{{route="/api/v1/item/{n}",code="{200 + n % 5}"}} {n * 7}'
              for n in range(series)]
    lines += ["# HELP big_latency_seconds Latency of a request.",
              "# TYPE big_latency_seconds histogram"]
    for n in range(series // 20):
        for bound, count in (("0.1", n), ("1.0", 2 * n), ("+Inf", 3 * n)):
            lines.append(f'big_latency_seconds_bucket{{shard="{n}",le="{bound}"}} {count}')
        lines.append(f'big_latency_seconds_sum{{shard="{n}"}} {n}.25')
        lines.append(f'big_latency_seconds_count{{shard="{n}"}} {3 * n}')
    return ("\n".join(lines) + "\n").encode()


def expected_merge(body: bytes, output: OutputFormat) -> bytes:
    """Merge the workers' bodies in the test, as lsif_agg should, and return the merged body."""
    targets = [TargetBody(str(worker), body, TEXT_CONTENT_TYPE) for worker in range(WORKERS)]
    return merge(targets, output).body


def fetch(agg: LsifAgg, output: OutputFormat, *, gzipped: bool, method: str = "GET"
          ) -> tuple[dict[str, str], bytes]:
    headers = {"Accept": ACCEPT[output], "Accept-Encoding": "gzip" if gzipped else "identity"}
    request = urllib.request.Request(agg.url + "/metrics", headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return dict(response.headers), response.read()


def check_response(body: bytes, merged: bytes, output: OutputFormat) -> None:
    """Check that `body` is `merged` (without its # EOF) followed by lsif_agg's own series."""
    workers_part = merged.removesuffix(OPENMETRICS_EOF)
    assert body[:len(workers_part)] == workers_part
    assert body[len(workers_part):].startswith(OWN_SERIES_START)
    if output is OutputFormat.OPENMETRICS:
        assert body.endswith(OPENMETRICS_EOF)
        assert body.count(OPENMETRICS_EOF) == 1


@pytest.fixture
def fixed_body() -> bytes:
    return large_exposition()


@pytest.fixture
def agg(start_lsif_agg: StartLsifAgg, tmp_path: Path, fixed_body: bytes) -> LsifAgg:
    exposition = tmp_path / "large.prom"
    exposition.write_bytes(fixed_body)
    return start_lsif_agg("--", sys.executable, str(PROGRAMS / "serve_exposition.py"), "{port}",
                          str(exposition), workers=WORKERS)


def test_exposition_spans_several_slices(fixed_body: bytes) -> None:
    assert len(fixed_body) * WORKERS > 3 * SLICE_BYTES


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
@pytest.mark.parametrize("gzipped", [False, True], ids=["identity", "gzip"])
def test_response_is_merge_then_own_series(agg: LsifAgg, fixed_body: bytes,
                                           output: OutputFormat, gzipped: bool) -> None:
    headers, body = fetch(agg, output, gzipped=gzipped)

    assert headers["Content-Type"] == CONTENT_TYPES[output]
    if gzipped:
        # Sent while it is compressed, so its length is not known when the headers go out.
        assert headers["Transfer-Encoding"] == "chunked"
        assert headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)
    else:
        assert int(headers["Content-Length"]) == len(body)
        assert "Content-Encoding" not in headers
    check_response(body, expected_merge(fixed_body, output), output)


def test_head_sends_headers_only(agg: LsifAgg) -> None:
    # One connection for both requests: a body sent after HEAD would be read as the next response.
    connection = http.client.HTTPConnection("127.0.0.1", agg.listen_port, timeout=30)
    try:
        connection.request("HEAD", "/metrics", headers={"Accept": ACCEPT[OutputFormat.TEXT]})
        head = connection.getresponse()
        assert head.read() == b""
        assert head.status == 200
        assert head.getheader("Content-Type") == CONTENT_TYPES[OutputFormat.TEXT]
        assert int(head.getheader("Content-Length") or 0) > 0

        connection.request("GET", "/metrics", headers={"Accept": ACCEPT[OutputFormat.TEXT]})
        get = connection.getresponse()
        body = get.read()
        assert get.status == 200
        assert body.startswith(b"# HELP big_requests_total ")
    finally:
        connection.close()


def test_reset_during_drain_not_logged(start_lsif_agg: StartLsifAgg, tmp_path: Path) -> None:
    # The response must outgrow the kernel's socket buffers (at most 4 MiB by default on Linux),
    # so that lsif_agg is still sending when the scraper hangs up: 2 workers of 3.9 MB each.
    exposition = tmp_path / "larger.prom"
    exposition.write_bytes(large_exposition(series=50_000))
    agg = start_lsif_agg("--", sys.executable, str(PROGRAMS / "serve_exposition.py"), "{port}",
                         str(exposition), workers=2)
    for _ in range(3):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # A small receive window keeps the response in lsif_agg, waiting to be sent.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", agg.listen_port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Accept: text/plain;version=0.0.4\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)  # lsif_agg fills the socket's buffers and waits for them to drain
            # Reset instead of a graceful close, as a scraper at its timeout may.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    assert OWN_SERIES_START.decode() in agg.metrics()
    assert "Error handling request" not in agg.log()


def test_gzip_to_http_1_0_has_a_length(agg: LsifAgg, fixed_body: bytes) -> None:
    # HTTP/1.0 has no chunked encoding, so the gzip member is sent once it is whole.
    connection = http.client.HTTPConnection("127.0.0.1", agg.listen_port, timeout=30)
    connection._http_vsn, connection._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
    try:
        connection.request("GET", "/metrics", headers={"Accept": ACCEPT[OutputFormat.TEXT],
                                                        "Accept-Encoding": "gzip"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()

    assert response.status == 200
    assert response.getheader("Transfer-Encoding") is None
    assert int(response.getheader("Content-Length") or 0) == len(body)
    check_response(gzip.decompress(body), expected_merge(fixed_body, OutputFormat.TEXT),
                   OutputFormat.TEXT)


def test_concurrent_requests_of_mixed_kinds(agg: LsifAgg, fixed_body: bytes) -> None:
    kinds = [(output, gzipped) for output in OutputFormat for gzipped in (False, True)] * 4
    merged = {output: expected_merge(fixed_body, output) for output in OutputFormat}

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda kind: fetch(agg, kind[0], gzipped=kind[1]), kinds))

    for (output, gzipped), (_, body) in zip(kinds, responses, strict=True):
        check_response(gzip.decompress(body) if gzipped else body, merged[output], output)


ENCODING_WORKER = '''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        encoding = self.headers.get("Accept-Encoding", "none")
        body = f'seen_accept_encoding{{value="{encoding}"}} 1\\n'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def test_targets_asked_without_gzip(start_lsif_agg: StartLsifAgg, tmp_path: Path) -> None:
    worker = tmp_path / "encoding_worker.py"
    worker.write_text(ENCODING_WORKER)
    agg = start_lsif_agg("--", sys.executable, str(worker), "{port}", workers=1)

    # Even a scraper that accepts gzip gets a merge of bodies fetched as identity.
    _, body = fetch(agg, OutputFormat.TEXT, gzipped=True)
    seen = re.search(rb"^seen_accept_encoding\{(.*)\} 1$", gzip.decompress(body), re.MULTILINE)
    assert seen is not None
    assert b'value="identity"' in seen.group(1)
