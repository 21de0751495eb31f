"""MoCo pretraining from the command line, on one process or many with ``torchrun``.

One process (CPU, or one GPU)::

    python -m mocoxr.torchrun_pretrain --images runs/full/cache/chexpert_320px.npy \\
        --manifest runs/full/chexpert.csv --split train --out runs/full/moco_resnet18 \\
        --set backbone=resnet18 --set batch_size=256 --set init=imagenet

N GPUs of one node (several nodes: ``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``)::

    torchrun --standalone --nproc_per_node N -m mocoxr.torchrun_pretrain <same arguments>

Every process runs :func:`mocoxr.pretrain.pretrain` with the same arguments; ``batch_size`` is the
*global* batch (each rank trains on its slice), the MoCo model runs in DistributedDataParallel
with shuffle-BN and keys gathered from all ranks into the queue, and rank 0 alone writes
``checkpoint.pt``, ``loss_log.csv`` and ``backbone.pt`` (see ``mocoxr.checkpoint``).
Rerunning the same command resumes from ``out/checkpoint.pt``, on any number of processes: the
checkpoint holds the global step and the global batch, which a new world size splits anew.

Configuration: ``--config cfg.json`` (an object of :class:`mocoxr.pretrain.PretrainConfig` fields)
and/or ``--set FIELD=VALUE`` (repeatable; VALUE read as JSON when it parses, e.g. ``max_steps=100``,
``lr_drops=[0.6,0.9]``, ``augment={"scale":[1,1]}``, else as a string). The process group uses
NCCL on CUDA and gloo on CPU (``--backend`` to override). ``out/pretrain_cli.json`` records the
inputs (images, rows, mean, std, world size) of the last launch. MedAug positive pairs
(``--set positive_pairs=same_study``, ``mocoxr.pairs``) need ``--manifest``: keys come from the
manifest's own rows (with ``pair_laterals``, its lateral rows, if it keeps any).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from mocoxr import checkpoint, data, pairs, runtime, store
from mocoxr.pretrain import PretrainConfig, pretrain

__all__ = ["parse_sets", "make_config", "load_rows", "env_world", "main"]


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as JSON when they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def make_config(config_file: str | Path | None = None, sets: Sequence[str] = ()) -> PretrainConfig:
    """A PretrainConfig from an optional JSON file, then ``--set`` overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {path}: not valid JSON ({err})") from err
        if not isinstance(values, dict):
            raise ValueError(f"--config {path}: expected a JSON object of PretrainConfig fields")
    values.update(parse_sets(sets))
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown PretrainConfig field(s) {unknown}; known: {sorted(fields)}")
    if "lr_drops" in values:
        values["lr_drops"] = tuple(values["lr_drops"])
    return PretrainConfig(**values)


