"""Negotiation of one scrape: output format from Accept, gzip from Accept-Encoding, and deadline.

Prometheus 2.x sends, in order of preference, OpenMetrics 1.0.0, OpenMetrics 0.0.1 and text
0.0.4, and its scrape timeout in X-Prometheus-Scrape-Timeout-Seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lsif_agg.exposition import OutputFormat

OPENMETRICS_TYPE = "application/openmetrics-text"
OPENMETRICS_VERSIONS = ("1.0.0", "0.0.1")
TEXT_TYPE = "text/plain"
TEXT_VERSIONS = ("0.0.4",)

# The response must reach the scraper before its own timeout, so keep back a fifth of it, at most 0.5 s.
DEADLINE_MARGIN_FRACTION = 0.2
DEADLINE_MARGIN_MAX = 0.5


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The format, encoding and deadline one scrape request negotiated."""

    output: OutputFormat
    gzip: bool
    deadline: float  # seconds the fan-out to the targets may take


def negotiate(headers: Mapping[str, str], default_timeout: float) -> Negotiated:
    """Read Accept, Accept-Encoding and X-Prometheus-Scrape-Timeout-Seconds from `headers`."""
    return Negotiated(
        output=choose_format(headers.get("Accept", "")),
        gzip=accepts_gzip(headers.get("Accept-Encoding", "")),
        deadline=scrape_deadline(headers.get("X-Prometheus-Scrape-Timeout-Seconds"),
                                 default_timeout),
    )


def _media_ranges(header: str) -> list[tuple[str, dict[str, str], float]]:
    """Split an Accept-style header into (type, parameters, q) triples.

    A malformed q-value counts as 0, so a garbled preference never wins.
    """
    ranges = []
    for part in header.split(","):
        kind, *raw_parameters = (piece.strip() for piece in part.split(";"))
        if not kind:
            continue
        parameters = {}
        for raw in raw_parameters:
            key, _, value = raw.partition("=")
            parameters[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(parameters.pop("q", "1"))
        except ValueError:
            q = 0.0
        ranges.append((kind.lower(), parameters, q))
    return ranges


def choose_format(accept: str) -> OutputFormat:
    """Pick OpenMetrics or text 0.0.4 by the q-values of `accept`; a tie goes to OpenMetrics.

    A missing or empty header, and one that names neither format, get text 0.0.4, which every
    Prometheus version reads.
    """
    best_openmetrics = 0.0
    best_text = 0.0
    for kind, parameters, q in _media_ranges(accept):
        version = parameters.get("version")
        is_text = kind == TEXT_TYPE and (version is None or version in TEXT_VERSIONS)
        if kind == OPENMETRICS_TYPE and (version is None or version in OPENMETRICS_VERSIONS):
            best_openmetrics = max(best_openmetrics, q)
        elif is_text or kind in ("*/*", "text/*"):
            best_text = max(best_text, q)

    if best_openmetrics > 0 and best_openmetrics >= best_text:
        return OutputFormat.OPENMETRICS
    return OutputFormat.TEXT


def accepts_gzip(accept_encoding: str) -> bool:
    """Return whether `accept_encoding` allows gzip (explicitly or by `*`) with q above 0."""
    return any(coding in ("gzip", "*") and q > 0
               for coding, _, q in _media_ranges(accept_encoding))


def scrape_deadline(header: str | None, default_timeout: float) -> float:
    """Return the fan-out budget: the scraper's timeout less a margin, else `default_timeout`."""
    if header is None:
        return default_timeout
    try:
        timeout = float(header)
    except ValueError:
        return default_timeout
    if not timeout > 0 or timeout == float("inf"):
        return default_timeout
    return timeout - min(timeout * DEADLINE_MARGIN_FRACTION, DEADLINE_MARGIN_MAX)
