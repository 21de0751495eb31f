"""The effect across training runs: a batch of seeds, and the deltas pooled over them.

A single run's bootstrap CI covers the *test images* only: retrain with another seed and the
delta moves (rounding alone moved single-run deltas by up to 0.045 on the embedded data). A
seeds batch runs the whole profile once per seed, each in its own folder
``<base>/seed-<n>/`` (resumable like any run folder), then pools the per-seed deltas into
``<base>/seeds/deltas.csv``: the columns of ``deltas.csv`` plus ``n_seeds`` and ``seed_sd``.

**The pooled CI** (:func:`pooled_interval`). Seed ``s`` gives a delta ``d_s`` with a paired
bootstrap CI; its test-sampling standard error is read off that CI as
``se_s = (hi_s - lo_s) / (2 z_0.975)``. The pooled delta is the mean ``d``; its standard error
adds the spread between seeds to the test-set sampling:

- each seed has its *own* test set (the embedded data: the phantoms are drawn with the seed),
  so ``var(d_s)`` already holds both the training-run spread and the test sampling:
  ``se^2 = max(sd^2, mean(se_s^2)) / n``;
- all seeds share *one* test set (real data: the official validation set), so the test
  sampling is common to every seed and does not average out:
  ``se^2 = sd^2 / n + mean(se_s^2)``;

with ``sd`` the standard deviation of the ``d_s`` (``seed_sd``). The interval is
``d +- t_{0.975, n-1} se``: with three seeds ``t = 4.30``, so a pooled CI is wide unless the
seeds agree. One seed gives back that seed's own CI.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mocoxr import evaluate, store, tables
from mocoxr.evaluate import MEAN_DRAW

__all__ = ["POOLED_COLUMNS", "seed_dir", "pooled_interval", "pool_deltas", "pool_results",
           "pool_seed_folders", "read_pooled", "find_pooled", "verdict", "pooled_table", "pooled_row",
           "auc_range", "run_seeds"]

DELTA_VALUES = [c for c in evaluate.DELTAS_COLUMNS if c not in evaluate.PROVENANCE_COLUMNS]
POOLED_COLUMNS = [*DELTA_VALUES, "n_seeds", "seed_sd"]
PER_SEED_COLUMNS = ["seed", *DELTA_VALUES]
_Z = float(stats.norm.ppf(0.975))


def seed_dir(base: str | Path, seed: int) -> Path:
    """The run folder of one seed of a batch: ``<base>/seed-<n>``."""
    if int(seed) < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seed}")
    return Path(base) / f"seed-{int(seed)}"


def pooled_interval(deltas: Sequence[float], ci_low: Sequence[float], ci_high: Sequence[float],
                    shared_test_set: bool, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """``(mean delta, ci_low, ci_high, seed_sd)`` over seeds (see the module docstring)."""
    d, lo, hi = (np.asarray(v, dtype=np.float64) for v in (deltas, ci_low, ci_high))
    if not (d.shape == lo.shape == hi.shape) or d.ndim != 1 or d.size == 0:
        raise ValueError(f"need one delta, ci_low and ci_high per seed, got {d.shape}, "
                         f"{lo.shape}, {hi.shape}")
    if not (np.isfinite(d).all() and (lo <= d + 1e-12).all() and (d <= hi + 1e-12).all()):
        raise ValueError("every seed's delta must be finite and inside its own CI")
    n, mean = d.size, float(d.mean())
    if n == 1:
        return mean, float(lo[0]), float(hi[0]), float("nan")
    se_test2 = float(np.mean(((hi - lo) / (2 * _Z)) ** 2))
    sd = float(d.std(ddof=1))
    var = sd**2 / n + se_test2 if shared_test_set else max(sd**2, se_test2) / n
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * math.sqrt(var)
    return mean, mean - half, mean + half, sd


def pool_deltas(per_seed: pd.DataFrame, shared_test_set: bool | dict[str, bool],
                alpha: float = 0.05) -> pd.DataFrame:
    """Pooled table (``POOLED_COLUMNS``) from a per-seed table (``PER_SEED_COLUMNS``).

    ``shared_test_set``: one bool, or one per experiment name. A key (experiment, backbone,
    label fraction, comparison) is pooled over the seeds that have it; ``n_seeds`` says how many.
    """
    missing = set(PER_SEED_COLUMNS) - set(per_seed.columns)
    if missing:
        raise ValueError(f"per-seed table lacks columns {sorted(missing)}")
    rows = []
    for key, g in per_seed.groupby(evaluate.DELTAS_KEY, sort=True):
        exp = key[0]
        shared = shared_test_set.get(exp, False) if isinstance(shared_test_set, dict) \
            else bool(shared_test_set)
        mean, lo, hi, sd = pooled_interval(g["delta"], g["ci_low"], g["ci_high"], shared, alpha)
        rows.append({**dict(zip(evaluate.DELTAS_KEY, key)), "delta": mean, "ci_low": lo,
                     "ci_high": hi, "n_seeds": int(g["seed"].nunique()), "seed_sd": sd})
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


def pool_results(per_seed_results: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD, min and max over seeds of the draw-averaged AUC of every (experiment, backbone,
    init, label fraction), with the draws per seed, the mean labelled images and (fine-tuning)
    the fewest optimizer steps of any draw; ``per_seed_results`` is results.csv rows with a
    ``seed`` column."""
    cell = ["experiment", "backbone", "init", "label_fraction"]
    per_draw = per_seed_results[per_seed_results["draw"] != MEAN_DRAW]
    draws = per_draw.groupby(cell + ["seed"])["draw"].nunique().groupby(cell).min()
    rows = per_seed_results[per_seed_results["draw"] == MEAN_DRAW]
    if "n_steps" not in rows:
        rows = rows.assign(n_steps=np.nan)
    g = rows.groupby(cell, as_index=False)
    out = g.agg(auc=("auc", "mean"), auc_sd=("auc", "std"), auc_min=("auc", "min"),
                auc_max=("auc", "max"), n_seeds=("seed", "nunique"), n_train=("n_train", "mean"),
                n_steps=("n_steps", "min"))
    return out.assign(n_draws=[int(draws.get(tuple(k), 0)) for k in out[cell].itertuples(index=False)])


