"""The gzip member of a response, compressed once by its own task and read by every send."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from lsif_agg.federate.gzipped import PART_BYTES, SLICE_BYTES, GzipStream, slices
from lsif_agg.federate.scrape import ResponseBody


def varied_body(size: int) -> bytes:
    """Return `size` bytes of exposition-like text that compresses about as well as a real one."""
    lines = (f'app_requests_total{{route="/r/{n % 997}",code="{200 + n % 7}"}} {n * 31 % 100_003}\n'
             for n in range(size // 40 + 1))
    return "".join(lines).encode()[:size]


async def read_all(stream: GzipStream) -> list[bytes]:
    return [part async for part in stream.parts()]


def test_slices_cover_the_parts_in_order() -> None:
    body: ResponseBody = (b"a" * (SLICE_BYTES + 10), b"", b"bc")
    pieces = list(slices(body))
    assert b"".join(bytes(piece) for piece in pieces) == b"a" * (SLICE_BYTES + 10) + b"bc"
    assert max(len(piece) for piece in pieces) == SLICE_BYTES


async def test_parts_make_one_gzip_member_of_the_body() -> None:
    body = varied_body(8 * SLICE_BYTES)
    parts = await read_all(GzipStream((body[:1000], body[1000:])))

    assert gzip.decompress(b"".join(parts)) == body
    # Handed over while compressing, not as one block at the end.
    assert len(parts) > 1
    assert all(len(part) >= PART_BYTES for part in parts[:-1])


async def test_early_and_late_readers_share_member() -> None:
    body = varied_body(4 * SLICE_BYTES)
    stream = GzipStream((body,))

    together = await asyncio.gather(read_all(stream), read_all(stream))
    late = await read_all(stream)

    assert together[0] == together[1] == late
    assert gzip.decompress(b"".join(late)) == body


async def test_empty_body_is_an_empty_member() -> None:
    parts = await read_all(GzipStream((b"",)))
    assert gzip.decompress(b"".join(parts)) == b""


class BrokenBody:
    """A merged body whose writer fails after its first slice."""

    def __len__(self) -> int:
        return 2 * SLICE_BYTES

    def slices(self, limit: int) -> object:
        yield b"x" * limit
        raise MemoryError("no room for the next slice")


async def test_failure_while_compressing_reaches_every_reader() -> None:
    stream = GzipStream((BrokenBody(),))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(MemoryError, match="next slice"):
            await read_all(stream)
