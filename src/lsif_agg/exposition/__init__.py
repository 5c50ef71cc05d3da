"""The exposition wing: pure bytes in, bytes out; reads, relabels, merges and renders.

`merge` reads each target's body once (text 0.0.4 or OpenMetrics 1.0, sniffed when the
Content-Type is wrong), adds the worker label, keeps a clashing one as exported_worker, regroups
families, lets the first target win TYPE, HELP and UNIT conflicts and reports them, writes each
series once and converts timestamps exactly. docs/exposition.md lists every rule.
"""

from lsif_agg.exposition.merge import merge, merge_streamed
from lsif_agg.exposition.records import (
    CONTENT_TYPES,
    Conflict,
    MergedBody,
    MergeResult,
    NameFilter,
    OutputFormat,
    SeriesFilter,
    StreamedResult,
    TargetBody,
    TargetOutcome,
)

__all__ = [
    "CONTENT_TYPES",
    "Conflict",
    "MergeResult",
    "MergedBody",
    "NameFilter",
    "OutputFormat",
    "SeriesFilter",
    "StreamedResult",
    "TargetBody",
    "TargetOutcome",
    "merge",
    "merge_streamed",
]
