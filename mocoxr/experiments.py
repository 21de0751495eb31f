"""Experiment sweeps, so that notebooks stay thin: linear probe and fine-tuning over
(init, label fraction, draw), per-image predictions, results and paired deltas.

A run folder ``out_dir`` holds::

    features/        frozen-encoder features, one .npy (+ JSON key) per (dataset, backbone, init)
    predictions/     per-image test scores (evaluate.save_predictions), one file per model
    finetune/        fine-tuning keys and validation-AUC histories (reuse without retraining)
    results.csv      evaluate.RESULTS_COLUMNS, one row per (experiment, backbone, init, fraction, draw)
    deltas.csv       evaluate.DELTAS_COLUMNS, one row per (experiment, backbone, fraction, comparison)

**Draw-averaged rows.** Besides one row per draw (``draw`` = 0, 1, ...), every (experiment,
backbone, init, label_fraction) gets a summary row with ``draw == MEAN_DRAW`` (-1): its ``auc``
is the mean AUC over the draws and its CI the bootstrap CI of that mean (the draws averaged
inside each replicate, ``evaluate.bootstrap_auc`` on the (D, N) stacked scores); ``n_train`` is
the mean training-set size over the draws (rounded). The summary row exists for a single draw
too (then equal to it), so plots can always select ``draw == -1``; the column stays integer.

Experiment names: ``linear``, ``finetune`` (CheXpert), ``shenzhen_linear``, ``shenzhen_finetune``.
Deltas are named ``"<a> - <b>"`` (e.g. ``"moco - random"``): AUC of init a minus init b.
"""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mocoxr import checkpoint, evaluate, finetune, keys, models, probe, runtime, store

EXPERIMENTS = ("linear", "finetune", "shenzhen_linear", "shenzhen_finetune")


# ----------------------------------------------------------------------------- helpers


def plan(prepared: Any, fractions: Sequence[float] | None = None,
         max_draws: int | None = None) -> list[tuple[float, list[int]]]:
    """(label_fraction, [draws]) pairs of ``prepared.subsets``, ascending; optionally only the
    given ``fractions`` and the first ``max_draws`` draws of each."""
    sub = prepared.subsets
    have = sorted(float(f) for f in sub["label_fraction"].unique())
    if fractions is None:
        chosen = have
    else:
        chosen = []
        for f in fractions:
            match = [h for h in have if np.isclose(h, f)]
            if not match:
                raise ValueError(f"label_fraction {f} is not in the subsets of {prepared.name} "
                                 f"(have {have})")
            chosen.append(match[0])
    if max_draws is not None and max_draws < 1:
        raise ValueError(f"max_draws must be >= 1 or None, got {max_draws}")
    out = []
    for f in chosen:
        draws = sorted(int(d) for d in sub.loc[np.isclose(sub["label_fraction"], f), "draw"].unique())
        out.append((f, draws[:max_draws] if max_draws else draws))
    return out


def _check_inputs(prepared: Any, images: np.ndarray, backbones: Mapping[str, Any]) -> None:
    if len(images) != len(prepared.manifest):
        raise ValueError(f"images has {len(images)} rows but the {prepared.name} manifest has "
                         f"{len(prepared.manifest)}: pass the decoded cache of this manifest")
    if not backbones:
        raise ValueError("backbones is empty: give {init_name: 'random' | 'imagenet' | path}")
    for name, spec in backbones.items():
        if str(spec) not in ("random", "imagenet") and not Path(spec).is_file():
            raise FileNotFoundError(f"backbone for init {name!r}: {spec!r} is neither 'random', "
                                    "'imagenet' nor an existing file")


def _tag(x: Any) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(x))


