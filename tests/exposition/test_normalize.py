"""The compiled normalizer of quirky lines. It writes the same bytes as the general reader for
every quirk it covers, in both input and both output formats. It leaves every other line to the
general reader at the right place, so error messages and line numbers stay the same. And it
never crashes on mutated bodies.
"""

import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.mutation import mutate

from lsif_agg.exposition import MergeResult, OutputFormat, TargetBody, _normalize
from lsif_agg.exposition.merge import merge_targets

TEXT = "text/plain; version=0.0.4"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
FORMATS = {OutputFormat.TEXT: TEXT, OutputFormat.OPENMETRICS: OPENMETRICS}
ADDED = b'worker="0"'
# What normalize_lines returns: (stop, newlines, block, series, stretches).
Normalized = tuple[int, int, bytes, bytes, tuple[tuple[bytes, int, int, int, int], ...]]


def merge_both(targets: list[TargetBody], output: OutputFormat) -> tuple[MergeResult, MergeResult]:
    fast = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=True)
    general = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)
    return fast, general


def assert_same(targets: list[TargetBody], output: OutputFormat) -> MergeResult:
    fast, general = merge_both(targets, output)
    assert fast.body == general.body
    assert fast.outcomes == general.outcomes
    assert fast.conflicts == general.conflicts
    return fast


@contextmanager
def counting_normalizer() -> Iterator[Counter[str]]:
    """Count the sample lines the normalizer writes and the calls that leave a line over."""
    counts: Counter[str] = Counter()
    normalize_lines = _normalize.normalize_lines

    def counted(
        body: bytes, start: int, end: int, *args: bytes | bool | None
    ) -> Normalized:
        result = normalize_lines(body, start, end, *args)  # type: ignore[arg-type]
        counts["written"] += sum(stretch[1] for stretch in result[4])
        counts["left"] += result[0] < end
        return result

    with mock.patch.object(_normalize, "normalize_lines", counted):
        yield counts


def normalize(
    line: bytes, *, openmetrics: bool, output_openmetrics: bool, added: bytes | None = ADDED
) -> Normalized:
    return _normalize.normalize_lines(line, 0, len(line), added, b"worker", openmetrics, output_openmetrics)


# --- one quirk at a time --------------------------------------------------------------------

