"""glibc's mmap threshold is fixed at start-up, unless the operator tuned malloc already."""

from __future__ import annotations

import platform

import pytest

from lsif_agg.__main__ import MALLOC_ENVIRONMENT, fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is tuned on glibc only")
def test_threshold_fixed_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MALLOC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert fix_mmap_threshold() is True


@pytest.mark.parametrize("name", MALLOC_ENVIRONMENT)
def test_threshold_left_to_environment(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "65536" if name.startswith("MALLOC") else "glibc.malloc.arena_max=2")
    assert fix_mmap_threshold() is False
