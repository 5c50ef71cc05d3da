"""The heap is trimmed once the last exposition response in flight is done, and not before.

It is trimmed only after enough bytes of bodies passed through since the last trim.
"""

from __future__ import annotations

import asyncio
import platform

import pytest

from lsif_agg.federate.heap import HeapTrimmer, find_malloc_trim


class RecordedTrims:
    """A stand-in for malloc_trim that records the pad argument of each call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trim_waits_for_last_response() -> None:
    trims = RecordedTrims()

    async def scenario() -> None:
        heap = HeapTrimmer(trims, trim_after_bytes=100)
        heap.started()
        heap.started()
        heap.handled(100)
        heap.finished()
        await asyncio.sleep(0)
        assert trims.calls == []

        heap.finished()
        assert trims.calls == []  # called soon, after the handler has returned
        await asyncio.sleep(0)
        assert trims.calls == [0]

    asyncio.run(scenario())


def test_trim_skipped_when_a_request_starts() -> None:
    trims = RecordedTrims()

    async def scenario() -> None:
        heap = HeapTrimmer(trims, trim_after_bytes=100)
        heap.started()
        heap.handled(100)
        heap.finished()
        heap.started()  # arrives before the scheduled trim runs
        await asyncio.sleep(0)
        assert trims.calls == []

    asyncio.run(scenario())


def test_trim_after_enough_small_scrapes() -> None:
    trims = RecordedTrims()

    async def scrape(heap: HeapTrimmer, size: int) -> None:
        heap.started()
        heap.handled(size)
        heap.finished()
        await asyncio.sleep(0)

    async def scenario() -> None:
        heap = HeapTrimmer(trims, trim_after_bytes=100)
        await scrape(heap, 60)
        assert trims.calls == []

        await scrape(heap, 60)
        assert trims.calls == [0]

        await scrape(heap, 60)  # the count starts again after a trim
        assert trims.calls == [0]

    asyncio.run(scenario())


def test_without_malloc_trim_nothing_runs() -> None:
    async def scenario() -> None:
        heap = HeapTrimmer(None, trim_after_bytes=0)
        heap.started()
        heap.finished()
        await asyncio.sleep(0)

    asyncio.run(scenario())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_found() -> None:
    assert find_malloc_trim() is not None
