"""Merge the targets' parts into one exposition: settle metadata conflicts, drop repeated series
and render the result in the negotiated format.
"""

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from lsif_agg.exposition import fast, formats
from lsif_agg.exposition.fast import FastRun
from lsif_agg.exposition.read import Part, TargetReader, escape_label_value, is_openmetrics
from lsif_agg.exposition.records import (
    Conflict,
    MergeResult,
    NameFilter,
    OutputFormat,
    SeriesFilter,
    StreamedResult,
    TargetBody,
    TargetOutcome,
)
from lsif_agg.exposition.syntax import InvalidExposition

INVALID_EXPOSITION = "invalid_exposition"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def merge(
    targets: Sequence[TargetBody],
    output: OutputFormat,
    *,
    label_name: str = "worker",
    keep: SeriesFilter | NameFilter | None = None,
) -> MergeResult:
    """Merge the targets' bodies into one exposition in the output format.

    Raises ValueError only for an invalid label_name; a bad body is reported in its outcome.
    """
    return merge_targets(targets, output, label_name=label_name, keep=keep, use_fast_path=True)


def merge_streamed(
    targets: Sequence[TargetBody],
    output: OutputFormat,
    *,
    label_name: str = "worker",
    keep: SeriesFilter | NameFilter | None = None,
    eof: bool = True,
) -> StreamedResult:
    """Merge as `merge` does, into a body that can be written in slices.

    A scrape that the whole merge takes is never held whole: its slices are written from the
    kernel's records when asked for. With eof false, OpenMetrics output has no final # EOF,
    for a caller that appends more families.
    """
    return _merge(targets, output, label_name=label_name, keep=keep, use_fast_path=True, eof=eof)


def merge_targets(
    targets: Sequence[TargetBody],
    output: OutputFormat,
    *,
    label_name: str,
    keep: SeriesFilter | NameFilter | None,
    use_fast_path: bool,
) -> MergeResult:
    """Merge as `merge` does; tests turn the fast path off to compare it with the general one."""
    streamed = _merge(
        targets, output, label_name=label_name, keep=keep, use_fast_path=use_fast_path, eof=True
    )
    return MergeResult(streamed.body.tobytes(), streamed.outcomes, streamed.conflicts)


def _merge(
    targets: Sequence[TargetBody],
    output: OutputFormat,
    *,
    label_name: str,
    keep: SeriesFilter | NameFilter | None,
    use_fast_path: bool,
    eof: bool,
) -> StreamedResult:
    if _LABEL_NAME.fullmatch(label_name) is None:
        raise ValueError(f"label_name {label_name!r} is not a valid label name; use [a-zA-Z_]\\w*")

    # A valid body that the whole merge turned down was read already; its parts are reused.
    read: dict[int, list[Part]] = {}
    if use_fast_path and (keep is None or isinstance(keep, NameFilter)):
        merged = _merge_canonical(targets, output, label_name, keep=keep, eof=eof, read=read)
        if merged is not None:
            return merged

    each_sample = keep.keep if isinstance(keep, NameFilter) else keep
    exposition = MergedExposition(output)
    outcomes = tuple(
        _merge_target(exposition, target, label_name, each_sample, use_fast_path, read=read.get(index))
        for index, target in enumerate(targets)
    )
    return StreamedResult(WholeBody(exposition.render(eof)), outcomes, exposition.conflicts())


