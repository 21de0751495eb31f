"""What a run folder was computed from, and what a profile needs before its first step.

``<run_dir>/source.json`` records the data source of every dataset (a data folder with its
content fingerprint, or the embedded synthetic data with its ``phantom`` settings). A later run
of the same folder with another source is refused with a message naming both, so real-data
results are never overwritten by a phantom run (or the reverse); ``status`` and ``build`` read
the record when no data flag is given. :func:`preflight` lists what is missing (ImageNet weight
files, data folders, a CUDA device) before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from mocoxr import keys, store

SOURCES = {"data_dir": ("CheXpert", "--data-dir", "phantom"),
           "shenzhen_dir": ("Shenzhen", "--shenzhen-dir", "phantom_shenzhen")}
RECORD = "source.json"


class SourceMismatch(RuntimeError):
    """The run folder holds results computed from another data source."""


def _describe(name: str, path: str | None) -> str:
    label, flag, _ = SOURCES[name]
    return f"{label} data from {path} ({flag})" if path else f"the embedded synthetic {label} data (no {flag})"


def read_record(root: Path) -> dict[str, Any]:
    """The recorded sources (empty when none was recorded)."""
    try:
        return json.loads((Path(root) / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def recorded_overrides(root: Path) -> dict[str, str]:
    """``{data_dir: path, ...}`` of the recorded data folders that still exist."""
    rec = read_record(root)
    return {n: rec[n]["path"] for n in SOURCES
            if isinstance(rec.get(n), dict) and rec[n].get("path") and Path(rec[n]["path"]).exists()}


def wanted(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The source entries a profile's shared parameters ask for."""
    out: dict[str, Any] = {}
    for name, (_, _, phantom_key) in SOURCES.items():
        path = parameters.get(name)
        out[name] = ({"path": str(path), "fingerprint": keys.folder_fingerprint(path)} if path
                     else {"path": None, "phantom": parameters.get(phantom_key)})
    return out


def check_and_record(root: Path, parameters: Mapping[str, Any]) -> None:
    """Refuse a source other than the recorded one (a moved data folder with the same content
    is accepted); then record the current one."""
    root = Path(root)
    rec, now = read_record(root), wanted(parameters)
    for name in SOURCES:
        old, new = rec.get(name), now[name]
        if not isinstance(old, dict):
            continue
        if old.get("path") is None and new["path"] is None:
            continue
        if old.get("path") and new["path"] and old.get("fingerprint") == new["fingerprint"]:
            continue
        raise SourceMismatch(
            f"run folder {root} holds results computed from {_describe(name, old.get('path'))}; "
            f"this run asks for {_describe(name, new['path'])}. Give the same data source, use "
            f"another --run-dir, or delete {root} to start over"
        )
    store.atomic_write_text(root / RECORD, json.dumps(now, indent=1, default=str))


def preflight(runs: Iterable[Any]) -> list[str]:
    """What the runs need and this machine lacks: data folders, ImageNet weight files, CUDA."""
    problems: list[str] = []
    runs = list(runs)
    for name in SOURCES:
        for path in sorted({str(r.parameters[name]) for r in runs if r.parameters.get(name)}):
            if not Path(path).expanduser().exists():
                problems.append(f"{name} {path}: no such folder")
    imagenet = sorted({r.parameters.get("backbone", "resnet18") for r in runs
                       if r.parameters.get("baseline") == "imagenet"
                       or (r.parameters.get("pretrain") or {}).get("init") == "imagenet"})
    if imagenet:
        from mocoxr import models

        for bb in imagenet:
            f = models.imagenet_weight_file(bb)
            if not f.is_file():
                problems.append(f"init/baseline 'imagenet' for {bb} needs the torchvision weight "
                                f"file {f.name} in {f.parent} (mocoxr never downloads it)")
    if any(str(r.parameters.get("device", "cpu")).startswith("cuda") for r in runs):
        import torch

        if not torch.cuda.is_available():
            problems.append("device 'cuda' is asked for, but torch sees no CUDA device "
                            "(use device: auto or cpu)")
    return problems
