"""The main job: start the supervisor and the federation endpoint, and stop both gracefully."""

from __future__ import annotations

import logging

from aiohttp import web

from lsif_agg import __version__
from lsif_agg.federate.server import Federation, build_app
from lsif_agg.settings import Settings
from lsif_agg.supervise import Supervisor

logger = logging.getLogger(__name__)


async def run(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT (or a process exit under --on-exit exit); return the status."""
    supervisor = Supervisor(settings)
    # Installed before anything starts, so a signal during start-up is honoured, not lost.
    supervisor.install_signal_handlers()

    # Listen first: a port clash on the endpoint should stop lsif_agg before any child exists.
    federation = Federation(settings, supervisor)
    await federation.start()
    runner = web.AppRunner(build_app(federation, supervisor), handle_signals=False,
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.listen_port, reuse_address=True)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        await federation.close()
        logger.error("failed to listen on %s:%d: %s. Stop what uses the port or pass --listen "
                     "with another address.", settings.listen_host, settings.listen_port,
                     error.strerror or error)
        return 1
    # An IPv6 address needs brackets in a URL.
    host = f"[{settings.listen_host}]" if ":" in settings.listen_host else settings.listen_host
    logger.info("lsif_agg %s serving merged metrics on http://%s:%d/metrics workers=%d server=%s",
                __version__, host, settings.listen_port, settings.workers,
                "yes" if settings.server_command else "no")

    await supervisor.start()
    await supervisor.wait_stop_requested()

    # Stop taking scrapes first, so no scrape reports half-stopped processes as failures.
    logger.info("stopping: the endpoint closes, then every process gets SIGTERM")
    await runner.cleanup()
    await federation.close()

    status = await supervisor.shutdown()
    logger.info("lsif_agg stopped status=%d", status)
    return status
