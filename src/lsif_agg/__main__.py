"""Entry point of `python -m lsif_agg` and the `lsif-agg` command."""

from __future__ import annotations

import sys

import uvloop

from lsif_agg.app import run
from lsif_agg.logs import configure_logging
from lsif_agg.settings import read_settings


def main() -> None:
    settings = read_settings()
    configure_logging(settings)
    sys.exit(uvloop.run(run(settings)))


if __name__ == "__main__":
    main()
