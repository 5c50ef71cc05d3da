"""The federation endpoint: /metrics and /federate, plus the health endpoints Prometheus serves.

One scrape: negotiate the format, encoding and deadline; scrape every running target at once;
merge what arrived; join lsif_agg's own series; compress; respond. A failed target becomes data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import HttpVersion11, web

from lsif_agg import __version__
from lsif_agg.exposition import (
    CONTENT_TYPES,
    OutputFormat,
    StreamedResult,
    TargetBody,
    merge,
    merge_streamed,
)
from lsif_agg.federate.gzipped import GzipStream, slices
from lsif_agg.federate.heap import HeapTrimmer, find_malloc_trim
from lsif_agg.federate.negotiate import Negotiated, negotiate
from lsif_agg.federate.scrape import FanOut, ResponseBody, Scraper, ScrapeResult
from lsif_agg.federate.select import SelectorError, SeriesFilter, build_filter
from lsif_agg.federate.selfmetrics import ScrapeLedger, SelfMetrics, TargetFigures
from lsif_agg.settings import Settings
from lsif_agg.supervise import Supervisor
from lsif_agg.supervise.process import ProcessState, ProcessView

# Repeated errors of one target are logged at most once per this many seconds.
ERROR_LOG_INTERVAL = 60.0
# Refused connections are not logged this soon after a process starts: it may still be binding.
STARTUP_QUIET_SECONDS = 5.0

logger = logging.getLogger(__name__)

SUPERVISOR_KEY = web.AppKey("supervisor", Supervisor)


class Federation:
    """Scrapes the supervisor's running processes and merges their expositions."""

    def __init__(self, settings: Settings, supervisor: Supervisor) -> None:
        self._settings = settings
        self._supervisor = supervisor
        self._scraper = Scraper()
        self._ledger = ScrapeLedger()
        self._self_metrics = SelfMetrics(supervisor.processes, self._ledger)
        self._last_logged: dict[tuple[str, str], float] = {}
        self.heap = HeapTrimmer(find_malloc_trim())

    @property
    def default_timeout(self) -> float:
        """Fan-out deadline for scrapers that send no X-Prometheus-Scrape-Timeout-Seconds."""
        return self._settings.scrape_timeout

    async def start(self) -> None:
        await self._scraper.start()

    async def close(self) -> None:
        await self._scraper.close()

    @contextlib.asynccontextmanager
    async def scrape(self, deadline: float, preferred: OutputFormat
                     ) -> AsyncIterator[tuple[Sequence[ProcessView], FanOut, list[ScrapeResult]]]:
        """Scrape every running process; the others count as failed without a request.

        Yields the processes, the fan-out that was joined and one result per process. The
        fan-out is held until the block ends.
        """
        views = self._supervisor.processes()
        running = [view for view in views if view.state is ProcessState.RUNNING]
        async with self._scraper.scrape(running, deadline, preferred) as fan_out:
            scraped = {result.label for result in fan_out.results}
            results = list(fan_out.results) + [
                ScrapeResult(view.label, None, None, 0.0, "not_running",
                             f"{view.name} is {view.state.value}, so it was not scraped")
                for view in views if view.label not in scraped
            ]
            yield views, fan_out, results

    @contextlib.asynccontextmanager
    async def response(self, negotiated: Negotiated, *, selectors: Sequence[str],
                       keep: SeriesFilter | None) -> AsyncIterator[ResponseBody | GzipStream]:
        """Scrape the targets and yield the response body, compressed if negotiated.

        The body must be sent before the block ends: it is written from the targets' bodies,
        which the fan-out holds until then. Requests that joined the same fan-out and
        negotiated the same format and selectors share one merge, and those of them that
        accept gzip share one compression.
        """
        self.heap.started()
        try:
            async with self.scrape(negotiated.deadline, negotiated.output) as (
                    views, fan_out, results):
                self.heap.handled(sum(len(result.body) for result in results
                                      if result.body is not None))
                yield self._body(negotiated, fan_out,
                                 lambda: self.expose(views, results, negotiated.output, keep),
                                 selectors)
        finally:
            self.heap.finished()

    @staticmethod
    def _body(negotiated: Negotiated, fan_out: FanOut, expose: Callable[[], ResponseBody],
              selectors: Sequence[str]) -> ResponseBody | GzipStream:
        """Return the response body for `negotiated`, merged or compressed once per fan-out."""
        plain_key = (negotiated.output, False, tuple(selectors))
        body = fan_out.responses.get(plain_key)
        if body is None:
            body = expose()
            fan_out.responses[plain_key] = body
        assert not isinstance(body, GzipStream), "plain keys hold bodies, gzip keys streams"
        if not negotiated.gzip:
            return body

        gzip_key = (negotiated.output, True, tuple(selectors))
        compressed = fan_out.responses.get(gzip_key)
        if compressed is None:
            compressed = GzipStream(body)
            fan_out.responses[gzip_key] = compressed
        return compressed

    def expose(self, views: Sequence[ProcessView], results: list[ScrapeResult],
               output: OutputFormat, keep: SeriesFilter | None) -> ResponseBody:
        """Merge the bodies that arrived, record the figures, and join lsif_agg's own series.

        The merged exposition and lsif_agg's own series are returned as two parts, so the
        merged body, the largest object of a scrape, is never copied.
        """
        # The merged exposition is written slice by slice as it is compressed or sent, so it is
        # never held whole. The bodies stay alive until the fan-out is freed.
        arrived = [result for result in results if result.body is not None]
        merged = merge_streamed(
            [TargetBody(result.label, result.body or b"", result.content_type)
             for result in arrived],
            output, keep=keep, eof=False)
        self._record(views, results, arrived, merged)

        # lsif_agg's own series come last; in OpenMetrics they end in the one # EOF.
        own = self._self_metrics.render(output)
        if keep is not None:
            own = merge([TargetBody(None, own, CONTENT_TYPES[output])], output, keep=keep).body
        return merged.body, own

    def _record(self, views: Sequence[ProcessView], results: list[ScrapeResult],
                arrived: list[ScrapeResult], merged: StreamedResult) -> None:
        outcomes = {id(result): outcome for result, outcome in zip(arrived, merged.outcomes,
                                                                     strict=True)}
        # A process that was just spawned has usually not bound its port yet. A refused
        # connection is then expected, so it is counted but not logged.
        now = time.monotonic()
        is_starting = {view.label: view.running_since is not None
                       and now - view.running_since < STARTUP_QUIET_SECONDS for view in views}
        for result in results:
            outcome = outcomes.get(id(result))
            error = result.error or (outcome.error if outcome is not None else None)
            detail = result.detail or (outcome.detail if outcome is not None else None)
            figures = TargetFigures(
                error=error,
                duration=result.duration,
                samples=outcome.samples if outcome is not None else 0,
                body_bytes=len(result.body) if result.body is not None else 0,
            )
            self._ledger.record(result.label, figures)
            if error is not None and error != "not_running" and not (
                    error == "connection" and is_starting.get(result.label, False)):
                self._log_error(result.label, error, detail)

        for conflict in merged.conflicts:
            self._ledger.conflicts[(conflict.family, conflict.kind)] += 1
        self._ledger.forget_except(view.label for view in views)

    def _log_error(self, label: str, reason: str, detail: str | None) -> None:
        """Log a target's error, at most once per ERROR_LOG_INTERVAL for each worker and reason."""
        now = time.monotonic()
        key = (label, reason)
        if now - self._last_logged.get(key, -ERROR_LOG_INTERVAL) < ERROR_LOG_INTERVAL:
            return
        self._last_logged[key] = now
        logger.warning("%s; it is left out of this scrape (repeats are logged once a minute) "
                       "worker=%s reason=%s", detail, label, reason)

    def latest_up(self, label: str) -> bool:
        figures = self._ledger.latest.get(label)
        return figures is not None and figures.up

    def latest_error(self, label: str) -> str:
        """Return the reason of the target's latest failed scrape, or 'not scraped yet'."""
        figures = self._ledger.latest.get(label)
        if figures is None:
            return "not scraped yet"
        return figures.error or "up"


