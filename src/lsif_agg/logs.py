"""Logging set-up: plain `key=value` lines for people, or one JSON object a line for collectors."""

from __future__ import annotations

import logging
import sys

from lsif_agg.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """Send lsif_agg's own log records to stderr in the format and level of `settings`."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        # Imported here: most deployments log text, and the module costs 0.3 MiB of RSS.
        from pythonjsonlogger.json import JsonFormatter  # noqa: PLC0415

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())

    # aiohttp logs every request at info; a scrape every few seconds would drown the process logs.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
