"""The fast path: relabel a whole run of clean sample lines with a few bytes operations.

A per-line Python loop reads about 2 M lines/s, far from what a scrape of many busy workers
needs, while `bytes.count` and `bytes.replace` scan gigabytes per second. So a run of sample
lines of one family is first checked with such whole-run scans. When they prove every line is
`name{label="value",...} value` or `name value` in canonical form, the worker label goes in with
`bytes.replace`. Any run that fails a check goes to the general reader in `read.py`, and tests
prove with hypothesis that both produce the same bytes. prometheus_client's parser is not used
here: it builds objects for every sample and reads about 80 k samples/s.
"""

import re
from dataclasses import dataclass

# Bytes that need the general reader wherever they occur in a body: escapes, blanks other than
# one space, and the whitespace that Python's float() would strip.
_UNSAFE_IN_BODY = (b"\\", b"\r", b"\t", b"\x0b", b"\x0c")

# A canonical series: no blanks, legacy names, values without escapes, no empty `{}`.
_CANONICAL_SERIES = re.compile(
    rb'[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
    rb'(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})?'
)
_LABEL_NAMES = re.compile(rb'[{,]([a-zA-Z_][a-zA-Z0-9_]*)="')

# Series known to be canonical. Targets expose the same series scrape after scrape, so after
# the first scrape the check costs one set comparison per run. Bounded, as series come and go.
_known_series: set[bytes] = set()
_MAX_KNOWN_SERIES = 1 << 20


@dataclass(frozen=True, slots=True)
class FastRun:
    block: bytes  # the relabelled lines, newlines included
    keys: list[bytes]  # series as the general reader keys them
    names: frozenset[bytes]  # sample names that occur


def is_fast_body(body: bytes) -> bool:
    return body.isascii() and not any(unsafe in body for unsafe in _UNSAFE_IN_BODY)


def relabel_run(
    run: bytes, allowed: frozenset[bytes], added_label: bytes | None, label_name: bytes
) -> FastRun | None:
    """Relabel a run of sample lines of one family, or return None if a line is not clean.

    `run` starts at a line start, ends with a newline and holds no comment line.
    """
    if not run.endswith(b"\n") or b"\n\n" in run or b"#" in run:
        return None
    lines = run.count(b"\n")
    framed = b"\n" + run

    # Each line must start with one of the family's sample names and then `{` or a blank.
    labelled = {name: framed.count(b"\n" + name + b"{") for name in allowed}
    unlabelled = {name: framed.count(b"\n" + name + b" ") for name in allowed}
    with_labels = sum(labelled.values())
    if with_labels + sum(unlabelled.values()) != lines:
        return None

    # With exactly one `{` and `}` per labelled line, a blank after each `}` and one blank per
    # line in all, every line is `series value` with no blank inside a label value, so
    # splitting at blanks and newlines pairs each series with its value.
    if not (run.count(b"{") == run.count(b"}") == run.count(b"} ") == with_labels):
        return None
    if run.count(b" ") != lines:
        return None
    if added_label is not None and _has_label(run, label_name):
        return None

    tokens = framed[1:].replace(b"\n", b" ").split(b" ")
    keys, values = tokens[0:-1:2], tokens[1::2]
    if not _are_canonical(keys) or not _are_values(values):
        return None

    names = frozenset(name for name in allowed if labelled[name] or unlabelled[name])
    if added_label is None:
        return FastRun(run, keys, names)
    block = framed.replace(b"{", b"{" + added_label + b",")
    for name, count in unlabelled.items():
        if count:
            block = block.replace(b"\n" + name + b" ", b"\n" + name + b"{" + added_label + b"} ")
    return FastRun(block[1:], keys, names)


def _has_label(run: bytes, label_name: bytes) -> bool:
    # Also true when a label value ends in `,worker=`; that only sends the run the slow way.
    return b"{" + label_name + b'="' in run or b"," + label_name + b'="' in run


def _are_canonical(keys: list[bytes]) -> bool:
    unknown = set(keys) - _known_series
    if not unknown:
        return True
    for key in unknown:
        if _CANONICAL_SERIES.fullmatch(key) is None:
            return False
        names = _LABEL_NAMES.findall(key)
        if len(set(names)) != len(names):
            return False

    if len(_known_series) + len(unknown) > _MAX_KNOWN_SERIES:
        _known_series.clear()
    _known_series.update(unknown)
    return True


def _are_values(values: list[bytes]) -> bool:
    # float() accepts what syntax._VALUE accepts, and also underscores between digits and a
    # sign before NaN, which are excluded first. Blanks cannot occur in these tokens.
    joined = b" " + b" ".join(values)
    if b"_" in joined or any(signed in joined for signed in (b"+n", b"-n", b"+N", b"-N")):
        return False
    try:
        for _ in map(float, values):
            pass
    except ValueError:
        return False
    return True
