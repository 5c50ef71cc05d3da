"""The exposition wing: pure bytes in, bytes out; reads, relabels, merges and renders."""

from lsif_agg.exposition.merge import merge
from lsif_agg.exposition.records import (
    CONTENT_TYPES,
    Conflict,
    MergeResult,
    OutputFormat,
    SeriesFilter,
    TargetBody,
    TargetOutcome,
)

__all__ = [
    "CONTENT_TYPES",
    "Conflict",
    "MergeResult",
    "OutputFormat",
    "SeriesFilter",
    "TargetBody",
    "TargetOutcome",
    "merge",
]