def dataset_features(prepared: Any, images: np.ndarray, backbone_name: str, init_name: str,
                     spec: Any, mean: float, std: float, image_size: int, out_dir: str | Path,
                     batch_size: int = 64, device: str = runtime.DEFAULT_DEVICE,
                     seed: int = 0) -> np.ndarray:
    """Features (len(manifest), D) of every manifest row for one backbone spec, cached in
    ``out_dir/features`` and keyed by the weights' content hash, the images' content hash and
    the feature code (so a retrained checkpoint, other images under the same names or edited
    code are never served stale features)."""
    model = models.create_backbone(backbone_name, init=spec, seed=seed)
    name = f"{_tag(prepared.name)}__{backbone_name}__{_tag(init_name)}__{image_size}px.npy"
    cache = Path(out_dir) / "features" / name
    key = keys.sha([probe.state_dict_sha1(model), keys.array_digest(images),
                    keys.code_digest(keys.TRAINING_CODE)])
    return probe.extract_features(model, images, np.arange(len(prepared.manifest)), mean, std,
                                  image_size, batch_size=batch_size, device=device,
                                  cache_file=cache, key=key)


def _score_rows(experiment: str, backbone: str, init: str, fraction: float,
                draws: list[int], scores: list[np.ndarray], n_train: list[int],
                y_test: np.ndarray, n_boot: int, seed: int,
                progress: bool = False, n_steps: list[int] | None = None) -> list[dict]:
    """One results row per draw plus the draw-averaged row (draw = evaluate.MEAN_DRAW); with
    ``progress`` the mean AUC is printed. ``n_steps``: optimizer steps per draw (fine-tuning);
    the draw-averaged row gets the fewest."""
    base = {"experiment": experiment, "backbone": backbone, "init": init,
            "label_fraction": float(fraction), "n_test": int(len(y_test))}
    out = []
    steps = [None] * len(draws) if n_steps is None else [int(k) for k in n_steps]
    for d, s, n, k in zip(draws, scores, n_train, steps):
        auc, lo, hi = evaluate.bootstrap_auc(y_test, s, n_boot=n_boot, seed=seed)
        out.append({**base, "draw": int(d), "auc": auc, "ci_low": lo, "ci_high": hi,
                    "n_train": int(n), "n_steps": k})
    auc, lo, hi = evaluate.bootstrap_auc(y_test, np.stack(scores), n_boot=n_boot, seed=seed)
    out.append({**base, "draw": evaluate.MEAN_DRAW, "auc": auc, "ci_low": lo, "ci_high": hi,
                "n_train": int(round(float(np.mean(n_train)))),
                "n_steps": None if n_steps is None else min(steps)})
    if progress:
        print(f"{experiment} {backbone} {init} f={fraction:g}: mean AUC {auc:.3f} "
              f"over {len(draws)} draw(s)")
    return out


def _write_results(out_dir: Path, rows: list[dict]) -> pd.DataFrame:
    """Upsert ``rows`` into ``results.csv`` after dropping older rows of every (experiment,
    backbone, init, fraction) run now, so per-draw rows, the draw-averaged row and the deltas
    computed from the table always describe the same draws (e.g. after lowering max_draws)."""
    path = out_dir / "results.csv"
    with store.file_lock(path):
        return _write_results_locked(path, rows)


def _write_results_locked(path: Path, rows: list[dict]) -> pd.DataFrame:
    if path.exists():
        old = pd.read_csv(path)
        ran = pd.DataFrame(rows)[["experiment", "backbone", "init", "label_fraction"]].drop_duplicates()
        stale = np.zeros(len(old), bool)
        for r in ran.itertuples(index=False):
            stale |= ((old["experiment"] == r.experiment) & (old["backbone"] == r.backbone)
                      & (old["init"].astype(str) == str(r.init))
                      & np.isclose(old["label_fraction"], r.label_fraction)).to_numpy()
        if stale.any():
            store.atomic_write(path, lambda fh: old[~stale].to_csv(fh, index=False), mode="w")
    evaluate.upsert_rows(path, rows, evaluate.RESULTS_COLUMNS, evaluate.RESULTS_KEY)
    return pd.DataFrame(rows, columns=evaluate.RESULTS_COLUMNS)