# (case, body format is OpenMetrics, output is OpenMetrics, line, written line, series).
# Each line is written by the normalizer alone, and the general reader writes the same.
QUIRKS = [
    ("crlf", False, False, b"g 1\r\n", b'g{worker="0"} 1\n', b"g"),
    ("blanks_at_both_ends", False, False, b" \t g 1 \t\n", b'g{worker="0"} 1\n', b"g"),
    ("tab_and_blanks_between_tokens", False, False, b"g\t 1  \t17\n", b'g{worker="0"} 1 17\n', b"g"),
    ("empty_braces", False, False, b"g{} 1\n", b'g{worker="0"} 1\n', b"g"),
    ("blank_braces", False, False, b"g{ \t} 1\n", b'g{worker="0"} 1\n', b"g"),
    ("blank_before_braces", False, False, b'g {a="1"} 1\n', b'g{worker="0",a="1"} 1\n', b'g{a="1"}'),
    ("no_blank_before_value", False, False, b'g{a="1"}-Inf\n', b'g{worker="0",a="1"} -Inf\n', b'g{a="1"}'),
    ("trailing_comma", False, False, b'g{a="1",} 1\n', b'g{worker="0",a="1"} 1\n', b'g{a="1"}'),
    (
        "blanks_in_label_set",
        False,
        False,
        b'g{ a = "1" ,\tb="x y" , } 1\n',
        b'g{worker="0",a="1",b="x y"} 1\n',
        b'g{a="1",b="x y"}',
    ),
    (
        "quote_aware_value",
        False,
        False,
        b'g{a="}{,#",b="\\"q\\""} 1\n',
        b'g{worker="0",a="}{,#",b="\\"q\\""} 1\n',
        b'g{a="}{,#",b="\\"q\\""}',
    ),
    (
        "unknown_escape_doubled",
        False,
        False,
        b'g{a="tab\\there\\\\x\\n"} 1\n',
        b'g{worker="0",a="tab\\\\there\\\\x\\n"} 1\n',
        b'g{a="tab\\\\there\\\\x\\n"}',
    ),
    (
        "utf8_value",
        False,
        False,
        'g{a="é"} 1\n'.encode(),
        'g{worker="0",a="é"} 1\n'.encode(),
        'g{a="é"}'.encode(),
    ),
    ("raw_tab_in_value", False, False, b'g{a="a\tb"} 1\n', b'g{worker="0",a="a\tb"} 1\n', b'g{a="a\tb"}'),
    (
        "clashing_label",
        False,
        False,
        b'g{a="1",worker="w"} 1\n',
        b'g{worker="0",a="1",exported_worker="w"} 1\n',
        b'g{a="1",exported_worker="w"}',
    ),
    (
        "empty_clashing_label",
        False,
        False,
        b'g{worker="",a="1"} 1\n',
        b'g{worker="0",a="1"} 1\n',
        b'g{a="1"}',
    ),
    (
        "clash_over_empty_exported",
        False,
        False,
        b'g{exported_worker="",worker="w"} 1\n',
        b'g{worker="0",exported_worker="w"} 1\n',
        b'g{exported_worker="w"}',
    ),
    (
        "clash_over_taken_exported",
        False,
        False,
        b'g{exported_worker="x",worker="w",exported_exported_worker=""} 1\n',
        b'g{worker="0",exported_worker="x",exported_exported_worker="w"} 1\n',
        b'g{exported_worker="x",exported_exported_worker="w"}',
    ),
    ("odd_values", False, False, b"g +Inf\n", b'g{worker="0"} +Inf\n', b"g"),
    ("nan_any_case", False, False, b"g nAn\n", b'g{worker="0"} nAn\n', b"g"),
    ("subnormal_value", False, False, b"g 1e-320\n", b'g{worker="0"} 1e-320\n', b"g"),
    ("text_to_seconds", False, True, b"g 1 1700000000123\n", b'g{worker="0"} 1 1700000000.123\n', b"g"),
    ("text_to_seconds_small", False, True, b"g 1\t-5\n", b'g{worker="0"} 1 -0.005\n', b"g"),
    ("text_to_seconds_zeros", False, True, b"g 1 +0001000\n", b'g{worker="0"} 1 1\n', b"g"),
    ("text_to_seconds_negative_zero", False, True, b"g 1 -0\n", b'g{worker="0"} 1 0\n', b"g"),
    ("seconds_to_text", True, False, b"g 1 1700000000.1239\n", b'g{worker="0"} 1 1700000000123\n', b"g"),
    ("seconds_to_text_fraction_only", True, False, b"g 1 .5\n", b'g{worker="0"} 1 500\n', b"g"),
    ("seconds_to_text_below_ms", True, False, b"g 1 -0.0001\n", b'g{worker="0"} 1 0\n', b"g"),
    ("seconds_to_text_point_last", True, False, b"g 1 +5.\n", b'g{worker="0"} 1 5000\n', b"g"),
    ("seconds_kept", True, True, b"g 1 1.5e3\n", b'g{worker="0"} 1 1.5e3\n', b"g"),
    (
        "exemplar_written",
        True,
        True,
        b'c_total 1 #\t{ t = "x\\q" , } 2  1.5\n',
        b'c_total{worker="0"} 1 # {t="x\\\\q"} 2 1.5\n',
        b"c_total",
    ),
    (
        "exemplar_dropped",
        True,
        False,
        b'c_total 1 5 # {t="1"} 2\n',
        b'c_total{worker="0"} 1 5000\n',
        b"c_total",
    ),
    (
        "exemplar_empty_labels",
        True,
        True,
        b"c_total 1 # {}3\n",
        b'c_total{worker="0"} 1 # {} 3\n',
        b"c_total",
    ),
    (
        "exemplar_repeated_label",
        True,
        True,
        b'c_total 1 # {t="1",t="2"} 3\n',
        b'c_total{worker="0"} 1 # {t="1",t="2"} 3\n',
        b"c_total",
    ),
    ("no_final_newline", False, False, b'g{a="1"} 1 \t', b'g{worker="0",a="1"} 1\n', b'g{a="1"}'),
]


