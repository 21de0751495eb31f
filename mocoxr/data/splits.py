"""Train/val/test splits and the paper's label-fraction subsets of a training split.

Decisions (also stated where they apply):

* Label-fraction subsets sample **images** of the training split (as the paper does), uniformly
  at random, and do **not** nest: every (fraction, draw) has its own random stream derived from
  ``(seed, fraction, draw)``, so adding a fraction or a draw never changes the other subsets.
* Subset size is ``max(2, round(f * n))`` (capped at ``n``); a subset that happens to miss a
  class gets one randomly chosen member of the majority class swapped for a random image of the
  missing class, so every subset has at least one positive and one negative.
* Draws are numbered from 0.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

CHEXPERT_FRACTIONS = (0.001, 0.01, 0.1, 1.0)
CHEXPERT_DRAWS = (5, 5, 5, 1)
SHENZHEN_FRACTIONS = (0.0625, 0.25, 1.0)
SHENZHEN_DRAWS = (8, 4, 1)
SPLIT_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------- splits


def _allocate(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Split ``n`` items into counts proportional to ``fractions`` (largest remainder).

    Every part with a positive fraction gets at least one item when ``n`` allows it.
    """
    f = np.asarray(fractions, dtype=float)
    raw = f * n
    counts = np.floor(raw).astype(int)
    positive = f > 0
    if n >= positive.sum():
        counts[positive] = np.maximum(counts[positive], 1)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < n:
        counts[order[i % len(f)]] += 1
        i += 1
    while counts.sum() > n:  # only after the at-least-one bump: take the most over-served
        excess = np.where(counts > 1, counts - raw, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    return counts


def _check_fractions(fractions: Sequence[float], name: str) -> None:
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or len(f) == 0 or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"{name}={tuple(fractions)}; expected non-negative fractions summing to 1")


def _n_val_patients(n_patients: int, val_fraction: float) -> int:
    """``round(val_fraction * n_patients)``, at least one and at most all but one patient."""
    if val_fraction <= 0:
        return 0
    if n_patients < 2:
        raise ValueError(f"split_by_patient: need >= 2 patients for a val split, got {n_patients}")
    return min(max(int(round(val_fraction * n_patients)), 1), n_patients - 1)


def _val_mask(codes: np.ndarray, n_patients: int, n_val: int, labels: np.ndarray | None,
              seed: int, max_tries: int) -> np.ndarray:
    """Rows of the val patients; retried until both sides hold both classes (when labelled)."""
    rng = np.random.default_rng(seed)
    first = None
    for _ in range(max(1, max_tries)):
        is_val_patient = np.zeros(n_patients, dtype=bool)
        is_val_patient[rng.permutation(n_patients)[:n_val]] = True
        is_val = is_val_patient[codes]
        if first is None:
            first = is_val
        if labels is None:
            return is_val
        if all(len(np.unique(labels[m])) == 2 for m in (is_val, ~is_val)):
            return is_val
    warnings.warn(
        f"split_by_patient: no split with both classes on both sides in {max_tries} tries "
        f"(seed={seed}); keeping the first",
        stacklevel=3,
    )
    return first


def split_by_patient(
    df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0, max_tries: int = 100
) -> pd.DataFrame:
    """Copy of ``df`` with ``split`` in {train, val}; no patient on both sides.

    ``round(val_fraction * n_patients)`` patients (at least one when ``0 < val_fraction``)
    chosen at random go to val. When ``df`` has a ``label`` column, up to ``max_tries``
    seeded shuffles are tried so that both sides hold both classes (tiny synthetic sets); the
    first shuffle is kept with a warning when none does.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}; expected 0 <= val_fraction < 1")
    if "patient" not in df.columns:
        raise ValueError("split_by_patient: df has no 'patient' column")
    patients = np.sort(df["patient"].astype(str).unique())
    n_val = _n_val_patients(len(patients), val_fraction)
    codes = pd.Categorical(df["patient"].astype(str), categories=patients).codes
    labels = df["label"].to_numpy() if "label" in df.columns and n_val > 0 else None
    is_val = _val_mask(codes, len(patients), n_val, labels, seed, max_tries)
    out = df.copy()
    out["split"] = np.where(is_val, "val", "train")
    return out


def split_stratified(
    df: pd.DataFrame, fractions: Sequence[float] = (0.65, 0.15, 0.20), seed: int = 0
) -> pd.DataFrame:
    """Copy of ``df`` with ``split`` in {train, val, test}, stratified by ``label``.

    Each class is shuffled (seeded) and cut by the largest-remainder rule, so every split with
    a positive fraction receives at least one image of each class when the class has at least
    three. Rows are images (for Shenzhen one image per patient).
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions={tuple(fractions)}; expected (train, val, test)")
    _check_fractions(fractions, "fractions")
    if "label" not in df.columns:
        raise ValueError("split_stratified: df has no 'label' column")
    rng = np.random.default_rng(seed)
    y = df["label"].to_numpy()
    split = np.empty(len(df), dtype=object)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        counts = _allocate(len(idx), fractions)
        split[idx] = np.repeat(np.array(SPLIT_NAMES, dtype=object), counts)
    out = df.copy()
    out["split"] = split.astype(str)
    return out


