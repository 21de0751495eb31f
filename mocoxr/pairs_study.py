"""Compare positive-pair rules (the study of notebook 07, after MedAug: Vu et al., MLHC 2021).

Pretrain one MoCo encoder per pairing rule (``"image"``, the baseline, first; then rules such as
``"same_study+laterals"``, see :func:`mocoxr.pairs.parse_pairing`), probe each frozen encoder at
every label fraction (``experiments.run_linear_experiment``), take the paired-bootstrap
difference of every rule to image-level pairs, and keep the result as a **comparison table**
(:data:`COMPARISON_COLUMNS`, one row per pairing and label fraction), optionally recorded in
the project with a JSON sidecar naming the command and code version that produced it.

:mod:`mocoxr.pairs` holds the rules themselves (candidate tables, the key sampler); this module
holds the study around them and the values the chapter shows.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mocoxr import notebook, pairs, store

BASELINE = "image"
BY_HAND = "notebooks/07_positive_pairs (by hand)"
SHOWN_COLUMNS = ["pairing", "label_fraction", "n_draws", "auc", "ci_low", "ci_high", "delta",
                 "delta_low", "delta_high"]


@dataclass(frozen=True)
class Recipe:
    """The settings every rule shares: ``pretrain`` holds ``PretrainConfig`` fields (the
    pairing is set per rule), ``linear`` the ``run_linear_experiment`` options."""

    backbone: str
    image_size: int
    seed: int
    device: str
    pretrain: Mapping[str, Any]
    linear: Mapping[str, Any]
    n_boot: int = 1000


# ----------------------------------------------------------------------------- the rules


def pairing_specs(pairings: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """``{name: (positive_pairs, pair_laterals)}``; the first must be the ``image`` baseline
    and at least two patient-aware rules must follow."""
    pairings = list(pairings)
    if not pairings or pairings[0] != BASELINE or len(pairings) < 3:
        raise ValueError(f"pairings must start with {BASELINE!r} (the baseline) and name at least "
                         f"two patient-aware rules, got {pairings}")
    return {name: pairs.parse_pairing(name) for name in pairings}


def samplers(run_dir: str | Path, ds: notebook.Dataset, folder: str | Path,
             pairings: Sequence[str],
             chexpert: dict | None = None) -> dict[str, pairs.PairSampler | None]:
    """The key sampler of every rule on the dataset's training split (None for ``image``)."""
    return {name: pairs.sampler_for_dataset(run_dir, ds, folder, mode, lat, chexpert)
            for name, (mode, lat) in pairing_specs(pairings).items()}


def summary_table(samplers: Mapping[str, pairs.PairSampler | None]) -> pd.DataFrame:
    """One row per patient-aware rule: ``pairs.table_summary`` of its candidate table."""
    return pd.DataFrame({name: pairs.table_summary(s.table)
                         for name, s in samplers.items() if s is not None}).T


def rule_values(stats: pd.DataFrame, pairings: Sequence[str]) -> dict[str, Any]:
    """The chapter's numbers on the candidate tables: ``p<i>_name``, ``p<i>_share`` (percent
    of training images with another image as key), ``p<i>_cands``, ``n_lateral_keys``."""
    out: dict[str, Any] = {}
    for i, name in enumerate(list(pairings)[1:], 1):
        out[f"p{i}_name"] = name
        out[f"p{i}_share"] = 100 * float(stats.loc[name, "share_paired"])
        out[f"p{i}_cands"] = float(stats.loc[name, "mean_candidates"])
    out["n_lateral_keys"] = int(max(stats["n_lateral_keys"].max(), 0))
    return out


