"""The fan-out: fetch every target's /metrics at once under one deadline.

A failed target becomes a ScrapeResult with an error reason, never an exception, so one hung or
broken process cannot fail the response or delay it beyond the deadline.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import aiohttp

from lsif_agg.exposition import MergedBody, OutputFormat
from lsif_agg.supervise.process import ProcessView

# Targets are asked for the format the scraper of lsif_agg negotiated, so the common case copies
# sample lines without converting them: OpenMetrics keeps exemplars and _created for an
# OpenMetrics client, and text spares a text client the conversion. Any format that comes back
# is read.
TARGET_ACCEPT = {
    OutputFormat.OPENMETRICS: (
        "application/openmetrics-text;version=1.0.0;q=0.9,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    OutputFormat.TEXT: "text/plain;version=0.0.4;q=0.9,*/*;q=0.1",
}
GZIP_MAGIC = b"\x1f\x8b"
# A worker's whole exposition is held in memory for one scrape; this bounds what one target can take.
MAX_BODY_BYTES = 256 * 1024 * 1024

logger = logging.getLogger(__name__)

# A response body as parts sent one after another, so that joining them makes no copy. A merged
# exposition is a part that writes itself in slices, so it is never held whole.
ResponseBody = tuple[bytes | memoryview | MergedBody, ...]


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    """One target's part of a scrape: its body, or the reason it has none."""

    label: str
    body: bytes | None
    content_type: str | None
    duration: float  # seconds
    error: str | None  # reason token for lsif_agg_scrape_errors_total: timeout, connection, ...
    detail: str | None  # a sentence for the log


@dataclass(frozen=True, slots=True)
class FanOut:
    """The results of one fan-out, shared by every request that joined it.

    `responses` lets those requests merge and compress once per kind of response. The scraper
    drops its own reference as soon as the fan-out is done, so the bodies and the rendered
    responses are freed when the last request that joined has its response.
    """

    results: tuple[ScrapeResult, ...]
    responses: dict[Hashable, ResponseBody] = field(default_factory=dict, compare=False)


class Scraper:
    """Scrapes targets over one pooled HTTP session; concurrent scrapes share one fan-out."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[OutputFormat, asyncio.Task[FanOut]] = {}

    async def start(self) -> None:
        # No connection limit: every target is fetched at once. Connections are kept alive
        # between scrapes, so a scrape does not pay a TCP handshake per target.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        # Targets are on the loopback interface, where gzip only costs CPU at both ends. At 16
        # workers x 10,000 samples, inflating their bodies took about a fifth of lsif_agg's CPU.
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"Accept-Encoding": "identity"})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def scrape(self, targets: Sequence[ProcessView], deadline: float,
                     preferred: OutputFormat) -> FanOut:
        """Fetch `targets` concurrently, each within `deadline` seconds, in `preferred` format.

        A request that arrives while a fan-out for the same format is under way joins it
        instead of starting another, so two Prometheus replicas scraping together cost one
        fan-out. The data it gets was fetched after it arrived or at most one fan-out earlier.
        """
        in_flight = self._in_flight.get(preferred)
        if in_flight is None or in_flight.done():
            in_flight = asyncio.create_task(self._fan_out(tuple(targets), deadline, preferred))
            self._in_flight[preferred] = in_flight
            in_flight.add_done_callback(lambda task: self._forget(preferred, task))
        # shield: a scraper that hangs up must not cancel the fan-out that others share.
        return await asyncio.shield(in_flight)

    def _forget(self, preferred: OutputFormat, task: asyncio.Task[FanOut]) -> None:
        # A finished fan-out contains every target's body (1.1 MB for 10,000 samples of the
        # benchmark's workload), so only the requests that joined it may keep it alive.
        if self._in_flight.get(preferred) is task:
            del self._in_flight[preferred]

    async def _fan_out(self, targets: tuple[ProcessView, ...], deadline: float,
                       preferred: OutputFormat) -> FanOut:
        accept = TARGET_ACCEPT[preferred]
        fetches = (self._fetch(target, deadline, accept) for target in targets)
        return FanOut(tuple(await asyncio.gather(*fetches)))

    async def _fetch(self, target: ProcessView, deadline: float, accept: str) -> ScrapeResult:
        assert self._session is not None, "Scraper.start() must run before scrape()"
        url = f"http://127.0.0.1:{target.port}/metrics"
        started = time.monotonic()

        def failed(reason: str, detail: str) -> ScrapeResult:
            return ScrapeResult(target.label, None, None, time.monotonic() - started, reason,
                                f"scrape of {target.name} at {url} failed: {detail}")

        try:
            async with asyncio.timeout(deadline):
                async with self._session.get(url, headers={"Accept": accept}) as response:
                    if response.status != 200:
                        return failed("http_status", f"HTTP status {response.status}")
                    body = await _read_body(response)
                    content_type = response.headers.get("Content-Type")
        except TimeoutError:
            return failed("timeout", f"no complete answer within {deadline:.3g} s")
        except aiohttp.ClientPayloadError as error:
            return failed("payload", f"invalid response body ({error})")
        except (aiohttp.ClientError, OSError) as error:
            return failed("connection", str(error) or type(error).__name__)
        except ValueError as error:
            return failed("payload", str(error))

        return ScrapeResult(target.label, body, content_type, time.monotonic() - started,
                            None, None)


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """Read the whole body, gunzipping it when a target sent gzip without saying so."""
    if response.content_length is not None and response.content_length > MAX_BODY_BYTES:
        raise ValueError(f"body of {response.content_length} bytes exceeds {MAX_BODY_BYTES}")
    body = await response.read()
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")

    # aiohttp decompresses bodies sent with Content-Encoding: gzip; some exporters gzip the body
    # and omit that header, which would otherwise glue gzip bytes into the exposition.
    if body.startswith(GZIP_MAGIC):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"body looks gzipped but does not decompress: {error}") from None
    return body
