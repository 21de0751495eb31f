"""Evaluation: AUC, bootstrap confidence intervals, paired deltas, results tables, predictions.

The bootstrap resamples *test images*. Every replicate is a vector of multiplicities
(how often each test image was drawn), so one set of replicates serves every model scored on
the same test set: that is what makes the MoCo-minus-baseline interval *paired*, and what lets
several label-fraction draws be averaged inside each replicate.

AUC under multiplicities is computed for all replicates at once from one sort of the scores:
group tied scores, sum the positive and negative weights per group, and count for each positive
the negatives below it (ties count one half), i.e. the Mann-Whitney statistic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mocoxr import store

# which run wrote a row, and that run's key (notebook, parameters with the data fingerprints,
# code, upstream keys: the pretraining that made the backbone); set by the book's runner
PROVENANCE_COLUMNS = ["run", "run_key"]
PROVENANCE_ENV = {"run": "MOCOXR_RUN", "run_key": "MOCOXR_RUN_KEY"}
RESULTS_COLUMNS = [
    "experiment", "backbone", "init", "label_fraction", "draw",
    "auc", "ci_low", "ci_high", "n_train", "n_test", "n_steps", *PROVENANCE_COLUMNS,
]
DELTAS_COLUMNS = [
    "experiment", "backbone", "label_fraction", "comparison", "delta", "ci_low", "ci_high",
    *PROVENANCE_COLUMNS,
]
OPTIONAL_COLUMNS = {"n_steps"}  # empty where it does not apply (a linear probe has no steps)
RESULTS_KEY = ["experiment", "backbone", "init", "label_fraction", "draw"]
MEAN_DRAW = -1  # the ``draw`` of the draw-averaged row of each (experiment, backbone, init, fraction)
DELTAS_KEY = ["experiment", "backbone", "label_fraction", "comparison"]


def _check_inputs(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[1] != y.shape[0]:
        raise ValueError(
            f"scores must have shape (N,) or (D, N) with N = len(y) = {y.shape[0]}; got {scores.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold binary labels 0/1")
    if y.min() == y.max():
        raise ValueError("AUC needs at least one positive and one negative test label")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return y.astype(np.int8), scores


def _weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of scores ``s`` (N,) for each row of multiplicities ``weights`` (B, N); NaN if a class is absent."""
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = weights[:, order].astype(np.float64)
    pos = y[order].astype(bool)
    w_pos = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    w_neg = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    n_pos = w_pos.sum(axis=1)
    n_neg = w_neg.sum(axis=1)
    u = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def roc_auc(y: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half); equals sklearn's roc_auc_score."""
    y, s = _check_inputs(np.asarray(y), np.asarray(scores))
    return float(_weighted_auc(y, s[0], np.ones((1, len(y))))[0])


def _replicate_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (n_boot, n) of n test images drawn with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + (np.arange(n_boot)[:, None] * n)
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.int32)


def bootstrap_distribution(
    y: Sequence[int], scores: np.ndarray, n_boot: int = 1000, seed: int = 0, chunk: int = 250
) -> tuple[float, np.ndarray]:
    """Point AUC (mean over draws) and its bootstrap replicates (n_boot,).

    ``scores`` is (N,) or (D, N): D models (label-fraction draws) scored on the same N test images.
    Each replicate resamples the test images once and averages the D AUCs on it.
    Replicates that miss a class are returned as NaN.
    """
    y, s = _check_inputs(np.asarray(y), np.asarray(scores))
    ones = np.ones((1, len(y)), dtype=np.int32)
    point = float(np.mean([_weighted_auc(y, row, ones)[0] for row in s]))
    rng = np.random.default_rng(seed)
    reps = []
    for start in range(0, n_boot, chunk):
        w = _replicate_weights(len(y), min(chunk, n_boot - start), rng)
        reps.append(np.mean([_weighted_auc(y, row, w) for row in s], axis=0))
    return point, np.concatenate(reps) if reps else np.empty(0)