@pytest.mark.parametrize(
    ("openmetrics", "output_openmetrics", "line", "written", "series"),
    [case[1:] for case in QUIRKS],
    ids=[case[0] for case in QUIRKS],
)
def test_quirk_written_by_normalizer(
    openmetrics: bool, output_openmetrics: bool, line: bytes, written: bytes, series: bytes
) -> None:
    stop, newlines, block, keys, stretches = normalize(
        line, openmetrics=openmetrics, output_openmetrics=output_openmetrics
    )

    assert stop == len(line)
    assert newlines == line.count(b"\n")
    assert block == written
    assert keys == series + b"\n"
    assert [(stretch[0], stretch[1]) for stretch in stretches] == [(line.split()[0].split(b"{")[0], 1)]


@pytest.mark.parametrize(
    ("openmetrics", "output_openmetrics", "line"),
    [case[1:4] for case in QUIRKS],
    ids=[case[0] for case in QUIRKS],
)
@pytest.mark.parametrize("label", ["0", None])
def test_quirk_matches_general(
    openmetrics: bool, output_openmetrics: bool, line: bytes, label: str | None
) -> None:
    source = OutputFormat.OPENMETRICS if openmetrics else OutputFormat.TEXT
    output = OutputFormat.OPENMETRICS if output_openmetrics else OutputFormat.TEXT
    # A blank line after the line keeps the kernel off canonical lines such as `g +Inf`.
    end = b"\n"
    if openmetrics:
        end = b"\n# EOF\n"
    elif not line.endswith(b"\n"):
        end = b""  # the body ends without a newline
    body = b"# TYPE g gauge\n# TYPE c counter\n" + line + end

    with counting_normalizer() as counts:
        result = assert_same([TargetBody(label, body, FORMATS[source])], output)

    # The whole merge may read the body once more to check it, so the line may count twice.
    assert counts["written"] >= 1
    assert counts["left"] == 0
    assert result.outcomes[0].error is None


def test_every_quirk_in_one_body_normalized() -> None:
    lines = ["# HELP jobs Jobs, with \\\\ and \\n.", "# TYPE jobs counter", "# not metadata"]
    for series in range(20):
        value = ("NaN", "+Inf", "-0", "1e-320", str(series))[series % 5]
        lines.append(
            f'jobs_total{{ path = "/a,b}}{{#\\"{series}\\"" ,\tworker="w1",}}\t{value}  '
            f'1700000000.{series:03d} # {{trace_id="t{series}"}} 1'
        )
        if series % 10 == 0:
            lines.append("")
    body = ("\r\n".join([*lines, "# EOF"]) + "\r\n").encode()

    for output in OutputFormat:
        with counting_normalizer() as counts:
            result = assert_same([TargetBody("1", body, OPENMETRICS)], output)
        assert counts["written"] >= 20
        assert counts["left"] == 0
        assert result.outcomes[0].samples == 20


def test_normalizer_without_added_label_keeps_worker() -> None:
    line = b'g{ worker="3" ,} 1\n'

    _, _, block, series, _ = normalize(line, openmetrics=False, output_openmetrics=False, added=None)

    assert block == b'g{worker="3"} 1\n'
    assert series == b'g{worker="3"}\n'


def test_normalizer_skips_blank_lines() -> None:
    run = b"\r\n  \t\n g 1\r\n\r\ng{a=\"1\"} 2\n\n"

    stop, newlines, block, _, stretches = normalize(run, openmetrics=False, output_openmetrics=False)

    assert (stop, newlines) == (len(run), 6)
    assert block == b'g{worker="0"} 1\ng{worker="0",a="1"} 2\n'
    # The stretch ends after its last line, before the blank line that follows it.
    assert stretches == ((b"g", 2, len(run) - 1, len(block), len(b'g\ng{a="1"}\n')),)


def test_normalizer_splits_stretches_by_name() -> None:
    run = b'h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3\nh_count 2\nh_sum{a="1"} 4\n'

    _, _, block, series, stretches = normalize(run, openmetrics=False, output_openmetrics=False)

    assert [(name, lines) for name, lines, *_ in stretches] == [
        (b"h_bucket", 2),
        (b"h_sum", 1),
        (b"h_count", 1),
        (b"h_sum", 1),
    ]
    ends = [stretch[2:] for stretch in stretches]
    assert ends[-1] == (len(run), len(block), len(series))
    assert block[: ends[1][1]] == (
        b'h_bucket{worker="0",le="1"} 1\nh_bucket{worker="0",le="+Inf"} 2\nh_sum{worker="0"} 3\n'
    )
    assert series[ends[2][2] :] == b'h_sum{a="1"}\n'


