"""The token-level syntax of one exposition line: names, label sets, values and timestamps.

Everything here works on bytes, because the bodies arrive as bytes and most of them are ASCII;
text is decoded only where a caller needs `str` (the series filter and quoted UTF-8 names).
"""

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

# A whole label set of legacy names only, blanks and a trailing comma allowed as _LABEL_ITEM
# allows them, and one of its items. Most label sets match, and then one findall replaces the
# item-by-item loop; any other set, and every invalid one, goes through that loop.
_LEGACY_ITEM = _LABEL_NAME + rb'[ \t]*=[ \t]*"' + _QUOTED_TEXT + rb'"'
_LEGACY_LABEL_SET = re.compile(
    rb"[ \t]*(?:" + _LEGACY_ITEM + rb"[ \t]*,[ \t]*)*(?:" + _LEGACY_ITEM + rb"[ \t]*)?"
)
_LEGACY_PAIR = re.compile(rb"(" + _LABEL_NAME + rb')[ \t]*=[ \t]*"(' + _QUOTED_TEXT + rb')"')

# The value tokens Prometheus accepts: decimal floats, Inf and NaN in any case. Go's ParseFloat
# also accepts hexadecimal floats; they are rejected here because no client library writes them.
_VALUE_TOKEN = (
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    rb"|[nN][aA][nN]"
)
_VALUE = re.compile(_VALUE_TOKEN)
_TEXT_TIMESTAMP_TOKEN = rb"[+-]?[0-9]{1,19}"  # int64 milliseconds
_OPENMETRICS_TIMESTAMP_TOKEN = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_TEXT_TIMESTAMP = re.compile(_TEXT_TIMESTAMP_TOKEN)
_OPENMETRICS_TIMESTAMP = re.compile(_OPENMETRICS_TIMESTAMP_TOKEN)


def _common_line(timestamp: bytes) -> re.Pattern[bytes]:
    # A sample line that SAMPLE_LINE splits into the same tokens, with a legacy metric name, a
    # label set that _LEGACY_LABEL_SET matches, and a valid value and timestamp. Each token must
    # end at a blank or the line's end, as SAMPLE_LINE's tokens do, or the split could differ.
    return re.compile(
        rb"(" + _METRIC_NAME + rb")[ \t]*"
        rb"(?:\{(" + _LEGACY_LABEL_SET.pattern + rb")\})?[ \t]*"
        rb"(" + _VALUE_TOKEN + rb")(?=[ \t]|\Z)"
        rb"(?:[ \t]+(" + timestamp + rb")(?=[ \t]|\Z))?[ \t]*"
        rb"(?:#[ \t]*(.*))?"
    )
MAX_TIMESTAMP_LENGTH = 64  # far above any real timestamp; bounds the decimal arithmetic

# The shapes client libraries write, matched with their label set and tokens checked in one
# call; groups: name, labels, value, timestamp, exemplar. Other lines, valid or not, are read
# with SAMPLE_LINE and the token checks, which also give the error messages.
COMMON_TEXT_LINE = _common_line(_TEXT_TIMESTAMP_TOKEN)
COMMON_OPENMETRICS_LINE = _common_line(_OPENMETRICS_TIMESTAMP_TOKEN)
_INT64_LIMIT = 2**63

_ESCAPE_IN_VALUE = re.compile(rb"\\(.)")
_CANONICAL_VALUE = re.compile(rb'[^\\]*(?:\\[\\"n][^\\]*)*')  # escapes only \\, \" and \n
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
    if b"\\" not in raw or _CANONICAL_VALUE.fullmatch(raw) is not None:
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
    if _LEGACY_LABEL_SET.fullmatch(text) is not None:
        return None, read_legacy_labels(text)

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


def read_legacy_labels(text: bytes) -> list[tuple[bytes, bytes]]:
    """Read the inside of a label set that matches _LEGACY_LABEL_SET, as read_labels does."""
    # Blanks and commas cannot start a match, so findall finds exactly the items.
    pairs: list[tuple[bytes, bytes]] = _LEGACY_PAIR.findall(text)
    # Backslashes occur only inside values, so one check of the whole set covers them all.
    if b"\\" in text and _CANONICAL_VALUE.fullmatch(text) is None:
        pairs = [(name, canonical_value(value)) for name, value in pairs]
    return pairs


def check_value(value: bytes, line: int) -> None:
    if _VALUE.fullmatch(value) is None:
        raise InvalidExposition(line, f"invalid sample value {value.decode(errors='replace')!r}")


