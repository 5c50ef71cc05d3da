"""The metric types of both formats, the sample names each type allows, and how a family of
one format is written in the other.
"""

import functools

from lsif_agg.exposition.records import OutputFormat

TEXT_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
OPENMETRICS_TYPES = frozenset(
    {"counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"}
)
UNTYPED = {OutputFormat.TEXT: "untyped", OutputFormat.OPENMETRICS: "unknown"}

# The suffixes a family's sample names may add to the family name, by format and type.
_SUFFIXES: dict[OutputFormat, dict[str, tuple[bytes, ...]]] = {
    OutputFormat.TEXT: {
        "counter": (b"",),
        "gauge": (b"",),
        "untyped": (b"",),
        "histogram": (b"_bucket", b"_sum", b"_count"),
        "summary": (b"", b"_sum", b"_count"),
    },
    OutputFormat.OPENMETRICS: {
        "counter": (b"_total", b"_created"),
        "gauge": (b"",),
        "unknown": (b"",),
        "histogram": (b"_bucket", b"_sum", b"_count", b"_created"),
        "gaugehistogram": (b"_bucket", b"_gsum", b"_gcount"),
        "summary": (b"", b"_sum", b"_count", b"_created"),
        "info": (b"_info",),
        "stateset": (b"",),
    },
}


@functools.lru_cache(maxsize=1 << 16)  # the same families come back scrape after scrape
def sample_names(form: OutputFormat, kind: str, family: bytes) -> frozenset[bytes]:
    """Return the sample names a family of this type may hold."""
    return frozenset(family + suffix for suffix in _SUFFIXES[form][kind])


def is_untyped(kind: str) -> bool:
    return kind in ("untyped", "unknown")


def output_family(
    source: OutputFormat, output: OutputFormat, kind: str, family: bytes, sample: bytes
) -> tuple[bytes, str]:
    """Return the family name and type under which a sample is written in the output format.

    The sample's own name never changes, so a series is the same whichever format a client
    negotiates. What changes is the family around it.
    """
    if source is output:
        return family, kind
    if output is OutputFormat.TEXT:
        return _text_family(kind, family, sample)
    return _openmetrics_family(kind, family)


def _text_family(kind: str, family: bytes, sample: bytes) -> tuple[bytes, str]:
    # Text 0.0.4 has no _created samples, info, stateset or gauge histograms, so those become
    # gauges: each _created sample and each gauge histogram sample a gauge family of its own
    # name, and a counter family takes its sample's _total name, as Prometheus 2.x stores it.
    if kind in ("counter", "histogram", "summary") and sample.endswith(b"_created"):
        return sample, "gauge"
    if kind == "counter":
        return sample, "counter"
    if kind in ("gaugehistogram", "info"):
        return sample, "gauge"
    if kind == "stateset":
        return family, "gauge"
    if kind == "unknown":
        return family, "untyped"
    return family, kind


def _openmetrics_family(kind: str, family: bytes) -> tuple[bytes, str]:
    # OpenMetrics counter samples must end in _total; a text counter named otherwise keeps its
    # name and is written as unknown.
    if kind == "counter":
        if family.endswith(b"_total") and len(family) > len(b"_total"):
            return family[: -len(b"_total")], "counter"
        return family, "unknown"
    if kind == "untyped":
        return family, "unknown"
    return family, kind
