"""Read one target's body, line by line, into relabelled samples grouped by output family.

This is the general path: it handles every quirk the formats allow and is the reference that
the block fast path in `fast.py` must match byte for byte. How strict it is, compared with
Prometheus's reference readers:

- It is laxer on blanks: tabs and repeated blanks between tokens, blanks at either end of a
  line, CRLF line ends, blank lines and a missing final newline are all accepted, in OpenMetrics
  input too, where the specification allows none of them.
- Comments that are not HELP, TYPE, UNIT or EOF are ignored in both formats.
- It is as strict as Prometheus on everything that reaches the output: names, the label set,
  the value and the timestamp must be valid, or the whole body is rejected, because one bad
  line in the merged output would make the outer Prometheus fail the whole scrape.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from lsif_agg.exposition import _normalize, fast, formats, syntax
from lsif_agg.exposition.fast import FastRun
from lsif_agg.exposition.records import OutputFormat, SeriesFilter
from lsif_agg.exposition.syntax import InvalidExposition

_OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"
_TAIL = 4096  # bytes at the end of a body searched for `# EOF` when sniffing the format

_HELP = b"HELP"
_TYPE = b"TYPE"
_UNIT = b"UNIT"
_EOF = b"# EOF"


@dataclass(slots=True)
class SourceFamily:
    """A family as one target declares it, in the target's own format."""

    name: bytes
    kind: str
    declared: bool  # False when no TYPE line named it; then it is untyped or unknown
    allowed: frozenset[bytes]  # sample names that belong to it
    help: bytes | None = None
    unit: bytes | None = None
    help_conflict: bool = False
    unit_conflict: bool = False
    parts: dict[bytes, "Part"] = field(default_factory=dict)  # by output family name
    sample_parts: dict[bytes, "Part"] = field(default_factory=dict)  # by sample name


@dataclass(slots=True)
class LineSegment:
    """Sample lines from the general reader, each with its series."""

    keys: list[bytes] = field(default_factory=list)  # series without the added label
    lines: list[bytes] = field(default_factory=list)  # rendered, newline included


