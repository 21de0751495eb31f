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


@pytest.fixture(scope="session")
def shared_data_optional() -> Path | None:
    """``../shared/data`` when present (real-format checks then also run), else None."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Run the tiny profile and build its site once for the session (tests/test_notebooks.py,
    tests/test_site_browser.py); yields (run_dir, outcomes by run id, index.html, log).

    The package-code part of the run keys is pinned while it runs, so that a rerun test does
    not depend on nobody editing mocoxr/ meanwhile."""
    from mocoxr.book import runner, site

    root = tmp_path_factory.mktemp("tiny")
    run_dir, out = root / "run", root / "site"
    log: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "code_hash", lambda: "pinned")
        outcomes = runner.run_profile("tiny", run_dir, progress=False, echo=log.append)
        index = site.build_site("tiny", run_dir, output=out, echo=log.append, quiet=True)
    yield run_dir, {o.run_id: o for o in outcomes}, index, "\n".join(log)