# ----------------------------------------------------------------------------- label fractions


def subset_size(fraction: float, n: int) -> int:
    """Images in a ``fraction`` subset of ``n``: ``max(2, round(fraction * n))``, at most ``n``."""
    return int(min(n, max(2, round(fraction * n))))


def _draw_rng(seed: int, fraction: float, draw: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(round(fraction * 1_000_000)), draw])


def _draw_subset(labels: np.ndarray, fraction: float, draw: int, seed: int) -> np.ndarray:
    n = len(labels)
    k = subset_size(fraction, n)
    if k == n:
        return np.arange(n)
    rng = _draw_rng(seed, fraction, draw)
    rows = rng.choice(n, size=k, replace=False)
    sub = labels[rows]
    for missing in (0, 1):
        if not (sub == missing).any():  # swap one majority member for a missing-class image
            candidates = np.flatnonzero(labels == missing)
            rows[rng.integers(k)] = candidates[rng.integers(len(candidates))]
            sub = labels[rows]
    return np.sort(rows)


def _check_subset_request(labels: np.ndarray, fractions: Sequence[float],
                          draws: Sequence[int]) -> None:
    if labels.ndim != 1 or not np.isin(labels, [0, 1]).all():
        raise ValueError("labels: expected a 1-D array of 0/1")
    if len(fractions) != len(draws):
        raise ValueError(f"fractions {tuple(fractions)} and draws {tuple(draws)} differ in length")
    for f, d in zip(fractions, draws):
        if not 0 < f <= 1 or int(d) < 1:
            raise ValueError(f"label fraction {f} with {d} draws; expected 0 < f <= 1, draws >= 1")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError(
            f"cannot draw label-fraction subsets with >= 1 positive and >= 1 negative: the "
            f"training split has {n_pos} positives and {len(labels) - n_pos} negatives"
        )


def make_label_fraction_subsets(
    labels: np.ndarray,
    fractions: Sequence[float] = CHEXPERT_FRACTIONS,
    draws: Sequence[int] = CHEXPERT_DRAWS,
    seed: int = 0,
) -> pd.DataFrame:
    """Seeded label-fraction subsets of a training split, as a long table.

    Returns columns ``label_fraction``, ``draw`` (0-based) and ``row`` (sorted positional
    index into ``labels``). Sampling unit: images, uniformly at random without replacement.
    Size ``max(2, round(f * n))``. Every subset holds >= 1 positive and >= 1 negative (a
    missing class is swapped in for a random member). Subsets do **not** nest: each
    (fraction, draw) uses its own generator seeded by ``(seed, fraction, draw)``; fraction 1.0
    is the whole split. Raises ValueError when ``labels`` lacks a class.
    """
    labels = np.asarray(labels)
    _check_subset_request(labels, fractions, draws)
    parts = []
    for f, d in zip(fractions, draws):
        for draw in range(int(d)):
            rows = _draw_subset(labels, float(f), draw, seed)
            parts.append(pd.DataFrame({"label_fraction": float(f), "draw": draw, "row": rows}))
    return pd.concat(parts, ignore_index=True).astype({"draw": np.int64, "row": np.int64})