# ----------------------------------------------------------------------------- linear probe


def run_linear_experiment(prepared: Any, images: np.ndarray, backbones: Mapping[str, Any],
                          backbone_name: str, *, mean: float, std: float, image_size: int,
                          out_dir: str | Path, experiment: str = "linear",
                          method: str = "logreg", fractions: Sequence[float] | None = None,
                          max_draws: int | None = None, n_boot: int = 1000, seed: int = 0,
                          device: str = runtime.DEFAULT_DEVICE, batch_size: int = 64,
                          probe_kwargs: Mapping[str, Any] | None = None,
                          standardize_on: str = "train_split",
                          progress: bool = True) -> pd.DataFrame:
    """Linear probe on frozen features for every (init, label fraction, draw).

    ``backbones``: ``{init_name: "random" | "imagenet" | path to an exported backbone or
    MoCo checkpoint}`` (e.g. ``{"moco": ".../backbone.pt", "imagenet": "imagenet"}``).
    Features of all manifest rows are extracted once per (dataset, backbone, init) and cached;
    the probe (``probe.linear_probe``, C or epoch chosen on the val split) is fitted on each
    subset's rows and scores the test split. ``standardize_on``: ``"train_split"`` fits the
    feature scaler on every training-split image (unlabelled: no label is used), ``"labelled"``
    on the subset's own rows only. Predictions go to ``out_dir/predictions``; rows
    (per draw and draw-averaged, see the module docstring) are upserted into
    ``out_dir/results.csv`` and returned.
    """
    out_dir = Path(out_dir)
    _check_inputs(prepared, images, backbones)
    if standardize_on not in ("train_split", "labelled"):
        raise ValueError(f"standardize_on must be 'train_split' or 'labelled', got {standardize_on!r}")
    val_rows, test_rows = prepared.rows("val"), prepared.rows("test")
    y_val, y_test = prepared.labels(val_rows), prepared.labels(test_rows)
    sweep = plan(prepared, fractions, max_draws)
    rows: list[dict] = []
    for init_name, spec in backbones.items():
        feats = dataset_features(prepared, images, backbone_name, init_name, spec, mean, std,
                                 image_size, out_dir, batch_size=batch_size, device=device,
                                 seed=seed)
        val = (feats[val_rows], y_val) if len(val_rows) else None
        pool = feats[prepared.rows("train")] if standardize_on == "train_split" else None
        for f, draws in sweep:
            scores, n_train = [], []
            for d in draws:
                tr = prepared.subset_rows(f, d)
                s = probe.linear_probe(feats[tr], prepared.labels(tr), feats[test_rows],
                                       method=method, label_fraction=f, val=val, seed=seed + d,
                                       unlabelled_X=pool, **dict(probe_kwargs or {}))
                evaluate.save_predictions(out_dir / "predictions", experiment, backbone_name,
                                          init_name, f, d, test_rows, y_test, s)
                scores.append(s)
                n_train.append(len(tr))
            rows += _score_rows(experiment, backbone_name, init_name, f, draws, scores,
                                n_train, y_test, n_boot, seed, progress)
    return _write_results(out_dir, rows)


# ----------------------------------------------------------------------------- fine-tuning


