"""A reference for the scrape benchmark: an aiohttp relay that merges nothing.

On each scrape it fetches every worker's body at once over pooled connections and sends the
bodies back to back, unchanged and uncompressed. That is the least an aiohttp aggregator in
front of the workers must do, so its latency bounds how close to the fetch floor lsif_agg can
get with aiohttp. Its output is not a valid exposition; only its timing is of use.

It takes the part of lsif_agg's command line that the benchmark uses, so the benchmark can run it
in lsif_agg's place:

    .venv/bin/python benchmarks/bench_scrape.py --no-write-doc --workers 1,4 --samples 1000 \\
        --lsif-agg ".venv/bin/python benchmarks/relay.py"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import aiohttp
import uvloop
from aiohttp import web


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--log-level", default="warning", help="accepted and ignored")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the worker command, with {port} and {worker}")
    options = parser.parse_args(argv)
    options.command = [part for part in options.command if part != "--"] or None
    if options.command is None:
        parser.error("give the worker command after --")
    return options


async def spawn_workers(options: argparse.Namespace) -> list[asyncio.subprocess.Process]:
    workers = []
    for index in range(options.workers):
        port = str(options.base_port + index)
        argv = [part.replace("{port}", port).replace("{worker}", str(index))
                for part in options.command]
        workers.append(await asyncio.create_subprocess_exec(*argv))
    return workers


async def relay(options: argparse.Namespace) -> None:
    urls = [f"http://127.0.0.1:{options.base_port + index}/metrics"
            for index in range(options.workers)]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    headers={"Accept-Encoding": "identity"})

    async def fetch(url: str, accept: str) -> tuple[int, bytes, str]:
        async with session.get(url, headers={"Accept": accept}) as response:
            return response.status, await response.read(), response.content_type

    async def handle_metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "*/*")
        replies = await asyncio.gather(*(fetch(url, accept) for url in urls))
        return web.Response(body=b"".join(body for _, body, _ in replies),
                            content_type=replies[0][2])

    async def handle_ready(request: web.Request) -> web.Response:
        try:
            replies = await asyncio.gather(*(fetch(url, "text/plain") for url in urls))
        except aiohttp.ClientError as error:
            return web.Response(status=503, text=f"not ready: {error}\n")
        if any(status != 200 for status, _, _ in replies):
            return web.Response(status=503, text="not ready: a worker answered with an error\n")
        return web.Response(text="ready\n")

    app = web.Application()
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/-/ready", handle_ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = options.listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()

    workers = await spawn_workers(options)
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signal_number, stop.set)
    await stop.wait()

    for worker in workers:
        worker.terminate()
    await asyncio.gather(*(worker.wait() for worker in workers))
    await runner.cleanup()
    await session.close()


if __name__ == "__main__":
    uvloop.run(relay(parse_options(sys.argv[1:])))
