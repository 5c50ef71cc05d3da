"""Property tests: the merged output reads back as the union of the targets' samples, and the
fast path writes the same bytes as the general reader for any input.
"""

import math
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as read_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as read_text

from lsif_agg.exposition import OutputFormat, TargetBody
from lsif_agg.exposition.merge import merge_targets
from lsif_agg.exposition.syntax import milliseconds_to_seconds, seconds_to_milliseconds

TEXT = "text/plain; version=0.0.4"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
LABEL_NAMES = ("a", "b", "worker")
LABEL_VALUE = st.text(alphabet=st.sampled_from('ab "\\\n{},#=é'), max_size=6)

Series = tuple[str, tuple[tuple[str, str], ...], int]  # sample name, labels, value
ReadSample = tuple[str, frozenset[tuple[str, str]], float]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def families(draw: st.DrawFn) -> list[tuple[str, str, list[Series]]]:
    """Draw families of gauges, counters and untyped series, with quote-heavy label values."""
    drawn = []
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("gauge", "counter", "untyped")))
        name = {"gauge": f"g{index}", "counter": f"c{index}_total", "untyped": f"u{index}"}[kind]
        label_sets = st.dictionaries(st.sampled_from(LABEL_NAMES), LABEL_VALUE, max_size=3)
        samples = draw(st.lists(st.tuples(label_sets, st.integers(0, 5)), min_size=1, max_size=5))
        series = [(name, tuple(labels.items()), value) for labels, value in samples]
        drawn.append((name, kind, series))
    return drawn


def write_text(drawn: list[tuple[str, str, list[Series]]], messy: bool) -> bytes:
    lines = []
    for name, kind, series in drawn:
        lines.append(f"# HELP {name} Help of {name}.")
        lines.append(f"# TYPE {name} {kind}")
        for sample, labels, value in series:
            separator = " , " if messy else ","
            pairs = separator.join(f'{label}="{escape(text)}"' for label, text in labels)
            written = f"{sample}{{{pairs}}} {value}" if pairs or messy else f"{sample} {value}"
            lines.append("\t" + written + "  " if messy else written)
    end = "\r\n" if messy else "\n"
    return end.join(lines).encode() + end.encode()


def expected_series(label: str, drawn: list[tuple[str, str, list[Series]]]) -> set[ReadSample]:
    """Apply the merge's rules by hand: worker label added, a clashing one moved, repeats out."""
    expected: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for _, _, series in drawn:
        for sample, labels, value in series:
            relabelled = dict(labels)
            clashing = relabelled.pop("worker", "")
            if clashing:
                relabelled["exported_worker"] = clashing
            relabelled["worker"] = label
            key = (sample, frozenset(relabelled.items()))
            expected.setdefault(key, float(value))
    return {(name, labels, value) for (name, labels), value in expected.items()}


def read_back(body: bytes, output: OutputFormat) -> set[ReadSample]:
    reader = read_text if output is OutputFormat.TEXT else read_openmetrics
    return {
        (sample.name, frozenset(sample.labels.items()), sample.value)
        for family in reader(body.decode())
        for sample in family.samples
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(families(), min_size=1, max_size=4),
    st.sampled_from(OutputFormat),
    st.booleans(),
)
def test_merge_reads_back_as_union(
    targets: list[list[tuple[str, str, list[Series]]]], output: OutputFormat, messy: bool
) -> None:
    # Targets here agree on every family's type, as copies of one program do.
    kinds: dict[str, str] = {}
    for drawn in targets:
        for name, kind, _ in drawn:
            kinds.setdefault(name, kind)
    consistent = [
        [(name, kinds[name], series) for name, _, series in drawn] for drawn in targets
    ]
    bodies = [TargetBody(str(i), write_text(d, messy), TEXT) for i, d in enumerate(consistent)]

    result = merge_targets(bodies, output, label_name="worker", keep=None, use_fast_path=True)

    expected: set[ReadSample] = set().union(*(expected_series(str(i), d) for i, d in enumerate(consistent)))
    assert read_back(result.body, output) == expected
    assert all(outcome.error is None for outcome in result.outcomes)
    assert sum(outcome.samples for outcome in result.outcomes) == len(expected)