def _merge_canonical(
    targets: Sequence[TargetBody],
    output: OutputFormat,
    label_name: str,
    *,
    keep: NameFilter | None,
    eof: bool,
    read: dict[int, list[Part]],
) -> StreamedResult | None:
    """Merge the whole scrape in one kernel call when every body is canonical; else None.

    Replicas of one program send bodies of the same canonical shape, so most scrapes take
    this path. A body the kernel turns down is read by the general reader alone: when it is
    invalid, it is left out as the general path would leave it out, and the rest is merged
    here. Any other refusal sends the whole scrape to the general path.
    """
    labels = [target.label for target in targets]
    if None in labels or len(set(labels)) != len(labels):
        return None  # repeats across targets are found only by the general path
    openmetrics = output is OutputFormat.OPENMETRICS
    sources = [is_openmetrics(target.body, target.content_type) for target in targets]
    if not openmetrics and any(sources):
        return None  # OpenMetrics into text splits families; the general path does it

    name = label_name.encode()
    outcomes: dict[int, TargetOutcome] = {}
    while True:
        kept = [index for index in range(len(targets)) if index not in outcomes]
        bodies = tuple(targets[index].body for index in kept)
        added = tuple(
            name + b'="' + escape_label_value(str(targets[index].label)) + b'"' for index in kept
        )
        converting = tuple(openmetrics and not sources[index] for index in kept)
        keep_name = None if keep is None else _name_test(keep, label_name, [labels[index] for index in kept])
        merged = fast.merge_bodies(bodies, added, name, openmetrics, converting, keep_name, eof)
        if isinstance(merged, int):
            if merged < 0:
                return None  # two targets disagree on a type, which the general path settles
            refused = [kept[merged]]
        else:
            # The kernel checks only that bytes are ASCII; a body with others is decoded here.
            refused = [kept[index] for index in merged[3] if not _is_utf8(bodies[index])]
            if not refused:
                break

        for index in refused:
            reason, parts = _read_alone(targets[index], output, label_name)
            if reason is None:
                if keep is None:
                    read[index] = parts
                return None  # valid but not canonical
            outcomes[index] = TargetOutcome(targets[index].label, 0, INVALID_EXPOSITION, reason)

    body, samples, conflicts, _ = merged
    for index, count in zip(kept, samples, strict=True):
        outcomes[index] = TargetOutcome(targets[index].label, count, None, None)
    return StreamedResult(
        body,
        tuple(outcomes[index] for index in range(len(targets))),
        tuple(Conflict(family.decode(), kind) for family, kind in conflicts),
    )


def _name_test(
    keep: NameFilter, label_name: str, labels: list[str | None]
) -> Callable[[bytes, int], bool]:
    """Ask the filter about a sample name of one body, with the body's worker label."""

    def keep_name(name: bytes, index: int) -> bool:
        label = labels[index]
        return keep.keep(name.decode(), {} if label is None else {label_name: label})

    return keep_name


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _read_alone(
    target: TargetBody, output: OutputFormat, label_name: str
) -> tuple[str | None, list[Part]]:
    """Read one body on the general path, without a filter; return why it is invalid, or None
    and its parts."""
    openmetrics = is_openmetrics(target.body, target.content_type)
    reader = TargetReader(output, openmetrics, target.label, label_name, None)
    try:
        return None, reader.read(target.body)
    except InvalidExposition as error:
        return str(error), []


def _merge_target(
    exposition: "MergedExposition",
    target: TargetBody,
    label_name: str,
    keep: SeriesFilter | None,
    use_fast_path: bool,
    *,
    read: list[Part] | None = None,
) -> TargetOutcome:
    if read is not None:
        parts = read
    else:
        openmetrics = is_openmetrics(target.body, target.content_type)
        reader = TargetReader(exposition.output, openmetrics, target.label, label_name, keep)
        reader.use_fast_path = use_fast_path
        try:
            parts = reader.read(target.body)
        except InvalidExposition as error:
            return TargetOutcome(target.label, 0, INVALID_EXPOSITION, str(error))

    samples = sum(exposition.add(part, target.label) for part in parts)
    return TargetOutcome(target.label, samples, None, None)


@dataclass(slots=True)
class MergedFamily:
    name: bytes
    kind: str
    help: bytes | None
    unit: bytes | None
    chunks: list[bytes] = field(default_factory=list)  # sample lines or blocks of them


class SeenSeries:
    """The series written so far under one added label value, to drop repeats.

    A series repeats only under a sample name written before. So a fast-path run whose sample
    names are all new is added without listing its series, which costs no object per sample;
    its series are listed with `FastRun.keys` only once a later part uses one of its names.
    """

    def __init__(self) -> None:
        self.keys: set[bytes] = set()  # series of every name not in `unlisted`
        self.names: set[bytes] = set()  # every sample name written
        self.unlisted: dict[bytes, list[FastRun]] = {}  # runs whose series are not in `keys`

    def is_new(self, names: frozenset[bytes]) -> bool:
        return self.names.isdisjoint(names)

    def add_unlisted(self, run: FastRun) -> None:
        self.names.update(run.names)
        for name in run.names:
            self.unlisted.setdefault(name, []).append(run)

    def list_names(self, names: set[bytes] | frozenset[bytes]) -> None:
        """Put the series of every earlier run that has one of these names into `keys`."""
        self.names.update(names)
        for name in names:
            for run in self.unlisted.pop(name, ()):
                self.keys.update(run.keys())  # a run with several names may come twice


