"""The token-level syntax of one exposition line: names, label sets, values and timestamps.

Everything here works on bytes, because the bodies arrive as bytes and most of them are ASCII;
text is decoded only where a caller needs `str` (the series filter and quoted UTF-8 names).
"""

import decimal
import re

# Names that Prometheus text 0.0.4 and OpenMetrics 1.0 accept without quotes.
_METRIC_NAME = rb"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = rb"[a-zA-Z_][a-zA-Z0-9_]*"
# Written as an unrolled loop, which Python's re runs many times faster than an alternation.
_QUOTED_TEXT = rb'[^"\\\n]*(?:\\.[^"\\\n]*)*'
_QUOTED = rb'"' + _QUOTED_TEXT + rb'"'

# A sample line once its ends are stripped of blanks. The label set is matched quote-aware,
# so `}`, `{`, `,` and `#` inside a label value never end it. Text 0.0.4 allows blanks between
# the tokens and none between `}` and the value, and so does this pattern.
SAMPLE_LINE = re.compile(
    rb"(?P<name>" + _METRIC_NAME + rb")?[ \t]*"
    rb'(?:\{(?P<labels>[^"{}]*(?:' + _QUOTED + rb'[^"{}]*)*)\})?[ \t]*'
    rb"(?P<value>[^ \t#{][^ \t]*)"
    rb"(?:[ \t]+(?P<timestamp>[^ \t#][^ \t]*))?[ \t]*"
    rb"(?:#[ \t]*(?P<exemplar>.*))?"
)

# One item of a label set: `name="value"`, `"utf-8 name"="value"`, or a quoted metric name
# with no `=`. The comma after an item is optional only for the last one.
_LABEL_ITEM = re.compile(
    rb"[ \t]*(?:(?P<name>" + _LABEL_NAME + rb')|"(?P<quoted>' + _QUOTED_TEXT + rb')")[ \t]*'
    rb'(?:=[ \t]*"(?P<value>' + _QUOTED_TEXT + rb')")?[ \t]*(?P<comma>,|\Z)'
)

# The value tokens Prometheus accepts: decimal floats, Inf and NaN in any case. Go's ParseFloat
# also accepts hexadecimal floats; they are rejected here because no client library writes them.
_VALUE = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    rb"|[nN][aA][nN]"
)
_TEXT_TIMESTAMP = re.compile(rb"[+-]?[0-9]{1,19}")  # int64 milliseconds
_OPENMETRICS_TIMESTAMP = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_TIMESTAMP_LENGTH = 64  # far above any real timestamp; bounds the decimal arithmetic
_INT64_LIMIT = 2**63

_ESCAPE_IN_VALUE = re.compile(rb"\\(.)")
_INVALID_METRIC_CHARACTER = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARACTER = re.compile(r"[^a-zA-Z0-9_]")


