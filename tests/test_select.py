"""Series selection for /federate: match[] selectors parsed as Prometheus parses them."""

from __future__ import annotations

import pytest

from lsif_agg.exposition import NameFilter
from lsif_agg.federate.select import SelectorError, build_filter


def keeps(selectors: list[str], name: str, **labels: str) -> bool:
    keep = build_filter(selectors)
    assert keep is not None
    return keep.keep(name, labels) if isinstance(keep, NameFilter) else keep(name, labels)


@pytest.mark.parametrize(
    ("selectors", "per_name"),
    [
        (["up"], True),
        (['{__name__=~"node_.+", worker="1"}'], True),
        (['{__name__=~"a.*" or worker="2"}', "b"], True),
        (['up{job="node"}'], False),
        (["up", '{instance=~".+"}'], False),
    ],
)
def test_name_and_worker_filter_per_name(selectors: list[str], per_name: bool) -> None:
    assert isinstance(build_filter(selectors), NameFilter) is per_name


def test_no_selectors_keep_everything() -> None:
    assert build_filter([]) is None


def test_metric_name_selector() -> None:
    assert keeps(["up"], "up", worker="1")
    assert not keeps(["up"], "down", worker="1")


def test_equal_and_not_equal() -> None:
    assert keeps(['{worker="1"}'], "x", worker="1")
    assert not keeps(['{worker="1"}'], "x", worker="2")
    assert keeps(['x{worker!="1"}'], "x", worker="2")
    assert not keeps(['x{worker!="1"}'], "x", worker="1")


def test_regex_is_anchored() -> None:
    assert keeps(['{__name__=~"node_cpu.*"}'], "node_cpu_seconds_total")
    assert not keeps(['{__name__=~"cpu"}'], "node_cpu_seconds_total")
    assert keeps(['x{worker!~"1|2"}'], "x", worker="3")
    assert not keeps(['x{worker!~"1|2"}'], "x", worker="2")


def test_missing_label_matches_empty() -> None:
    assert keeps(['x{job=""}'], "x", worker="1")
    assert not keeps(['x{job="a"}'], "x", worker="1")


def test_several_selectors_are_united() -> None:
    selectors = ["up", '{worker="3"}']
    assert keeps(selectors, "up", worker="1")
    assert keeps(selectors, "other", worker="3")
    assert not keeps(selectors, "other", worker="1")


def test_or_inside_braces() -> None:
    assert keeps(['x{worker="1" or worker="2"}'], "x", worker="2")
    assert not keeps(['x{worker="1" or worker="2"}'], "x", worker="3")


@pytest.mark.parametrize("selector", [
    "up{", 'rate(x[5m])', '{a=""}', '{worker!~"1|2"}', "sum(up)", 'up{worker=~"("}', "up offset 5m",
])
def test_invalid_selector_rejected(selector: str) -> None:
    with pytest.raises(SelectorError) as caught:
        build_filter([selector])
    assert "invalid" in str(caught.value)
