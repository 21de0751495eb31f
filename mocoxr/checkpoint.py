"""What a pretraining run keeps on disk: its checkpoint, its loss log and the model card.

Files in a pretraining ``out_dir`` (written by ``pretrain.pretrain``, rank 0 alone):

- ``checkpoint.pt``: written atomically (temporary file, fsync, ``os.replace``) at the end of
  every epoch, every ``checkpoint_every_steps`` steps and at the end; loadable with
  ``torch.load(path, weights_only=True)`` (only tensors, dicts, lists, ints, floats, strings).
  Contents (:func:`checkpoint_state`): ``model`` (MoCo state dict: both encoders, heads,
  ``queue``, ``queue_ptr``), ``optimizer``, ``step`` (optimizer steps done), ``epoch`` (= step //
  steps per epoch), ``step_in_epoch``, ``done``, ``config`` (dict), ``rng`` (torch RNG state,
  informational: every draw is re-derived from (seed, step)), ``n_rows``, ``rows_sha1``,
  ``format``, ``time``, ``world_size`` (processes that wrote it; informational), ``pairs_sha1``.
- ``loss_log.csv``: one row per optimizer step (``step, epoch, loss, lr``) plus the monitor's
  columns on the steps where it ran (``step 0`` is the monitor's value before training, with
  ``loss`` empty).
- ``backbone.pt``: the query encoder as a plain torchvision state dict (``models.export_backbone``).
- ``backbone.card.json``: its model card (``weights.make_card``: input size, normalisation, recipe,
  data, steps, monitor AUCs, date, mocoxr version, sha256 of ``backbone.pt``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from mocoxr import runtime, store, weights

CHECKPOINT_FORMAT = "mocoxr-pretrain-v1"

# Config fields that may change between a run and its resume: they do not change what one step
# computes (device and speed settings) or only say how long to train (extend a finished run by
# raising ``epochs`` or ``max_steps``; the learning-rate drops are placed on the new total).
RESUMABLE_FIELDS = frozenset({"epochs", "max_steps", "device", "amp", "channels_last", "compile",
                              "compile_backend", "monitor_every", "checkpoint_every_steps"})

FILES = {"checkpoint": "checkpoint.pt", "backbone": "backbone.pt", "loss_log": "loss_log.csv"}


def run_files(out_dir: Path) -> dict[str, Path]:
    """``{"checkpoint", "backbone", "loss_log"}`` paths of a pretraining run folder."""
    return {k: out_dir / name for k, name in FILES.items()}


def config_dict(cfg: Any) -> dict:
    """A dataclass config as plain JSON types (tuples become lists)."""
    try:
        return json.loads(json.dumps(dataclasses.asdict(cfg)))
    except TypeError as err:
        raise ValueError(f"config values must be JSON-serialisable: {err}") from err


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` atomically: a checkpoint never exists half-written."""
    store.atomic_write(Path(path), lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path) -> dict:
    """Load a pretraining checkpoint with ``weights_only=True``; clear error when corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint "
                         f"({type(err).__name__}: {str(err)[:200]}); delete it to start over") from err
    needed = {"format", "model", "optimizer", "step", "epoch", "done", "config", "rng"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or needed - set(ckpt):
        raise ValueError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} checkpoint (missing "
                         f"{sorted(needed - set(ckpt)) if isinstance(ckpt, dict) else 'everything'})")
    return ckpt


def checkpoint_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Any, step: int,
                     steps_per_epoch: int, total: int, rows: np.ndarray, world: int,
                     pairs_sha1: str | None, device: torch.device) -> dict:
    """The dict :func:`save_checkpoint` writes after ``step`` optimizer steps."""
    epoch = step // steps_per_epoch
    rng = {"torch": torch.get_rng_state(), "scheme": "per-step, derived from (seed, step)"}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
            "step_in_epoch": step - epoch * steps_per_epoch, "done": step >= total,
            "config": config_dict(cfg), "rng": rng, "n_rows": len(rows),
            "rows_sha1": runtime.rows_sha1(rows), "time": time.time(), "world_size": world,
            "pairs_sha1": pairs_sha1}


def check_resumable(ckpt: dict, cfg: Any, rows: np.ndarray, pairs_sha1: str | None, total: int,
                    path: Path) -> None:
    """A checkpoint may be continued only with the same config (``RESUMABLE_FIELDS`` aside),
    rows and positive pairs, and not past its total steps."""
    wanted = config_dict(cfg)
    diff = [f"{k}: saved {ckpt['config'].get(k)!r}, requested {wanted[k]!r}" for k in wanted
            if k not in RESUMABLE_FIELDS and ckpt["config"].get(k) != wanted[k]]
    if diff:
        raise ValueError(f"checkpoint {path} was written with another config ({'; '.join(diff)}); "
                         "use another out_dir or delete the checkpoint to start over")
    if ckpt.get("rows_sha1") != runtime.rows_sha1(rows):
        raise ValueError(f"checkpoint {path} was trained on other rows ({ckpt.get('n_rows')} "
                         f"rows, now {len(rows)}); use another out_dir")
    if ckpt.get("pairs_sha1") != pairs_sha1:
        raise ValueError(f"checkpoint {path} was trained with other positive pairs "
                         f"(see {path.parent / 'pairs.csv'}); use another out_dir")
    if ckpt["step"] > total:
        raise ValueError(f"checkpoint {path} is at step {ckpt['step']}, past the "
                         f"{total} steps requested; use another out_dir")


def remove_stale_temporaries(files: Mapping[str, Path]) -> None:
    """Delete the temporaries of a writer that was killed (SIGKILL, preemption)."""
    for path in files.values():
        for stale in path.parent.glob(f".{path.name}.*tmp*"):
            stale.unlink(missing_ok=True)


def read_log(path: Path, upto_step: int) -> list[dict]:
    """Rows of an existing loss log up to and including ``upto_step`` (later rows were lost)."""
    if not path.exists():
        return []
    log = pd.read_csv(path)
    return log[log["step"] <= upto_step].to_dict("records")


def write_log(path: Path, log: list[dict]) -> pd.DataFrame:
    """Write the loss log (atomically); returns it as a DataFrame."""
    df = pd.DataFrame(log)
    if df.empty:
        df = pd.DataFrame(columns=["step", "epoch", "loss", "lr"])
    store.atomic_write(path, lambda fh: df.to_csv(fh, index=False), mode="w")
    return df


def write_card(backbone_path: Path, cfg: Any, mean: float, std: float, step: int,
               log: pd.DataFrame, rows: np.ndarray, data: Mapping[str, Any] | None,
               only_missing: bool = False) -> None:
    """The model card beside the exported backbone (``weights.write_model_card``)."""
    if only_missing:
        try:
            weights.read_model_card(backbone_path)
            return
        except (FileNotFoundError, ValueError):
            pass  # no card yet, or a stale one: write it
    weights.write_model_card(backbone_path, backbone=cfg.backbone, input_size=cfg.image_size,
                             mean=mean, std=std, recipe=config_dict(cfg), steps=step, log=log,
                             data={"pretraining_images": int(len(rows)), **dict(data or {})})