def example_pairs(sampler: pairs.PairSampler, seed: int,
                  n: int = 4) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``n`` training images whose key comes from another image, each followed by the key
    drawn for it at step 0: ``(images, titles)`` for ``plots.image_grid`` (empty when none)."""
    t, n_main = sampler.table, len(sampler.images)
    other = np.sort(t.loc[t["source"].eq("lateral") | t["key_row"].ne(t["row"]), "row"].unique())
    pick = np.sort(np.random.default_rng(seed).choice(other, size=min(n, len(other)),
                                                      replace=False))
    shown, titles = [], []
    for q, k in zip(pick, sampler.keys(pick, seed, step=0)):
        lat = k >= n_main
        c = t[(t["row"] == q) & (t["source"] == ("lateral" if lat else "manifest"))
              & (t["key_row"] == (k - n_main if lat else k))].iloc[0]
        shown += [sampler.images[q], sampler.key_batch(np.array([q]), seed, 0)[0].numpy()]
        titles += [f"query {c['study']}",
                   f"key {c['key_study'].split('/')[-1]} ({c['key_view']})"]
    return shown, titles


# ----------------------------------------------------------------------------- the study


def pairing_config(name: str, recipe: Recipe) -> Any:
    """The ``PretrainConfig`` of one rule: the recipe's pretraining fields with the rule's
    ``positive_pairs`` and ``pair_laterals``."""
    from mocoxr.pretrain import PretrainConfig

    mode, lat = pairs.parse_pairing(name)
    return PretrainConfig(backbone=recipe.backbone, image_size=recipe.image_size,
                          seed=recipe.seed, device=recipe.device,
                          **{**recipe.pretrain, "positive_pairs": mode, "pair_laterals": lat})


def checkpoint_dir(run_dir: str | Path, cfg: Any, ds: notebook.Dataset,
                   sampler: pairs.PairSampler | None) -> Path:
    """``notebook.pretrain_dir`` of the config (image pairs: the pretraining chapter's folder),
    with ``_pairs<sha1[:8]>`` of the candidate table appended for a patient-aware rule: the
    table is part of the folder's key too."""
    folder = notebook.pretrain_dir(run_dir, cfg, ds)
    if sampler is None:
        return folder
    return folder.with_name(f"{folder.name}_pairs{sampler.sha1[:8]}")


def pretrain_rules(run_dir: str | Path, ds: notebook.Dataset,
                   samplers: Mapping[str, pairs.PairSampler | None],
                   recipe: Recipe) -> dict[str, str]:
    """Pretrain (or load the finished run of) one encoder per rule, in order; prints
    ``"<rule>: trained|loaded <steps> steps"``. Returns ``{rule: exported backbone path}``."""
    from mocoxr import pretrain

    backbones = {}
    for name, sampler in samplers.items():
        cfg = pairing_config(name, recipe)
        result = pretrain.pretrain(ds.images, ds.prepared.rows("train"), cfg,
                                   checkpoint_dir(run_dir, cfg, ds, sampler), ds.mean, ds.std,
                                   pairs=sampler)
        backbones[name] = str(result["backbone"])
        print(f"{name}: {'loaded' if result['cached'] else 'trained'} {result['step']} steps")
    return backbones


def probe_and_compare(out_dir: str | Path, ds: notebook.Dataset, backbones: Mapping[str, str],
                      recipe: Recipe) -> pd.DataFrame:
    """Linear probes of every rule's encoder into ``out_dir`` (results, deltas, predictions),
    paired differences to the baseline (the first rule), the comparison table of the rules in
    ``backbones`` (also written as ``out_dir/comparison.csv``)."""
    from mocoxr import experiments

    out_dir = Path(out_dir)
    names = list(backbones)
    experiments.run_linear_experiment(
        ds.prepared, ds.images, backbones, recipe.backbone, mean=ds.mean, std=ds.std,
        image_size=recipe.image_size, out_dir=out_dir, experiment="linear",
        n_boot=recipe.n_boot, seed=recipe.seed, device=recipe.device, **recipe.linear)
    for name in names[1:]:
        experiments.compute_deltas(out_dir, "linear", recipe.backbone, (name, names[0]),
                                   n_boot=recipe.n_boot, seed=recipe.seed)
    table = comparison_table(pd.read_csv(out_dir / "results.csv"),
                             pd.read_csv(out_dir / "deltas.csv"), recipe.backbone,
                             baseline=names[0])
    table = table[table["pairing"].isin(names)].reset_index(drop=True)
    table.to_csv(out_dir / "comparison.csv", index=False)
    return table


def study_meta(recipe: Recipe, samplers: Mapping[str, pairs.PairSampler | None],
               minutes: float, command: str | None = None, data_dir: Any = None,
               phantom: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar of a recorded comparison: the command (``BY_HAND`` when None), code version,
    date, duration, the recipe, the data source and each rule's candidate-table summary."""
    return {
        "command": command or BY_HAND, **code_version(),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "minutes": round(minutes, 1), "seed": recipe.seed, "backbone": recipe.backbone,
        "image_size": recipe.image_size, "pretrain": recipe.pretrain, "linear": recipe.linear,
        "n_boot": recipe.n_boot,
        "data": "embedded phantoms" if data_dir is None else "data_dir", "phantom": phantom,
        "pairings": {n: pairs.table_summary(s.table) for n, s in samplers.items() if s},
    }


def run_study(run_dir: str | Path, ds: notebook.Dataset,
              samplers: Mapping[str, pairs.PairSampler | None], recipe: Recipe,
              data_dir: Any = None, phantom: Mapping[str, Any] | None = None,
              record: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The whole comparison: :func:`pretrain_rules`, :func:`probe_and_compare` into
    ``<run_dir>/positive_pairs``, :func:`study_meta`; with ``record["csv"]`` (project-relative)
    also :func:`write_recorded` there (prints ``recorded: <path>``). Returns (table, meta)."""
    t0 = time.time()
    record = record or {}
    backbones = pretrain_rules(run_dir, ds, samplers, recipe)
    table = probe_and_compare(notebook.run_paths(run_dir).root / "positive_pairs", ds,
                              backbones, recipe)
    meta = study_meta(recipe, samplers, (time.time() - t0) / 60, record.get("command"),
                      data_dir, phantom)
    if record.get("csv"):
        print("recorded:", write_recorded(table, notebook.project_root() / record["csv"], meta))
    return table, meta


def source_note(recorded: str | None, meta: Mapping[str, Any] | None, seed: int) -> str:
    """Where the chapter's numbers come from: this run, or the recorded run (its command, code
    version, date, seed and duration)."""
    if recorded is None:
        return f"computed by this run (seed {seed})"
    meta = meta or {}
    return (f"read from the recorded run `{recorded}`, written by `{meta['command']}` at code "
            f"version {meta['git_commit'][:12]} ({meta.get('finished_utc', '?')} UTC, seed "
            f"{meta.get('seed', '?')}, {meta.get('minutes', '?')} min); this build did not "
            "retrain them")


# ----------------------------------------------------------------------------- the comparison

COMPARISON_COLUMNS = ["backbone", "pairing", "label_fraction", "n_draws", "n_train", "n_test",
                      "auc", "ci_low", "ci_high", "delta", "delta_low", "delta_high"]


def comparison_table(results: pd.DataFrame, deltas: pd.DataFrame, backbone: str,
                     experiment: str = "linear", baseline: str = "image") -> pd.DataFrame:
    """One row per (pairing, label fraction): the draw-averaged AUC with its CI (from
    ``results``) and the paired-bootstrap difference to ``baseline`` (from ``deltas``, whose
    comparisons are named ``"<pairing> - <baseline>"``; NaN for the baseline itself)."""
    res = results[(results["experiment"] == experiment) & (results["backbone"] == backbone)]
    mean = res[res["draw"] == -1]
    if mean.empty:
        raise ValueError(f"no draw-averaged {experiment!r} rows for backbone {backbone!r}")
    n_draws = res[res["draw"] != -1].groupby(["init", "label_fraction"]).size()
    d = deltas[(deltas["experiment"] == experiment) & (deltas["backbone"] == backbone)]
    rows = []
    for r in mean.itertuples(index=False):
        match = d[(d["comparison"] == f"{r.init} - {baseline}")
                  & np.isclose(d["label_fraction"], r.label_fraction)]
        delta = match.iloc[0] if len(match) else None
        rows.append({"backbone": backbone, "pairing": r.init,
                     "label_fraction": float(r.label_fraction),
                     "n_draws": int(n_draws.get((r.init, r.label_fraction), 1)),
                     "n_train": int(r.n_train), "n_test": int(r.n_test), "auc": r.auc,
                     "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "delta": np.nan if delta is None else delta["delta"],
                     "delta_low": np.nan if delta is None else delta["ci_low"],
                     "delta_high": np.nan if delta is None else delta["ci_high"]})
    out = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    order = {name: i for i, name in enumerate(dict.fromkeys([baseline, *out["pairing"]]))}
    out["_order"] = out["pairing"].map(order)
    out = out.sort_values(["_order", "label_fraction"], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def as_results(table: pd.DataFrame, experiment: str = "linear") -> pd.DataFrame:
    """A comparison table as draw-averaged results rows (for ``plots.auc_vs_fraction``)."""
    return table.rename(columns={"pairing": "init"}).assign(experiment=experiment, draw=-1)


def write_recorded(table: pd.DataFrame, csv_path: str | Path, meta: dict[str, Any]) -> Path:
    """Write a comparison table and its sidecar ``<csv>.json`` (``meta``: the command, code
    version, date... that produced it). Returns the CSV path."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write(csv_path, lambda fh: table[COMPARISON_COLUMNS].to_csv(fh, index=False),
                       mode="w")
    store.atomic_write_text(csv_path.with_suffix(".json"),
                            json.dumps(meta, indent=1, default=str) + "\n")
    return csv_path


def read_recorded(csv_path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A recorded comparison table and its sidecar; clear errors when either is missing or
    the CSV lacks the expected columns."""
    csv_path = Path(csv_path)
    sidecar = csv_path.with_suffix(".json")
    for p in (csv_path, sidecar):
        if not p.is_file():
            raise FileNotFoundError(f"recorded comparison {p} does not exist: produce it with "
                                    "`python -m mocoxr.book run --profile pairs`")
    table = pd.read_csv(csv_path)
    missing = [c for c in COMPARISON_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}; expected {COMPARISON_COLUMNS}")
    meta = json.loads(sidecar.read_text())
    if "command" not in meta:
        raise ValueError(f"{sidecar}: no 'command' entry naming what wrote {csv_path.name}")
    return table, meta


def verdict(table: pd.DataFrame, pairing: str) -> str:
    """One sentence on a pairing's paired differences to the baseline over label fractions."""
    d = table[(table["pairing"] == pairing) & table["delta"].notna()]
    if d.empty:
        raise ValueError(f"no differences for pairing {pairing!r} in the comparison table")
    up, down = int((d["delta_low"] > 0).sum()), int((d["delta_high"] < 0).sum())
    n = len(d)
    if up == down == 0:
        where = "both" if n == 2 else f"all {n}" if n > 2 else "the one"
        return (f"its paired 95% CI includes zero at {where} label fraction{'s' * (n > 1)}: no "
                "difference from image-level pairs was measurable")
    parts = [f"above zero at {up} of {n}" if up else "",
             f"below zero at {down} of {n}" if down else ""]
    return f"its paired 95% CI lies {' and '.join(p for p in parts if p)} label fractions"


def code_version(root: str | Path | None = None) -> dict[str, str]:
    """The git commit of the project (with ``-dirty`` when files differ from it) and the
    runner's hash of the package code, for the sidecar of a recorded table."""
    from mocoxr.book import paths, runner

    root = Path(root or paths.project_root())

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit + ("-dirty" if dirty else ""), "code_hash": runner.code_hash()}


# ----------------------------------------------------------------------------- shown


def delta_rows(table: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The rules' paired differences as ``plots.delta_plot`` rows (``experiment`` = the rule,
    ``ci_low``/``ci_high`` = the difference's CI; the AUC's CI kept as ``auc_lo``/``auc_hi``)."""
    d = table[table["pairing"] != baseline].rename(columns={
        "delta_low": "ci_low", "delta_high": "ci_high", "ci_low": "auc_lo", "ci_high": "auc_hi"})
    return d.assign(experiment=d["pairing"], comparison=f"minus {baseline}")


def conclusion_values(table: pd.DataFrame, pairings: Sequence[str]) -> dict[str, Any]:
    """The conclusion's numbers: smallest and largest label fraction (``frac_small``/``_large``),
    each rule's difference there with its CI (``p<i>_delta_small[_lo|_hi]``...), its verdict
    and how many fractions lie above/below zero, and the baseline's AUC at both fractions."""
    from mocoxr import tables

    fr = sorted(table["label_fraction"].unique())
    out: dict[str, Any] = {"frac_small": tables.pct(fr[0]), "frac_large": tables.pct(fr[-1])}
    for i, name in enumerate(list(pairings)[1:], 1):
        rows = table[table["pairing"] == name].set_index("label_fraction")
        for tag, f in (("small", fr[0]), ("large", fr[-1])):
            out[f"p{i}_delta_{tag}"] = float(rows.loc[f, "delta"])
            out[f"p{i}_delta_{tag}_lo"] = float(rows.loc[f, "delta_low"])
            out[f"p{i}_delta_{tag}_hi"] = float(rows.loc[f, "delta_high"])
        out[f"p{i}_verdict"] = verdict(table, name)
        out[f"p{i}_n_up"] = int((rows["delta_low"] > 0).sum())
        out[f"p{i}_n_down"] = int((rows["delta_high"] < 0).sum())
    base = table[table["pairing"] == BASELINE].set_index("label_fraction")
    out["auc_image_small"] = float(base.loc[fr[0], "auc"])
    out["auc_image_large"] = float(base.loc[fr[-1], "auc"])
    out["n_fractions"] = int(len(fr))
    return out