@dataclass(slots=True)
class Part:
    """One target's samples of one output family, relabelled and rendered.

    Samples sit in segments, in input order: single lines from the general reader, or whole
    runs from the fast path. `keys` and `lines` belong to the open line segment.
    """

    family: bytes  # output family name
    kind: str  # output type
    source: SourceFamily
    names: set[bytes] = field(default_factory=set)  # sample names
    keys: list[bytes] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    segments: list[LineSegment | FastRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.segments.append(LineSegment(self.keys, self.lines))

    def add_run(self, run: FastRun) -> None:
        self.names.update(run.names)
        if not self.keys:
            self.segments.insert(-1, run)  # before the open line segment, which stays empty
            return
        self.segments.append(run)
        self.keys, self.lines = [], []
        self.segments.append(LineSegment(self.keys, self.lines))

    def is_empty(self) -> bool:
        return not any(isinstance(segment, FastRun) or segment.keys for segment in self.segments)

    @property
    def declared(self) -> bool:
        """Whether the target gave this family a type; untyped and unknown give none."""
        return self.source.declared and not formats.is_untyped(self.source.kind)

    @property
    def help(self) -> bytes | None:
        return self.source.help

    @property
    def unit(self) -> bytes | None:
        return self.source.unit


@dataclass(frozen=True, slots=True)
class NormalizedRun(FastRun):
    """A run of sample lines that the normalizer rewrote, with the series it listed for them.

    The kernel's series_keys reads only canonical lines, so this run keeps its own list.
    """

    series: bytes  # each line's series without the added label, each followed by a newline

    def keys(self) -> list[bytes]:
        keys = self.series.split(b"\n")
        keys.pop()  # the empty bytes after the last newline
        return keys


def is_openmetrics(body: bytes, content_type: str | None) -> bool:
    """Return whether a body is OpenMetrics: by its Content-Type, or else by a final `# EOF`.

    Every OpenMetrics body ends in `# EOF` and a text body has no reason to, so a body that
    does is read as OpenMetrics whatever its Content-Type names.
    """
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type == _OPENMETRICS_MEDIA_TYPE:
            return True
    tail = body[-_TAIL:].rstrip(b" \t\r\n")
    return tail == _EOF or tail.endswith(b"\n" + _EOF)


def check_utf8(body: bytes) -> None:
    if body.isascii():
        return
    try:
        body.decode()
    except UnicodeDecodeError as error:
        line = body.count(b"\n", 0, error.start) + 1
        raise InvalidExposition(line, "invalid UTF-8") from None


def escape_label_value(value: str) -> bytes:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return escaped.encode()


class TargetReader:
    """Read one body into parts; raises InvalidExposition and keeps nothing on bad input."""

    def __init__(
        self,
        output: OutputFormat,
        openmetrics: bool,
        label: str | None,
        label_name: str,
        keep: SeriesFilter | None,
    ) -> None:
        self.output = output
        self.source = OutputFormat.OPENMETRICS if openmetrics else OutputFormat.TEXT
        self.label = label
        self.label_name = label_name.encode()
        self.added_label = (
            None if label is None else self.label_name + b'="' + escape_label_value(label) + b'"'
        )
        self.keep = keep
        self.use_fast_path = True
        self.parts: list[Part] = []
        self.families: dict[bytes, SourceFamily] = {}
        self.by_sample: dict[bytes, SourceFamily] = {}
        self.current: SourceFamily | None = None
        self.common_line = (
            syntax.COMMON_OPENMETRICS_LINE if openmetrics else syntax.COMMON_TEXT_LINE
        )

    def read(self, body: bytes) -> list[Part]:
        """Read every line; OpenMetrics input ends at `# EOF`, which it must have."""
        check_utf8(body)
        if self.can_use_fast_path(body):
            finished, number = self.read_runs(body)
        else:
            finished, number = self.read_lines(body, 1)

        if not finished and self.source is OutputFormat.OPENMETRICS:
            raise InvalidExposition(number, "OpenMetrics body without # EOF, maybe truncated")
        return self.parts

    def can_use_fast_path(self, body: bytes) -> bool:
        # The series filter needs every sample's labels decoded, which the kernel never does.
        return self.use_fast_path and self.keep is None

    def read_runs(self, body: bytes) -> tuple[bool, int]:
        """Read comment lines one by one, and the runs between them with the kernel or else the
        normalizer."""
        openmetrics = self.source is OutputFormat.OPENMETRICS
        converting = self.source is not self.output
        number = 1
        items = fast.scan_body(body, self.added_label, self.label_name, openmetrics, converting)
        for item in items:
            if isinstance(item, bytes):
                finished, number = self.read_comment_item(item, number)
            elif self.add_run(body, item, openmetrics):
                number += item[4] if body[item[1] - 1] == 0x0A else item[4] - 1  # "\n"
                continue
            else:
                finished, number = self.read_rejected_run(body, item[0], item[1], number)
            if finished:
                return True, number
        return False, number

    def add_run(self, body: bytes, item: fast.RunItem, openmetrics: bool) -> bool:
        """Add a run the kernel accepted if all its sample names belong to one family, and
        to one output family when the formats differ."""
        start, end, names, block, count = item
        if names is None or block is None:
            return False
        family = self.family_for(names[0])
        if not family.allowed.issuperset(names):
            return False
        if len(names) > 1 and self.source is not self.output and not self.is_one_part(family, names):
            return False

        run = FastRun(block, body, start, end, count, frozenset(names), openmetrics)
        self.part_for(family, names[0]).add_run(run)
        return True

    def read_rejected_run(self, body: bytes, start: int, end: int, number: int) -> tuple[bool, int]:
        """Read a run the kernel rejected. The normalizer writes the lines it covers, and
        read_lines reads each line it leaves, in line order, so errors keep their messages and
        line numbers."""
        openmetrics = self.source is OutputFormat.OPENMETRICS
        output_openmetrics = self.output is OutputFormat.OPENMETRICS
        position = start
        while position < end:
            stop, newlines, block, series, stretches = _normalize.normalize_lines(
                body, position, end, self.added_label, self.label_name, openmetrics, output_openmetrics
            )
            if stretches:
                self.add_stretches(body, position, block, series, stretches)
            number += newlines
            if stop == end:
                break

            newline = body.find(b"\n", stop, end)
            position = end if newline < 0 else newline + 1
            finished, number = self.read_lines(body[stop:position], number)
            if finished:
                return True, number
        return False, number

    def add_stretches(
        self,
        body: bytes,
        start: int,
        block: bytes,
        series: bytes,
        stretches: "tuple[_normalize.Stretch, ...]",  # the alias exists in the stub only
    ) -> None:
        """Add the lines the normalizer wrote to the parts of their sample names, as
        read_sample would: one run for each group of neighbouring stretches in one part."""
        openmetrics = self.source is OutputFormat.OPENMETRICS
        if len(stretches) == 1:  # one sample name, the usual case
            name, lines, end, _, _ = stretches[0]
            run = NormalizedRun(block, body, start, end, lines, frozenset((name,)), openmetrics, series)
            self.part_for(self.family_for(name), name).add_run(run)
            return

        parts = [self.part_for(self.family_for(stretch[0]), stretch[0]) for stretch in stretches]
        first, begin = 0, (start, 0, 0)  # where the group starts in body, block and series
        for index, stretch in enumerate(stretches):
            if index + 1 < len(stretches) and parts[index + 1] is parts[index]:
                continue
            group, end_of_group = stretches[first : index + 1], stretch[2:]
            run = NormalizedRun(
                block[begin[1] : end_of_group[1]],
                body,
                begin[0],
                end_of_group[0],
                sum(grouped[1] for grouped in group),
                frozenset(grouped[0] for grouped in group),
                openmetrics,
                series[begin[2] : end_of_group[2]],
            )
            parts[index].add_run(run)
            first, begin = index + 1, end_of_group

    def is_one_part(self, family: SourceFamily, names: tuple[bytes, ...]) -> bool:
        # OpenMetrics to text splits some families by sample name: a counter's _created
        # samples, for one, become a gauge family of their own.
        output_names = {
            formats.output_family(self.source, self.output, family.kind, family.name, name)
            for name in names
        }
        return len(output_names) == 1

    def read_lines(self, body: bytes, first_line: int) -> tuple[bool, int]:
        """Read line by line; return whether `# EOF` ended the body, and the last line number."""
        openmetrics = self.source is OutputFormat.OPENMETRICS
        number = first_line
        for number, raw in enumerate(body.split(b"\n"), first_line):
            line = raw.strip(b" \t\r")
            if not line:
                continue
            if line[0] != 0x23:  # not "#"
                self.read_sample(line, number)
            elif openmetrics and line == _EOF:
                return True, number
            else:
                self.read_comment(line, number)
        return False, number

    # --- metadata -------------------------------------------------------------------------

    def read_comment_item(self, item: bytes, number: int) -> tuple[bool, int]:
        """Read a comment line from the kernel, newline included, as read_lines would."""
        line = item.strip(b" \t\r\n")
        if self.source is OutputFormat.OPENMETRICS and line == _EOF:
            return True, number
        self.read_comment(line, number)
        return False, number + (item[-1] == 0x0A)  # "\n"

    def read_comment(self, line: bytes, number: int) -> None:
        try:
            comment = parse_comment(line, self.source)
        except InvalidExposition as error:
            raise InvalidExposition(number, error.message) from None
        if comment is None:
            return

        keyword, name, text = comment
        if keyword == _TYPE:
            self.declare_type(name, text.decode(errors="replace"), number)
        elif keyword == _HELP:
            self.declare_help(name, text)
        else:
            self.declare_unit(name, text)

    def declare_type(self, name: bytes, kind: str, number: int) -> None:
        allowed = formats.TEXT_TYPES if self.source is OutputFormat.TEXT else formats.OPENMETRICS_TYPES
        if kind not in allowed:
            raise InvalidExposition(number, f"unknown metric type {kind!r}")

        family = self.families.get(name)
        if family is not None and family.declared and family.kind == kind:
            self.current = family  # the same family again: its samples are regrouped
            return
        if family is None or family.declared or family.parts:
            family = self.add_family(name, kind, declared=True, previous=family)
        else:
            self.set_kind(family, kind, declared=True)
        self.current = family

    def declare_help(self, name: bytes, text: bytes) -> None:
        family = self.metadata_family(name)
        if family.help is None:
            family.help = text
        elif family.help != text:
            family.help_conflict = True

    def declare_unit(self, name: bytes, unit: bytes) -> None:
        family = self.metadata_family(name)
        if family.unit is None:
            family.unit = unit
        elif family.unit != unit:
            family.unit_conflict = True

    def metadata_family(self, name: bytes) -> SourceFamily:
        family = self.families.get(name)
        if family is None:
            family = self.add_family(name, formats.UNTYPED[self.source], declared=False)
        self.current = family
        return family

    def add_family(
        self, name: bytes, kind: str, *, declared: bool, previous: SourceFamily | None = None
    ) -> SourceFamily:
        family = SourceFamily(name, kind, declared, frozenset())
        if previous is not None and not previous.parts:
            family.help, family.unit = previous.help, previous.unit  # HELP came before TYPE
        self.families[name] = family
        self.set_kind(family, kind, declared=declared)
        return family

    def set_kind(self, family: SourceFamily, kind: str, *, declared: bool) -> None:
        family.kind = kind
        family.declared = declared
        family.allowed = formats.sample_names(self.source, kind, family.name)
        for sample_name in family.allowed:
            self.by_sample[sample_name] = family

    # --- samples --------------------------------------------------------------------------

    def family_for(self, name: bytes) -> SourceFamily:
        current = self.current
        if current is not None and name in current.allowed:
            return current

        family = self.by_sample.get(name)
        if family is None or name not in family.allowed:
            family = self.add_family(name, formats.UNTYPED[self.source], declared=False)
        self.current = family
        return family

    def part_for(self, family: SourceFamily, name: bytes) -> Part:
        # A family's type no longer changes once it has parts, so the part for a name is fixed.
        part = family.sample_parts.get(name)
        if part is not None:
            return part

        output_name, kind = formats.output_family(
            self.source, self.output, family.kind, family.name, name
        )
        part = family.parts.get(output_name)
        if part is None:
            part = Part(output_name, kind, family)
            family.parts[output_name] = part
            self.parts.append(part)
        family.sample_parts[name] = part
        return part

    def read_sample(self, line: bytes, number: int) -> None:
        """Read a sample line of a common shape with one regex, or else token by token."""
        common = self.common_line.fullmatch(line)
        if common is None:
            self.read_any_sample(line, number)
            return
        name, labels, value, timestamp, exemplar = common.groups()
        if timestamp is not None and len(timestamp) > syntax.MAX_TIMESTAMP_LENGTH:
            self.read_any_sample(line, number)  # for its error message
            return

        pairs = [] if labels is None else syntax.read_legacy_labels(labels)
        if pairs:
            pairs = self.check_label_names(pairs, number)
        tail = b" " + value
        if timestamp is not None:
            tail += self.convert_timestamp(timestamp, number)
        if exemplar is not None:
            tail += self.read_exemplar(exemplar, number)

        family = self.family_for(name)
        self.add_sample(self.part_for(family, name), name, pairs, tail + b"\n")

    def read_any_sample(self, line: bytes, number: int) -> None:
        sample = syntax.SAMPLE_LINE.fullmatch(line)
        if sample is None:
            raise InvalidExposition(number, f"invalid sample line {_shorten(line)!r}")
        name, labels, value, timestamp, exemplar = sample.groups()
        if name is None and labels is None:
            raise InvalidExposition(number, f"invalid sample line {_shorten(line)!r}")

        pairs: list[tuple[bytes, bytes]] = []
        if labels is not None:
            name, pairs = self.read_label_set(name, labels, number)
        if name is None:
            raise InvalidExposition(number, "a sample without a metric name")
        syntax.check_value(value, number)

        tail = b" " + value + self.read_timestamp(timestamp, number)
        if exemplar is not None:
            tail += self.read_exemplar(exemplar, number)

        family = self.family_for(name)
        self.add_sample(self.part_for(family, name), name, pairs, tail + b"\n")

    def read_label_set(
        self, name: bytes | None, labels: bytes, number: int
    ) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
        quoted_name, pairs = syntax.read_labels(labels, number)
        if quoted_name is not None:
            if name is not None:
                raise InvalidExposition(number, "a sample with two metric names")
            name = quoted_name
        return name, self.check_label_names(pairs, number)

    def check_label_names(
        self, pairs: list[tuple[bytes, bytes]], number: int
    ) -> list[tuple[bytes, bytes]]:
        """Reject a label name given twice, and rename a label that clashes with the added one."""
        values = dict(pairs)
        if len(values) != len(pairs):
            raise InvalidExposition(number, "a label name given twice")
        if self.added_label is not None and self.label_name in values:
            return rename_clashing_label(pairs, self.label_name, values)
        return pairs

    def read_timestamp(self, timestamp: bytes | None, number: int) -> bytes:
        if timestamp is None:
            return b""
        syntax.check_timestamp(timestamp, self.source is OutputFormat.OPENMETRICS, number)
        return self.convert_timestamp(timestamp, number)

    def convert_timestamp(self, timestamp: bytes, number: int) -> bytes:
        """Write a checked timestamp, with its leading blank, in the output format's unit."""
        if self.source is self.output:
            return b" " + timestamp
        if self.source is OutputFormat.OPENMETRICS:
            return b" " + syntax.seconds_to_milliseconds(timestamp, number)
        return b" " + syntax.milliseconds_to_seconds(timestamp)

    def read_exemplar(self, exemplar: bytes, number: int) -> bytes:
        if self.source is not OutputFormat.OPENMETRICS:
            raise InvalidExposition(number, "an exemplar in a text 0.0.4 body")
        if self.output is OutputFormat.OPENMETRICS:
            return syntax.read_exemplar(exemplar, number)
        syntax.check_exemplar(exemplar, number)  # text 0.0.4 has no exemplars, but it must be valid
        return b""

    def add_sample(
        self, part: Part, name: bytes, pairs: list[tuple[bytes, bytes]], tail: bytes
    ) -> None:
        labels = b",".join([b'%s="%s"' % pair for pair in pairs])
        if self.keep is not None and not self.keep(name.decode(), self.filter_labels(pairs)):
            return

        key = name + b"{" + labels + b"}" if labels else name
        if self.added_label is None:
            line = key + tail
        elif labels:
            line = name + b"{" + self.added_label + b"," + labels + b"}" + tail
        else:
            line = name + b"{" + self.added_label + b"}" + tail

        part.names.add(name)
        part.keys.append(key)
        part.lines.append(line)

    def filter_labels(self, pairs: list[tuple[bytes, bytes]]) -> Mapping[str, str]:
        labels = {label.decode(): syntax.unescape_value(value) for label, value in pairs}
        if self.label is not None:
            labels[self.label_name.decode()] = self.label
        return labels


@functools.lru_cache(maxsize=1 << 16)
def parse_comment(line: bytes, source: OutputFormat) -> tuple[bytes, bytes, bytes] | None:
    """Split a HELP, TYPE or UNIT line into keyword, metric name and text; None for others.

    The text of TYPE and UNIT comes back stripped, that of HELP unescaped. Targets send the
    same metadata scrape after scrape, so the results are cached. Errors carry line 0.
    """
    words = line[1:].lstrip(b" \t").split(None, 2)
    if len(words) < 2 or words[0] not in (_HELP, _TYPE, _UNIT):
        return None  # a plain comment
    if words[0] == _UNIT and source is OutputFormat.TEXT:
        return None  # text 0.0.4 has no UNIT; the line is a comment there

    keyword, rest = words[0], line[1:].lstrip(b" \t")[len(words[0]) :].lstrip(b" \t")
    name, text = _read_metadata_name(rest)
    if keyword == _HELP:
        return keyword, name, syntax.unescape_value(text).encode()
    return keyword, name, text.strip(b" \t")


def _read_metadata_name(rest: bytes) -> tuple[bytes, bytes]:
    if rest[:1] != b'"':
        name, _, text = rest.partition(b" ")
        if b"\t" in name:
            name, _, tail = name.partition(b"\t")
            text = tail + b" " + text if text else tail
        if syntax.is_metric_name(name):
            return name, text.lstrip(b" \t")
        raise InvalidExposition(0, f"invalid metric name {name.decode(errors='replace')!r}")

    quoted = syntax.QUOTED_NAME.match(rest)
    if quoted is None:
        raise InvalidExposition(0, "unterminated quoted metric name")
    name = syntax.read_quoted_name(quoted.group(1), 0)
    return name, rest[quoted.end() :].lstrip(b" \t")


def rename_clashing_label(
    pairs: list[tuple[bytes, bytes]], label_name: bytes, values: dict[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    """Keep a sample's own worker label as exported_worker, as Prometheus does.

    Prometheus (honor_labels: false) reads an empty value as no label, so an empty worker label
    is dropped, and it moves a clashing value to the first of exported_worker,
    exported_exported_worker, ... that is absent or empty.
    """
    clashing = values[label_name]
    if not clashing:
        return [(label, value) for label, value in pairs if label != label_name]

    new_name = b"exported_" + label_name
    while values.get(new_name):
        new_name = b"exported_" + new_name

    renamed: list[tuple[bytes, bytes]] = []
    for label, value in pairs:
        if label == label_name:
            renamed.append((new_name, clashing))
        elif label != new_name:
            renamed.append((label, value))
    return renamed


def _shorten(line: bytes) -> str:
    text = line.decode(errors="replace")
    return text if len(text) <= 80 else text[:77] + "..."
