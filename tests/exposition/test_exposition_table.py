"""The table of tricky expositions: each case merged into both formats, compared byte for byte
with a reviewed expected body, and checked with promtool and prometheus_client's OpenMetrics
parser.
"""

import shutil
import subprocess

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from lsif_agg.exposition import OutputFormat, TargetBody, merge
from lsif_agg.exposition.merge import merge_targets

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def text(label: str | None, body: bytes) -> TargetBody:
    return TargetBody(label, body, TEXT)


def openmetrics(label: str | None, body: bytes) -> TargetBody:
    return TargetBody(label, body, OPENMETRICS)


INPUTS: list[tuple[str, list[TargetBody]]] = [
    (
        "plain_counter",
        [
            text("0", b'# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total{q="a"} 3\n'),
            text("1", b'# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total{q="a"} 5\n'),
        ],
    ),
    ("empty_braces", [text("0", b"# TYPE g gauge\ng{} 1\n")]),
    ("trailing_comma", [text("0", b'# TYPE g gauge\ng{a="1",} 1\n')]),
    ("escaped_quote", [text("0", b'# TYPE g gauge\ng{a="say \\"hi\\""} 1\n')]),
    ("escaped_backslash", [text("0", b'# TYPE g gauge\ng{path="C:\\\\dir\\\\"} 1\n')]),
    ("braces_in_value", [text("0", b'# TYPE g gauge\ng{a="}{",b="{}"} 1\n')]),
    ("comma_hash_in_value", [text("0", b'# TYPE g gauge\ng{a="x,y#z",b="# {c=\\"d\\"} 2"} 1\n')]),
    ("escaped_newline", [text("0", b'# TYPE g gauge\ng{a="one\\ntwo"} 1\n')]),
    ("unknown_escape", [text("0", b'# TYPE g gauge\ng{a="tab\\there"} 1\n')]),
    ("tabs_and_blanks", [text("0", b'# TYPE g gauge\n  g \t{ a = "1" ,\tb="x y" }   7 \t 1000  \n')]),
    ("no_blank_before_value", [text("0", b'# TYPE g gauge\ng{a="1"}2\ng{a="2"}-Inf\n')]),
    (
        "utf8_names",
        [
            text(
                "0",
                b'# HELP "my.metric" Dotted.\n# TYPE "my.metric" gauge\n'
                b'{"my.metric", "a.b"="x", c="y"} 1\n{"my.metric"} 2\n',
            )
        ],
    ),
    (
        "utf8_histogram",
        [
            text(
                "0",
                b'# TYPE "req.time" histogram\n{"req.time_bucket",le="+Inf"} 1\n'
                b'{"req.time_sum"} 2\n{"req.time_count"} 1\n',
            )
        ],
    ),
    ("worker_exported", [text("3", b'# TYPE g gauge\ng{worker="w",a="1"} 1\n')]),
    ("worker_exported_twice", [text("3", b'# TYPE g gauge\ng{worker="w",exported_worker="e"} 1\n')]),
    ("worker_empty", [text("3", b'# TYPE g gauge\ng{worker=""} 1\n')]),
    (
        "own_series_unlabelled",
        [
            text(None, b"# HELP lsif_agg_up Worker up.\n# TYPE lsif_agg_up gauge\n"
                 b'lsif_agg_up{worker="0"} 1\nlsif_agg_up{worker="1"} 0\n'),
            text("0", b"# TYPE g gauge\ng 1\n"),
        ],
    ),
    (
        "help_conflict",
        [
            text("0", b"# HELP g First.\n# TYPE g gauge\ng 1\n"),
            text("1", b"# HELP g Second.\n# TYPE g gauge\ng 2\n"),
            text("2", b"# TYPE g gauge\ng 3\n"),
        ],
    ),
    (
        "type_conflict",
        [
            text("0", b"# TYPE g gauge\ng 1\n"),
            text("1", b"# TYPE g counter\ng 2\n"),
            text("2", b"# TYPE g gauge\ng 3\n"),
        ],
    ),
    (
        "untyped_joins_typed",
        [
            text("0", b"# TYPE g gauge\ng 1\n"),
            text("1", b"g 2\n"),
            text("2", b"# TYPE g untyped\ng 3\n"),
        ],
    ),
    ("untyped_first", [text("0", b"g 1\n"), text("1", b"# TYPE g gauge\ng 2\n")]),
    (
        "interleaved_families",
        [text("0", b'# TYPE a gauge\n# TYPE b gauge\na 1\nb 2\na{x="1"} 3\nb{x="1"} 4\n')],
    ),
    (
        "repeated_family_block",
        [
            text("0", b"# HELP a A.\n# TYPE a gauge\na 1\n# TYPE b gauge\nb 2\n"
                 b'# HELP a A.\n# TYPE a gauge\na{x="1"} 3\n'),
            text("1", b"# TYPE b gauge\nb 5\n# TYPE a gauge\na 6\n"),
        ],
    ),
    (
        "histogram_two_targets",
        [
            text("0", b"# HELP h_seconds Latency.\n# TYPE h_seconds histogram\n"
                 b'h_seconds_bucket{le="0.1"} 1\nh_seconds_bucket{le="1"} 2\nh_seconds_bucket{le="+Inf"} 3\n'
                 b"h_seconds_sum 1.5\nh_seconds_count 3\n"),
            text("1", b"# TYPE h_seconds histogram\n"
                 b'h_seconds_bucket{le="0.1"} 0\nh_seconds_bucket{le="1"} 0\nh_seconds_bucket{le="+Inf"} 1\n'
                 b"h_seconds_sum 4\nh_seconds_count 1\n"),
        ],
    ),
    (
        "summary",
        [text("0", b'# TYPE s summary\ns{quantile="0.5"} 1\ns{quantile="0.9"} 2\ns_sum 10\ns_count 4\n')],
    ),
    ("repeated_series", [text("0", b'# TYPE g gauge\ng{a="1"} 1\ng{a="2"} 2\ng{a="1"} 9\n')]),
    ("crlf", [text("0", b"# HELP g Gauge.\r\n# TYPE g gauge\r\ng 1\r\ng{a=\"1\"} 2\r\n")]),
    ("missing_final_newline", [text("0", b"# TYPE g gauge\ng 1"), text("1", b"# TYPE g gauge\ng 2")]),
    (
        "blank_lines_and_comments",
        [text("0", b"\n\n# a plain comment\n# TYPE g gauge\n\n#\n# HELPLESS comment\ng 1\n\n")],
    ),
    ("text_eof_comment", [text("0", b"# TYPE g gauge\ng 1\n# EOF\ng{a=\"1\"} 2\n")]),
    (
        "openmetrics_after_eof",
        [openmetrics("0", b"# TYPE g gauge\ng 1\n# EOF\ng{a=\"1\"} 2\ngarbage {\n")],
    ),
    (
        "openmetrics_without_eof",
        [openmetrics("0", b"# TYPE g gauge\ng 1\n"), text("1", b"# TYPE g gauge\ng 2\n")],
    ),
    (
        "sniffed_openmetrics",
        [
            TargetBody("0", b"# TYPE c counter\nc_total 1 1.5\n# EOF\n", None),
            TargetBody("1", b"# TYPE c counter\nc_total 2 2.5\n# EOF\n", "text/plain"),
        ],
    ),
    (
        "text_timestamps",
        [
            text(
                "0",
                b'# TYPE g gauge\ng{a="1"} 1 1700000000123\ng{a="2"} 1 -5\n'
                b'g{a="3"} 1 0\ng{a="4"} 1 1000\n',
            )
        ],
    ),
    (
        "openmetrics_timestamps",
        [
            openmetrics(
                "0",
                b'# TYPE g gauge\ng{a="1"} 1 1.5\ng{a="2"} 1 1700000000.1234567\n'
                b'g{a="3"} 1 1e3\ng{a="4"} 1 -0.0015\n# EOF\n',
            )
        ],
    ),
    (
        "special_values",
        [text("0", b'# TYPE g gauge\ng{v="nan"} NaN\ng{v="pinf"} +Inf\ng{v="ninf"} -Inf\n'
              b'g{v="nzero"} -0\ng{v="tiny"} 1e-320\ng{v="exp"} 1.5E+10\n')],
    ),
    (
        "exemplars",
        [
            openmetrics(
                "0",
                b"# TYPE r counter\n"
                b'r_total{a="1"} 5 # {trace_id="abc",span="x}"} 1.5 1700000000.5\n'
                b"# TYPE h histogram\n"
                b'h_bucket{le="1"} 1 # {trace_id="def"} 0.5\nh_bucket{le="+Inf"} 2\nh_sum 3\nh_count 2\n'
                b"# EOF\n",
            )
        ],
    ),
    (
        "openmetrics_created",
        [
            openmetrics(
                "0",
                b"# HELP r Requests.\n# TYPE r counter\nr_total 5\nr_created 1700000000.5\n# EOF\n",
            )
        ],
    ),
    ("openmetrics_info", [openmetrics("0", b'# TYPE build info\nbuild_info{version="1.2"} 1\n# EOF\n')]),
    (
        "openmetrics_stateset",
        [openmetrics("0", b'# TYPE mode stateset\nmode{mode="a"} 1\nmode{mode="b"} 0\n# EOF\n')],
    ),
    (
        "openmetrics_gaugehistogram",
        [
            openmetrics(
                "0",
                b'# TYPE q gaugehistogram\nq_bucket{le="1"} 2\nq_bucket{le="+Inf"} 3\n'
                b"q_gcount 3\nq_gsum 4\n# EOF\n",
            )
        ],
    ),
    (
        "openmetrics_unit",
        [
            openmetrics("0", b"# TYPE d_seconds gauge\n# UNIT d_seconds seconds\nd_seconds 1\n# EOF\n"),
            openmetrics("1", b"# TYPE d_seconds gauge\n# UNIT d_seconds milliseconds\nd_seconds 2\n# EOF\n"),
        ],
    ),
    (
        "invalid_line",
        [text("0", b"# TYPE g gauge\ng 1\ng{a=\"1\" 2\n"), text("1", b"# TYPE g gauge\ng 3\n")],
    ),
    ("invalid_value", [text("0", b"# TYPE g gauge\ng one\n"), text("1", b"# TYPE g gauge\ng 3\n")]),
    ("invalid_utf8", [text("0", b'# TYPE g gauge\ng{a="\xff"} 1\n'), text("1", b"g 2\n")]),
    ("text_counter_without_total", [text("0", b"# TYPE hits counter\nhits 4\n")]),
    (
        "mixed_formats_counter",
        [
            text("0", b"# HELP r_total Requests.\n# TYPE r_total counter\nr_total 1\n"),
            openmetrics("1", b"# HELP r Requests.\n# TYPE r counter\nr_total 2\n# EOF\n"),
        ],
    ),
    (
        "help_escapes",
        [text("0", b'# HELP g A \\\\ backslash,\\na newline and "quotes".\n# TYPE g gauge\ng 1\n')],
    ),
    ("empty_body", [text("0", b""), text("1", b"# TYPE g gauge\ng 1\n")]),
    ("exemplar_in_text", [text("0", b'# TYPE g gauge\ng 1 # {a="b"} 1\n'), text("1", b"g 2\n")]),
    (
        "own_series_repeated",
        [
            text(None, b'# TYPE lsif_agg_up gauge\nlsif_agg_up{worker="0"} 1\n'),
            text(None, b'# TYPE lsif_agg_up gauge\nlsif_agg_up{worker="0"} 0\n'),
        ],
    ),
    (
        "worker_value_escaped",
        [text('a"b\\c', b"# TYPE g gauge\ng 1\n")],
    ),
]


