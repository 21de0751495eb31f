"""Calibration of binary scores: reliability bins, expected calibration error (ECE) and
temperature scaling (Guo et al., ICML 2017) fitted on a validation split.

Scores are probabilities in (0, 1) (a one-logit model's sigmoid). Temperature scaling divides
the logit by one scalar ``T > 0`` chosen to minimise the validation negative log-likelihood: the
ranking, hence the AUC, is unchanged; only the confidence moves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

__all__ = ["reliability", "ece", "fit_temperature", "apply_temperature", "calibration_table"]

_EPS = 1e-7


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, np.float64).reshape(-1), np.asarray(p, np.float64).reshape(-1)
    if len(y) != len(p) or not len(y):
        raise ValueError(f"need one label per score and at least one, got {len(y)} and {len(p)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("scores must be probabilities in [0, 1]")
    return y, p


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of the score: count, mean score (confidence), positive rate (accuracy
    of the positive class); empty bins are left out."""
    y, p = _check(y, p)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    rows = [{"bin": b, "lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int((idx == b).sum()),
             "mean_score": float(p[idx == b].mean()), "positive_rate": float(y[idx == b].mean())}
            for b in range(n_bins) if (idx == b).any()]
    return pd.DataFrame(rows)


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: bin-count weighted mean |positive rate - mean score|."""
    r = reliability(y, p, n_bins)
    return float((r["count"] * (r["positive_rate"] - r["mean_score"]).abs()).sum() / r["count"].sum())


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """Scores with their logits divided by ``temperature``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return 1.0 / (1.0 + np.exp(-_logit(np.asarray(p, np.float64)) / temperature))


def fit_temperature(y_val: np.ndarray, p_val: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of validation scores."""
    y, p = _check(y_val, p_val)
    z = _logit(p)

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_t))), _EPS, 1 - _EPS)
        return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())

    res = minimize_scalar(nll, bounds=tuple(np.log(bounds)), method="bounded")
    return float(np.exp(res.x))


def calibration_table(models: dict[str, tuple], n_bins: int = 10) -> pd.DataFrame:
    """``models``: ``{name: (y_val, p_val, y_test, p_test)}``. One row per model: the fitted
    temperature and the test ECE before and after scaling."""
    rows = []
    for name, (y_val, p_val, y_test, p_test) in models.items():
        t = fit_temperature(y_val, p_val)
        rows.append({"model": name, "temperature": t, "ece_before": ece(y_test, p_test, n_bins),
                     "ece_after": ece(y_test, apply_temperature(p_test, t), n_bins)})
    return pd.DataFrame(rows)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], n_bins: int = 10,
                     title: str = ""):
    """Reliability diagram: positive rate against mean score per bin, one line per
    ``{label: (y, p)}`` (marker area ~ bin count), with the diagonal of perfect calibration.
    Drawn in the book's theme, at most ``plots.PAGE_WIDTH`` wide."""
    import matplotlib.pyplot as plt

    from mocoxr import plots

    plots.use_book_theme()
    fig, ax = plt.subplots(figsize=(min(4.6, plots.PAGE_WIDTH), 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for i, (label, (y, p)) in enumerate(curves.items()):
        r = reliability(y, p, n_bins)
        ax.plot(r["mean_score"], r["positive_rate"], marker="o", color=f"C{i}",
                ls="-" if "after" not in label else ":", markersize=3,
                label=f"{label} (ECE {ece(y, p, n_bins):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
           ylabel="fraction positive", title=title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
