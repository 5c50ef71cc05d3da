"""The whole merge in the kernel: for canonical bodies in the output format it writes what the
general path writes, it takes the scrapes it is meant for, and it hands every other scrape back.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsif_agg.exposition import Conflict, MergeResult, NameFilter, OutputFormat, TargetBody, fast
from lsif_agg.exposition.merge import WholeBody, merge_streamed, merge_targets

TEXT = "text/plain; version=0.0.4"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
CONTENT_TYPES = {OutputFormat.TEXT: TEXT, OutputFormat.OPENMETRICS: OPENMETRICS}
SUFFIXES = {
    OutputFormat.TEXT: {
        "counter": [""],
        "gauge": [""],
        "untyped": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["", "_sum", "_count"],
    },
    OutputFormat.OPENMETRICS: {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "unknown": [""],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
        "summary": ["", "_sum", "_count", "_created"],
        "info": ["_info"],
        "stateset": [""],
    },
}
FAMILY_NAMES = ["a", "b", "c", "c_total", "d:e", "a_sum"]
HELP_TEXTS = ["", "Requests.", 'with "quotes"', "tab\tinside", "é ü", "two  blanks", "back\\\\slash"]
LABEL_VALUES = ["", "x", "}", ",", "#", "{", '\\"', "\\\\", "\\n", "a b", "é", "} 1 # {"]
# Text milliseconds that become OpenMetrics seconds: whole, short, signed, zero.
TEXT_STAMPS = [" 1700000000123", " 1700000000000", " 5", " -1", " +20", " 0", " -0", " 0012000"]
SAMPLE_VALUES = ["1", "-0", "NaN", "+Inf", "-Inf", "1e-320", "2.5", ".5"]


def merge_both(targets: list[TargetBody], output: OutputFormat) -> tuple[MergeResult, MergeResult]:
    whole = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=True)
    general = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=False)
    return whole, general


@contextmanager
def counting_whole_merges() -> Iterator[list[object]]:
    """Record what each kernel call of the whole merge returned while the block runs."""
    returned: list[object] = []
    merge_bodies = fast.merge_bodies

    def counted(*args: object) -> object:
        result = merge_bodies(*args)  # type: ignore[arg-type]
        returned.append(result)
        return result

    with mock.patch.object(fast, "merge_bodies", counted):
        yield returned


@st.composite
def family_blocks(draw: st.DrawFn, source: OutputFormat, name: str, kind: str) -> str:
    """Draw one family block: metadata lines in any order, then samples of its sample names."""
    metadata = []
    if draw(st.integers(0, 4)) > 0:
        metadata.append(f"# TYPE {name} {kind}")
    if draw(st.booleans()):
        metadata.append(f"# HELP {name} {draw(st.sampled_from(HELP_TEXTS))}".rstrip(" "))
    if source is OutputFormat.OPENMETRICS and draw(st.booleans()):
        metadata.append(f"# UNIT {name} {draw(st.sampled_from(['seconds', 'bytes']))}")
    metadata = draw(st.permutations(metadata))
    if not any(line.startswith("# TYPE") for line in metadata):
        kind = "untyped" if source is OutputFormat.TEXT else "unknown"

    samples = []
    for _ in range(draw(st.integers(0, 6) | st.integers(1, 3))):
        suffix = draw(st.sampled_from(SUFFIXES[source][kind]))
        labels = draw(
            st.lists(
                st.tuples(st.sampled_from(["le", "path", "x"]), st.sampled_from(LABEL_VALUES)),
                max_size=2,
                unique_by=lambda pair: pair[0],
            )
        )
        written = ",".join(f'{label}="{value}"' for label, value in labels)
        stamps = TEXT_STAMPS if source is OutputFormat.TEXT else [" 17.5", " -1", " 1e3"]
        stamp = draw(st.sampled_from(["", *stamps]))
        value = draw(st.sampled_from(SAMPLE_VALUES))
        samples.append(
            f"{name}{suffix}{{{written}}} {value}{stamp}" if labels else f"{name}{suffix} {value}{stamp}"
        )
    return "\n".join([*metadata, *samples])


BREAKAGES = ["", "\n", "# a plain comment\n", "bad line\n", "a 1 2 3\n", "a\r\n", "# TYPE a nonsense\n"]


@st.composite
def scrapes(draw: st.DrawFn, output: OutputFormat, mixed: bool = False) -> list[TargetBody]:
    """Draw up to four targets of one program: the same types unless a draw changes one.

    Mixed scrapes draw each target's format, as when a server and its workers differ.
    """
    all_kinds = {
        form: {name: draw(st.sampled_from(sorted(SUFFIXES[form]))) for name in FAMILY_NAMES}
        for form in OutputFormat
    }
    targets = []
    for index in range(draw(st.integers(1, 4))):
        source = draw(st.sampled_from(OutputFormat)) if mixed else output
        kinds = all_kinds[source]
        if draw(st.integers(0, 9)) == 0:
            kinds = all_kinds[source] = dict(kinds, a=draw(st.sampled_from(sorted(SUFFIXES[source]))))
        # Mostly each family once, as client libraries write them; now and then one twice.
        names = draw(st.permutations(FAMILY_NAMES))[: draw(st.integers(0, len(FAMILY_NAMES)))]
        if names and draw(st.integers(0, 9)) == 0:
            names.append(names[0])
        blocks = [draw(family_blocks(source, name, kinds[name])) for name in names]
        body = "\n".join(block for block in blocks if block)
        body += "\n" if body else ""
        body += draw(st.sampled_from(BREAKAGES[:1] * 12 + BREAKAGES))
        if source is OutputFormat.OPENMETRICS:
            body += "# EOF\n"
        targets.append(TargetBody(f"w{index}", body.encode(), CONTENT_TYPES[source]))
    return targets


def test_mixed_formats_into_openmetrics_match_the_general_path() -> None:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scrapes(OutputFormat.OPENMETRICS, mixed=True))
    def check(targets: list[TargetBody]) -> None:
        whole, general = merge_both(targets, OutputFormat.OPENMETRICS)
        assert whole == general

    check()


def test_text_counters_join_openmetrics_counters_in_the_kernel() -> None:
    text = b"# HELP c_total Calls.\n# TYPE c_total counter\nc_total 1 1700000000123\n"
    openmetrics = b"# HELP c Calls.\n# TYPE c counter\nc_total 2\nc_created 1.5\n# EOF\n"
    targets = [TargetBody("w0", text, TEXT), TargetBody("w1", openmetrics, OPENMETRICS)]
    with counting_whole_merges() as returned:
        whole, general = merge_both(targets, OutputFormat.OPENMETRICS)

    assert whole == general
    assert isinstance(returned[0], tuple)
    assert whole.body == (
        b"# HELP c Calls.\n# TYPE c counter\n"
        b'c_total{worker="w0"} 1 1700000000.123\n'
        b'c_total{worker="w1"} 2\nc_created{worker="w1"} 1.5\n# EOF\n'
    )


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_whole_merge_writes_what_the_general_path_writes(output: OutputFormat) -> None:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scrapes(output))
    def check(targets: list[TargetBody]) -> None:
        whole, general = merge_both(targets, output)
        assert whole == general

    check()


def body_of(lines: list[str], output: OutputFormat) -> bytes:
    eof = ["# EOF"] if output is OutputFormat.OPENMETRICS else []
    return ("\n".join(lines + eof) + "\n").encode()


def replicas(lines: list[str], output: OutputFormat, count: int = 3) -> list[TargetBody]:
    return [TargetBody(f"w{i}", body_of(lines, output), CONTENT_TYPES[output]) for i in range(count)]


HISTOGRAM = [
    "# HELP req_seconds Request latency.",
    "# TYPE req_seconds histogram",
    'req_seconds_bucket{le="0.1"} 1',
    'req_seconds_bucket{le="+Inf"} 2',
    "req_seconds_sum 0.3",
    "req_seconds_count 2",
    "# TYPE up gauge",
    "up 1",
]


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_replicas_of_one_program_take_the_whole_merge(output: OutputFormat) -> None:
    with counting_whole_merges() as returned:
        whole, general = merge_both(replicas(HISTOGRAM, output), output)
    assert whole == general
    assert len(returned) == 1 and isinstance(returned[0], tuple)
    assert whole.body.count(b"# TYPE req_seconds histogram") == 1
    assert b'req_seconds_bucket{worker="w2",le="+Inf"} 2\n' in whole.body
    assert [outcome.samples for outcome in whole.outcomes] == [5, 5, 5]


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_whole_merge_leaves_out_invalid_body(output: OutputFormat) -> None:
    targets = replicas(HISTOGRAM, output)
    broken = body_of([*HISTOGRAM[:3], "req_seconds_bucket{le=0.5} 1", *HISTOGRAM[3:]], output)
    targets[1] = TargetBody("w1", broken, CONTENT_TYPES[output])
    with counting_whole_merges() as returned:
        whole, general = merge_both(targets, output)

    assert whole == general
    assert returned[0] == 1 and isinstance(returned[-1], tuple)
    assert whole.outcomes[1].error == "invalid_exposition"
    assert whole.outcomes[1].detail is not None and "line 4" in whole.outcomes[1].detail
    assert b'worker="w1"' not in whole.body


def test_whole_merge_leaves_out_non_utf8_body() -> None:
    targets = replicas(HISTOGRAM, OutputFormat.TEXT)
    targets[0] = TargetBody("w0", b'# TYPE up gauge\nup{x="\xff"} 1\n', TEXT)
    with counting_whole_merges() as returned:
        whole, general = merge_both(targets, OutputFormat.TEXT)
    assert whole == general
    assert whole.outcomes[0].error == "invalid_exposition"
    assert isinstance(returned[-1], tuple)


def test_whole_merge_conflict_order() -> None:
    first = [
        "# HELP a One.",
        "# UNIT a seconds",
        "# TYPE a gauge",
        "a 1",
        "# HELP b B.",
        "# TYPE b gauge",
        "b 1",
    ]
    second = [
        "# HELP b Other.",
        "# TYPE b gauge",
        "b 2",
        "# HELP a Two.",
        "# UNIT a bytes",
        "# TYPE a gauge",
        "a 2",
    ]
    targets = [
        TargetBody("w0", body_of(first, OutputFormat.OPENMETRICS), OPENMETRICS),
        TargetBody("w1", body_of(second, OutputFormat.OPENMETRICS), OPENMETRICS),
    ]
    with counting_whole_merges() as returned:
        whole, general = merge_both(targets, OutputFormat.OPENMETRICS)
    assert whole == general
    assert isinstance(returned[0], tuple)
    assert whole.conflicts == (Conflict("b", "help"), Conflict("a", "help"), Conflict("a", "unit"))


@pytest.mark.parametrize(
    ("case", "lines"),
    [
        (
            "a family given twice",
            ["# TYPE a gauge", "a 1", "# TYPE b gauge", "b 1", "# TYPE a gauge", 'a{x="1"} 2'],
        ),
        ("a sample of another family", ["# TYPE a gauge", "a 1", "# TYPE b gauge", "a 2"]),
        ("a sample before any metadata", ["a 1"]),
        ("a clashing worker label", ["# TYPE a gauge", 'a{worker="own"} 1']),
        ("an exemplar", ["# TYPE a counter", 'a_total 1 # {t="1"} 1']),
        ("a line of blanks", ["# TYPE a gauge", " ", "a 1"]),
        ("a plain comment", ["# TYPE a gauge", "# just a note", "a 1"]),
    ],
)
def test_whole_merge_rejected_body(case: str, lines: list[str]) -> None:
    output = OutputFormat.OPENMETRICS if case == "an exemplar" else OutputFormat.TEXT
    with counting_whole_merges() as returned:
        whole, general = merge_both(replicas(lines, output, count=2), output)
    assert whole == general
    assert returned == [0], case
    assert all(outcome.error is None for outcome in whole.outcomes), case


def test_whole_merge_type_conflict() -> None:
    targets = [
        TargetBody("w0", body_of(["# TYPE a gauge", "a 1"], OutputFormat.TEXT), TEXT),
        TargetBody("w1", body_of(["# TYPE a counter", "a 1"], OutputFormat.TEXT), TEXT),
    ]
    with counting_whole_merges() as returned:
        whole, general = merge_both(targets, OutputFormat.TEXT)
    assert whole == general
    assert returned == [-1]
    assert whole.conflicts == (Conflict("a", "type"),)


def test_whole_merge_empty_lines_and_help_escapes() -> None:
    lines = ["# HELP a Back\\\\slash and\\nnewline.", "# TYPE a gauge", "", "a 1", "", ""]
    with counting_whole_merges() as returned:
        whole, general = merge_both(replicas(lines, OutputFormat.TEXT, count=2), OutputFormat.TEXT)
    assert whole == general
    assert isinstance(returned[0], tuple)
    assert b"# HELP a Back\\\\slash and\\nnewline.\n" in whole.body


def test_whole_merge_repeated_series() -> None:
    lines = ["# TYPE a gauge", 'a{x="1"} 1', 'a{x="2"} 2', 'a{x="1"} 3']
    with counting_whole_merges() as returned:
        whole, general = merge_both(replicas(lines, OutputFormat.TEXT, count=2), OutputFormat.TEXT)
    assert whole == general
    assert isinstance(returned[0], tuple)
    assert whole.body.count(b'a{worker="w0",x="1"}') == 1
    assert [outcome.samples for outcome in whole.outcomes] == [2, 2]


def test_whole_merge_skips_openmetrics_into_text() -> None:
    lines = ["# TYPE a gauge", "a 1"]
    shared = [TargetBody("w", target.body, TEXT) for target in replicas(lines, OutputFormat.TEXT)]
    with counting_whole_merges() as returned:
        converted, general = merge_both(replicas(lines, OutputFormat.OPENMETRICS), OutputFormat.TEXT)
        assert converted == general
        whole, general = merge_both(shared, OutputFormat.TEXT)
    assert whole == general
    assert returned == []


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("in a label value", b'# TYPE a gauge\na{x="\xff\xfe"} 1\n# EOF\n'),
        ("in a HELP text", b"# HELP a Bad \xc3.\n# TYPE a gauge\na 1\n# EOF\n"),
        ("after # EOF", b"# TYPE a gauge\na 1\n# EOF\n\xff\n"),
    ],
)
def test_whole_merge_non_utf8_anywhere(case: str, body: bytes) -> None:
    targets = replicas(["# TYPE a gauge", "a 1"], OutputFormat.OPENMETRICS, count=2)
    targets[1] = TargetBody("w1", body, OPENMETRICS)
    with counting_whole_merges() as returned:
        whole, general = merge_both(targets, OutputFormat.OPENMETRICS)
    assert whole == general, case
    assert whole.outcomes[1].error == "invalid_exposition", case
    assert isinstance(returned[-1], tuple), case


@st.composite
def replica_scrapes(draw: st.DrawFn, output: OutputFormat) -> list[TargetBody]:
    """Draw one body and up to four replicas of it: the same series in the same order with their
    own values, now and then with a line changed, added or removed."""
    base = draw(scrapes(output))[0].body.decode().splitlines()
    targets = [TargetBody("w0", body_of_lines(base), CONTENT_TYPES[output])]
    for index in range(1, draw(st.integers(2, 5))):
        lines = []
        for line in base:
            if line.startswith("#") or not line:
                lines.append(line)
                continue
            series = line.rpartition(" ")[0] if line.count(" ") == 1 else line.partition(" ")[0]
            change = draw(st.integers(0, 19))
            if change == 0:
                continue  # a series this replica lacks
            if change == 1:
                lines.append(line.replace('"', '"x', 1) if "{" in line else line + "_other 1")
            elif change == 2:
                lines.extend([line, line])  # a repeat only in this replica
            else:
                lines.append(f"{series} {draw(st.sampled_from(SAMPLE_VALUES))}")
        targets.append(TargetBody(f"w{index}", body_of_lines(lines), CONTENT_TYPES[output]))
    return targets


def body_of_lines(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_whole_merge_near_replicas(output: OutputFormat) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(replica_scrapes(output))
    def check(targets: list[TargetBody]) -> None:
        whole, general = merge_both(targets, output)
        assert whole == general

    check()


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_whole_merge_name_filter_matches(output: OutputFormat) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(replica_scrapes(output) | scrapes(output, mixed=output is OutputFormat.OPENMETRICS), st.data())
    def check(targets: list[TargetBody], data: st.DataObject) -> None:
        names = [
            f"{family}{suffix}" for family in FAMILY_NAMES for suffix in ["", "_total", "_sum", "_bucket"]
        ]
        dropped = data.draw(st.sets(st.sampled_from(names)))
        dropped_worker = data.draw(st.sampled_from(["w0", "w1", "none"]))

        def keep(name: str, labels: Mapping[str, str]) -> bool:
            return name not in dropped and labels.get("worker") != dropped_worker

        name_filter = NameFilter(keep)
        whole = merge_targets(targets, output, label_name="worker", keep=name_filter, use_fast_path=True)
        general = merge_targets(targets, output, label_name="worker", keep=keep, use_fast_path=False)
        assert whole == general

    check()


def test_whole_merge_name_filter_in_kernel() -> None:
    def keep(name: str, labels: Mapping[str, str]) -> bool:
        return name != "req_seconds_bucket" and labels["worker"] != "w1"

    with counting_whole_merges() as returned:
        whole = merge_targets(
            replicas(HISTOGRAM, OutputFormat.TEXT),
            OutputFormat.TEXT,
            label_name="worker",
            keep=NameFilter(keep),
            use_fast_path=True,
        )

    assert isinstance(returned[0], tuple)
    assert b"req_seconds_bucket" not in whole.body
    assert b'req_seconds_sum{worker="w0"} 0.3\n' in whole.body
    assert b'worker="w1"' not in whole.body
    assert [outcome.samples for outcome in whole.outcomes] == [3, 0, 3]


@pytest.mark.parametrize("output", list(OutputFormat), ids=lambda output: output.value)
def test_slices_join_to_the_whole_body(output: OutputFormat) -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(replica_scrapes(output) | scrapes(output, mixed=True), st.sampled_from([1, 40, 300, 1 << 16]))
    def check(targets: list[TargetBody], limit: int) -> None:
        whole = merge_targets(targets, output, label_name="worker", keep=None, use_fast_path=True)
        streamed = merge_streamed(targets, output)
        slices = [bytes(piece) for piece in streamed.body.slices(limit)]

        assert b"".join(slices) == whole.body
        assert len(streamed.body) == len(whole.body)
        assert streamed.body.tobytes() == whole.body
        assert (streamed.outcomes, streamed.conflicts) == (whole.outcomes, whole.conflicts)
        for piece in slices:
            assert len(piece) <= limit or piece.count(b"\n") <= 1 or not isinstance(streamed.body, WholeBody)

    check()


def test_kernel_slices_end_at_line_ends_and_respect_the_limit() -> None:
    targets = replicas(HISTOGRAM * 1, OutputFormat.OPENMETRICS, count=3)
    with counting_whole_merges() as returned:
        streamed = merge_streamed(targets, OutputFormat.OPENMETRICS)
    assert isinstance(returned[0], tuple)

    slices = [bytes(piece) for piece in streamed.body.slices(64)]
    assert all(piece.endswith(b"\n") for piece in slices)
    # Only one piece may be longer: a sample line, or a family's HELP and TYPE lines.
    assert all(len(piece) <= 64 or piece.count(b"\n") == 1 or piece.startswith(b"# HELP") for piece in slices)
    assert len(slices) > 3


@pytest.mark.parametrize("use_kernel", [True, False], ids=["kernel", "general"])
def test_openmetrics_without_eof_for_a_caller_that_appends(use_kernel: bool) -> None:
    lines = HISTOGRAM if use_kernel else ["# a plain comment", *HISTOGRAM]
    targets = replicas(lines, OutputFormat.OPENMETRICS, count=2)
    whole = merge_targets(
        targets, OutputFormat.OPENMETRICS, label_name="worker", keep=None, use_fast_path=True
    )

    streamed = merge_streamed(targets, OutputFormat.OPENMETRICS, eof=False)

    assert whole.body.endswith(b"\n# EOF\n")
    assert streamed.body.tobytes() == whole.body[: -len(b"# EOF\n")]
    assert b"".join(bytes(piece) for piece in streamed.body.slices(50)) == streamed.body.tobytes()