# --- lines left to the general reader -------------------------------------------------------

# (case, body format is OpenMetrics, output is OpenMetrics, line). Each is valid or invalid,
# but not covered, so the normalizer stops before it and writes nothing.
LEFT_OVER = [
    ("quoted_metric_name", False, False, b'{"my.metric"} 1\n'),
    ("quoted_label_name", False, False, b'g{"a.b"="1"} 1\n'),
    ("no_metric_name", False, False, b'{a="1"} 1\n'),
    ("indented_comment", False, False, b"  # a comment\n"),
    ("indented_eof", True, True, b" # EOF\n"),
    ("cr_in_value", False, False, b'g{a="x\ry"} 1\n'),
    ("cr_after_backslash", False, False, b'g{a="x\\\ry"} 1\n'),
    ("cr_between_tokens", False, False, b"g 1\r5\n"),
    ("nul_in_value_token", False, False, b"g 1\x002\n"),
    ("exponent_seconds_to_text", True, False, b"g 1 1.5e3\n"),
    ("sixteen_whole_digits_to_text", True, False, b"g 1 1234567890123456\n"),
    ("long_openmetrics_timestamp", True, True, b"g 1 " + b"1" * 65 + b"\n"),
    ("twenty_digit_text_timestamp", False, False, b"g 1 12345678901234567890\n"),
    ("exemplar_in_text", False, False, b'g 1 # {t="1"} 1\n'),
    ("exemplar_quoted_label", True, True, b'c_total 1 # {"a.b"="1"} 1\n'),
    ("exemplar_without_value", True, True, b'c_total 1 # {t="1"}\n'),
    ("exemplar_two_timestamps", True, True, b'c_total 1 # {t="1"} 1 2 3\n'),
    ("empty_exemplar", True, True, b"c_total 1 #\n"),
    ("label_given_twice", False, False, b'g{a="1",a="2"} 1\n'),
    ("too_many_labels", False, False, b"g{" + b",".join(b'l%d="1"' % i for i in range(65)) + b"} 1\n"),
    ("lone_comma", False, False, b"g{,} 1\n"),
    ("two_commas", False, False, b'g{a="1",,} 1\n'),
    ("unterminated_value", False, False, b'g{a="1} 1\n'),
    ("value_glued_to_name", False, False, b"gInf\n"),
    ("hexadecimal_value", False, False, b"g 0x1p3\n"),
    ("signed_nan", False, False, b"g +nan\n"),
    ("third_token", False, False, b"g 1 2 3\n"),
    ("hash_in_value_token", False, False, b"g 1#\n"),
]


@pytest.mark.parametrize(
    ("openmetrics", "output_openmetrics", "line"),
    [case[1:] for case in LEFT_OVER],
    ids=[case[0] for case in LEFT_OVER],
)
def test_line_left_to_general_reader(openmetrics: bool, output_openmetrics: bool, line: bytes) -> None:
    run = b"g 1\n\n" + line + b"g 2\n"

    stop, newlines, block, _, stretches = normalize(
        run, openmetrics=openmetrics, output_openmetrics=output_openmetrics
    )

    assert (stop, newlines) == (5, 2)
    assert block == b'g{worker="0"} 1\n'
    assert [stretch[1] for stretch in stretches] == [1]


@pytest.mark.parametrize(
    ("openmetrics", "output_openmetrics", "line"),
    [case[1:] for case in LEFT_OVER],
    ids=[case[0] for case in LEFT_OVER],
)
def test_left_over_line_matches_general(openmetrics: bool, output_openmetrics: bool, line: bytes) -> None:
    source = OutputFormat.OPENMETRICS if openmetrics else OutputFormat.TEXT
    output = OutputFormat.OPENMETRICS if output_openmetrics else OutputFormat.TEXT
    end = b"# EOF\n" if openmetrics else b""
    body = b"# TYPE g gauge\ng{ a=\"1\"} 1\r\n" + line + b"g{a=\"2\"}\t2\n" + end

    assert_same([TargetBody("0", body, FORMATS[source])], output)