# Fragments from which lines are put together: mostly canonical pieces, so that the fast
# path's checks are exercised near their edges, and some that break them.
FRAGMENTS = st.sampled_from(
    [
        "g", "g_total", "h_bucket", "h_sum", "inf", "nan", "{", "}", '"', "=", ",", " ", "  ",
        "\t", "\r", "\\", "#", "a", "worker", 'a="1"', 'b="x y"', 'worker="w"', 'le="+Inf"',
        "1", "-0", "+Inf", "NaN", "+nan", "1_0", "1e3", ".5", "1.", "1700000000", "é",
    ]
)
LINE = st.lists(FRAGMENTS, max_size=8).map("".join)
CANONICAL_LINE = st.builds(
    lambda name, labels, value: f"{name}{{{labels}}} {value}" if labels else f"{name} {value}",
    st.sampled_from(["g", "g_total", "h_bucket", "h_sum", "h_count", "inf"]),
    st.lists(st.sampled_from(['a="1"', 'b="x"', 'le="+Inf"', 'c="{"', 'worker="w"']), max_size=3)
    .map(lambda labels: ",".join(dict.fromkeys(labels))),
    st.sampled_from(["1", "-0", "+Inf", "NaN", "1e-320", "2.5", "x"]),
)
HEADER = st.sampled_from(
    [
        "",
        "# TYPE g gauge\n",
        "# TYPE g counter\n",
        "# TYPE h histogram\n",
        "# HELP g Help.\n# TYPE g gauge\n",
        "# TYPE inf gauge\n",
        "# TYPE g_total counter\n",
    ]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    chunks = []
    for _ in range(draw(st.integers(1, 4))):
        chunks.append(draw(HEADER))
        lines = draw(st.lists(st.one_of(CANONICAL_LINE, CANONICAL_LINE, LINE), max_size=6))
        chunks.append("".join(line + "\n" for line in lines))
    body = "".join(chunks)
    if draw(st.booleans()):
        body += "# EOF\n"
    if draw(st.booleans()):
        body = body.rstrip("\n")
    return body.encode()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(bodies(), st.sampled_from([TEXT, OPENMETRICS, None])), max_size=4),
    st.sampled_from(OutputFormat),
    st.sampled_from(["0", None]),
)
def test_fast_path_matches_general(
    drawn: list[tuple[bytes, str | None]], output: OutputFormat, first_label: str | None
) -> None:
    targets = [
        TargetBody(first_label if i == 0 else str(i), body, content_type)
        for i, (body, content_type) in enumerate(drawn)
    ]

    fast = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=True)
    general = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)

    assert fast.body == general.body
    assert fast.outcomes == general.outcomes
    assert fast.conflicts == general.conflicts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(CANONICAL_LINE, max_size=30), st.booleans()), max_size=4))
def test_fast_path_matches_general_clean(drawn: list[tuple[list[str], bool]]) -> None:
    targets = [
        TargetBody(str(i), "".join(line + "\n" for line in lines).encode(), TEXT)
        for i, (lines, _) in enumerate(drawn)
    ]

    fast = merge_targets(targets, OutputFormat.TEXT, label_name="worker", keep=None, use_fast_path=True)
    general = merge_targets(
        targets, OutputFormat.TEXT, label_name="worker", keep=None, use_fast_path=False
    )

    assert fast == general


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_timestamp_round_trip(milliseconds: int) -> None:
    seconds = milliseconds_to_seconds(str(milliseconds).encode())

    assert Decimal(seconds.decode()) * 1000 == milliseconds
    assert seconds_to_milliseconds(seconds, 1) == str(milliseconds).encode()


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_timestamp_seconds_truncate(seconds: float) -> None:
    written = repr(seconds).encode()
    if abs(seconds) * 1000 >= 2**63:
        return

    milliseconds = int(seconds_to_milliseconds(written, 1))

    exact = Decimal(repr(seconds)) * 1000
    assert abs(exact - milliseconds) < 1
    assert math.copysign(1, exact) == math.copysign(1, milliseconds) or milliseconds == 0
