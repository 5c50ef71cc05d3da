"""Forward a child's stdout or stderr to lsif_agg's own, line by line, each line prefixed."""

from __future__ import annotations

import asyncio
import sys
from typing import Literal

# Read size of one pipe read; also the longest piece written as one line. A longer line is split
# into pieces of this size, each with the prefix, so one runaway line cannot grow memory.
MAX_LINE = 64 * 1024

Stream = Literal["stdout", "stderr"]


async def forward_lines(reader: asyncio.StreamReader, name: str, stream: Stream) -> None:
    """Copy `reader` to lsif_agg's `stream` until end of file, as `<name> | <line>` lines.

    Bytes pass through unchanged, so invalid UTF-8 reaches the output as the child wrote it.
    Reading goes on whatever the content, so the child does not block on a full pipe as long
    as lsif_agg's own stdout and stderr accept the lines.
    """
    prefix = f"{name} | ".encode()
    pending = b""
    while chunk := await reader.read(MAX_LINE):
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()

        # Cut the unfinished line too once it is long, so memory stays bounded.
        while len(pending) >= MAX_LINE:
            lines.append(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
        write_lines(prefix, split_long(lines), stream)

    # A last line without a newline still gets written, with one.
    if pending:
        write_lines(prefix, [pending], stream)


def split_long(lines: list[bytes]) -> list[bytes]:
    """Cut every line longer than MAX_LINE into pieces of MAX_LINE bytes."""
    pieces: list[bytes] = []
    for line in lines:
        pieces.extend(line[start : start + MAX_LINE] for start in range(0, len(line) or 1, MAX_LINE))
    return pieces


def write_lines(prefix: bytes, lines: list[bytes], stream: Stream) -> None:
    """Write each line with the prefix and a newline to lsif_agg's stdout or stderr."""
    if not lines:
        return
    # Looked up at each write, so a replaced sys.stdout (pytest's capture, a log shipper's
    # wrapper) is honoured.
    sink = (sys.stdout if stream == "stdout" else sys.stderr).buffer
    # NOTE: a blocking write: if whatever reads lsif_agg's own output stalls, the loop stalls.
    sink.write(b"".join(prefix + line + b"\n" for line in lines))
    sink.flush()