class MergedExposition:
    """The merged families, in the order their first sample arrived."""

    def __init__(self, output: OutputFormat) -> None:
        self.output = output
        self.families: dict[bytes, MergedFamily] = {}
        self.seen: dict[str | None, SeenSeries] = {}  # by added label value
        self.found: dict[Conflict, None] = {}

    def add(self, part: Part, label: str | None) -> int:
        """Add one part's samples and return how many were new."""
        if part.is_empty():
            return 0  # a family whose samples the filter removed claims nothing
        family = self.families.get(part.family)
        if family is None:
            family = MergedFamily(part.family, part.kind, part.help, part.unit)
            self.families[part.family] = family
        elif not self.is_compatible(family, part):
            self.report(family.name, "type")
            return 0

        self.settle_metadata(family, part)
        seen = self.seen.get(label)
        if seen is None:
            seen = self.seen[label] = SeenSeries()
        return self.add_lines(family, part, seen)

    def is_compatible(self, family: MergedFamily, part: Part) -> bool:
        # The first part that reaches a family sets its type. A later part whose target gave
        # no type joins it when its sample names fit that type; any other difference is a
        # conflict, also when the output format maps a declared type to unknown.
        if part.kind == family.kind:
            return True
        if part.declared:
            return False
        return part.names <= formats.sample_names(self.output, family.kind, family.name)

    def settle_metadata(self, family: MergedFamily, part: Part) -> None:
        # The first HELP and the first UNIT win, in target order and then line order.
        if part.source.help_conflict:
            self.report(family.name, "help")
        if part.help is not None:
            if family.help is None:
                family.help = part.help
            elif family.help != part.help:
                self.report(family.name, "help")

        if part.source.unit_conflict:
            self.report(family.name, "unit")
        if part.unit is not None:
            if family.unit is None:
                family.unit = part.unit
            elif family.unit != part.unit:
                self.report(family.name, "unit")

    def add_lines(self, family: MergedFamily, part: Part, seen: SeenSeries) -> int:
        added = 0
        for segment in part.segments:
            if isinstance(segment, FastRun):
                added += self.add_run(family, segment, seen)
                continue
            if not segment.keys:
                continue
            seen.list_names(part.names)
            added += self.add_each(family, segment.keys, segment.lines, seen)
        return added

    def add_run(self, family: MergedFamily, run: FastRun, seen: SeenSeries) -> int:
        # The kernel rejects a run that repeats a series, so only earlier parts can share one.
        if seen.is_new(run.names):
            seen.add_unlisted(run)
            family.chunks.append(run.block)
            return run.count

        seen.list_names(run.names)
        keys = run.keys()
        if seen.keys.isdisjoint(keys):
            seen.keys.update(keys)
            family.chunks.append(run.block)
            return run.count
        # Split at newlines only: bytes.splitlines would also break a label value at a CR.
        lines = [line + b"\n" for line in run.block.split(b"\n")[:-1]]
        return self.add_each(family, keys, lines, seen)

    def add_each(
        self, family: MergedFamily, keys: list[bytes], lines: list[bytes], seen: SeenSeries
    ) -> int:
        added = 0
        for key, line in zip(keys, lines, strict=True):
            if key in seen.keys:
                continue  # a series the target repeats: the first one stays
            seen.keys.add(key)
            family.chunks.append(line)
            added += 1
        return added

    def report(self, family: bytes, kind: str) -> None:
        self.found[Conflict(family.decode(), kind)] = None

    def conflicts(self) -> tuple[Conflict, ...]:
        return tuple(self.found)

    def render(self, eof: bool = True) -> bytes:
        openmetrics = self.output is OutputFormat.OPENMETRICS
        written: list[bytes] = []
        for family in self.families.values():
            if not family.chunks:
                continue
            if family.help is not None:
                help_text = _escape_help(family.help, openmetrics)
                written.append(b"# HELP " + family.name + b" " + help_text + b"\n")
            written.append(b"# TYPE " + family.name + b" " + family.kind.encode() + b"\n")
            if openmetrics and family.unit is not None:
                written.append(b"# UNIT " + family.name + b" " + family.unit + b"\n")
            written.extend(family.chunks)

        if openmetrics and eof:
            written.append(b"# EOF\n")
        return b"".join(written)


class WholeBody:
    """A merged body the general path wrote whole, sliced as the kernel's Exposition is."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __len__(self) -> int:
        return len(self._body)

    def slices(self, limit: int) -> Iterator[bytes | memoryview]:
        view = memoryview(self._body)
        for start in range(0, len(view), limit):
            yield view[start : start + limit]

    def tobytes(self) -> bytes:
        return self._body


def _escape_help(text: bytes, openmetrics: bool) -> bytes:
    escaped = text.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    return escaped.replace(b'"', b'\\"') if openmetrics else escaped