def test_repeated_series_left_to_general_reader() -> None:
    run = b'g{a="1"} 1\ng{ a = "1" , } 2\ng{a="2"} 3\n'

    stop, _, block, _, _ = normalize(run, openmetrics=False, output_openmetrics=False)

    assert stop == len(b'g{a="1"} 1\n')
    assert block == b'g{worker="0",a="1"} 1\n'


@pytest.mark.parametrize("output", list(OutputFormat))
def test_repeated_series_kept_once(output: OutputFormat) -> None:
    body = b'# TYPE g gauge\ng{a="1"} 1\ng{ a = "1" , } 2\ng{a="2"} 3\ng{a="2",} 4\ng{worker=""} 5\ng 6\n'

    result = assert_same([TargetBody("0", body, TEXT)], output)

    assert result.outcomes[0].samples == 3
    assert b'g{worker="0",a="1"} 1\n' in result.body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'# TYPE g gauge\ng{ a="1"} 1\r\n\r\ng{a="1",a="2"} 2\n', "line 4: a label name given twice"),
        (b"g 1\ng\t2\ng 1 0x10\n", "line 3: invalid timestamp '0x10'"),
        (b'g{a="1"} 1\n{"x"} 2 # {t="1"} 1\n', "line 2: an exemplar in a text 0.0.4 body"),
        (b"g 1\r\ng  2\r\n  # TYPE g nonsense\r\n", "line 3: unknown metric type 'nonsense'"),
    ],
)
def test_errors_keep_line_numbers(body: bytes, message: str) -> None:
    fast, general = merge_both([TargetBody("0", body, TEXT)], OutputFormat.TEXT)

    assert fast.outcomes == general.outcomes
    assert fast.outcomes[0].detail == message


def test_openmetrics_without_eof_keeps_last_line() -> None:
    body = b'# TYPE g gauge\ng{ a="1"} 1\n\ng 2 1.5\n\n'

    fast, general = merge_both([TargetBody("0", body, OPENMETRICS)], OutputFormat.TEXT)

    assert fast.outcomes == general.outcomes
    assert fast.outcomes[0].detail == "line 6: OpenMetrics body without # EOF, maybe truncated"


def test_indented_eof_ends_body() -> None:
    body = b"# TYPE g gauge\ng 1\r\n  # EOF\r\ng 2\n# EOF\n"

    result = assert_same([TargetBody("0", body, OPENMETRICS)], OutputFormat.OPENMETRICS)

    assert result.outcomes[0].samples == 1


# --- runs of several families ---------------------------------------------------------------


SEVERAL_FAMILIES = [
    ("untyped_interleaved", b'a 1\r\nb 2\r\na{x="1"} 3\r\n', TEXT, OutputFormat.TEXT),
    (
        "histogram_then_other",
        b'# TYPE h histogram\nh_bucket{ le="1"} 1\nh_sum 2\nh_count 1\nx 5\r\nh_sum{a="1"} 3\n',
        TEXT,
        OutputFormat.TEXT,
    ),
    (
        "created_split",
        b'# TYPE c counter\nc_total{ a="1"} 1\nc_created{a="1"} 2\nc_total 3\n# EOF\n',
        OPENMETRICS,
        OutputFormat.TEXT,
    ),
    (
        "created_kept",
        b'# TYPE c counter\nc_total{ a="1"} 1 5\nc_created{a="1"} 2\n# EOF\n',
        OPENMETRICS,
        OutputFormat.OPENMETRICS,
    ),
    (
        "gaugehistogram",
        b'# TYPE gh gaugehistogram\ngh_bucket{le="+Inf"} 1\r\ngh_gsum 2\r\ngh_gcount 1\r\n# EOF\n',
        OPENMETRICS,
        OutputFormat.TEXT,
    ),
    (
        "counter_names",
        b'# TYPE c_total counter\nc_total\t1\nc 2\nc_total{a="1"} 3\n',
        TEXT,
        OutputFormat.OPENMETRICS,
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "output"),
    [case[1:] for case in SEVERAL_FAMILIES],
    ids=[case[0] for case in SEVERAL_FAMILIES],
)
def test_run_of_several_families(body: bytes, content_type: str, output: OutputFormat) -> None:
    with counting_normalizer() as counts:
        assert_same([TargetBody("0", body, content_type), TargetBody("1", body, content_type)], output)

    assert counts["written"] > 0