def _percentile_ci(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    ok = replicates[np.isfinite(replicates)]
    if ok.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_auc(
    y: Sequence[int], scores: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """AUC with a percentile bootstrap CI: ``(auc, ci_low, ci_high)``.

    With ``scores`` of shape (D, N) the AUC is the mean over the D draws and the CI is that of
    the mean (draws averaged inside each replicate).
    """
    point, reps = bootstrap_distribution(y, scores, n_boot=n_boot, seed=seed)
    return (point, *_percentile_ci(reps, alpha))


def paired_bootstrap_delta(
    y: Sequence[int],
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) with a paired bootstrap CI: both resampled with the same test images.

    ``scores_a``/``scores_b`` are (N,) or (D, N); draws are averaged inside each replicate.
    """
    point_a, reps_a = bootstrap_distribution(y, scores_a, n_boot=n_boot, seed=seed)
    point_b, reps_b = bootstrap_distribution(y, scores_b, n_boot=n_boot, seed=seed)
    return (point_a - point_b, *_percentile_ci(reps_a - reps_b, alpha))


# ----------------------------------------------------------------------------- tables


def _atomic_write_csv(df: pd.DataFrame, path: Path) -> None:
    store.atomic_write(path, lambda fh: df.to_csv(fh, index=False), mode="w")


def upsert_rows(
    csv_path: str | Path, rows: Iterable[dict], columns: Sequence[str], key: Sequence[str]
) -> pd.DataFrame:
    """Add ``rows`` to the CSV table, replacing existing rows with the same ``key``; returns the table.

    Reruns therefore update results instead of duplicating them. When ``columns`` hold the
    :data:`PROVENANCE_COLUMNS`, rows that lack them get them from :func:`provenance`.
    """
    csv_path = Path(csv_path)
    tag = provenance() if set(PROVENANCE_COLUMNS) <= set(columns) else {}
    with store.file_lock(csv_path):  # another process may upsert into the same table
        return _upsert_locked(csv_path, [{**tag, **r} for r in rows], columns, key)


def provenance() -> dict[str, str]:
    """``{"run": ..., "run_key": ...}`` of the runner's run executing this code ("" outside one)."""
    return {col: os.environ.get(env, "") for col, env in PROVENANCE_ENV.items()}


def _upsert_locked(csv_path: Path, rows: list[dict], columns: Sequence[str],
                   key: Sequence[str]) -> pd.DataFrame:
    new = pd.DataFrame(rows)
    missing = [c for c in columns if c not in new.columns and c not in OPTIONAL_COLUMNS]
    if len(new) and missing:
        raise ValueError(f"rows for {csv_path.name} lack columns {missing}; expected {list(columns)}")
    new = new.reindex(columns=list(columns))
    if csv_path.exists():
        old = pd.read_csv(csv_path)
        if list(old.columns) != list(columns):
            raise ValueError(f"{csv_path} has columns {list(old.columns)}; expected {list(columns)}")
        if len(new):
            new_keys = set(map(tuple, new[list(key)].astype(str).to_numpy()))
            keep = [tuple(k) not in new_keys for k in old[list(key)].astype(str).to_numpy()]
            old = old[keep]
        table = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        table = new
    _atomic_write_csv(table, csv_path)
    return table


def _prediction_file(
    pred_dir: str | Path, experiment: str, backbone: str, init: str, label_fraction: float, draw: int
) -> Path:
    init_tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(init))
    return Path(pred_dir) / f"{experiment}__{backbone}__{init_tag}__f{float(label_fraction):g}__d{int(draw)}.npz"


def save_predictions(
    pred_dir: str | Path,
    experiment: str,
    backbone: str,
    init: str,
    label_fraction: float,
    draw: int,
    rows: np.ndarray,
    y: np.ndarray,
    scores: np.ndarray,
) -> Path:
    """Save per-image test scores (rows index the dataset manifest) atomically; returns the file."""
    rows, y, scores = np.asarray(rows), np.asarray(y), np.asarray(scores, dtype=np.float32)
    if not (len(rows) == len(y) == len(scores)):
        raise ValueError(f"rows, y and scores differ in length: {len(rows)}, {len(y)}, {len(scores)}")
    path = _prediction_file(pred_dir, experiment, backbone, init, label_fraction, draw)
    path.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write(path, lambda fh: np.savez(fh, rows=rows, y=y, scores=scores))
    return path


def load_predictions(
    pred_dir: str | Path, experiment: str, backbone: str, init: str, label_fraction: float, draw: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load ``(rows, y, scores)`` saved by :func:`save_predictions`."""
    path = _prediction_file(pred_dir, experiment, backbone, init, label_fraction, draw)
    if not path.exists():
        raise FileNotFoundError(f"no predictions at {path}: run the experiment that writes them first")
    with np.load(path) as f:
        return f["rows"], f["y"], f["scores"]
