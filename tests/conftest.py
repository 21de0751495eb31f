"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real reference files); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data {SHARED_DATA} not available")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread (torch, BLAS) for the whole suite: the tensors are tiny, and on 2
    shared cores extra threads spin against each other (up to 10x slower steps measured)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)