def test_repeat_across_parts_found_by_merge() -> None:
    # Two targets with one label: the second target's normalized run repeats the first's.
    body = b'# TYPE g gauge\ng{ a="1"} 1\ng{a="2"}\t2\n'
    other = b'# TYPE g gauge\ng{a="2"}  3\ng{a="3"}\t4\n'

    result = assert_same([TargetBody("0", body, TEXT), TargetBody("0", other, TEXT)], OutputFormat.TEXT)

    assert [outcome.samples for outcome in result.outcomes] == [2, 1]


def test_cr_in_value_repeated_across_targets() -> None:
    # A later target of the same label repeats a series whose value holds a CR, so merge.py
    # splits the kernel's block into lines, at newlines only.
    first = b'# TYPE g gauge\ng{a="x\ry"} 1\n'
    second = b'# TYPE g gauge\ng{a="x\ry"} 2\ng{a="z"} 3\n'

    result = assert_same([TargetBody("0", first, TEXT), TargetBody("0", second, TEXT)], OutputFormat.TEXT)

    assert [outcome.samples for outcome in result.outcomes] == [1, 1]


def test_normalizer_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        _normalize.normalize_lines("g 1\n", 0, 4, None, b"worker", False, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="added_label"):
        _normalize.normalize_lines(b"g 1\n", 0, 4, "x", b"worker", False, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="line's end"):
        _normalize.normalize_lines(b"g 1\ng 2\n", 0, 5, None, b"worker", False, False)
    with pytest.raises(ValueError, match="invalid run"):
        _normalize.normalize_lines(b"g 1\n", 3, 2, None, b"worker", False, False)


# --- generated quirky bodies ----------------------------------------------------------------

BLANKS = st.sampled_from(["", "", " ", "\t", "  ", " \t "])
SEPARATORS = st.sampled_from([" ", " ", "\t", "  ", " \t"])
LABEL_NAMES = ["a", "b", "le", "_x1", "worker", "exported_worker", "exported_exported_worker"]
LABEL_VALUES = [
    "", "1", "x y", "}", "{", "#", ",", "=", '\\"', "\\\\", "\\n", "\\t", "\\q", "é", "a\tb",
    "# {t=\\\"1\\\"} 1", "w",
]
VALUES = ["1", "-0", "NaN", "nan", "+Inf", "-inf", "Infinity", "1e-320", "2.5", ".5", "1.", "1E+3"]
BAD_VALUES = ["0x1p3", "+nan", "1_0", "", "inf1"]
TEXT_STAMPS = ["1700000000123", "-5", "+0001000", "0", "-0", "999"]
OPENMETRICS_STAMPS = ["1700000000.123", "1700000000.1239", "-0.0001", "5", ".5", "5.", "+7", "0.000"]
LEFT_STAMPS = ["1.5e3", "1234567890123456", "12345678901234567890", "0x10"]
EXEMPLARS = [
    '# {t="1"} 1', '#\t{ t = "x\\q" , } 2  1.5', "# {}3", '#{a="}"}\t3 1e3', '# {t="1",t="2"} 1',
]
LEFT_EXEMPLARS = ['# {"a.b"="1"} 1', '# {t="1"}', "#", '# {t="1"} 1 2 3']


def rarely(usual: st.SearchStrategy[str], others: list[str]) -> st.SearchStrategy[str]:
    """Draw from `usual` most of the time, so that most bodies stay valid.

    Hypothesis 6.170 drew the first and the last choice of a list far more often than the
    others here, so the rare choices sit between many usual ones.
    """
    choices: list[str | None] = [None] * 60 + others + [None] * 60
    return st.sampled_from(choices).flatmap(lambda other: usual if other is None else st.just(other))


@st.composite
def label_sets(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["items", "items", "items", "none", "{}", "{ }"]))
    if shape != "items":
        return "" if shape == "none" else shape
    items = []
    for name in draw(st.lists(st.sampled_from(LABEL_NAMES), min_size=1, max_size=3, unique=True)):
        value = draw(st.sampled_from(LABEL_VALUES))
        items.append(f'{name}{draw(BLANKS)}={draw(BLANKS)}"{value}"')
    # A unique label keeps most series apart, so that few lines repeat one.
    items.append(f'n="{draw(st.integers(0, 10**6))}"')
    items = draw(st.permutations(items))
    comma = draw(BLANKS) + "," + draw(BLANKS)
    trailing = draw(st.sampled_from(["", "", ",", " , "]))
    inside = draw(BLANKS) + comma.join(items) + trailing + draw(BLANKS)
    invalid = ["{" + inside + ",,}", "{" + inside, '{"g", ' + inside + "}", '{a="1",a="2"}']
    return draw(rarely(st.just("{" + inside + "}"), invalid))


