"""The compiled kernel of the fast path: it writes the same bytes as the general reader, takes
the clean input it is meant for, rejects what it must leave to the general reader, and never
crashes on mutated bodies. Also the general reader's shortcuts for common line shapes, which
must give what its token-by-token reading gives.
"""

import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.mutation import mutate

from lsif_agg.exposition import MergeResult, OutputFormat, TargetBody, _relabel, fast, syntax
from lsif_agg.exposition.merge import merge_targets
from lsif_agg.exposition.read import TargetReader

TEXT = "text/plain; version=0.0.4"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
FORMATS = {OutputFormat.TEXT: TEXT, OutputFormat.OPENMETRICS: OPENMETRICS}

# Label values that end a label set, a line or a token in a scanner that is not quote-aware.
ADVERSARIAL_VALUES = [
    "", "x", "}", ",", "#", "{", '\\"', "\\\\", " ", "a b", 'worker=\\"w\\"', ",worker=",
    "\\n", "} 1", "# {a=\\\"b\\\"} 1", "é", "\\t", "\\", "tab\there",
]
VALUES = [
    "1", "-0", "+0", "NaN", "nan", "+Inf", "-inf", "Infinity", "1e-320", "2.5", ".5", "1.",
    "1e3", "1E+3", "0x1p3", "1_0", "+nan", "-NaN", "inf1", ".", "", "1e", "--1",
]
TIMESTAMPS = [
    "", " 1700000000123", " -1", " +5", " 1700000000.123", " 1.5e3", " 12345678901234567890",
    " 1_0", " 0x10", " .5", " " + "1" * 70,
]


def merge_both(targets: list[TargetBody], output: OutputFormat) -> tuple[MergeResult, MergeResult]:
    fast_result = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=True)
    general = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)
    return fast_result, general


@contextmanager
def counting_kernel() -> Iterator[Counter[str]]:
    """Count the runs the fast path accepts and rejects while the block runs; a scrape that the
    whole merge takes counts as one accepted run."""
    counts: Counter[str] = Counter()
    add_run = TargetReader.add_run
    merge_bodies = fast.merge_bodies

    def counted(reader: TargetReader, body: bytes, item: fast.RunItem, openmetrics: bool) -> bool:
        accepted = add_run(reader, body, item, openmetrics)
        counts["accepted" if accepted else "rejected"] += 1
        return accepted

    def counted_whole(*args: object) -> object:
        merged = merge_bodies(*args)  # type: ignore[arg-type]
        counts["accepted"] += not isinstance(merged, int)
        return merged

    with (
        mock.patch.object(TargetReader, "add_run", counted),
        mock.patch.object(fast, "merge_bodies", counted_whole),
    ):
        yield counts


