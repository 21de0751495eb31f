"""What a run folder was computed from, and what a profile needs before its first step.

``<run_dir>/source.json`` records the data source of every dataset (a data folder with its
content fingerprint, or the embedded synthetic data with its ``phantom`` settings). A later run
of the same folder with another source is refused with a message naming both, so real-data
results are never overwritten by a phantom run (or the reverse); ``status`` and ``build`` read
the record when no data flag is given. :func:`preflight` lists what is missing (ImageNet weight
files, data folders, a CUDA device) before anything runs.
"""

from __future__ import annotations

import gzip
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


def folder_listing(name: str, path: str | Path) -> dict[str, list]:
    """:func:`mocoxr.keys.folder_listing` of a data folder; a file that cannot be read (a broken
    link, no permission) is one error naming the flag, the file and the reason."""
    _, flag, _ = SOURCES[name]
    try:
        return keys.folder_listing(path)
    except OSError as exc:
        raise FileNotFoundError(
            f"{flag} {path}: cannot read {exc.filename or path} ({exc.strerror or exc}); a data "
            f"folder must hold readable files only (remove a broken link, or give another {flag})"
        ) from None


def fingerprint(name: str, path: str | Path) -> str:
    """The content fingerprint of data folder ``name`` (``data_dir``...), errors as in
    :func:`folder_listing`."""
    return keys.file_sha1(path) if Path(path).is_file() else \
        keys.listing_fingerprint(folder_listing(name, path))


def _files_record(root: Path, name: str) -> Path:
    return Path(root) / "source_files" / f"{name}.json.gz"


def wanted(parameters: Mapping[str, Any], listings: dict[str, dict] | None = None) -> dict[str, Any]:
    """The source entries a profile's shared parameters ask for; ``listings`` receives each
    data folder's file listing."""
    out: dict[str, Any] = {}
    for name, (_, _, phantom_key) in SOURCES.items():
        path = parameters.get(name)
        if path and Path(path).is_dir():
            files = folder_listing(name, path)
            if listings is not None:
                listings[name] = files
            out[name] = {"path": str(path), "fingerprint": keys.listing_fingerprint(files)}
        else:
            out[name] = ({"path": str(path), "fingerprint": keys.folder_fingerprint(path)} if path
                         else {"path": None, "phantom": parameters.get(phantom_key)})
    return out


def changes(old: Mapping[str, list], new: Mapping[str, list]) -> str:
    """``"1 file added (a.png), 0 removed, 2 modified (...)"``: how a folder listing changed."""
    parts = []
    for what, names in (("added", sorted(set(new) - set(old))), ("removed", sorted(set(old) - set(new))),
                        ("modified", sorted(k for k in set(old) & set(new) if old[k] != new[k]))):
        shown = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        parts.append(f"{len(names)} {what}{shown}")
    return "files: " + ", ".join(parts)


def _read_files(root: Path, name: str) -> dict[str, list] | None:
    try:
        return json.loads(gzip.decompress(_files_record(root, name).read_bytes()))
    except (OSError, ValueError):
        return None


def check_and_record(root: Path, parameters: Mapping[str, Any], accept_change: bool = False) -> None:
    """Refuse a source other than the recorded one (a moved data folder with the same content
    is accepted); new content in the same data folder is refused with what changed, unless
    ``accept_change`` (then the steps that read it rerun: their keys hold its fingerprint).
    Then record the current sources (and each data folder's file listing)."""
    root = Path(root)
    listings: dict[str, dict] = {}
    rec, now = read_record(root), wanted(parameters, listings)
    for name in SOURCES:
        old, new = rec.get(name), now[name]
        if not isinstance(old, dict):
            continue
        if old.get("path") is None and new["path"] is None:
            continue
        if old.get("path") and new["path"] and old.get("fingerprint") == new["fingerprint"]:
            continue
        if old.get("path") and old.get("path") == new["path"]:
            if accept_change:
                continue
            raise SourceMismatch(_changed_message(root, name, new["path"], listings.get(name)))
        raise SourceMismatch(
            f"run folder {root} holds results computed from {_describe(name, old.get('path'))}; "
            f"this run asks for {_describe(name, new['path'])}. Give the same data source, use "
            f"another --run-dir, or delete {root} to start over"
        )
    store.atomic_write_text(root / RECORD, json.dumps(now, indent=1, default=str))
    for name, files in listings.items():
        blob = gzip.compress(json.dumps(files).encode(), mtime=0)
        store.atomic_write(_files_record(root, name), lambda fh, b=blob: fh.write(b))


def _changed_message(root: Path, name: str, path: str, files: dict | None) -> str:
    label, flag, _ = SOURCES[name]
    old = _read_files(root, name)
    what = changes(old, files) if old is not None and files is not None else \
        "its content changed (no file list was recorded to say how)"
    return (f"the {label} data folder {path} ({flag}) changed since run folder {root} used it: "
            f"{what}. Rerun with --accept-data-change to use the new content (the steps that "
            f"read it rerun and their old rows are archived), or restore the folder")


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
