"""The fan-out: fetch every target's /metrics at once under one deadline.

A failed target becomes a ScrapeResult with an error reason, never an exception, so one hung or
broken process cannot fail the response or delay it beyond the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from lsif_agg.exposition import MergedBody, OutputFormat
from lsif_agg.supervise.process import ProcessView

if TYPE_CHECKING:
    from lsif_agg.federate.gzipped import GzipStream

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
    responses: dict[Hashable, ResponseBody | GzipStream] = field(default_factory=dict,
                                                                 compare=False)


# A new fan-out waits at most this fraction of its deadline for the responses of the one before
# to be sent, so a scraper that reads slowly delays the others by a bounded time.
OVERLAP_WAIT_FRACTION = 0.25


class Scraper:
    """Scrapes targets over one pooled HTTP session; concurrent scrapes share one fan-out.

    A fan-out is held from its start until the last request that joined it has sent its
    response, because the response is written from the targets' bodies. A new fan-out waits for
    the one before to be released, so one scrape's bodies are in memory at a time, not two: at
    16 workers x 10,000 samples, overlapping fan-outs took RSS from about 66 to 92 MiB.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[OutputFormat, asyncio.Task[FanOut]] = {}
        self._holders = 0
        self._released = asyncio.Event()
        self._released.set()

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

    @contextlib.asynccontextmanager
    async def scrape(self, targets: Sequence[ProcessView], deadline: float,
                     preferred: OutputFormat) -> AsyncIterator[FanOut]:
        """Fetch `targets` concurrently, each within `deadline` seconds, in `preferred` format.

        The fan-out is held until the block ends, which must come after the response is sent.
        A request that arrives while a fan-out for the same format is under way joins it
        instead of starting another, so two Prometheus replicas scraping together cost one
        fan-out. Otherwise it waits, for at most OVERLAP_WAIT_FRACTION of `deadline`, until
        no fan-out is held, and starts one. The data it gets was fetched after it arrived or
        comes from a fan-out that was under way when it arrived.
        """
        waited = await self._wait_for_release(preferred, deadline * OVERLAP_WAIT_FRACTION)
        in_flight = self._under_way(preferred)
        if in_flight is None:
            in_flight = asyncio.create_task(
                self._fan_out(tuple(targets), deadline - waited, preferred))
            self._in_flight[preferred] = in_flight
            in_flight.add_done_callback(lambda task: self._forget(preferred, task))

        self._holders += 1
        self._released.clear()
        try:
            # shield: a scraper that hangs up must not cancel the fan-out that others share.
            yield await asyncio.shield(in_flight)
        finally:
            self._holders -= 1
            if self._holders == 0:
                self._released.set()

    async def _wait_for_release(self, preferred: OutputFormat, limit: float) -> float:
        """Wait until a fan-out for `preferred` is under way or none is held; return the seconds.

        Gives up after `limit` seconds: the fan-out is then started beside the held one.
        """
        # Every waiter wakes at once when the held fan-out is released. The first to run starts
        # a fan-out; the others then join it, or wait again when they asked for another format.
        started = time.monotonic()
        while self._holders > 0 and self._under_way(preferred) is None:
            left = limit - (time.monotonic() - started)
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    await self._released.wait()
            except TimeoutError:
                break
        return time.monotonic() - started

    def _under_way(self, preferred: OutputFormat) -> asyncio.Task[FanOut] | None:
        in_flight = self._in_flight.get(preferred)
        return None if in_flight is None or in_flight.done() else in_flight

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
