"""Entry point of `python -m lsif_agg` and the `lsif-agg` command."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from lsif_agg.logs import configure_logging
from lsif_agg.settings import Settings, read_settings

# glibc raises its mmap threshold to the size of each large block that is freed, up to 32 MiB
# on 64-bit systems (mallopt(3)). After one scrape, the bodies and merged responses (1 to 20 MB
# each) then come from the heap, which returns freed pages to the kernel only from its top.
# Setting the threshold turns that adjustment off, so each of them gets its own mapping, which
# free() unmaps. 128 KiB is glibc's default starting value.
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024
# Set by an operator, these already tuned glibc at start-up and must not be overridden.
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")

# frozenlist's C extension is C++ and maps libstdc++: 1.3 MiB of RSS for the few lists aiohttp
# freezes at start-up. Its pure-Python twin behaves the same; frozenlist reads this switch when
# it is first imported.
FROZENLIST_SWITCH = "FROZENLIST_NO_EXTENSIONS"

logger = logging.getLogger("lsif_agg")


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES; return whether it was set.

    Does nothing on a C library without mallopt, such as macOS's, or when the environment sets
    glibc's tunables.
    """
    if any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def import_app() -> Callable[[Settings], Coroutine[Any, Any, int]]:
    """Import the application with frozenlist in pure Python, leaving the environment as it was.

    The switch is taken back at once, so the processes lsif_agg starts do not inherit it.
    """
    is_switch_ours = FROZENLIST_SWITCH not in os.environ
    if is_switch_ours:
        os.environ[FROZENLIST_SWITCH] = "1"
    try:
        from lsif_agg.app import run  # noqa: PLC0415
    finally:
        if is_switch_ours:
            del os.environ[FROZENLIST_SWITCH]
    return run


def main() -> None:
    run = import_app()
    is_threshold_fixed = fix_mmap_threshold()
    settings = read_settings()
    configure_logging(settings)
    logger.debug("malloc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD_BYTES,
                 "yes" if is_threshold_fixed else "no (not glibc, or set by the environment)")
    sys.exit(uvloop.run(run(settings)))


if __name__ == "__main__":
    main()