def check_timestamp(timestamp: bytes, openmetrics: bool, line: int) -> None:
    pattern = _OPENMETRICS_TIMESTAMP if openmetrics else _TEXT_TIMESTAMP
    if len(timestamp) > MAX_TIMESTAMP_LENGTH or pattern.fullmatch(timestamp) is None:
        shown = timestamp[:MAX_TIMESTAMP_LENGTH].decode(errors="replace")
        raise InvalidExposition(line, f"invalid timestamp {shown!r}")


def milliseconds_to_seconds(timestamp: bytes) -> bytes:
    """Convert a checked text 0.0.4 timestamp (integer ms) to OpenMetrics seconds, exactly.

    The digits are only moved past a decimal point, which is faster than decimal arithmetic.
    """
    digits = timestamp.lstrip(b"+-").lstrip(b"0")
    if not digits:
        return b"0"
    whole = digits[:-3] or b"0"
    fraction = digits[-3:].rjust(3, b"0").rstrip(b"0")
    written = whole + b"." + fraction if fraction else whole
    return b"-" + written if timestamp[:1] == b"-" else written


# Seconds without an exponent and with at most 15 whole digits, so that the milliseconds fit
# in an int64 and can be written by moving the decimal point.
_PLAIN_SECONDS = re.compile(rb"([+-]?)([0-9]{0,15})(?:\.([0-9]*))?")


def seconds_to_milliseconds(timestamp: bytes, line: int) -> bytes:
    """Convert an OpenMetrics timestamp (seconds) to integer ms; sub-ms digits are cut off."""
    plain = _PLAIN_SECONDS.fullmatch(timestamp)
    if plain is not None:
        sign, whole, fraction = plain.groups()
        digits = (whole + ((fraction or b"") + b"000")[:3]).lstrip(b"0")
        if not digits:
            return b"0"
        return b"-" + digits if sign == b"-" else digits

    # Exponents and long digit runs are rare, so decimal (0.3 MiB of RSS) is imported only here.
    # Its precision covers any timestamp of MAX_TIMESTAMP_LENGTH characters, so scaling by 1000
    # is exact. The exponent range is wide enough for every value the patterns above admit.
    import decimal  # noqa: PLC0415

    exact = decimal.Context(prec=2 * MAX_TIMESTAMP_LENGTH, Emax=10**6, Emin=-(10**6))
    milliseconds = decimal.Decimal(timestamp.decode()).scaleb(3, exact)
    whole = int(milliseconds.to_integral_value(decimal.ROUND_DOWN, exact))
    if not -_INT64_LIMIT <= whole < _INT64_LIMIT:
        raise InvalidExposition(line, f"timestamp {timestamp.decode()} out of range")
    return str(whole).encode()


_EXEMPLAR = re.compile(
    rb'\{(?P<labels>[^"{}]*(?:' + _QUOTED + rb'[^"{}]*)*)\}[ \t]*'
    rb"(?P<value>[^ \t]+)(?:[ \t]+(?P<timestamp>[^ \t]+))?"
)


# An exemplar of legacy label names with valid tokens, which needs no further check.
_COMMON_EXEMPLAR = re.compile(
    rb"\{(" + _LEGACY_LABEL_SET.pattern + rb")\}[ \t]*(" + _VALUE_TOKEN + rb")"
    rb"(?:[ \t]+(" + _OPENMETRICS_TIMESTAMP_TOKEN + rb"))?"
)


def check_exemplar(text: bytes, line: int) -> None:
    """Check what follows `#` on an OpenMetrics sample line, as read_exemplar does."""
    common = _COMMON_EXEMPLAR.fullmatch(text)
    if common is None or (common[3] is not None and len(common[3]) > MAX_TIMESTAMP_LENGTH):
        read_exemplar(text, line)


def read_exemplar(text: bytes, line: int) -> bytes:
    """Read what follows `#` on an OpenMetrics sample line and write it back canonically."""
    common = _COMMON_EXEMPLAR.fullmatch(text)
    if common is not None:
        labels, value, timestamp = common.groups()
        if timestamp is None or len(timestamp) <= MAX_TIMESTAMP_LENGTH:
            pairs = read_legacy_labels(labels)
            written = b" # {" + b",".join([b'%s="%s"' % pair for pair in pairs])
            written += b"} " + value
            return written if timestamp is None else written + b" " + timestamp

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