@st.composite
def quirky_lines(draw: st.DrawFn, names: list[str], openmetrics: bool) -> str:
    """Draw a sample line with blanks, label sets, tokens and ends of every quirky kind."""
    name = draw(st.sampled_from(names))
    labels = draw(label_sets())
    before_value = draw(BLANKS) if labels else draw(SEPARATORS)
    line = draw(BLANKS) + name + draw(BLANKS if labels else st.just("")) + labels + before_value
    line += draw(rarely(st.sampled_from(VALUES), BAD_VALUES))

    stamps = OPENMETRICS_STAMPS if openmetrics else TEXT_STAMPS
    if draw(st.booleans()):
        line += draw(SEPARATORS) + draw(rarely(st.sampled_from(stamps), LEFT_STAMPS))
    if openmetrics and draw(st.booleans()):
        line += draw(SEPARATORS) + draw(rarely(st.sampled_from(EXEMPLARS), LEFT_EXEMPLARS))
    return line + draw(st.sampled_from(["", "", " ", "\t", "\r", " \r"]))


# Families of both formats, as (TYPE line, sample names).
FAMILIES = {
    False: [
        ("# TYPE g gauge\n", ["g"]),
        ("# TYPE c_total counter\n", ["c_total"]),
        ("# TYPE h histogram\n", ["h_bucket", "h_sum", "h_count"]),
        ("# TYPE s summary\n", ["s", "s_sum", "s_count"]),
        ("", ["u"]),
    ],
    True: [
        ("# TYPE g gauge\n", ["g"]),
        ("# TYPE c counter\n", ["c_total", "c_created"]),
        ("# TYPE h histogram\n", ["h_bucket", "h_sum", "h_count", "h_created"]),
        ("# TYPE gh gaugehistogram\n", ["gh_bucket", "gh_gsum", "gh_gcount"]),
        ("# TYPE i info\n", ["i_info"]),
        ("", ["u"]),
    ],
}