FEDERATION_KEY = web.AppKey("federation", Federation)


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    return await _serve_exposition(request, selectors=())


async def handle_federate(request: web.Request) -> web.StreamResponse:
    """Serve the merged exposition filtered by `match[]`, as Prometheus's /federate does.

    Without match[] it serves everything, so scrape configs that pointed at /federate with or
    without selectors keep working.
    """
    return await _serve_exposition(request, selectors=request.query.getall("match[]", []))


async def _serve_exposition(request: web.Request, selectors: Sequence[str]
                            ) -> web.StreamResponse:
    federation = request.app[FEDERATION_KEY]
    try:
        keep = build_filter(selectors)
    except SelectorError as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from None

    negotiated = negotiate(request.headers, federation.default_timeout)
    async with federation.response(negotiated, selectors=selectors, keep=keep) as body:
        return await _send(request, body, negotiated)


async def _send(request: web.Request, body: ResponseBody | GzipStream, negotiated: Negotiated
                ) -> web.StreamResponse:
    """Send `body` in slices, so no copy of it is made, waiting for the client between slices.

    A gzip stream is sent as it is compressed, in chunked encoding because its length is not
    known yet. An HTTP/1.0 scraper cannot take chunks, so it gets the stream once it is whole.
    """
    response = web.StreamResponse(headers={
        "Content-Type": CONTENT_TYPES[negotiated.output],
        "Vary": "Accept, Accept-Encoding",
    })
    if negotiated.gzip:
        response.headers["Content-Encoding"] = "gzip"
    if isinstance(body, GzipStream) and request.version < HttpVersion11:
        body = tuple([part async for part in body.parts()])
    if isinstance(body, GzipStream):
        response.enable_chunked_encoding()
    else:
        response.content_length = sum(len(part) for part in body)

    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        if isinstance(body, GzipStream):
            async for part in body.parts():
                await response.write(part)
        else:
            for piece in slices(body):
                await response.write(piece)
        await response.write_eof()
    except ConnectionError:
        # The scraper hung up, usually at its own timeout. There is no one to tell. aiohttp
        # raises a plain ConnectionError when the reset comes while it waits for the socket to
        # drain, which aiohttp would log as an error with a traceback.
        logger.debug("scraper %s closed the connection before the response was sent",
                     request.remote)
    return response


