"""The benchmark's workers: deterministic expositions of a chosen size, served from prepared bytes.

`python benchmarks/workload.py --port PORT --worker I --samples S` serves worker I's exposition on
http://127.0.0.1:PORT/metrics until SIGTERM or SIGINT. `--dump text|openmetrics` prints it instead.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

# Every family name starts with this, so Prometheus's /federate can select exactly the workload
# with {__name__=~"app_.+"} and leave out its own series.
FAMILY_PREFIX = "app_"
FEDERATE_SELECTOR = '{__name__=~"app_.+"}'

# Series in each family (the last family may get fewer). A histogram series costs 14 samples, so
# histogram families get fewer series.
SERIES_PER_COUNTER = 40
SERIES_PER_GAUGE = 24
SERIES_PER_HISTOGRAM = 6
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0")

SUBSYSTEMS = ("http", "grpc", "db", "cache", "queue", "upload", "indexer", "gitserver", "store",
              "janitor", "codeintel", "search")
METHODS = ("GET", "POST", "PUT", "DELETE")
ROUTES = ("/api/v1/uploads", "/api/v1/uploads/{id}", "/api/v1/indexes", "/api/v1/repos/{repo}/dumps",
          "/healthz", "/-/ready")
CODES = ("200", "201", "204", "400", "404", "409", "500", "503")
REPOSITORIES = ("github.com/acme/api", "github.com/acme/web", "gitlab.com/infra/terraform",
                "github.com/acme/mono-repo", "bitbucket.org/legacy/billing")
QUERIES = ('SELECT \\"id\\" FROM uploads WHERE state = $1', "UPDATE lsif_indexes SET state = $1",
           "DELETE FROM lsif_packages WHERE dump_id = $1", "INSERT INTO lsif_references VALUES ($1)")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Sample(NamedTuple):
    """One sample line without its metric name's family part: suffix, label text and value."""

    suffix: str
    labels: str
    value: str


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name without suffixes, type, help text and samples."""

    name: str
    kind: str  # counter, gauge or histogram
    help: str
    samples: tuple[Sample, ...]


def _label_sets(rng: random.Random, subsystem: str) -> Iterator[str]:
    """Yield distinct label texts such as method="GET",route="/healthz",code="200", without end."""
    serial = 0
    while True:
        serial += 1
        if subsystem == "db":
            yield (f'query="{rng.choice(QUERIES)}",database="frontend",'
                   f'shard="{serial}"')
        elif subsystem in ("upload", "indexer", "codeintel"):
            yield f'repository="{rng.choice(REPOSITORIES)}",outcome="succeeded",shard="{serial}"'
        else:
            yield (f'method="{rng.choice(METHODS)}",route="{rng.choice(ROUTES)}",'
                   f'code="{rng.choice(CODES)}",shard="{serial}"')


def _counter(rng: random.Random, labels: Iterator[str], series: int) -> tuple[Sample, ...]:
    return tuple(Sample("_total", next(labels), f"{float(rng.randint(0, 10**9))}")
                 for _ in range(series))


def _gauge(rng: random.Random, labels: Iterator[str], series: int) -> tuple[Sample, ...]:
    return tuple(Sample("", next(labels), repr(round(rng.uniform(0, 5000), 3))) for _ in range(series))


def _histogram(rng: random.Random, labels: Iterator[str], series: int) -> tuple[Sample, ...]:
    samples: list[Sample] = []
    for _ in range(series):
        label_text = next(labels)
        count = 0
        for bound in (*BUCKETS, "+Inf"):
            count += rng.randint(0, 5000)
            samples.append(Sample("_bucket", f'{label_text},le="{bound}"', f"{float(count)}"))
        samples.append(Sample("_sum", label_text, repr(round(count * rng.uniform(0.01, 2), 6))))
        samples.append(Sample("_count", label_text, f"{float(count)}"))
    return tuple(samples)


# Kinds in the order families are made. At 10,000 samples this gives 30% counter, 9% gauge and
# 62% histogram samples in 186 families.
KINDS = (
    ("counter", SERIES_PER_COUNTER, _counter, "requests_total", "Requests handled"),
    ("histogram", SERIES_PER_HISTOGRAM, _histogram, "request_duration_seconds",
     "Time spent handling a request"),
    ("gauge", SERIES_PER_GAUGE, _gauge, "in_flight", "Requests in flight"),
    ("counter", SERIES_PER_COUNTER, _counter, "errors_total", "Errors returned"),
    ("histogram", SERIES_PER_HISTOGRAM, _histogram, "payload_bytes", "Size of request payloads"),
)
HISTOGRAM_SERIES_SAMPLES = len(BUCKETS) + 3  # the buckets, +Inf, _sum and _count


def build_families(samples: int, worker: int) -> list[Family]:
    """Make exactly `samples` samples in families of counters, gauges and histograms.

    Every worker gets the same families and label sets with its own values, as replicas of one
    program do. The same arguments always give the same families.
    """
    if samples < 1:
        raise ValueError(f"invalid sample count {samples}: it must be 1 or more")
    rng = random.Random(f"lsif_agg-benchmark-{worker}")
    layout_rng = random.Random("lsif_agg-benchmark-layout")
    families: list[Family] = []
    remaining = samples
    index = 0
    while remaining > 0:
        kind, series, make, stem, help_text = KINDS[index % len(KINDS)]
        subsystem = SUBSYSTEMS[(index // len(KINDS)) % len(SUBSYSTEMS)]
        generation = index // (len(KINDS) * len(SUBSYSTEMS))
        index += 1

        per_series = HISTOGRAM_SERIES_SAMPLES if kind == "histogram" else 1
        series = min(series, remaining // per_series)
        if series == 0:
            # Too few samples left for one histogram series: finish with a gauge.
            kind, series, make, stem, help_text = "gauge", remaining, _gauge, "backlog", "Items waiting"
        suffix_free = stem.removesuffix("_total")
        name = f"{FAMILY_PREFIX}{subsystem}_{suffix_free}" + (f"_g{generation}" if generation else "")
        # Label sets come from a generator seeded the same for every worker, and values come from
        # the worker's own generator.
        labels = _label_sets(random.Random(layout_rng.random()), subsystem)
        family_samples = make(rng, labels, series)
        families.append(Family(name, kind, f"{help_text} by the {subsystem} subsystem.", family_samples))
        remaining -= len(family_samples)
    return families


def render_text(families: list[Family]) -> bytes:
    """Render families in the Prometheus text format 0.0.4, without _created samples."""
    lines: list[str] = []
    for family in families:
        full_name = family.name + ("_total" if family.kind == "counter" else "")
        lines.append(f"# HELP {full_name} {family.help}")
        lines.append(f"# TYPE {full_name} {family.kind}")
        lines.extend(f"{family.name}{s.suffix}{{{s.labels}}} {s.value}" for s in family.samples)
    return ("\n".join(lines) + "\n").encode()


def render_openmetrics(families: list[Family]) -> bytes:
    """Render families in OpenMetrics 1.0.0, where a counter family's name has no _total."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines.extend(f"{family.name}{s.suffix}{{{s.labels}}} {s.value}" for s in family.samples)
    lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode()


