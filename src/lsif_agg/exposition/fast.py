"""The fast path: check and relabel a whole run of clean sample lines in compiled code.

A per-line Python loop reads about 2 M lines/s, far from what a scrape of many busy workers
needs. So each run of sample lines between comment lines goes to the C kernel in `_relabel.c`,
which checks every line in one pass and writes the lines with the worker label added. It
accepts only lines that the general reader in `read.py` would write back unchanged apart from
that label, and returns None for any other run, which the general reader then reads. Tests
prove with hypothesis that both paths write the same bytes. The kernel is required: the
package does not import without it.
"""

import functools
from dataclasses import dataclass

from lsif_agg.exposition import _relabel


@dataclass(frozen=True, slots=True)
class FastRun:
    """A run of sample lines that the kernel accepted and relabelled."""

    block: bytes  # the relabelled lines, newlines included
    source: bytes  # the run as read, from which its series are listed when they are needed
    count: int  # sample lines in the run, each a different series
    names: frozenset[bytes]  # sample names that occur
    openmetrics: bool

    def keys(self) -> list[bytes]:
        """List the run's series as the general reader keys them: without the added label."""
        return _relabel.series_keys(self.source, self.openmetrics)


def relabel_run(
    run: bytes,
    allowed: tuple[bytes, ...],
    added_label: bytes | None,
    label_name: bytes,
    openmetrics: bool,
) -> FastRun | None:
    """Relabel a run of sample lines of one family, or return None if the kernel rejects it.

    `run` starts at a line start and holds no comment line; `allowed` lists the family's
    sample names, at most eight.
    """
    relabelled = _relabel.relabel_run(run, allowed, added_label, label_name, openmetrics)
    if relabelled is None:
        return None
    block, count, mask = relabelled
    return FastRun(block, run, count, _names_in_mask(allowed, mask), openmetrics)


@functools.lru_cache(maxsize=4096)
def _names_in_mask(allowed: tuple[bytes, ...], mask: int) -> frozenset[bytes]:
    # The same families come back scrape after scrape, so the sets are made once.
    return frozenset(name for index, name in enumerate(allowed) if mask >> index & 1)
