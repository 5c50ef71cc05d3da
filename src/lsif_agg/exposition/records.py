"""The records that go in and out of a merge, and the two output formats."""

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol


class OutputFormat(enum.Enum):
    TEXT = "text"  # Prometheus text format 0.0.4
    OPENMETRICS = "openmetrics"  # OpenMetrics 1.0.0


CONTENT_TYPES: dict[OutputFormat, str] = {
    OutputFormat.TEXT: "text/plain; version=0.0.4; charset=utf-8",
    OutputFormat.OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class TargetBody:
    """One target's response, as scraped."""

    label: str | None  # worker label value added to every sample; None adds no label
    body: bytes  # already decompressed
    content_type: str | None  # as the target sent it; may be wrong or missing


@dataclass(frozen=True, slots=True)
class TargetOutcome:
    """The outcome of one target's body in the merged exposition."""

    label: str | None
    samples: int  # samples of this target in the merged output, 0 when it was left out
    error: str | None  # a short reason token such as "invalid_exposition", or None
    detail: str | None  # what was wrong and on which line, for logs


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two targets that disagree on a family's metadata."""

    family: str
    kind: str  # "type", "help" or "unit"


class MergedBody(Protocol):
    """A merged exposition that is written whole, or in slices without being held whole."""

    def __len__(self) -> int: ...

    def slices(self, limit: int) -> Iterator[bytes | memoryview]:
        """Yield the exposition in pieces of whole lines, each at most limit bytes unless one
        line alone is longer."""
        ...

    def tobytes(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class StreamedResult:
    body: MergedBody
    outcomes: tuple["TargetOutcome", ...]  # one per input target, in input order
    conflicts: tuple["Conflict", ...]


@dataclass(frozen=True, slots=True)
class MergeResult:
    body: bytes
    outcomes: tuple[TargetOutcome, ...]  # one per input target, in input order
    conflicts: tuple[Conflict, ...]


# Called with a sample's metric name and its labels, the added worker label included.
SeriesFilter = Callable[[str, Mapping[str, str]], bool]


@dataclass(frozen=True, slots=True)
class NameFilter:
    """A series filter that looks only at the metric name and the added worker label.

    Such a filter is called once per sample name and target, so the whole merge in the kernel
    can apply it. A plain SeriesFilter is called for every sample, in Python.
    """

    keep: SeriesFilter
