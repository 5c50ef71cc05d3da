"""The scraper's fan-outs: joined by concurrent requests, and held until their responses are sent.

A target here is a real HTTP server on 127.0.0.1 that counts the scrapes it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from lsif_agg.exposition import OutputFormat
from lsif_agg.federate.scrape import OVERLAP_WAIT_FRACTION, Scraper
from lsif_agg.supervise.process import ProcessState, ProcessView

BODY = b"# TYPE up gauge\nup 1\n"
# Far longer than any step of these tests takes; it only keeps a broken test from hanging.
GUARD_SECONDS = 10.0


class CountingTarget:
    """An HTTP target on a free port that serves /metrics and counts the requests."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(body=BODY, content_type="text/plain")

    def view(self) -> ProcessView:
        return ProcessView(name="worker-0", label="0", port=self.port, state=ProcessState.RUNNING,
                           pid=None, restarts=0, started_at=None, running_since=None,
                           last_exit=None)


@pytest.fixture
async def target() -> AsyncIterator[CountingTarget]:
    serving = CountingTarget()
    await serving.start()
    yield serving
    await serving.stop()


@pytest.fixture
async def scraper() -> AsyncIterator[Scraper]:
    started = Scraper()
    await started.start()
    yield started
    await started.close()


async def scrape_once(scraper: Scraper, target: CountingTarget, output: OutputFormat,
                      deadline: float = 5.0) -> bytes | None:
    async with scraper.scrape([target.view()], deadline, output) as fan_out:
        return fan_out.results[0].body


async def test_concurrent_scrapes_share_fan_out(
        scraper: Scraper, target: CountingTarget) -> None:
    bodies = await asyncio.gather(*(scrape_once(scraper, target, OutputFormat.TEXT)
                                    for _ in range(3)))
    assert bodies == [BODY] * 3
    assert target.scrapes == 1


async def test_new_fan_out_waits_for_release(
        scraper: Scraper, target: CountingTarget) -> None:
    async with asyncio.timeout(GUARD_SECONDS):
        async with scraper.scrape([target.view()], 5.0, OutputFormat.TEXT):
            waiting = asyncio.create_task(scrape_once(scraper, target, OutputFormat.OPENMETRICS))
            await asyncio.sleep(0.2)
            # Still sending the first response: the second fan-out has not started.
            assert not waiting.done()
            assert target.scrapes == 1

        assert await waiting == BODY
        assert target.scrapes == 2


async def test_same_format_after_release_fetches_again(
        scraper: Scraper, target: CountingTarget) -> None:
    await scrape_once(scraper, target, OutputFormat.TEXT)
    await scrape_once(scraper, target, OutputFormat.TEXT)
    assert target.scrapes == 2


async def test_new_fan_out_starts_when_holder_outlasts_wait(
        scraper: Scraper, target: CountingTarget) -> None:
    deadline = 0.8
    async with asyncio.timeout(GUARD_SECONDS):
        async with scraper.scrape([target.view()], 5.0, OutputFormat.TEXT):
            # Held for the whole block, longer than the wait: the second scrape goes ahead.
            second = asyncio.create_task(
                scrape_once(scraper, target, OutputFormat.OPENMETRICS, deadline))
            await asyncio.sleep(deadline * OVERLAP_WAIT_FRACTION + 0.5)
            assert second.done()
            assert second.result() == BODY
            assert target.scrapes == 2