def write_labels(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{value}"' for name, value in pairs)


@st.composite
def clean_lines(draw: st.DrawFn, openmetrics: bool) -> str:
    """Draw a line of a gauge family `g` the kernel should accept most of the time."""
    # Mostly `g` with a numbered label, so that few runs mix families or repeat a series.
    name = draw(st.sampled_from(["g"] * 9 + ["h"]))
    names = draw(st.lists(st.sampled_from(["a", "b", "le", "exported_worker"]), max_size=3, unique=True))
    values = st.sampled_from(["1", "x y", "}{", ",#", 'q\\"', "\\\\", "\\n", ""])
    pairs = [("n", str(draw(st.integers(0, 10**6))))] + [(label, draw(values)) for label in names]
    labels = "{" + write_labels(pairs) + "}" if pairs else ""
    value = draw(st.sampled_from(["1", "-0", "NaN", "+Inf", "1e-320", "2.5"]))
    stamp = draw(st.sampled_from(["", " 1700000000.5" if openmetrics else " 1700000000123"]))
    return f"{name}{labels} {value}{stamp}"


def mostly(usual: str, others: list[str]) -> st.SearchStrategy[str]:
    """Draw `usual` three times in four, so that most lines break at most one rule."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), st.sampled_from(others))


@st.composite
def adversarial_lines(draw: st.DrawFn) -> str:
    """Draw a line near the edge of what the kernel accepts."""
    name = draw(mostly("g", ["h", "g_total", '{"g"', "g ", "worker"]))
    names = mostly("n", ["a", "b", "worker", "exported_worker", "1a", '"a.b"'])
    values = st.sampled_from(ADVERSARIAL_VALUES)
    pairs = draw(st.lists(st.tuples(names, values), max_size=3))
    pairs.append(("i", str(draw(st.integers(0, 10**6)))))
    labels = draw(mostly(",", [", ", ",,"])).join(f'{label}="{value}"' for label, value in pairs)
    braces = draw(mostly("{}", ["{},", "{ }", "{", "}"]))
    written = name + braces[0] + labels + braces[1:]
    written += draw(mostly(" ", ["  ", "\t", ""])) + draw(mostly("1", VALUES))
    written += draw(mostly("", TIMESTAMPS))
    written += draw(mostly("", [" # {t=\"1\"} 1", " #", " ", "\r"]))
    cut = draw(st.integers(0, len(written)))
    return written[:cut] if draw(st.integers(0, 9)) == 0 else written


@st.composite
def bodies(draw: st.DrawFn, lines: st.SearchStrategy[str], openmetrics: bool) -> bytes:
    header = draw(st.sampled_from(["", "# TYPE g gauge\n", "# HELP g Help.\n# TYPE g gauge\n"]))
    drawn = draw(st.lists(lines, min_size=1, max_size=8))
    middle = draw(st.sampled_from(["", "# TYPE h gauge\n", "# a comment\n", "\n"]))
    cut = draw(st.integers(0, len(drawn)))
    body = header + "".join(line + "\n" for line in drawn[:cut]) + middle
    body += "".join(line + "\n" for line in drawn[cut:])
    if openmetrics:
        body += "# EOF\n"
    elif draw(st.booleans()):
        body = body.rstrip("\n")
    return body.encode()


def targets_for(drawn: list[tuple[bytes, str | None]], output: OutputFormat) -> list[TargetBody]:
    return [TargetBody(label, body, FORMATS[output]) for body, label in drawn]


LABELS = st.sampled_from(["0", "1", "0", None, 'a"b\\'])


def test_kernel_path_matches_general_clean() -> None:
    counts: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data(), st.sampled_from(OutputFormat))
    def check(data: st.DataObject, output: OutputFormat) -> None:
        openmetrics = output is OutputFormat.OPENMETRICS
        target = st.tuples(bodies(clean_lines(openmetrics), openmetrics), LABELS)
        drawn = data.draw(st.lists(target, min_size=1, max_size=4))
        with counting_kernel() as kernel:
            fast_result, general = merge_both(targets_for(drawn, output), output)
        counts.update(kernel)
        counts["examples"] += 1
        counts["examples with a run accepted"] += kernel["accepted"] > 0

        assert fast_result.body == general.body
        assert fast_result.outcomes == general.outcomes
        assert fast_result.conflicts == general.conflicts

    check()
    assert counts["examples with a run accepted"] >= 0.7 * counts["examples"], counts
    assert counts["accepted"] >= counts["rejected"], counts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(OutputFormat))
def test_kernel_path_matches_general_adversarial(data: st.DataObject, output: OutputFormat) -> None:
    openmetrics = output is OutputFormat.OPENMETRICS
    lines = st.one_of(clean_lines(openmetrics), adversarial_lines())
    drawn = data.draw(st.lists(st.tuples(bodies(lines, openmetrics), LABELS), min_size=1, max_size=3))

    fast_result, general = merge_both(targets_for(drawn, output), output)

    assert fast_result.body == general.body
    assert fast_result.outcomes == general.outcomes
    assert fast_result.conflicts == general.conflicts


@settings(max_examples=500, deadline=None)
@given(adversarial_lines(), st.sampled_from(OutputFormat), st.sampled_from(["0", None]))
def test_kernel_line_matches_general(line: str, output: OutputFormat, label: str | None) -> None:
    # One line per body, so that no other line hides a line the kernel wrongly accepts.
    end = "# EOF\n" if output is OutputFormat.OPENMETRICS else ""
    targets = [TargetBody(label, f"# TYPE g gauge\n{line}\n{end}".encode(), FORMATS[output])]

    fast_result, general = merge_both(targets, output)

    assert fast_result.body == general.body
    assert fast_result.outcomes == general.outcomes


# Families of every type, as (TYPE line, sample names), whose lines a merge into the other
# format writes unchanged apart from the label, or splits into several output families.
CROSS_FAMILIES = {
    False: [
        ("# TYPE c_total counter\n", ["c_total"]),
        ("# TYPE c counter\n", ["c"]),
        ("# TYPE g gauge\n", ["g"]),
        ("", ["u"]),
        ("# TYPE u untyped\n", ["u"]),
        ("# TYPE h histogram\n", ["h_bucket", "h_sum", "h_count"]),
        ("# TYPE s summary\n", ["s", "s_sum", "s_count"]),
    ],
    True: [
        ("# TYPE c counter\n", ["c_total", "c_created"]),
        ("# TYPE c counter\n", ["c_total"]),
        ("# TYPE g gauge\n", ["g"]),
        ("", ["u"]),
        ("# TYPE h histogram\n", ["h_bucket", "h_sum", "h_count", "h_created"]),
        ("# TYPE h histogram\n", ["h_bucket", "h_sum", "h_count"]),
        ("# TYPE gh gaugehistogram\n", ["gh_bucket", "gh_gsum", "gh_gcount"]),
        ("# TYPE s summary\n", ["s", "s_sum", "s_count", "s_created"]),
        ("# TYPE i info\n", ["i_info"]),
        ("# TYPE st stateset\n", ["st"]),
        ("# TYPE n unknown\n", ["n"]),
    ],
}


@st.composite
def cross_format_bodies(draw: st.DrawFn, openmetrics: bool) -> bytes:
    """Draw a body of one to three families, mostly of lines the kernel takes across formats."""
    sections = []
    for header, names in draw(st.lists(st.sampled_from(CROSS_FAMILIES[openmetrics]), min_size=1, max_size=3)):
        lines = []
        for _ in range(draw(st.integers(1, 6))):
            name = draw(st.sampled_from(names))
            labels = write_labels([("n", str(draw(st.integers(0, 10**6))))])
            value = draw(st.sampled_from(["1", "-0", "NaN", "+Inf", "2.5"]))
            # One line in ten has a timestamp and one in ten an exemplar, which the general
            # reader converts or drops, so that most OpenMetrics runs stay clean.
            text_stamps = [" 1700000000123", " -5", " +0", " 0001000"]
            openmetrics_stamps = [" 1700000000.5", " 1.5e3", " -0.0001", " 5", " 1234567890123456"]
            stamps = openmetrics_stamps if openmetrics else text_stamps
            tail = draw(st.sampled_from([""] * 9 + stamps))
            if openmetrics:
                tail += draw(st.sampled_from([""] * 9 + [' # {t="1"} 1']))
            lines.append(f"{name}{{{labels}}} {value}{tail}\n")
        sections.append(header + "".join(lines))
    body = "".join(sections) + ("# EOF\n" if openmetrics else "")
    return body.encode()


def test_kernel_path_matches_general_across_formats() -> None:
    counts: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data(), st.booleans())
    def check(data: st.DataObject, openmetrics: bool) -> None:
        source = OutputFormat.OPENMETRICS if openmetrics else OutputFormat.TEXT
        output = OutputFormat.TEXT if openmetrics else OutputFormat.OPENMETRICS
        target = st.tuples(cross_format_bodies(openmetrics), LABELS)
        drawn = data.draw(st.lists(target, min_size=1, max_size=3))
        with counting_kernel() as kernel:
            fast_result, general = merge_both(targets_for(drawn, source), output)
        counts.update(kernel)
        counts["examples"] += 1
        counts["examples with a run accepted"] += kernel["accepted"] > 0

        assert fast_result.body == general.body
        assert fast_result.outcomes == general.outcomes
        assert fast_result.conflicts == general.conflicts

    check()
    assert counts["examples with a run accepted"] >= 0.7 * counts["examples"], counts
    assert counts["accepted"] >= counts["rejected"], counts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(OutputFormat), st.sampled_from(OutputFormat))
def test_kernel_adversarial_across_formats(
    data: st.DataObject, source: OutputFormat, output: OutputFormat
) -> None:
    openmetrics = source is OutputFormat.OPENMETRICS
    lines = st.one_of(clean_lines(openmetrics), adversarial_lines())
    drawn = data.draw(st.lists(st.tuples(bodies(lines, openmetrics), LABELS), min_size=1, max_size=3))

    fast_result, general = merge_both(targets_for(drawn, source), output)

    assert fast_result.body == general.body
    assert fast_result.outcomes == general.outcomes
    assert fast_result.conflicts == general.conflicts


def test_kernel_converting_text_timestamps() -> None:
    body = b'g 1\n# c\ng{a="1"} 2 1700000000123\ng 3 -5\n'

    items = _relabel.scan_body(body, b'worker="0"', b"worker", False, True)

    runs = [item for item in items if not isinstance(item, bytes)]
    assert runs[0][3] == b'g{worker="0"} 1\n'
    assert runs[1][3] == b'g{worker="0",a="1"} 2 1700000000.123\ng{worker="0"} 3 -0.005\n'


def test_kernel_converting_openmetrics_timestamps() -> None:
    body = b'g 1 1700000000.5\ng{a="2"} 2 -0.0001\n# c\ng 3 1.5e3\n'

    items = _relabel.scan_body(body, b'worker="0"', b"worker", True, True)

    runs = [item for item in items if not isinstance(item, bytes)]
    assert runs[0][3] == b'g{worker="0"} 1 1700000000500\ng{worker="0",a="2"} 2 0\n'
    assert runs[1][3] is None  # an exponent is left to the general reader


def test_kernel_converting_without_label_rejects_timestamps() -> None:
    items = _relabel.scan_body(b"g 1 5\n", None, b"worker", False, True)

    assert items == [(0, 6, None, None, 0)]


@pytest.mark.parametrize(
    ("run", "accepted"),
    [
        (b'g{a="1",b="x y"} 1\n', True),
        (b'g{a="}{,#",b="\\"\\\\\\n"} NaN 1700000000123\n', True),
        (b'g{a="worker=\\"w\\""} 1\n', True),
        (b"g 1", True),
        (b'g{worker="w"} 1\n', False),
        (b'g{a="1",a="2"} 1\n', False),
        (b"g{} 1\n", False),
        (b'g{a="1",} 1\n', False),
        (b'g{a="\\t"} 1\n', False),
        (b"g  1\n", False),
        (b"g 1 \n", False),
        (b"g 1\r\n", False),
        (b"g 0x1p3\n", False),
        (b"g +nan\n", False),
        (b"g 1 1.5\n", False),
        (b"g 1 12345678901234567890\n", False),
        (b"g 1\ng 1\n", False),
        (b"g 1\n\ng 2\n", False),
        (b"x 1\n", False),
        (b'{"g"} 1\n', False),
        (b'g{a="1} 1\n', False),
    ],
)
def test_kernel_text_lines(run: bytes, accepted: bool) -> None:
    result = _relabel.relabel_run(run, (b"g",), b'worker="0"', b"worker", False)

    assert (result is not None) == accepted


def test_kernel_writes_label_first() -> None:
    run = b'g{a="1"} 1\ng_sum 2 17\n'

    result = _relabel.relabel_run(run, (b"g", b"g_sum"), b'worker="0"', b"worker", False)

    assert result == (b'g{worker="0",a="1"} 1\ng_sum{worker="0"} 2 17\n', 2, 0b11)
    assert _relabel.series_keys(run, 0, len(run), False) == [b'g{a="1"}', b"g_sum"]


def test_kernel_openmetrics_lines() -> None:
    def accepts(run: bytes) -> bool:
        return _relabel.relabel_run(run, (b"c_total",), b'worker="0"', b"worker", True) is not None

    assert accepts(b"c_total 1 1700000000.123\n")
    assert accepts(b"c_total 1 1.5e3\n")
    assert not accepts(b'c_total 1 # {t="1"} 1\n')  # exemplars are left to the general reader
    assert not accepts(b"c_total 1 0x10\n")


def test_kernel_without_added_label_keeps_worker() -> None:
    run = b'g{worker="3"} 1\n'

    result = _relabel.relabel_run(run, (b"g",), None, b"worker", False)

    assert result == (run, 1, 1)


def test_kernel_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        _relabel.relabel_run("g 1\n", (b"g",), None, b"worker", False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 8"):
        _relabel.relabel_run(b"g 1\n", (b"g",) * 9, None, b"worker", False)
    with pytest.raises(ValueError, match="rejects"):
        _relabel.series_keys(b"g  1\n", 0, 5, False)


FUZZ_BODIES = 3000
FUZZ_SECONDS = 20.0
SEED_BODIES = [
    b'# HELP g Help.\n# TYPE g gauge\ng{a="1",b="}{,#"} 1\ng{a="2"} NaN 1700000000123\ng 3\n',
    b'# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3\nh_count 2\n',
    b'# TYPE c counter\n# UNIT c seconds\nc_total{a="\\"\\\\\\n"} 1 1.5\nc_created 1.5\n# EOF\n',
]


# Bytes that a mutation inserts: the exposition's own punctuation and a few that break it.
MUTATION_BYTES = b'{}",=\\ \n#\t\r0a_\x00\xff'


def assert_items_cover(body: bytes, items: list[bytes | fast.RunItem]) -> None:
    """Check that scan_body's comment lines and runs follow each other over the whole body."""
    position = 0
    for item in items:
        if isinstance(item, bytes):
            assert body.startswith(item, position)
            position += len(item)
        else:
            assert item[0] == position
            assert item[1] > position
            position = item[1]
    assert position == len(body)


def test_kernel_survives_mutated_bodies() -> None:
    # A fixed seed keeps failures reproducible; the deadline bounds the loop on a slow machine.
    rng = random.Random(20261204)
    deadline = time.monotonic() + FUZZ_SECONDS
    checked = 0
    while checked < FUZZ_BODIES and time.monotonic() < deadline:
        body = mutate(rng.choice(SEED_BODIES), rng, MUTATION_BYTES)
        for openmetrics in (False, True):
            added = rng.choice([b'worker="0"', None])
            result = _relabel.relabel_run(body, (b"g", b"h_sum", b"c_total"), added, b"worker", openmetrics)
            if result is not None:
                assert len(_relabel.series_keys(body, 0, len(body), openmetrics)) == result[1]
            converting = rng.choice([False, True])
            items = _relabel.scan_body(body, added, b"worker", openmetrics, converting)
            assert_items_cover(body, items)

        output = rng.choice(list(OutputFormat))
        targets = [TargetBody("0", body, rng.choice([TEXT, OPENMETRICS]))]
        fast_result, general = merge_both(targets, output)
        assert fast_result == general, body
        checked += 1

    assert checked >= 100, f"only {checked} bodies checked before the deadline"


NEVER = re.compile(rb"(?!)")
EXEMPLARS = [
    "", "", "", ' # {t="1"} 1', ' # {t="1"} 1 1.5', ' # {t="a b", u="\\q",} 2', " # {} 1",
    ' # {"q"} 1', ' # {t="1"}', ' # {t="1"} 1 ' + "1" * 70, ' # {t="1",t="2"} 1',
    ' # {t="1"} 0x1', ' #{t="1"}1', ' # {"a.b"="1"} 1', ' # {t="1"} 1 1e3',
]


@contextmanager
def token_reading_only() -> Iterator[None]:
    """Turn off every shortcut of the general reader, so that it reads token by token."""
    with (
        mock.patch.object(TargetReader, "read_sample", TargetReader.read_any_sample),
        mock.patch.object(syntax, "_LEGACY_LABEL_SET", NEVER),
        mock.patch.object(syntax, "_CANONICAL_VALUE", NEVER),
        mock.patch.object(syntax, "_COMMON_EXEMPLAR", NEVER),
        mock.patch.object(syntax, "_PLAIN_SECONDS", NEVER),
    ):
        yield


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(OutputFormat), st.sampled_from(OutputFormat))
def test_general_shortcuts_match_token_reading(
    data: st.DataObject, source: OutputFormat, output: OutputFormat
) -> None:
    openmetrics = source is OutputFormat.OPENMETRICS
    line = st.tuples(st.one_of(clean_lines(openmetrics), adversarial_lines()), st.sampled_from(EXEMPLARS))
    lines = st.builds("".join, line)
    drawn = data.draw(st.lists(st.tuples(bodies(lines, openmetrics), LABELS), min_size=1, max_size=3))
    targets = targets_for(drawn, source)

    shortcuts = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)
    with token_reading_only():
        tokens = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)

    assert shortcuts.body == tokens.body
    assert shortcuts.outcomes == tokens.outcomes
    assert shortcuts.conflicts == tokens.conflicts