@st.composite
def quirky_bodies(draw: st.DrawFn, openmetrics: bool) -> bytes:
    """Draw a body of one to three families of quirky lines, with blank lines, comments and
    CRLF ends, in the given format."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    sections = []
    for header, names in draw(st.lists(st.sampled_from(FAMILIES[openmetrics]), min_size=1, max_size=3)):
        lines = draw(st.lists(quirky_lines(names, openmetrics), min_size=1, max_size=6))
        for _ in range(draw(st.integers(0, 2))):
            position = draw(st.integers(0, len(lines)))
            lines.insert(position, draw(st.sampled_from(["", "\r", " \t", "  # a comment", "# plain"])))
        sections.append(header.replace("\n", newline) + "".join(line + newline for line in lines))
    body = "".join(sections)
    if openmetrics:
        body += "# EOF" + newline
    elif draw(st.booleans()):
        body = body.rstrip("\r\n")
    return body.encode()


LABELS = st.sampled_from(["0", "1", "0", None, 'a"b\\'])


def test_generated_quirky_bodies_match_general() -> None:
    counts: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data(), st.booleans(), st.sampled_from(OutputFormat))
    def check(data: st.DataObject, openmetrics: bool, output: OutputFormat) -> None:
        source = OutputFormat.OPENMETRICS if openmetrics else OutputFormat.TEXT
        drawn = data.draw(st.lists(st.tuples(quirky_bodies(openmetrics), LABELS), min_size=1, max_size=3))
        targets = [TargetBody(label, body, FORMATS[source]) for body, label in drawn]
        with counting_normalizer() as normalizer:
            result = assert_same(targets, output)
        counts.update(normalizer)
        counts["examples"] += 1
        counts["valid examples"] += all(outcome.error is None for outcome in result.outcomes)
        counts["examples normalized"] += normalizer["written"] > 0

    check()
    # The generated lines must often be valid and mostly covered, or the test proves little.
    # Three runs of 400 examples gave 0.56-0.63 valid, 0.98 normalized and 3.4-3.9 lines written
    # per line left. The bounds sit well below, so that the draw alone never fails the test.
    assert counts["valid examples"] >= 0.3 * counts["examples"], counts
    assert counts["examples normalized"] >= 0.8 * counts["examples"], counts
    assert counts["written"] >= 1.5 * counts["left"], counts


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans(), st.sampled_from(OutputFormat), st.sampled_from(["0", None]))
def test_generated_line_matches_general(
    data: st.DataObject, openmetrics: bool, output: OutputFormat, label: str | None
) -> None:
    # One line per body, so that no other line hides a line the normalizer wrongly writes.
    header, names = data.draw(st.sampled_from(FAMILIES[openmetrics]))
    line = data.draw(quirky_lines(names, openmetrics))
    end = "# EOF\n" if openmetrics else ""
    source = OutputFormat.OPENMETRICS if openmetrics else OutputFormat.TEXT

    assert_same([TargetBody(label, f"{header}{line}\n{end}".encode(), FORMATS[source])], output)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans())
def test_normalizer_accounts_for_every_line(data: st.DataObject, openmetrics: bool) -> None:
    # Where the normalizer stops, the newlines it counts, and the ends of its stretches must
    # agree with the run, which read.py relies on to number lines and slice blocks.
    body = data.draw(quirky_bodies(openmetrics)).replace(b"# ", b"  # ")
    position, end = 0, len(body)
    while position < end:
        stop, newlines, block, series, stretches = _normalize.normalize_lines(
            body, position, end, ADDED, b"worker", openmetrics, data.draw(st.booleans())
        )
        assert newlines == body.count(b"\n", position, stop)
        assert stop in (end, 0) or body[stop - 1] == 0x0A  # "\n"
        assert block.count(b"\n") == series.count(b"\n") == sum(stretch[1] for stretch in stretches)
        if stretches:
            assert stretches[-1][3:] == (len(block), len(series))
            assert stretches[-1][2] <= stop
        keys = series.split(b"\n")[:-1]
        assert len(set(keys)) == len(keys)

        newline = body.find(b"\n", stop, end)
        position = end if newline < 0 else newline + 1


# --- mutated bodies -------------------------------------------------------------------------

FUZZ_BODIES = 2000
FUZZ_SECONDS = 20.0
SEED_BODIES = [
    b'# TYPE g gauge\r\ng{ a = "1" ,\tworker="w",}\tNaN  17 \r\n\r\ng{a="}{,#\\"x\\""} 2\r\n',
    b'# TYPE c counter\nc_total{ path = "/a\\tb" ,} +Inf 1700000000.123 # { t = "1" } 1 1.5\n\n# EOF\n',
    b'# TYPE h histogram\nh_bucket{ le="1",} 1 5\nh_bucket{le="+Inf"}\t2\nh_sum  3\nh_count 2\n# EOF\n',
]


# Bytes that a mutation inserts: the exposition's own punctuation and a few that break it.
MUTATION_BYTES = b'{}",=\\ \n#\t\r0a_.e\x00\xc3'


def test_normalizer_survives_mutated_bodies() -> None:
    # A fixed seed keeps failures reproducible; the deadline bounds the loop on a slow machine.
    rng = random.Random(20261204)
    deadline = time.monotonic() + FUZZ_SECONDS
    checked = 0
    while checked < FUZZ_BODIES and time.monotonic() < deadline:
        body = mutate(rng.choice(SEED_BODIES), rng, MUTATION_BYTES)
        newline = body.rfind(b"\n", 0, rng.randrange(len(body) + 1))
        start = newline + 1
        for openmetrics in (False, True):
            added = rng.choice([ADDED, None])
            output_openmetrics = rng.random() < 0.5
            stop, *_ = _normalize.normalize_lines(
                body, start, len(body), added, b"worker", openmetrics, output_openmetrics
            )
            assert start <= stop <= len(body)

        targets = [TargetBody(rng.choice(["0", None]), body, rng.choice([TEXT, OPENMETRICS]))]
        assert_same(targets, rng.choice(list(OutputFormat)))
        checked += 1

    assert checked >= 100, f"only {checked} bodies checked before the deadline"