# Reviewed by hand: case id -> (text body, OpenMetrics body, errors by target, conflicts).
EXPECTED: dict[str, tuple[bytes, bytes, list[str | None], list[tuple[str, str]]]] = {
    'plain_counter': (
        b'# HELP jobs_total Jobs done.\n'
        b'# TYPE jobs_total counter\n'
        b'jobs_total{worker="0",q="a"} 3\n'
        b'jobs_total{worker="1",q="a"} 5\n',
        b'# HELP jobs Jobs done.\n'
        b'# TYPE jobs counter\n'
        b'jobs_total{worker="0",q="a"} 3\n'
        b'jobs_total{worker="1",q="a"} 5\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'empty_braces': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'trailing_comma': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'escaped_quote': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="say \\"hi\\""} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="say \\"hi\\""} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'escaped_backslash': (
        b'# TYPE g gauge\n'
        b'g{worker="0",path="C:\\\\dir\\\\"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",path="C:\\\\dir\\\\"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'braces_in_value': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="}{",b="{}"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="}{",b="{}"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'comma_hash_in_value': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="x,y#z",b="# {c=\\"d\\"} 2"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="x,y#z",b="# {c=\\"d\\"} 2"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'escaped_newline': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="one\\ntwo"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="one\\ntwo"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'unknown_escape': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="tab\\\\there"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="tab\\\\there"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'tabs_and_blanks': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1",b="x y"} 7 1000\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1",b="x y"} 7 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'no_blank_before_value': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 2\n'
        b'g{worker="0",a="2"} -Inf\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 2\n'
        b'g{worker="0",a="2"} -Inf\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'utf8_names': (
        b'# HELP my_metric Dotted.\n'
        b'# TYPE my_metric gauge\n'
        b'my_metric{worker="0",a_b="x",c="y"} 1\n'
        b'my_metric{worker="0"} 2\n',
        b'# HELP my_metric Dotted.\n'
        b'# TYPE my_metric gauge\n'
        b'my_metric{worker="0",a_b="x",c="y"} 1\n'
        b'my_metric{worker="0"} 2\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'utf8_histogram': (
        b'# TYPE req_time histogram\n'
        b'req_time_bucket{worker="0",le="+Inf"} 1\n'
        b'req_time_sum{worker="0"} 2\n'
        b'req_time_count{worker="0"} 1\n',
        b'# TYPE req_time histogram\n'
        b'req_time_bucket{worker="0",le="+Inf"} 1\n'
        b'req_time_sum{worker="0"} 2\n'
        b'req_time_count{worker="0"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'worker_exported': (
        b'# TYPE g gauge\n'
        b'g{worker="3",exported_worker="w",a="1"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="3",exported_worker="w",a="1"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'worker_exported_twice': (
        b'# TYPE g gauge\n'
        b'g{worker="3",exported_exported_worker="w",exported_worker="e"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="3",exported_exported_worker="w",exported_worker="e"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'worker_empty': (
        b'# TYPE g gauge\n'
        b'g{worker="3"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="3"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'own_series_unlabelled': (
        b'# HELP lsif_agg_up Worker up.\n'
        b'# TYPE lsif_agg_up gauge\n'
        b'lsif_agg_up{worker="0"} 1\n'
        b'lsif_agg_up{worker="1"} 0\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n',
        b'# HELP lsif_agg_up Worker up.\n'
        b'# TYPE lsif_agg_up gauge\n'
        b'lsif_agg_up{worker="0"} 1\n'
        b'lsif_agg_up{worker="1"} 0\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'help_conflict': (
        b'# HELP g First.\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="1"} 2\n'
        b'g{worker="2"} 3\n',
        b'# HELP g First.\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="1"} 2\n'
        b'g{worker="2"} 3\n'
        b'# EOF\n',
        [None, None, None],
        [('g', 'help')],
    ),
    'type_conflict': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="2"} 3\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="2"} 3\n'
        b'# EOF\n',
        [None, None, None],
        [('g', 'type')],
    ),
    'untyped_joins_typed': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="1"} 2\n'
        b'g{worker="2"} 3\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="1"} 2\n'
        b'g{worker="2"} 3\n'
        b'# EOF\n',
        [None, None, None],
        [],
    ),
    'untyped_first': (
        b'# TYPE g untyped\n'
        b'g{worker="0"} 1\n',
        b'# TYPE g unknown\n'
        b'g{worker="0"} 1\n'
        b'# EOF\n',
        [None, None],
        [('g', 'type')],
    ),
    'interleaved_families': (
        b'# TYPE a gauge\n'
        b'a{worker="0"} 1\n'
        b'a{worker="0",x="1"} 3\n'
        b'# TYPE b gauge\n'
        b'b{worker="0"} 2\n'
        b'b{worker="0",x="1"} 4\n',
        b'# TYPE a gauge\n'
        b'a{worker="0"} 1\n'
        b'a{worker="0",x="1"} 3\n'
        b'# TYPE b gauge\n'
        b'b{worker="0"} 2\n'
        b'b{worker="0",x="1"} 4\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'repeated_family_block': (
        b'# HELP a A.\n'
        b'# TYPE a gauge\n'
        b'a{worker="0"} 1\n'
        b'a{worker="0",x="1"} 3\n'
        b'a{worker="1"} 6\n'
        b'# TYPE b gauge\n'
        b'b{worker="0"} 2\n'
        b'b{worker="1"} 5\n',
        b'# HELP a A.\n'
        b'# TYPE a gauge\n'
        b'a{worker="0"} 1\n'
        b'a{worker="0",x="1"} 3\n'
        b'a{worker="1"} 6\n'
        b'# TYPE b gauge\n'
        b'b{worker="0"} 2\n'
        b'b{worker="1"} 5\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'histogram_two_targets': (
        b'# HELP h_seconds Latency.\n'
        b'# TYPE h_seconds histogram\n'
        b'h_seconds_bucket{worker="0",le="0.1"} 1\n'
        b'h_seconds_bucket{worker="0",le="1"} 2\n'
        b'h_seconds_bucket{worker="0",le="+Inf"} 3\n'
        b'h_seconds_sum{worker="0"} 1.5\n'
        b'h_seconds_count{worker="0"} 3\n'
        b'h_seconds_bucket{worker="1",le="0.1"} 0\n'
        b'h_seconds_bucket{worker="1",le="1"} 0\n'
        b'h_seconds_bucket{worker="1",le="+Inf"} 1\n'
        b'h_seconds_sum{worker="1"} 4\n'
        b'h_seconds_count{worker="1"} 1\n',
        b'# HELP h_seconds Latency.\n'
        b'# TYPE h_seconds histogram\n'
        b'h_seconds_bucket{worker="0",le="0.1"} 1\n'
        b'h_seconds_bucket{worker="0",le="1"} 2\n'
        b'h_seconds_bucket{worker="0",le="+Inf"} 3\n'
        b'h_seconds_sum{worker="0"} 1.5\n'
        b'h_seconds_count{worker="0"} 3\n'
        b'h_seconds_bucket{worker="1",le="0.1"} 0\n'
        b'h_seconds_bucket{worker="1",le="1"} 0\n'
        b'h_seconds_bucket{worker="1",le="+Inf"} 1\n'
        b'h_seconds_sum{worker="1"} 4\n'
        b'h_seconds_count{worker="1"} 1\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'summary': (
        b'# TYPE s summary\n'
        b's{worker="0",quantile="0.5"} 1\n'
        b's{worker="0",quantile="0.9"} 2\n'
        b's_sum{worker="0"} 10\n'
        b's_count{worker="0"} 4\n',
        b'# TYPE s summary\n'
        b's{worker="0",quantile="0.5"} 1\n'
        b's{worker="0",quantile="0.9"} 2\n'
        b's_sum{worker="0"} 10\n'
        b's_count{worker="0"} 4\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'repeated_series': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1\n'
        b'g{worker="0",a="2"} 2\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1\n'
        b'g{worker="0",a="2"} 2\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'crlf': (
        b'# HELP g Gauge.\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="0",a="1"} 2\n',
        b'# HELP g Gauge.\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="0",a="1"} 2\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'missing_final_newline': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="1"} 2\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="1"} 2\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'blank_lines_and_comments': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'text_eof_comment': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="0",a="1"} 2\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'g{worker="0",a="1"} 2\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_after_eof': (
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_without_eof': (
        b'# TYPE g gauge\n'
        b'g{worker="1"} 2\n',
        b'# TYPE g gauge\n'
        b'g{worker="1"} 2\n'
        b'# EOF\n',
        ['invalid_exposition', None],
        [],
    ),
    'sniffed_openmetrics': (
        b'# TYPE c_total counter\n'
        b'c_total{worker="0"} 1 1500\n'
        b'c_total{worker="1"} 2 2500\n',
        b'# TYPE c counter\n'
        b'c_total{worker="0"} 1 1.5\n'
        b'c_total{worker="1"} 2 2.5\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'text_timestamps': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1 1700000000123\n'
        b'g{worker="0",a="2"} 1 -5\n'
        b'g{worker="0",a="3"} 1 0\n'
        b'g{worker="0",a="4"} 1 1000\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1 1700000000.123\n'
        b'g{worker="0",a="2"} 1 -0.005\n'
        b'g{worker="0",a="3"} 1 0\n'
        b'g{worker="0",a="4"} 1 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_timestamps': (
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1 1500\n'
        b'g{worker="0",a="2"} 1 1700000000123\n'
        b'g{worker="0",a="3"} 1 1000000\n'
        b'g{worker="0",a="4"} 1 -1\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",a="1"} 1 1.5\n'
        b'g{worker="0",a="2"} 1 1700000000.1234567\n'
        b'g{worker="0",a="3"} 1 1e3\n'
        b'g{worker="0",a="4"} 1 -0.0015\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'special_values': (
        b'# TYPE g gauge\n'
        b'g{worker="0",v="nan"} NaN\n'
        b'g{worker="0",v="pinf"} +Inf\n'
        b'g{worker="0",v="ninf"} -Inf\n'
        b'g{worker="0",v="nzero"} -0\n'
        b'g{worker="0",v="tiny"} 1e-320\n'
        b'g{worker="0",v="exp"} 1.5E+10\n',
        b'# TYPE g gauge\n'
        b'g{worker="0",v="nan"} NaN\n'
        b'g{worker="0",v="pinf"} +Inf\n'
        b'g{worker="0",v="ninf"} -Inf\n'
        b'g{worker="0",v="nzero"} -0\n'
        b'g{worker="0",v="tiny"} 1e-320\n'
        b'g{worker="0",v="exp"} 1.5E+10\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'exemplars': (
        b'# TYPE r_total counter\n'
        b'r_total{worker="0",a="1"} 5\n'
        b'# TYPE h histogram\n'
        b'h_bucket{worker="0",le="1"} 1\n'
        b'h_bucket{worker="0",le="+Inf"} 2\n'
        b'h_sum{worker="0"} 3\n'
        b'h_count{worker="0"} 2\n',
        b'# TYPE r counter\n'
        b'r_total{worker="0",a="1"} 5 # {trace_id="abc",span="x}"} 1.5 1700000000.5\n'
        b'# TYPE h histogram\n'
        b'h_bucket{worker="0",le="1"} 1 # {trace_id="def"} 0.5\n'
        b'h_bucket{worker="0",le="+Inf"} 2\n'
        b'h_sum{worker="0"} 3\n'
        b'h_count{worker="0"} 2\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_created': (
        b'# HELP r_total Requests.\n'
        b'# TYPE r_total counter\n'
        b'r_total{worker="0"} 5\n'
        b'# HELP r_created Requests.\n'
        b'# TYPE r_created gauge\n'
        b'r_created{worker="0"} 1700000000.5\n',
        b'# HELP r Requests.\n'
        b'# TYPE r counter\n'
        b'r_total{worker="0"} 5\n'
        b'r_created{worker="0"} 1700000000.5\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_info': (
        b'# TYPE build_info gauge\n'
        b'build_info{worker="0",version="1.2"} 1\n',
        b'# TYPE build info\n'
        b'build_info{worker="0",version="1.2"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_stateset': (
        b'# TYPE mode gauge\n'
        b'mode{worker="0",mode="a"} 1\n'
        b'mode{worker="0",mode="b"} 0\n',
        b'# TYPE mode stateset\n'
        b'mode{worker="0",mode="a"} 1\n'
        b'mode{worker="0",mode="b"} 0\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_gaugehistogram': (
        b'# TYPE q_bucket gauge\n'
        b'q_bucket{worker="0",le="1"} 2\n'
        b'q_bucket{worker="0",le="+Inf"} 3\n'
        b'# TYPE q_gcount gauge\n'
        b'q_gcount{worker="0"} 3\n'
        b'# TYPE q_gsum gauge\n'
        b'q_gsum{worker="0"} 4\n',
        b'# TYPE q gaugehistogram\n'
        b'q_bucket{worker="0",le="1"} 2\n'
        b'q_bucket{worker="0",le="+Inf"} 3\n'
        b'q_gcount{worker="0"} 3\n'
        b'q_gsum{worker="0"} 4\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'openmetrics_unit': (
        b'# TYPE d_seconds gauge\n'
        b'd_seconds{worker="0"} 1\n'
        b'd_seconds{worker="1"} 2\n',
        b'# TYPE d_seconds gauge\n'
        b'# UNIT d_seconds seconds\n'
        b'd_seconds{worker="0"} 1\n'
        b'd_seconds{worker="1"} 2\n'
        b'# EOF\n',
        [None, None],
        [('d_seconds', 'unit')],
    ),
    'invalid_line': (
        b'# TYPE g gauge\n'
        b'g{worker="1"} 3\n',
        b'# TYPE g gauge\n'
        b'g{worker="1"} 3\n'
        b'# EOF\n',
        ['invalid_exposition', None],
        [],
    ),
    'invalid_value': (
        b'# TYPE g gauge\n'
        b'g{worker="1"} 3\n',
        b'# TYPE g gauge\n'
        b'g{worker="1"} 3\n'
        b'# EOF\n',
        ['invalid_exposition', None],
        [],
    ),
    'invalid_utf8': (
        b'# TYPE g untyped\n'
        b'g{worker="1"} 2\n',
        b'# TYPE g unknown\n'
        b'g{worker="1"} 2\n'
        b'# EOF\n',
        ['invalid_exposition', None],
        [],
    ),
    'text_counter_without_total': (
        b'# TYPE hits counter\n'
        b'hits{worker="0"} 4\n',
        b'# TYPE hits unknown\n'
        b'hits{worker="0"} 4\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'mixed_formats_counter': (
        b'# HELP r_total Requests.\n'
        b'# TYPE r_total counter\n'
        b'r_total{worker="0"} 1\n'
        b'r_total{worker="1"} 2\n',
        b'# HELP r Requests.\n'
        b'# TYPE r counter\n'
        b'r_total{worker="0"} 1\n'
        b'r_total{worker="1"} 2\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'help_escapes': (
        b'# HELP g A \\\\ backslash,\\na newline and "quotes".\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n',
        b'# HELP g A \\\\ backslash,\\na newline and \\"quotes\\".\n'
        b'# TYPE g gauge\n'
        b'g{worker="0"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
    'empty_body': (
        b'# TYPE g gauge\n'
        b'g{worker="1"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="1"} 1\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'exemplar_in_text': (
        b'# TYPE g untyped\n'
        b'g{worker="1"} 2\n',
        b'# TYPE g unknown\n'
        b'g{worker="1"} 2\n'
        b'# EOF\n',
        ['invalid_exposition', None],
        [],
    ),
    'own_series_repeated': (
        b'# TYPE lsif_agg_up gauge\n'
        b'lsif_agg_up{worker="0"} 1\n',
        b'# TYPE lsif_agg_up gauge\n'
        b'lsif_agg_up{worker="0"} 1\n'
        b'# EOF\n',
        [None, None],
        [],
    ),
    'worker_value_escaped': (
        b'# TYPE g gauge\n'
        b'g{worker="a\\"b\\\\c"} 1\n',
        b'# TYPE g gauge\n'
        b'g{worker="a\\"b\\\\c"} 1\n'
        b'# EOF\n',
        [None],
        [],
    ),
}


# promtool's lint findings about naming and documentation, not syntax. The table keeps such
# names on purpose (a counter without _total, families without HELP), so these are tolerated;
# anything else promtool prints, or a parsing error, fails the test.
TOLERATED_LINT = (
    "no help text",
    'counter metrics should have "_total" suffix',
    "non-histogram and non-summary metrics should not have",
    "non-histogram metrics should not have",
    "metric names should be written in 'snake_case'",
    "use base unit",
)
CASE_IDS = [name for name, _ in INPUTS]


def test_table_size() -> None:
    assert len(INPUTS) >= 40
    assert sorted(EXPECTED) == sorted(CASE_IDS)


@pytest.mark.parametrize("case", CASE_IDS)
def test_table_text(case: str) -> None:
    result = merge(dict(INPUTS)[case], OutputFormat.TEXT)
    text_body, _, errors, conflicts = EXPECTED[case]

    assert result.body == text_body
    assert [outcome.error for outcome in result.outcomes] == errors
    assert {(c.family, c.kind) for c in result.conflicts} <= set(conflicts)


@pytest.mark.parametrize("case", CASE_IDS)
def test_table_openmetrics(case: str) -> None:
    result = merge(dict(INPUTS)[case], OutputFormat.OPENMETRICS)
    _, openmetrics_body, errors, conflicts = EXPECTED[case]

    assert result.body == openmetrics_body
    assert [outcome.error for outcome in result.outcomes] == errors
    assert {(c.family, c.kind) for c in result.conflicts} <= set(conflicts)


@pytest.mark.parametrize("output", list(OutputFormat))
@pytest.mark.parametrize("case", CASE_IDS)
def test_table_fast_path_matches_general(case: str, output: OutputFormat) -> None:
    targets = dict(INPUTS)[case]

    fast = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=True)
    general = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)

    assert fast.body == general.body
    assert fast.outcomes == general.outcomes
    assert fast.conflicts == general.conflicts


@pytest.mark.parametrize("case", CASE_IDS)
def test_table_outcomes(case: str) -> None:
    targets = dict(INPUTS)[case]
    result = merge(targets, OutputFormat.TEXT)

    assert [outcome.label for outcome in result.outcomes] == [t.label for t in targets]
    for outcome in result.outcomes:
        if outcome.error is None:
            assert outcome.detail is None
        else:
            assert outcome.samples == 0
            assert outcome.detail is not None
            assert outcome.detail.startswith("line ")
    sample_lines = [line for line in result.body.splitlines() if not line.startswith(b"#")]
    assert sum(outcome.samples for outcome in result.outcomes) == len(sample_lines)


@pytest.mark.parametrize("case", CASE_IDS)
def test_table_promtool(case: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install prometheus"
    body = EXPECTED[case][0]

    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )

    findings = (checked.stdout + checked.stderr).decode().splitlines()
    assert checked.returncode in (0, 3), findings
    for finding in findings:
        assert any(tolerated in finding for tolerated in TOLERATED_LINT), finding


@pytest.mark.parametrize("case", CASE_IDS)
def test_table_openmetrics_parser(case: str) -> None:
    body = EXPECTED[case][1].decode()

    families = list(text_string_to_metric_families(body))

    samples = sum(len(family.samples) for family in families)
    assert samples == len([line for line in body.splitlines() if not line.startswith("#")])