class Responses(NamedTuple):
    """Complete HTTP responses, head and body, for each format and encoding a scraper may ask for."""

    text: bytes
    text_gzip: bytes
    openmetrics: bytes
    openmetrics_gzip: bytes
    not_found: bytes


def _response(body: bytes, content_type: str, *, gzipped: bool) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if gzipped:
        head.append("Content-Encoding: gzip")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def build_responses(families: list[Family]) -> Responses:
    """Prepare every response once, so serving a scrape costs only a socket write."""
    text = render_text(families)
    openmetrics = render_openmetrics(families)
    not_found = b"Not Found: the metrics are on /metrics\n"
    return Responses(
        text=_response(text, TEXT_CONTENT_TYPE, gzipped=False),
        text_gzip=_response(gzip.compress(text, 6), TEXT_CONTENT_TYPE, gzipped=True),
        openmetrics=_response(openmetrics, OPENMETRICS_CONTENT_TYPE, gzipped=False),
        openmetrics_gzip=_response(gzip.compress(openmetrics, 6), OPENMETRICS_CONTENT_TYPE,
                                   gzipped=True),
        not_found=(f"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                   f"Content-Length: {len(not_found)}\r\n\r\n").encode() + not_found,
    )


def choose_response(responses: Responses, head: bytes) -> tuple[bytes, bool]:
    """Pick the response for one request head, and whether to close the connection after it.

    OpenMetrics is served when Accept names it, and gzip when Accept-Encoding names it.
    """
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    should_close = headers.get("connection") == "close" or request_line.endswith("HTTP/1.0")

    parts = request_line.split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[1].split("?")[0] != "/metrics":
        return responses.not_found, should_close
    wants_openmetrics = "application/openmetrics-text" in headers.get("accept", "")
    wants_gzip = "gzip" in headers.get("accept-encoding", "")
    if wants_openmetrics:
        return (responses.openmetrics_gzip if wants_gzip else responses.openmetrics), should_close
    return (responses.text_gzip if wants_gzip else responses.text), should_close


class ExpositionProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server for GET requests: keep-alive and pipelining, no request bodies."""

    def __init__(self, responses: Responses) -> None:
        self._responses = responses
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
            response, should_close = choose_response(self._responses, head)
            self._transport.write(response)
            if should_close:
                self._transport.close()
                return


async def serve(port: int, responses: Responses, worker: int) -> None:
    """Serve `responses` on 127.0.0.1:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server = await loop.create_server(lambda: ExpositionProtocol(responses), "127.0.0.1", port,
                                      reuse_address=True)
    print(f"benchmark worker {worker} serving on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve one benchmark worker's fixed exposition.")
    parser.add_argument("--port", type=int, help="port to listen on, on 127.0.0.1")
    parser.add_argument("--worker", type=int, default=0, help="worker index, which picks the values")
    parser.add_argument("--samples", type=int, default=1000, help="samples in the exposition")
    parser.add_argument("--dump", choices=("text", "openmetrics"),
                        help="print the exposition in this format and exit instead of serving")
    args = parser.parse_args()

    families = build_families(args.samples, args.worker)
    if args.dump == "text":
        sys.stdout.buffer.write(render_text(families))
        return
    if args.dump == "openmetrics":
        sys.stdout.buffer.write(render_openmetrics(families))
        return
    if args.port is None:
        parser.error("--port is required unless --dump is given")
    asyncio.run(serve(args.port, build_responses(families), args.worker))


if __name__ == "__main__":
    main()