def verdict(ci_low: float, ci_high: float) -> str:
    """``"above zero"``, ``"below zero"`` or ``"includes zero"`` for a CI of a difference."""
    if ci_low > 0:
        return "above zero"
    if ci_high < 0:
        return "below zero"
    return "includes zero"


def pool_seed_folders(base: str | Path, seeds: Sequence[int],
                      shared_test_set: bool | dict[str, bool]) -> dict[str, Path]:
    """Read ``deltas.csv`` of every ``<base>/seed-<n>``, write ``<base>/seeds/per_seed.csv`` and
    ``<base>/seeds/deltas.csv``; returns their paths. A seed without deltas is an error."""
    frames, results = [], []
    for s in seeds:
        for name, into in (("deltas.csv", frames), ("results.csv", results)):
            path = seed_dir(base, s) / name
            if not path.is_file():
                raise FileNotFoundError(f"seed {s} has no results ({path}): its run did not finish")
            into.append(pd.read_csv(path).assign(seed=int(s)))
    per_seed = pd.concat(frames, ignore_index=True)[PER_SEED_COLUMNS]
    pooled = pool_deltas(per_seed, shared_test_set)
    out = Path(base) / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"per_seed": out / "per_seed.csv", "deltas": out / "deltas.csv",
             "results": out / "results.csv", "source": out / "source.json"}
    for frame, path in ((per_seed, paths["per_seed"]), (pooled, paths["deltas"]),
                        (pool_results(pd.concat(results, ignore_index=True)), paths["results"])):
        store.atomic_write(path, lambda fh, f=frame: f.to_csv(fh, index=False), mode="w")
    return paths


def read_pooled(folder: str | Path) -> dict[str, Any]:
    """``{"deltas", "per_seed", "results", "source"}`` of a pooled folder (``<base>/seeds`` or a
    recorded copy of one); ``source`` is its ``source.json`` (command, seeds, date) or {}."""
    folder = Path(folder)
    for name in ("deltas.csv", "per_seed.csv", "results.csv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} does not exist: run a seeds batch "
                                    "(python -m mocoxr.book run --seeds 0 1 2 3 4) first")
    source = folder / "source.json"
    return {"deltas": pd.read_csv(folder / "deltas.csv"),
            "per_seed": pd.read_csv(folder / "per_seed.csv"),
            "results": pd.read_csv(folder / "results.csv"),
            "source": json.loads(source.read_text()) if source.is_file() else {}}