def load_rows(n_images: int, rows_file: str | Path | None = None,
              manifest: str | Path | None = None, split: str | None = None) -> np.ndarray:
    """Training rows: a ``.npy`` of row indices, the rows of a manifest ``split``, or all rows."""
    if rows_file is not None and manifest is not None:
        raise ValueError("give --rows or --manifest/--split, not both")
    if rows_file is not None:
        rows = np.load(rows_file)
    elif manifest is not None:
        import pandas as pd

        df = pd.read_csv(manifest)
        if len(df) != n_images:
            raise ValueError(f"manifest {manifest} has {len(df)} rows but the image cache has "
                             f"{n_images}: pass the cache built from this manifest")
        if split is None:
            rows = np.arange(len(df))
        else:
            if "split" not in df.columns:
                raise ValueError(f"manifest {manifest} has no 'split' column")
            rows = np.flatnonzero(df["split"].to_numpy() == split)
            if rows.size == 0:
                raise ValueError(f"manifest {manifest} has no rows with split == {split!r}")
    else:
        rows = np.arange(n_images)
    return np.asarray(rows, dtype=np.int64)


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mocoxr.torchrun_pretrain",
                                description="MoCo v2 pretraining (one process or torchrun).")
    p.add_argument("--images", required=True, help="decoded-image cache, .npy uint8 (N, H, W)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log, backbone)")
    p.add_argument("--rows", help=".npy of the row indices to train on (default: all rows)")
    p.add_argument("--manifest", help="dataset manifest CSV row-aligned with the cache")
    p.add_argument("--split", help="with --manifest: train on rows of this split (e.g. train)")
    p.add_argument("--config", help="JSON object of PretrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one PretrainConfig field (repeatable)")
    p.add_argument("--mean", type=float, help="pixel mean in [0, 1] (default: from the rows)")
    p.add_argument("--std", type=float, help="pixel std in [0, 1] (default: from the rows)")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--threads", type=int, help="torch intra-op threads per process")
    p.add_argument("--timeout-min", type=float, default=60.0,
                   help="collective timeout in minutes (a long monitor on rank 0 makes the "
                        "others wait)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _device(cfg: PretrainConfig, world: int, local_rank: int) -> tuple[PretrainConfig, torch.device]:
    """The process's device (``cuda:LOCAL_RANK`` under torchrun), set in ``cfg``."""
    device = runtime.resolve_device(cfg.device)
    if device.type == "cuda":
        if world > 1 or device.index is None:
            device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms
        cfg = dataclasses.replace(cfg, device=str(device))  # "device" may change on resume
    return cfg, device


def _inputs(args: argparse.Namespace) -> tuple[Path, np.ndarray, np.ndarray, float, float]:
    """``(images path, image cache (memmap), training rows, mean, std)``."""
    images_path = Path(args.images)
    if not images_path.is_file():
        raise FileNotFoundError(f"--images {images_path}: no such file (build it with "
                                "mocoxr.data.load_image_cache)")
    images = np.load(images_path, mmap_mode="r")
    rows = load_rows(len(images), args.rows, args.manifest, args.split)
    if args.mean is None or args.std is None:
        mean, std = data.image_stats(images, rows)
    else:
        mean, std = float(args.mean), float(args.std)
    return images_path, images, rows, mean, std


def _announce(out: Path, world: int, device: torch.device, cfg: PretrainConfig) -> None:
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        saved = checkpoint.load_checkpoint(ckpt)
        print(f"resuming from step {saved['step']} of {out} (written by "
              f"{saved.get('world_size', 1)} process(es)) on {world} process(es)", flush=True)
    else:
        print(f"starting {out} on {world} process(es), device {device}, global batch "
              f"{cfg.batch_size}", flush=True)


def _sampler(args: argparse.Namespace, cfg: PretrainConfig, rows: np.ndarray,
             images: np.ndarray) -> pairs.PairSampler | None:
    """MedAug pairs: from the manifest's patients/studies (its own views); None for images."""
    if cfg.positive_pairs == "image":
        return None
    if args.manifest is None:
        raise ValueError(f"positive_pairs={cfg.positive_pairs!r} needs --manifest "
                         "(patient and study of every cache row)")
    table = pairs.candidate_table(pd.read_csv(args.manifest), rows, cfg.positive_pairs,
                                  cfg.pair_laterals)
    return pairs.PairSampler(cfg.positive_pairs, cfg.pair_laterals, table, images)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, join the torchrun group when there is one, run ``pretrain.pretrain``."""
    args = _parser().parse_args(argv)
    rank, world, local_rank = env_world()
    cfg = make_config(args.config, args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, device = _device(cfg, world, local_rank)
    started = world > 1 and not dist.is_initialized()
    if started:
        backend = args.backend if args.backend != "auto" else (
            "nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timedelta(minutes=args.timeout_min))
    try:
        images_path, images, rows, mean, std = _inputs(args)
        out = Path(args.out)
        if rank == 0:
            _announce(out, world, device, cfg)
        sampler = _sampler(args, cfg, rows, images)
        t0 = time.perf_counter()
        res = pretrain(images, rows, cfg, out, mean, std,
                       progress=not args.no_progress and rank == 0, pairs=sampler)
        if rank == 0:
            info = {"images": str(images_path.resolve()), "n_rows": int(len(rows)),
                    "mean": mean, "std": std, "world_size": world, "device": str(device),
                    "config": checkpoint.config_dict(cfg), "step": res["step"],
                    "cached": res["cached"], "seconds": round(time.perf_counter() - t0, 3)}
            store.atomic_write_text(out / "pretrain_cli.json", json.dumps(info, indent=1))
            print(f"done: step {res['step']}{' (already finished)' if res['cached'] else ''}; "
                  f"backbone {res['backbone']}", flush=True)
        return res
    finally:
        if started:
            dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
