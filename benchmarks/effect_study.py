"""Does MoCo pretraining beat random init on the embedded data? One measured configuration per call.

Runs the book's pipeline (phantom -> manifests -> cache -> MoCo pretraining -> linear probe at
each label fraction -> paired-bootstrap deltas) with the settings given on the command line,
prints a one-line summary and appends it to ``<workdir>/effect_study.csv``. Used to choose the
``quick`` profile (issue 4); the table of what was tried is in ``book/methods.md``.

    python benchmarks/effect_study.py --tag base --n-patients 600 --image-size 64 --steps 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mocoxr import checkpoint, data, evaluate, experiments, phantom, pretrain, probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", required=True)
    p.add_argument("--workdir", default="runs/effect_study")
    p.add_argument("--n-patients", type=int, default=600)
    p.add_argument("--n-valid-patients", type=int, default=300)
    p.add_argument("--phantom-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--bn-splits", type=int, default=1,
                   help="shuffle-BN in one process: BatchNorm over this many groups (1 = off)")
    p.add_argument("--augment", default="{}", help="JSON AugmentConfig overrides")
    p.add_argument("--population", default="{}", help="JSON PhantomPopulation overrides")
    p.add_argument("--fractions", default="0.001,0.01,0.1,1.0")
    p.add_argument("--draws", default="5,5,5,1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standardize-on", default="train_split", choices=["train_split", "labelled"])
    p.add_argument("--monitor-every", type=int, default=0,
                   help="k-NN monitor (val rows against all labelled train rows) every N steps")
    p.add_argument("--finetune-epochs", type=int, default=0, help="0: no fine-tuning")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--finetune-batch", type=int, default=32)
    p.add_argument("--finetune-head-warmup", type=int, default=0,
                   help="epochs that train the new head alone (encoder frozen) before the rest")
    p.add_argument("--finetune-encoder-lr-scale", type=float, default=1.0,
                   help="encoder learning rate = finetune lr x this (the head keeps finetune lr)")
    p.add_argument("--finetune-fractions", default="0.001,1.0")
    p.add_argument("--skip-random-finetune", action="store_true")
    p.add_argument("--note", default="", help="what this configuration changes (for --record)")
    p.add_argument("--record", default=None,
                   help="CSV that keeps one row per tag for the book (e.g. book/recorded/ablations.csv)")
    p.add_argument("--extend", default=None,
                   help="pretraining folder of a shorter run with the same settings to continue from")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    pop_over = json.loads(a.population)
    population = phantom.PhantomPopulation(**pop_over) if pop_over else phantom.DEFAULT_POPULATION
    data_key = hashlib.sha1(json.dumps([a.n_patients, a.n_valid_patients, a.phantom_size,
                                        population.to_dict(), a.seed], sort_keys=True)
                            .encode()).hexdigest()[:10]  # the whole population: defaults change
    t0 = time.time()
    folder = phantom.generate_chexpert_tree(work / "data" / data_key, n_patients=a.n_patients,
                                            image_size=a.phantom_size, seed=a.seed,
                                            n_valid_patients=a.n_valid_patients,
                                            population=population, workers=a.threads)
    fractions = [float(f) for f in a.fractions.split(",")]
    draws = [int(d) for d in a.draws.split(",")]
    prep = data.prepare_chexpert(folder, work / "manifests" / data_key, fractions=fractions,
                                 draws=draws, seed=a.seed)
    images = data.load_image_cache(list(prep.manifest["path"]), a.image_size,
                                    work / "cache" / f"{data_key}_{a.image_size}.npy")
    train_rows = prep.rows("train")
    mean, std = data.image_stats(images, train_rows)
    t_data = time.time() - t0

    cfg = pretrain.PretrainConfig(backbone=a.backbone, init="random", image_size=a.image_size,
                                  batch_size=a.batch, epochs=10_000, max_steps=a.steps, lr=a.lr,
                                  queue_size=a.queue, momentum=a.momentum, temperature=a.temperature,
                                  seed=a.seed, device="cpu", augment=json.loads(a.augment),
                                  bn_splits=a.bn_splits)
    run_key = hashlib.sha1(json.dumps([data_key, checkpoint.config_dict(cfg)], sort_keys=True,
                                           default=str).encode()).hexdigest()[:10]
    pre_dir = work / "pretrain" / run_key
    if a.extend and not (pre_dir / "checkpoint.pt").exists():  # raising max_steps resumes a run
        pre_dir.mkdir(parents=True, exist_ok=True)
        for name in ("checkpoint.pt", "loss_log.csv"):
            shutil.copy(Path(a.extend) / name, pre_dir / name)
    t1 = time.time()
    monitor = None
    if a.monitor_every:
        cfg.monitor_every = a.monitor_every
        monitor = probe.make_knn_monitor(images, train_rows, prep.labels(train_rows),
                                         prep.rows("val"), prep.labels(prep.rows("val")),
                                         mean, std, a.image_size)
    out = pretrain.pretrain(images, train_rows, cfg, pre_dir, mean, std, monitor=monitor,
                            progress=False)
    if "knn_auc" in out["log"]:
        curve = out["log"].dropna(subset=["knn_auc"])
        print(f"[{a.tag}] knn: " + " ".join(f"{int(s)}:{v:.3f}" for s, v in
                                             zip(curve["step"], curve["knn_auc"])), flush=True)
        print(f"[{a.tag}] linear: " + " ".join(f"{int(s)}:{v:.3f}" for s, v in
                                                zip(curve["step"], curve["linear_auc"])), flush=True)
    t_pre = time.time() - t1

    t2 = time.time()
    res_dir = work / "results" / run_key
    experiments.run_linear_experiment(prep, images, {"moco": out["backbone"], "random": "random"},
                                      a.backbone, mean=mean, std=std, image_size=a.image_size,
                                      out_dir=res_dir, n_boot=1000, seed=a.seed, progress=False,
                                      standardize_on=a.standardize_on)
    deltas = experiments.compute_deltas(res_dir, "linear", a.backbone, n_boot=1000, seed=a.seed)
    t_probe = time.time() - t2
    t_ft = 0.0
    if a.finetune_epochs:
        t3 = time.time()
        inits = {"moco": out["backbone"]} if a.skip_random_finetune else {"moco": out["backbone"], "random": "random"}
        ft = experiments.run_finetune_experiment(
            prep, images, inits, a.backbone, mean=mean, std=std, image_size=a.image_size,
            out_dir=res_dir, fractions=[float(f) for f in a.finetune_fractions.split(",")],
            max_draws=1, max_epochs=a.finetune_epochs, n_boot=1000, seed=a.seed, device="cpu",
            batch_size=a.finetune_batch, lr=a.finetune_lr, progress=False,
            head_warmup_epochs=a.finetune_head_warmup,
            encoder_lr_scale=a.finetune_encoder_lr_scale)
        t_ft = time.time() - t3
        ft = ft[ft["draw"] == evaluate.MEAN_DRAW]
        ft_deltas = experiments.compute_deltas(res_dir, "finetune", a.backbone, n_boot=1000,
                                               seed=a.seed) if not a.skip_random_finetune else None
        print(f"[{a.tag}] finetune ({t_ft:.0f}s): " + " | ".join(
            f"{r.init} f={r.label_fraction:g}: {r.auc:.3f} [{r.ci_low:.3f},{r.ci_high:.3f}]"
            for r in ft.itertuples()), flush=True)
    res = pd.read_csv(res_dir / "results.csv")
    res = res[(res["draw"] == evaluate.MEAN_DRAW) & (res["experiment"] == "linear")]
    summary = {"tag": a.tag,
               "command": "python benchmarks/effect_study.py " + shlex.join(sys.argv[1:]), **{k: v for k, v in vars(a).items() if k not in ("tag", "workdir")},
               "n_train": len(train_rows), "n_test": len(prep.rows("test")),
               "prevalence_test": float(prep.labels(prep.rows("test")).mean()),
               "loss_last": float(out["log"]["loss"].dropna().iloc[-20:].mean()),
               "t_data_s": round(t_data), "t_pretrain_s": round(t_pre), "t_probe_s": round(t_probe),
               "t_finetune_s": round(t_ft)}
    line = []
    for f in fractions:
        m = res[(res["init"] == "moco") & np.isclose(res["label_fraction"], f)]["auc"].item()
        r = res[(res["init"] == "random") & np.isclose(res["label_fraction"], f)]["auc"].item()
        d = deltas[np.isclose(deltas["label_fraction"], f)].iloc[0]
        summary.update({f"moco_{f:g}": round(m, 3), f"random_{f:g}": round(r, 3),
                        f"delta_{f:g}": f"{d['delta']:+.3f} ({d['ci_low']:+.3f},{d['ci_high']:+.3f})"})
        line.append(f"f={f:g}: {m:.3f}/{r:.3f} d{d['delta']:+.3f} [{d['ci_low']:+.3f},{d['ci_high']:+.3f}]")
    print(f"[{a.tag}] " + " | ".join(line) + f" | pre {t_pre:.0f}s probe {t_probe:.0f}s "
          f"loss {summary['loss_last']:.2f}")
    if a.record:
        record_row(Path(a.record), a, summary, out["log"], fractions, deltas,
                   ft if a.finetune_epochs else None, ft_deltas if a.finetune_epochs else None)
    table = work / "effect_study.csv"
    previous = pd.read_csv(table) if table.exists() else pd.DataFrame()
    pd.concat([previous, pd.DataFrame([summary])], ignore_index=True).to_csv(table, index=False)


def _ci(d: pd.Series) -> str:
    return f"{d['delta']:+.3f} ({d['ci_low']:+.3f}, {d['ci_high']:+.3f})"


def portable_command(command: str) -> str:
    """The command without ``--workdir``/``--record`` (where files go, not what is computed),
    so that a recorded row names no folder of the machine that ran it."""
    words = shlex.split(command)
    keep, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("--workdir", "--record"):
            skip = True
            continue
        if w.startswith(("--workdir=", "--record=")):
            continue
        keep.append(w)
    return shlex.join(keep)


def record_row(path: Path, a: argparse.Namespace, summary: dict, log: pd.DataFrame,
               fractions: list[float], deltas: pd.DataFrame, ft: pd.DataFrame | None,
               ft_deltas: pd.DataFrame | None) -> None:
    """Upsert this configuration's row (by tag) into the book's ablation table."""
    row = {"tag": a.tag, "what": a.note, "seed": a.seed}
    curve = log.dropna(subset=["knn_auc"]) if "knn_auc" in log else None
    for name in ("knn_auc", "linear_auc"):
        row[f"{name.split('_')[0]} monitor"] = (
            f"{curve[name].iloc[0]:.3f} -> {curve[name].iloc[-1]:.3f}" if curve is not None else "")
    row["final loss"] = f"{summary['loss_last']:.2f}"
    for f in fractions:
        row[f"linear {100 * f:g}%"] = _ci(deltas[np.isclose(deltas["label_fraction"], f)].iloc[0])
    if ft is not None and ft_deltas is not None:
        for f in sorted(ft["label_fraction"].unique()):
            at = ft[np.isclose(ft["label_fraction"], f)].set_index("init")["auc"]
            d = ft_deltas[np.isclose(ft_deltas["label_fraction"], f)].iloc[0]
            row[f"fine-tune {100 * f:g}%"] = (f"MoCo {at['moco']:.3f}, random {at['random']:.3f}: "
                                               f"{_ci(d)}")
    row["command"] = portable_command(summary["command"])
    previous = pd.read_csv(path, dtype=str) if path.exists() else pd.DataFrame()
    if len(previous):
        previous = previous[previous["tag"] != a.tag]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([previous, pd.DataFrame([row]).astype(str)], ignore_index=True).to_csv(path, index=False)


if __name__ == "__main__":
    main()