async def handle_healthy(request: web.Request) -> web.Response:
    return web.Response(text="lsif_agg is Healthy.\n")


async def handle_ready(request: web.Request) -> web.Response:
    """Return 200 when every process runs and its scrape just now succeeded, else 503 with the reasons."""
    federation = request.app[FEDERATION_KEY]
    async with federation.scrape(federation.default_timeout, OutputFormat.TEXT) as (
            views, _, results):
        # Only merging finds out whether a body is a readable exposition; the merged body is
        # unused.
        federation.expose(views, results, OutputFormat.TEXT, keep=None)

    not_ready = [f"{view.name}: {view.state.value}"
                 + (f" ({view.failure})" if view.failure is not None else "")
                 for view in views if view.state is not ProcessState.RUNNING]
    not_ready += [f"{view.name}: {federation.latest_error(view.label)}" for view in views
                  if view.state is ProcessState.RUNNING and not federation.latest_up(view.label)]
    if not_ready:
        return web.Response(status=503, text="lsif_agg is not ready: " + "; ".join(not_ready) + "\n")
    return web.Response(text="lsif_agg is Ready.\n")


async def handle_healthz(request: web.Request) -> web.Response:
    """Return each process's state, pid, restarts, uptime and last exit cause as JSON."""
    federation = request.app[FEDERATION_KEY]
    views = request.app[SUPERVISOR_KEY].processes()
    now = time.monotonic()
    processes = [
        {
            "name": view.name,
            "worker": view.label,
            "port": view.port,
            "state": view.state.value,
            "pid": view.pid,
            "restarts": view.restarts,
            "uptime_seconds": round(now - view.running_since, 3)
            if view.running_since is not None and view.state is ProcessState.RUNNING else None,
            "last_exit": view.last_exit.describe() if view.last_exit is not None else None,
            "failure": view.failure,
            "last_scrape_up": federation.latest_up(view.label),
        }
        for view in views
    ]
    healthy = all(view.state is not ProcessState.FAILED for view in views)
    payload = {"status": "ok" if healthy else "degraded", "version": __version__,
               "processes": processes}
    return web.Response(text=json.dumps(payload, indent=2) + "\n",
                        content_type="application/json", status=200 if healthy else 503)


async def handle_index(request: web.Request) -> web.Response:
    return web.Response(text=(
        f"lsif_agg {__version__}\n\n"
        "/metrics    every process's metrics, merged, with a worker label\n"
        "/federate   the same, filtered by match[] selectors\n"
        "/-/healthy  liveness\n"
        "/-/ready    readiness: every process runs and answers its scrape\n"
        "/healthz    each process's state as JSON\n"))


def build_app(federation: Federation, supervisor: Supervisor) -> web.Application:
    app = web.Application()
    app[FEDERATION_KEY] = federation
    app[SUPERVISOR_KEY] = supervisor
    app.router.add_get("/", handle_index)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/federate", handle_federate)
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_get("/healthz", handle_healthz)
    return app
