"""Prepared datasets: a manifest with its splits and label-fraction subsets, kept on disk.

``prepare_chexpert``/``prepare_shenzhen`` write ``out_dir/{name}.csv`` (the manifest: one row
per image with at least ``path``, ``patient``, ``label``, ``split``), ``{name}_subsets.csv``
and the JSON sidecar ``{name}.json`` of everything they were built from; a later call with the
same sidecar reuses the files. Subsets refer to images by positional manifest row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mocoxr import keys, store
from mocoxr.data.cache import files_fingerprint
from mocoxr.data.chexpert import SHOW, find_chexpert_dir, find_csv, read_chexpert_csv
from mocoxr.data.shenzhen import read_shenzhen
from mocoxr.data.splits import (
    CHEXPERT_DRAWS,
    CHEXPERT_FRACTIONS,
    SHENZHEN_DRAWS,
    SHENZHEN_FRACTIONS,
    SPLIT_NAMES,
    make_label_fraction_subsets,
    split_by_patient,
    split_stratified,
)

_MANIFEST_DTYPES = {"path": str, "patient": str, "study": str, "view": str, "split": str}
_FORMAT_VERSION = 1
MIN_PER_CLASS = 1  # images of each class every split needs (an AUC needs both classes)


@dataclass
class PreparedDataset:
    """A manifest with its label-fraction subsets, as written to disk.

    ``subsets`` has columns ``label_fraction``, ``draw``, ``row`` (positional row into the
    **manifest**) and ``train_row`` (positional row into the train split).
    """

    name: str
    manifest: pd.DataFrame
    subsets: pd.DataFrame
    manifest_path: Path
    subsets_path: Path

    def rows(self, split: str) -> np.ndarray:
        """Positional manifest rows of ``split`` (train/val/test), ascending."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"split={split!r}; expected train, val or test")
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)

    def labels(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Labels (int64 0/1) of the given manifest rows (all rows when None)."""
        y = self.manifest["label"].to_numpy(dtype=np.int64)
        return y if rows is None else y[np.asarray(rows, dtype=np.int64)]

    def subset_rows(self, label_fraction: float, draw: int = 0) -> np.ndarray:
        """Manifest rows of one label-fraction subset (draws are 0-based)."""
        s = self.subsets
        mask = np.isclose(s["label_fraction"].to_numpy(), label_fraction) & (
            s["draw"].to_numpy() == draw
        )
        if not mask.any():
            have = sorted(set(zip(s["label_fraction"], s["draw"])))
            raise ValueError(
                f"{self.subsets_path}: no subset label_fraction={label_fraction}, draw={draw}; "
                f"available: {have}"
            )
        return s["row"].to_numpy(dtype=np.int64)[mask]


def check_split_counts(manifest: pd.DataFrame, source: str, minimum: int = MIN_PER_CLASS) -> None:
    """Every split (train, val, test) must hold ``minimum`` images of each class; otherwise a
    ValueError at the data step that says "too few images" with the counts of every split."""
    counts = {s: (int((g["label"] == 1).sum()), int((g["label"] == 0).sum()))
              for s, g in manifest.groupby("split")}
    short = [s for s in SPLIT_NAMES if min(counts.get(s, (0, 0))) < minimum]
    if short:
        table = ", ".join(f"{s} {counts.get(s, (0, 0))[0]} positive / {counts.get(s, (0, 0))[1]} "
                          f"negative" for s in SPLIT_NAMES)
        raise ValueError(
            f"{source}: too few images ({len(manifest)} in all: {table}); every split needs at "
            f"least {minimum} image(s) of each class; short: {', '.join(short)}"
        )


# ----------------------------------------------------------------------------- on disk


def _train_subsets(manifest: pd.DataFrame, fractions, draws, seed: int) -> pd.DataFrame:
    train_rows = np.flatnonzero(manifest["split"].to_numpy() == "train")
    sub = make_label_fraction_subsets(
        manifest["label"].to_numpy()[train_rows], fractions, draws, seed
    )
    sub = sub.rename(columns={"row": "train_row"})
    sub.insert(2, "row", train_rows[sub["train_row"].to_numpy()])
    return sub


def _load_prepared(name: str, manifest_path: Path, subsets_path: Path) -> PreparedDataset:
    manifest = pd.read_csv(manifest_path, dtype=_MANIFEST_DTYPES, keep_default_na=True)
    manifest["label"] = manifest["label"].astype(np.int64)
    subsets = pd.read_csv(subsets_path).astype(
        {"label_fraction": float, "draw": np.int64, "row": np.int64, "train_row": np.int64}
    )
    return PreparedDataset(name, manifest, subsets, manifest_path, subsets_path)


def _write_csvs(build: Callable[[], tuple[pd.DataFrame, pd.DataFrame]],
                manifest_path: Path, subsets_path: Path) -> None:
    manifest, subsets = build()
    for df, path in ((manifest, manifest_path), (subsets, subsets_path)):
        store.atomic_write(path, lambda fh, df=df: df.to_csv(fh, index=False), mode="w")


def _prepare(name: str, out_dir, params: dict,
             build: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]) -> PreparedDataset:
    """Reuse ``out_dir/{name}.csv`` + ``{name}_subsets.csv`` when ``{name}.json`` == params."""
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / f"{name}.csv"
    subsets_path = out_dir / f"{name}_subsets.csv"
    return store.reuse_or_build(
        out_dir / f"{name}.json", {"format_version": _FORMAT_VERSION, **params},
        [manifest_path, subsets_path],
        load=partial(_load_prepared, name, manifest_path, subsets_path),
        build=partial(_write_csvs, build, manifest_path, subsets_path),
    )


# ----------------------------------------------------------------------------- CheXpert


def _chexpert_sources(folder, test_csv) -> tuple[Path, Path, Path]:
    """(CheXpert dir, train CSV, test CSV: ``test_csv`` or the dir's valid.csv[.gz])."""
    cdir = find_chexpert_dir(folder)
    train_csv = find_csv(cdir, "train")
    if train_csv is None:
        raise FileNotFoundError(f"{cdir}: no train.csv or train.csv.gz")
    test_path = Path(test_csv).expanduser().resolve() if test_csv else find_csv(cdir, "valid")
    if test_path is None or not test_path.is_file():
        raise FileNotFoundError(f"{test_path or cdir}: test CSV (valid.csv[.gz]) not found")
    return cdir, train_csv, test_path


def _build_chexpert(cdir: Path, train_csv: Path, test_path: Path, read: dict,
                    val_fraction: float, fractions, draws, seed: int):
    """Manifest (train.csv split train/val by patient, then the test rows) and its subsets."""
    train = read_chexpert_csv(train_csv, image_root=cdir, **read)
    test = read_chexpert_csv(test_path, image_root=cdir, **read)
    shared = np.intersect1d(train["patient"].unique(), test["patient"].unique())
    if len(shared):
        raise ValueError(
            f"{test_path}: {len(shared)} test patients also appear in {train_csv}, e.g. "
            f"{list(shared[:SHOW])}; the test set must not share patients with training"
        )
    train = split_by_patient(train, val_fraction=val_fraction, seed=seed)
    test = test.assign(split="test")
    manifest = pd.concat([train, test], ignore_index=True)
    check_split_counts(manifest, f"CheXpert data in {cdir}")
    return manifest, _train_subsets(manifest, fractions, draws, seed)


def prepare_chexpert(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    target: str = "Pleural Effusion",
    uncertain_policy: str = "ones",
    frontal_only: bool = True,
    test_csv: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    fractions: Sequence[float] = CHEXPERT_FRACTIONS,
    draws: Sequence[int] = CHEXPERT_DRAWS,
    seed: int = 0,
    check_images: bool = True,
) -> PreparedDataset:
    """CheXpert manifest: train.csv -> train/val by patient, valid.csv (or ``test_csv``) -> test.

    Manifest rows: train.csv rows (CSV order, split train or val) then test rows. Writes
    ``out_dir/chexpert.csv``, ``chexpert_subsets.csv`` (subsets of the train split, see
    :func:`make_label_fraction_subsets`) and ``chexpert.json`` (parameters + SHA-256 of the
    source CSVs); reuses them when all match, rebuilds otherwise. Test image paths resolve
    against the CheXpert dir. Raises ValueError if a test patient also appears in train.csv.
    """
    cdir, train_csv, test_path = _chexpert_sources(folder, test_csv)
    kw = dict(target=target, uncertain_policy=uncertain_policy, frontal_only=frontal_only)
    params = {
        "chexpert_dir": str(cdir),
        "train_csv": str(train_csv),
        "train_csv_sha256": keys.file_sha1(train_csv, algorithm="sha256"),
        "test_csv": str(test_path),
        "test_csv_sha256": keys.file_sha1(test_path, algorithm="sha256"),
        **kw,
        "val_fraction": val_fraction,
        "fractions": [float(f) for f in fractions],
        "draws": [int(d) for d in draws],
        "seed": seed,
        "check_images": check_images,
    }
    build = partial(_build_chexpert, cdir, train_csv, test_path,
                    {**kw, "check_images": check_images}, val_fraction, fractions, draws, seed)
    return _prepare("chexpert", out_dir, params, build)


# ----------------------------------------------------------------------------- Shenzhen


def _build_shenzhen(df: pd.DataFrame, folder, split_fractions, fractions, draws, seed: int):
    manifest = split_stratified(df, split_fractions, seed=seed)
    check_split_counts(manifest, f"Shenzhen data in {folder}")
    return manifest, _train_subsets(manifest, fractions, draws, seed)


def prepare_shenzhen(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    fractions: Sequence[float] = SHENZHEN_FRACTIONS,
    draws: Sequence[int] = SHENZHEN_DRAWS,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.65, 0.15, 0.20),
) -> PreparedDataset:
    """Shenzhen manifest with a stratified seeded train/val/test split and train subsets.

    Writes ``out_dir/shenzhen.csv``, ``shenzhen_subsets.csv`` and ``shenzhen.json``
    (parameters + a fingerprint of the PNG names, sizes and mtimes); reuses them when all match.
    """
    df = read_shenzhen(folder)
    params = {
        "folder": str(Path(folder).expanduser().resolve()),
        "images_fingerprint": files_fingerprint(df["path"].tolist()),
        "n_images": len(df),
        "split_fractions": [float(f) for f in split_fractions],
        "fractions": [float(f) for f in fractions],
        "draws": [int(d) for d in draws],
        "seed": seed,
    }
    build = partial(_build_shenzhen, df, folder, split_fractions, fractions, draws, seed)
    return _prepare("shenzhen", out_dir, params, build)
