"""Series selection for /federate: `match[]` selectors become one predicate over name and labels.

The selectors are parsed by promql-parser, a binding of a Rust port of Prometheus's own PromQL
parser, so what Prometheus's /federate accepts is accepted here and errors read the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import promql_parser

from lsif_agg.exposition import NameFilter

# Every sample's name and labels, or, as a NameFilter, only the name and the added worker label.
SeriesFilter = Callable[[str, Mapping[str, str]], bool] | NameFilter
LabelTest = Callable[[Mapping[str, str]], bool]
# Labels a filter may test and still be asked once per sample name: the name, and the label
# lsif_agg adds, whose value is the same for all of a target's samples.
_PER_NAME_LABELS = frozenset({"__name__", "worker"})


class SelectorError(ValueError):
    """A `match[]` value that is not a valid series selector; the message names it and the parse error."""


def build_filter(selectors: Sequence[str]) -> SeriesFilter | None:
    """Return a predicate that keeps a series matched by any of `selectors`, or None for all."""
    if not selectors:
        return None
    alternatives: list[LabelTest] = []
    tested: set[str] = set()
    for selector in selectors:
        alternatives += _parse_selector(selector, tested)

    def keep(name: str, labels: Mapping[str, str]) -> bool:
        series = {**labels, "__name__": name}
        return any(test(series) for test in alternatives)

    return NameFilter(keep) if tested <= _PER_NAME_LABELS else keep


def _parse_selector(selector: str, tested: set[str]) -> list[LabelTest]:
    """Parse one selector into its alternatives: one test per `or` branch of its matchers.

    The names of the labels its matchers test are added to `tested`.
    """
    # Imported on the first match[], so a process scraped only on /metrics never pays for it:
    # promql-parser 0.12 adds 1.4 MiB of RSS.
    import promql_parser  # noqa: PLC0415

    try:
        expression = promql_parser.parse(selector)
    except ValueError as error:
        raise SelectorError(f"invalid match[] {selector!r}: {error}") from None
    if not isinstance(expression, promql_parser.VectorSelector) or expression.offset or (
            expression.at):
        raise SelectorError(
            f"invalid match[] {selector!r}: expected a series selector such as "
            f'up or {{job="node", worker=~"1|2"}}, not an expression.')

    common = [_compile_matcher(m) for m in expression.matchers.matchers]
    if expression.name:
        common.append(_equal_test("__name__", expression.name))
    groups = expression.matchers.or_matchers or [[]]
    if expression.name:
        tested.add("__name__")
    tested.update(m.name for m in expression.matchers.matchers)
    tested.update(m.name for group in groups for m in group)
    return [_all_of(common + [_compile_matcher(m) for m in group]) for group in groups]


def _all_of(tests: list[LabelTest]) -> LabelTest:
    return lambda series: all(test(series) for test in tests)


def _equal_test(name: str, value: str) -> LabelTest:
    return lambda series: series.get(name, "") == value


def _compile_matcher(matcher: promql_parser.Matcher) -> LabelTest:
    """Turn one label matcher into a test; a missing label matches as the empty string."""
    import promql_parser  # noqa: PLC0415 - loaded already by _parse_selector

    name, value, op = matcher.name, matcher.value, matcher.op
    if op == promql_parser.MatchOp.Equal:
        return _equal_test(name, value)
    if op == promql_parser.MatchOp.NotEqual:
        return lambda series: series.get(name, "") != value

    # Prometheus anchors regular expressions at both ends. NOTE: Python's re and Go's RE2 differ
    # in rare syntax (possessive quantifiers, some classes); common selectors read the same.
    try:
        pattern = re.compile(value)
    except re.error as error:
        raise SelectorError(f"invalid regular expression {value!r} for label {name}: {error}") from None
    if op == promql_parser.MatchOp.Re:
        return lambda series: pattern.fullmatch(series.get(name, "")) is not None
    return lambda series: pattern.fullmatch(series.get(name, "")) is None