def run_finetune_experiment(prepared: Any, images: np.ndarray, backbones: Mapping[str, Any],
                            backbone_name: str, *, mean: float, std: float, image_size: int,
                            out_dir: str | Path, experiment: str = "finetune",
                            fractions: Sequence[float] | None = None,
                            max_draws: int | None = None, max_epochs: int | None = None,
                            n_boot: int = 1000, seed: int = 0, device: str = runtime.DEFAULT_DEVICE,
                            batch_size: int = 16, lr: float = 1e-4,
                            augment: Mapping[str, Any] | None = None,
                            head_warmup_epochs: int = 0, encoder_lr_scale: float = 1.0,
                            min_steps: int = 100, n_evals: int = 5, amp: str = "auto",
                            overwrite: bool = False, progress: bool = True,
                            keep_models: bool | Sequence[float] = False) -> pd.DataFrame:
    """End-to-end fine-tuning (``finetune.finetune``) for every (init, label fraction, draw),
    with at most ``max_draws`` draws per fraction and ``max_epochs`` epochs (CPU budgets), Adam
    at ``lr`` (the paper: 1e-4); ``head_warmup_epochs``, ``encoder_lr_scale``, ``min_steps``
    (fewest optimizer steps, :func:`finetune.finetune_schedule`), ``n_evals`` (validation
    points) and ``amp`` (``auto``: bf16 where the device has bf16 units) as in
    ``finetune.FinetuneConfig``. The results rows carry each draw's ``n_steps``.

    A model whose predictions exist and whose key (weights hash of the init, fine-tuning
    config, train rows, precision) matches ``out_dir/finetune/<name>.json`` is not retrained
    unless ``overwrite``; the validation history of each model is saved next to its key as CSV.
    ``keep_models``: the first draw's model of every (init, fraction) (True) or of the given
    fractions is also kept, as ``<name>__model.pt`` beside its key (see :func:`load_finetuned`);
    a missing one is retrained.
    Rows are upserted into ``out_dir/results.csv`` and returned.
    """
    out_dir = Path(out_dir)
    _check_inputs(prepared, images, backbones)
    val_rows, test_rows = prepared.rows("val"), prepared.rows("test")
    if not len(val_rows):
        raise ValueError(f"{prepared.name} has no val split: fine-tuning selects epochs on it")
    y_val, y_test = prepared.labels(val_rows), prepared.labels(test_rows)
    state_dir, pred_dir = out_dir / "finetune", out_dir / "predictions"
    state_dir.mkdir(parents=True, exist_ok=True)
    options = dict(image_size=image_size, batch_size=batch_size, lr=lr, max_epochs=max_epochs,
                   device=device, augment=dict(augment or {}),
                   head_warmup_epochs=head_warmup_epochs, encoder_lr_scale=encoder_lr_scale,
                   min_steps=min_steps, n_evals=n_evals, amp=amp)
    data_key = {"data": {"images": keys.array_digest(images), "mean": float(mean),
                         "std": float(std), "val": keys.labels_digest(val_rows, y_val),
                         "test": keys.labels_digest(test_rows, y_test),
                         "code": keys.code_digest(keys.TRAINING_CODE)}}
    cells = []  # (init, fraction, draw, job, key, name); job: finetune.finetune's arguments
    for init_name, spec in backbones.items():
        spec_key = (keys.file_sha1(spec) if str(spec) not in ("random", "imagenet")
                    else f"{spec}:{backbone_name}:{seed}")
        for f, draws in plan(prepared, fractions, max_draws):
            for d in draws:
                tr = prepared.subset_rows(f, d)
                cfg = finetune.FinetuneConfig(label_fraction=f, seed=seed + d, **options)
                key = {"init": spec_key, "backbone": backbone_name,
                       "config": checkpoint.config_dict(cfg), **_rows_key(prepared, tr), **data_key,
                       "precision": runtime.precision(cfg.amp, cfg.device)}
                name = _finetuned_name(experiment, backbone_name, init_name, f, d)
                keep = (state_dir / f"{name}__model.pt"
                        if d == draws[0] and _keeps(keep_models, f) else None)
                job = dict(backbone=backbone_name, init=spec, train_rows=tr,
                           train_y=prepared.labels(tr), val_rows=val_rows, val_y=y_val,
                           test_rows=test_rows, mean=mean, std=std, cfg=cfg, save_model=keep)
                cells.append((init_name, f, d, job, key, name))
    done = _finetune_cells(cells, images, state_dir, pred_dir, experiment, y_test, overwrite,
                           progress)
    rows: list[dict] = []
    for (init_name, f), group in groupby(cells, key=lambda c: (c[0], c[1])):
        group = list(group)
        rows += _score_rows(experiment, backbone_name, init_name, f, [c[2] for c in group],
                            [done[c[5]][0] for c in group], [len(c[3]["train_rows"]) for c in group],
                            y_test, n_boot, seed, progress, [done[c[5]][1] for c in group])
    return _write_results(out_dir, rows)


