"""Negotiation: the format, encoding and deadline that a scrape request gets."""

from __future__ import annotations

import pytest

from lsif_agg.exposition import OutputFormat
from lsif_agg.federate.negotiate import accepts_gzip, choose_format, scrape_deadline

# The Accept header Prometheus 2.42 sends when scraping a target.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(("accept", "expected"), [
    (PROMETHEUS_ACCEPT, OutputFormat.OPENMETRICS),
    ("", OutputFormat.TEXT),
    ("*/*", OutputFormat.TEXT),
    ("text/plain", OutputFormat.TEXT),
    ("text/plain;version=0.0.4", OutputFormat.TEXT),
    ("application/openmetrics-text", OutputFormat.OPENMETRICS),
    ("application/openmetrics-text; version=1.0.0; charset=utf-8", OutputFormat.OPENMETRICS),
    ("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;q=0.9", OutputFormat.TEXT),
    ("application/openmetrics-text;version=2.0.0", OutputFormat.TEXT),
    ("application/openmetrics-text;q=0", OutputFormat.TEXT),
    ("application/openmetrics-text;q=bogus,text/plain;q=0.1", OutputFormat.TEXT),
    ("application/json", OutputFormat.TEXT),
])
def test_choose_format(accept: str, expected: OutputFormat) -> None:
    assert choose_format(accept) is expected


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("deflate, gzip;q=0.5", True),
    ("*", True),
    ("gzip;q=0", False),
    ("identity", False),
    ("", False),
])
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize(("header", "expected"), [
    (None, 7.0),
    ("10", 9.5),
    ("1", 0.8),
    ("0.5", 0.4),
    ("zero", 7.0),
    ("-3", 7.0),
    ("inf", 7.0),
])
def test_scrape_deadline(header: str | None, expected: float) -> None:
    assert scrape_deadline(header, 7.0) == pytest.approx(expected)
