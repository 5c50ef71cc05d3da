"""Output forwarding: line prefixes, long lines, invalid UTF-8, a child that never pauses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from lsif_agg.settings import Settings
from lsif_agg.supervise import Supervisor
from lsif_agg.supervise.output import MAX_LINE, forward_lines, split_long

Command = Callable[..., tuple[str, ...]]
MakeSettings = Callable[..., Settings]
RunSupervisor = Callable[..., Awaitable[Supervisor]]


def test_split_long_cuts_at_max_line() -> None:
    pieces = split_long([b"a" * (2 * MAX_LINE + 5), b"", b"short"])

    assert [len(piece) for piece in pieces] == [MAX_LINE, MAX_LINE, 5, 0, 5]


async def test_forward_lines_prefixes_each_line(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"one\ntw")
    reader.feed_data(b"o\n\xff\xfe\nlast")
    reader.feed_eof()

    await forward_lines(reader, "worker-3", "stderr")

    captured = capsysbinary.readouterr()
    assert captured.err == b"worker-3 | one\nworker-3 | two\nworker-3 | \xff\xfe\nworker-3 | last\n"
    assert captured.out == b""


async def wait_for_bytes(
    capfdbinary: pytest.CaptureFixture[bytes], needle: bytes, seconds: float = 10.0
) -> tuple[bytes, bytes]:
    """Read captured output until `needle` is in stdout or stderr; fail after `seconds`."""
    out, err = b"", b""
    deadline = time.monotonic() + seconds
    while needle not in out and needle not in err:
        if time.monotonic() > deadline:
            pytest.fail(f"no {needle!r} in the output within {seconds:g} s")
        await asyncio.sleep(0.02)
        captured = capfdbinary.readouterr()
        out, err = out + captured.out, err + captured.err
    return out, err


async def test_megabyte_without_newline(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    await run_supervisor(make_settings(worker_command=child_command("flood")))

    out, _ = await wait_for_bytes(capfdbinary, b"worker-0 | tick 5\n")

    long_lines = [line for line in out.split(b"\n") if line.startswith(b"worker-0 | x")]
    assert sum(len(line) - len(b"worker-0 | ") for line in long_lines) == 1_000_000
    assert max(len(line) for line in long_lines) == len(b"worker-0 | ") + MAX_LINE


async def test_invalid_utf8_passes_through(
    make_settings: MakeSettings,
    run_supervisor: RunSupervisor,
    child_command: Command,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    await run_supervisor(make_settings(worker_command=child_command("invalid-utf8")))

    out, err = await wait_for_bytes(capfdbinary, b"worker-0 | ready\n")
    if b"worker-0 | err" not in err:
        _, more = await wait_for_bytes(capfdbinary, b"worker-0 | err")
        err += more

    assert b"worker-0 | bad \xff\xfe bytes\n" in out
    assert b"worker-0 | err \xc3\x28 line\n" in err