def pooled_table(deltas: pd.DataFrame, titles: dict[str, str] | None = None,
                 paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The pooled deltas for reading: experiment, labels, difference [95% CI], seed_sd,
    n_seeds, the paper's difference (``paper``: ``tables.paper_results()``; blank where it has
    none), the minimum detectable effect at 80% power and the cell's verdict
    (``tables.cell_verdict``); experiments in the order of ``titles``, then by fraction."""
    titles = titles or {}
    rank = {e: i for i, e in enumerate(titles)}
    deltas = deltas.assign(_rank=deltas["experiment"].map(lambda e: rank.get(e, len(rank))))
    deltas = deltas.sort_values(["_rank", "experiment", "label_fraction"])
    fmt = lambda v: f"{v:+.3f}"  # noqa: E731
    effects = [tables.paper_effect(paper, e, b, f) if paper is not None else float("nan")
               for e, b, f in zip(deltas["experiment"], deltas["backbone"],
                                  deltas["label_fraction"])]
    return pd.DataFrame({
        "experiment": deltas["experiment"].map(lambda e: titles.get(e, e)),
        "labels": deltas["label_fraction"].map(lambda f: f"{100 * float(f):g}%"),
        "difference": [f"{fmt(d)} [{fmt(lo)}, {fmt(hi)}]" for d, lo, hi in
                       zip(deltas["delta"], deltas["ci_low"], deltas["ci_high"])],
        "seed_sd": deltas["seed_sd"].map("{:.3f}".format),
        "n_seeds": deltas["n_seeds"],
        "paper": [fmt(e) if np.isfinite(e) else "" for e in effects],
        "MDE (80%)": [f"{tables.min_detectable_effect(lo, hi, n):.3f}" for lo, hi, n in
                      zip(deltas["ci_low"], deltas["ci_high"], deltas["n_seeds"])],
        "verdict": [tables.cell_verdict(lo, hi, e) for lo, hi, e in
                    zip(deltas["ci_low"], deltas["ci_high"], effects)],
    })


def pooled_row(deltas: pd.DataFrame, experiment: str, fraction: float) -> pd.Series | None:
    """The pooled row of one experiment and label fraction, or None."""
    hit = deltas[(deltas["experiment"] == experiment)
                 & np.isclose(deltas["label_fraction"], fraction)]
    return hit.iloc[0] if len(hit) else None


def auc_range(results: pd.DataFrame, experiment: str, backbone: str, init: str,
              fraction: float) -> str:
    """'0.877 (seeds 0.850 to 0.901)': mean AUC over seeds with its range, or 'not run'."""
    r = results[(results["experiment"] == experiment) & (results["backbone"] == backbone)
                & (results["init"] == init) & np.isclose(results["label_fraction"], fraction)]
    if not len(r):
        return "not run"
    r = r.iloc[0]
    return f"{r['auc']:.3f} (seeds {r['auc_min']:.3f} to {r['auc_max']:.3f})"


def find_pooled(run_dir: str | Path, recorded: str | Path) -> tuple[Path, str]:
    """``(folder, kind)``: ``<run_dir>/seeds`` when a seeds batch wrote it (kind ``"this run"``),
    else the recorded copy shipped with the book (kind ``"recorded"``)."""
    fresh = Path(run_dir) / "seeds"
    if (fresh / "deltas.csv").is_file():
        return fresh, "this run"
    if (Path(recorded) / "deltas.csv").is_file():
        return Path(recorded), "recorded"
    raise FileNotFoundError(f"no pooled seeds in {fresh} and no recorded copy in {recorded}: run "
                            "python -m mocoxr.book run --profile quick --seeds 0 1 2 3 4")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def run_seeds(run_one: Callable[[int, Path], bool], base: str | Path, seeds: Sequence[int],
              shared_test_set: bool | dict[str, bool], command: str = "",
              echo: Callable[[str], None] = print) -> dict[str, Path] | None:
    """Run ``run_one(seed, folder)`` for every seed (each in ``seed_dir(base, seed)``), then
    pool. Returns the pooled paths, or None when a seed failed (the others still ran)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds needs distinct non-negative integers, got {seeds}")
    t0, ok, times = time.time(), True, {}
    for s in seeds:
        echo(f"=== seed {s} -> {seed_dir(base, s)}")
        t = time.time()
        ok &= bool(run_one(s, seed_dir(base, s)))
        times[s] = round(time.time() - t, 1)
    if not ok:
        echo("a seed's run failed: nothing pooled (rerun the same command to resume)")
        return None
    paths = pool_seed_folders(base, seeds, shared_test_set)
    source = {"command": command, "seeds": seeds, "seconds_per_seed": times,
              "seconds": round(time.time() - t0, 1), "finished": time.strftime("%Y-%m-%d %H:%M"),
              "shared_test_set": shared_test_set, "git_commit": _git_commit()}
    store.atomic_write_text(paths["source"], json.dumps(source, indent=1))
    echo(f"pooled {len(seeds)} seeds -> {paths['deltas']}")
    return paths