def _finetune_cells(cells: list, images: np.ndarray, state_dir: Path, pred_dir: Path,
                    experiment: str, y_test: np.ndarray, overwrite: bool,
                    progress: bool) -> dict[str, tuple[np.ndarray, int]]:
    """``(test scores, optimizer steps)`` of every cell by name: reused where its key, history
    (and kept model) and predictions match, else trained; each trained model's history,
    predictions and key are written as soon as it finishes (an interrupted sweep keeps the
    models that finished)."""
    out = {}
    for init_name, f, d, job, key, name in cells:
        history = state_dir / f"{name}__history.csv"
        cell = (experiment, job["backbone"], init_name, f, d)
        s = None if overwrite else _reusable_scores(
            state_dir / f"{name}.json", key, [p for p in (job["save_model"], history) if p],
            pred_dir, job["test_rows"], cell)
        if s is None:
            (state_dir / f"{name}.json").unlink(missing_ok=True)
            s, hist = finetune.finetune(images=images, progress=progress, **job)
            store.atomic_write(history, lambda fh, h=hist: h.to_csv(fh, index=False), mode="w")
            evaluate.save_predictions(pred_dir, *cell, job["test_rows"], y_test, s)
            store.atomic_write_text(state_dir / f"{name}.json", json.dumps(key))
        else:
            hist = pd.read_csv(history)
        out[name] = (np.asarray(s, dtype=np.float64), int(hist["step"].max()))
    return out


def _rows_key(prepared: Any, train_rows: np.ndarray) -> dict[str, Any]:
    """The part of a fine-tuning key that names its rows: the training rows and labels, and the
    sizes of the val and test splits."""
    return {"train_rows": [int(r) for r in train_rows],
            "val_rows_n": int(len(prepared.rows("val"))),
            "test_rows_n": int(len(prepared.rows("test"))),
            "train_labels": keys.labels_digest(prepared.labels(train_rows))}


def _finetuned_name(experiment: str, backbone_name: str, init_name: str, fraction: float,
                    draw: int) -> str:
    """The file stem of one fine-tuned (init, fraction, draw) under ``out_dir/finetune``."""
    return f"{experiment}__{backbone_name}__{_tag(init_name)}__f{float(fraction):g}__d{int(draw)}"


def _keeps(keep_models: bool | Sequence[float], fraction: float) -> bool:
    """Whether ``keep_models`` asks to keep the first draw's model at ``fraction``."""
    if isinstance(keep_models, bool):
        return keep_models
    return any(np.isclose(fraction, k) for k in keep_models)


def _reusable_scores(key_file: Path, key: dict, needed: list[Path], pred_dir: Path,
                     test_rows: np.ndarray, cell: tuple) -> np.ndarray | None:
    """The saved test scores of ``cell`` (experiment, backbone, init, fraction, draw) when its
    key file matches ``key``, the ``needed`` files (history, model to keep) exist and the
    scores cover ``test_rows``; else None (retrain)."""
    if not store.sidecar_matches(key_file, key, needed):
        return None
    try:
        rows, _, scores = evaluate.load_predictions(pred_dir, *cell)
    except FileNotFoundError:
        return None
    return scores if np.array_equal(rows, test_rows) else None