class InvalidExposition(ValueError):
    """A body that cannot be read as an exposition; the target is left out of the merge."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def escape_metric_name(name: str) -> str:
    """Map a UTF-8 metric name onto the legacy alphabet by Prometheus's "underscores" rule.

    Each character outside [a-zA-Z0-9_:] becomes `_`, and a leading digit gets a `_` in front.
    The mapping keeps suffixes, so `"a.b"` histogram samples `a.b_bucket` become `a_b_bucket`.
    """
    escaped = _INVALID_METRIC_CHARACTER.sub("_", name)
    return "_" + escaped if escaped[:1].isdigit() else escaped


def escape_label_name(name: str) -> str:
    escaped = _INVALID_LABEL_CHARACTER.sub("_", name)
    return "_" + escaped if escaped[:1].isdigit() else escaped


def read_quoted_name(raw: bytes, line: int) -> bytes:
    """Decode a quoted UTF-8 name and escape it to a legacy metric name."""
    text = unescape_value(raw)
    if not text:
        raise InvalidExposition(line, "empty quoted name")
    return escape_metric_name(text).encode()


def canonical_value(raw: bytes) -> bytes:
    """Rewrite an escaped label value with only the escapes both formats define.

    `\\\\`, `\\"` and `\\n` stay; any other backslash is read as a literal backslash, as
    Prometheus's own reader does, and so is written back doubled.
    """
    if b"\\" not in raw:
        return raw
    return _ESCAPE_IN_VALUE.sub(_canonical_escape, raw)


def _canonical_escape(match: re.Match[bytes]) -> bytes:
    if match.group(1) in b'\\"n':
        return match.group(0)
    return b"\\\\" + match.group(1)


def unescape_value(raw: bytes) -> str:
    if b"\\" not in raw:
        return raw.decode()
    return _ESCAPE_IN_VALUE.sub(_unescape, raw).decode()


def _unescape(match: re.Match[bytes]) -> bytes:
    character = match.group(1)
    if character == b"n":
        return b"\n"
    if character in b'\\"':
        return character
    return match.group(0)


def read_labels(text: bytes, line: int) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
    """Read the inside of a label set into a quoted metric name, if any, and label pairs.

    Label names come back in the legacy alphabet and values in canonical escaping.
    """
    metric_name: bytes | None = None
    pairs: list[tuple[bytes, bytes]] = []
    position = 0
    end = len(text.rstrip(b" \t"))

    while position < end:
        item = _LABEL_ITEM.match(text, position, end)
        if item is None:
            raise InvalidExposition(line, f"invalid label set {{{text.decode(errors='replace')}}}")
        position = item.end()

        name, quoted, value = item.group("name", "quoted", "value")
        if value is None:
            if quoted is None or pairs or metric_name is not None:
                raise InvalidExposition(line, "a label without a value")
            metric_name = read_quoted_name(quoted, line)
            continue
        if name is None:
            name = escape_label_name(unescape_value(quoted)).encode()
        pairs.append((name, canonical_value(value)))

    return metric_name, pairs


def check_value(value: bytes, line: int) -> None:
    if _VALUE.fullmatch(value) is None:
        raise InvalidExposition(line, f"invalid sample value {value.decode(errors='replace')!r}")


def check_timestamp(timestamp: bytes, openmetrics: bool, line: int) -> None:
    pattern = _OPENMETRICS_TIMESTAMP if openmetrics else _TEXT_TIMESTAMP
    if len(timestamp) > _MAX_TIMESTAMP_LENGTH or pattern.fullmatch(timestamp) is None:
        shown = timestamp[:_MAX_TIMESTAMP_LENGTH].decode(errors="replace")
        raise InvalidExposition(line, f"invalid timestamp {shown!r}")


# Enough digits for any timestamp of _MAX_TIMESTAMP_LENGTH characters, so that scaling by 1000
# is exact; the exponent range is wide enough for every value the patterns above admit.
_EXACT = decimal.Context(prec=2 * _MAX_TIMESTAMP_LENGTH, Emax=10**6, Emin=-(10**6))


def milliseconds_to_seconds(timestamp: bytes) -> bytes:
    """Convert a text 0.0.4 timestamp (integer ms) to OpenMetrics seconds, exactly."""
    seconds = decimal.Decimal(timestamp.decode()).scaleb(-3, _EXACT)
    if seconds.is_zero():
        return b"0"
    written = format(seconds, "f")
    if "." in written:
        written = written.rstrip("0").rstrip(".")
    return written.encode()


def seconds_to_milliseconds(timestamp: bytes, line: int) -> bytes:
    """Convert an OpenMetrics timestamp (seconds) to integer ms; sub-ms digits are cut off."""
    milliseconds = decimal.Decimal(timestamp.decode()).scaleb(3, _EXACT)
    whole = int(milliseconds.to_integral_value(decimal.ROUND_DOWN, _EXACT))
    if not -_INT64_LIMIT <= whole < _INT64_LIMIT:
        raise InvalidExposition(line, f"timestamp {timestamp.decode()} out of range")
    return str(whole).encode()


_EXEMPLAR = re.compile(
    rb'\{(?P<labels>[^"{}]*(?:' + _QUOTED + rb'[^"{}]*)*)\}[ \t]*'
    rb"(?P<value>[^ \t]+)(?:[ \t]+(?P<timestamp>[^ \t]+))?"
)


def read_exemplar(text: bytes, line: int) -> bytes:
    """Read what follows `#` on an OpenMetrics sample line and write it back canonically."""
    exemplar = _EXEMPLAR.fullmatch(text)
    if exemplar is None:
        raise InvalidExposition(line, "invalid exemplar")

    metric_name, pairs = read_labels(exemplar.group("labels"), line)
    if metric_name is not None:
        raise InvalidExposition(line, "a metric name in an exemplar")
    value, timestamp = exemplar.group("value", "timestamp")
    check_value(value, line)

    labels = b",".join(name + b'="' + value + b'"' for name, value in pairs)
    written = b" # {" + labels + b"} " + value
    if timestamp is not None:
        check_timestamp(timestamp, True, line)
        written += b" " + timestamp
    return written


QUOTED_NAME = re.compile(rb'"(' + _QUOTED_TEXT + rb')"')
_METRIC_NAME_PATTERN = re.compile(_METRIC_NAME)


def is_metric_name(name: bytes) -> bool:
    return _METRIC_NAME_PATTERN.fullmatch(name) is not None
NAME_AT_START = re.compile(_METRIC_NAME)
