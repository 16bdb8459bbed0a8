"""lmforge.devices: handing freed host memory back to the system."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from lmforge.devices import _malloc_trim, release_host_memory

pytestmark = pytest.mark.unit


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


@pytest.mark.skipif(
    platform.system() != "Linux" or _malloc_trim() is None, reason="needs glibc's malloc_trim"
)
def test_release_returns_the_pages_of_freed_tensors_between_live_ones():
    """Every other 64 KB tensor freed: glibc keeps the holes resident until the trim."""
    blocks = [torch.ones(16384) for _ in range(4000)]  # 64 KB each, 256 MB in all
    del blocks[::2]  # 128 MB of holes between live blocks: nothing at the heap's top to trim
    before = _rss_bytes()
    release_host_memory()
    after = _rss_bytes()
    assert before - after > 64 * 2**20, (before, after)
    assert all(float(b[0]) == 1.0 for b in blocks)  # the live tensors are untouched


def test_release_is_harmless_without_glibc(monkeypatch):
    monkeypatch.setattr("lmforge.devices._malloc_trim", lambda: None)
    release_host_memory()  # a no-op, not an error