def load_history(out_dir: str | Path, experiment: str, backbone_name: str, init_name: str,
                 fraction: float, draw: int = 0) -> pd.DataFrame:
    """The validation history ``run_finetune_experiment`` saved for one (init, fraction, draw)."""
    name = _finetuned_name(experiment, backbone_name, init_name, fraction, draw)
    path = Path(out_dir) / "finetune" / f"{name}__history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tuning history {path}: run run_finetune_experiment")
    return pd.read_csv(path)


def load_finetuned(out_dir: str | Path, experiment: str, backbone_name: str, init_name: str,
                   fraction: float, draw: int = 0):
    """A model kept by ``run_finetune_experiment(..., keep_models=True)``: the torchvision
    ``backbone_name`` with its one-logit head, in eval mode."""
    name = _finetuned_name(experiment, backbone_name, init_name, fraction, draw)
    path = Path(out_dir) / "finetune" / f"{name}__model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no kept fine-tuned model {path}: run run_finetune_experiment "
                                "with keep_models=True")
    model = finetune.replace_head(models.create_backbone(backbone_name), 0)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


# ----------------------------------------------------------------------------- deltas


def compute_deltas(out_dir: str | Path, experiment: str, backbone: str,
                   comparison: tuple[str, str] = ("moco", "random"), n_boot: int = 1000,
                   seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Paired-bootstrap AUC differences ``comparison[0] - comparison[1]`` per label fraction.

    Uses the draws both inits have in ``out_dir/results.csv`` (same draw index = same training
    subset), loads their saved test predictions, checks they score the same test images,
    stacks them (D, N) and calls ``evaluate.paired_bootstrap_delta`` (draws averaged inside
    each replicate, same resamples for both). Rows are upserted into ``out_dir/deltas.csv``.
    """
    out_dir = Path(out_dir)
    a, b = comparison
    results_path = out_dir / "results.csv"
    if not results_path.exists():
        raise FileNotFoundError(f"no results table at {results_path}: run an experiment first")
    res = pd.read_csv(results_path)
    res = res[(res["experiment"] == experiment) & (res["backbone"] == backbone)
              & (res["draw"] != evaluate.MEAN_DRAW)]
    rows = []
    for f in sorted(res["label_fraction"].unique()):
        at_f = res[np.isclose(res["label_fraction"], f)]
        draws = sorted(set(at_f.loc[at_f["init"] == a, "draw"])
                       & set(at_f.loc[at_f["init"] == b, "draw"]))
        if not draws:
            continue
        stacks, ref = {a: [], b: []}, None
        for init in (a, b):
            for d in draws:
                r, y, s = evaluate.load_predictions(out_dir / "predictions", experiment,
                                                    backbone, init, f, int(d))
                if ref is None:
                    ref = (r, y)
                elif not (np.array_equal(r, ref[0]) and np.array_equal(y, ref[1])):
                    raise ValueError(f"{experiment} {backbone} f={f:g}: predictions of {init} "
                                     f"draw {d} score other test images than {a} draw {draws[0]}")
                stacks[init].append(np.asarray(s, dtype=np.float64))
        delta, lo, hi = evaluate.paired_bootstrap_delta(ref[1], np.stack(stacks[a]),
                                                        np.stack(stacks[b]), n_boot=n_boot,
                                                        seed=seed, alpha=alpha)
        rows.append({"experiment": experiment, "backbone": backbone, "label_fraction": float(f),
                     "comparison": f"{a} - {b}", "delta": delta, "ci_low": lo, "ci_high": hi})
    if not rows:
        raise ValueError(f"{results_path}: no label fraction has draws of both {a!r} and {b!r} "
                         f"for experiment {experiment!r}, backbone {backbone!r}")
    evaluate.upsert_rows(out_dir / "deltas.csv", rows, evaluate.DELTAS_COLUMNS, evaluate.DELTAS_KEY)
    return pd.DataFrame(rows, columns=evaluate.DELTAS_COLUMNS)
