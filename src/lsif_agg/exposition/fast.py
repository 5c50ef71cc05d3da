"""The fast path: check and relabel whole runs of clean sample lines in compiled code.

A per-line Python loop reads about 2 M lines/s, far from what a scrape of many busy workers
needs. So the C kernel in `_relabel.c` splits a body into comment lines and the runs of
sample lines between them, checks every line of a run and writes the run with the worker
label added. It accepts only lines that the general reader in `read.py` would write back
unchanged apart from that label, and marks any other run rejected, for the general reader to
read. Tests prove with hypothesis that both paths write the same bytes. The kernel is
required: the package does not import without it.
"""

from dataclasses import dataclass

from lsif_agg.exposition import _relabel

scan_body = _relabel.scan_body
merge_bodies = _relabel.merge_bodies

# An item of scan_body's list for a run: (start, end, names, block, lines). names and block
# are None when the kernel rejected the run.
RunItem = tuple[int, int, tuple[bytes, ...] | None, bytes | None, int]


@dataclass(frozen=True, slots=True)
class FastRun:
    """A run of sample lines that the kernel accepted and relabelled."""

    block: bytes  # the relabelled lines, newlines included
    body: bytes  # the body the run is part of, from which its series are listed when needed
    start: int
    end: int
    count: int  # sample lines in the run, each a different series
    names: frozenset[bytes]  # sample names that occur
    openmetrics: bool

    def keys(self) -> list[bytes]:
        """List the run's series as the general reader keys them: without the added label."""
        return _relabel.series_keys(self.body, self.start, self.end, self.openmetrics)
