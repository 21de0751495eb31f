"""Prepared manifests for NIH ChestX-ray14, Montgomery and a labelled folder.

The same files as :func:`~mocoxr.data.prepared.prepare_chexpert` (``{name}.csv``,
``{name}_subsets.csv``, ``{name}.json``), reused when the sidecar matches. ``name`` defaults to
the format; :func:`mocoxr.data.formats.prepare_dataset` passes the notebook's dataset name
(``chexpert`` for the pretraining/target data, ``shenzhen`` for the transfer data) so each role
keeps one set of files whatever the format.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mocoxr import keys
from mocoxr.data.cache import files_fingerprint
from mocoxr.data.chexpert import SHOW
from mocoxr.data.labels import find_labels_csv, read_labels
from mocoxr.data.montgomery import read_montgomery
from mocoxr.data.nih import find_data_entry, nih_target, read_nih
from mocoxr.data.prepared import PreparedDataset, _prepare, _train_subsets, check_split_counts
from mocoxr.data.splits import (CHEXPERT_DRAWS, CHEXPERT_FRACTIONS, SHENZHEN_DRAWS,
                                SHENZHEN_FRACTIONS, split_by_patient, split_stratified)

TRANSFER_SPLIT = (0.65, 0.15, 0.20)  # Shenzhen's split, used for every transfer dataset


def _common(fractions, draws, seed: int) -> dict:
    return {"fractions": [float(f) for f in fractions], "draws": [int(d) for d in draws],
            "seed": int(seed)}


def split_patients(df: pd.DataFrame, fractions: Sequence[float], seed: int) -> pd.DataFrame:
    """train/val/test by patient, stratified by each patient's label (any positive image)."""
    per_patient = df.groupby("patient", sort=True)["label"].max().reset_index()
    split = split_stratified(per_patient, fractions, seed=seed).set_index("patient")["split"]
    return df.assign(split=df["patient"].map(split).to_numpy())


# ----------------------------------------------------------------------------- NIH


def _nih_split(df: pd.DataFrame, folder: Path, val_fraction: float, test_fraction: float,
               seed: int) -> pd.DataFrame:
    """Official lists when present (``train_val`` -> train/val by patient), else by patient."""
    if "official_split" in df.columns:
        test = df[df["official_split"] == "test"].assign(split="test")
        shared = np.intersect1d(test["patient"], df.loc[df["official_split"] != "test", "patient"])
        if len(shared):
            raise ValueError(f"{folder}: {len(shared)} patients are in both train_val_list.txt "
                             f"and test_list.txt, e.g. {list(shared[:SHOW])}")
        rest = df[df["official_split"] != "test"]
    else:
        split = split_by_patient(df, val_fraction=test_fraction, seed=seed)["split"]
        test, rest = df[split == "val"].assign(split="test"), df[split == "train"]
    rest = split_by_patient(rest, val_fraction=val_fraction, seed=seed)
    return pd.concat([rest, test]).sort_index(kind="stable").reset_index(drop=True)


def _build_nih(df, folder, val_fraction, test_fraction, fractions, draws, seed):
    manifest = _nih_split(df, folder, val_fraction, test_fraction, seed)
    check_split_counts(manifest, f"NIH ChestX-ray14 data in {folder}")
    return manifest, _train_subsets(manifest, fractions, draws, seed)


def prepare_nih(folder: str | os.PathLike, out_dir: str | os.PathLike,
                target: str = "Pleural Effusion", val_fraction: float = 0.1,
                test_fraction: float = 0.2, fractions: Sequence[float] = CHEXPERT_FRACTIONS,
                draws: Sequence[int] = CHEXPERT_DRAWS, seed: int = 0, check_images: bool = True,
                name: str = "nih") -> PreparedDataset:
    """NIH manifest: ``test_list.txt`` -> test, ``train_val_list.txt`` -> train/val by patient;
    without the lists, ``test_fraction`` of the patients -> test. ``target``: an NIH finding
    or its CheXpert name (Pleural Effusion -> Effusion). No uncertain labels exist."""
    folder = Path(folder).expanduser().resolve()
    df = read_nih(folder, nih_target(target), check_images=check_images)
    lists = [folder / n for n in ("train_val_list.txt", "test_list.txt") if (folder / n).is_file()]
    params = {"format": "nih", "folder": str(folder), "target": nih_target(target),
              "data_entry_sha256": keys.file_sha1(find_data_entry(folder), algorithm="sha256"),
              "lists_sha256": [keys.file_sha1(p, algorithm="sha256") for p in lists],
              "images_fingerprint": files_fingerprint(df["path"].tolist()) if check_images else None,
              "val_fraction": val_fraction, "test_fraction": test_fraction,
              **_common(fractions, draws, seed)}
    build = partial(_build_nih, df, folder, val_fraction, test_fraction, fractions, draws, seed)
    return _prepare(name, out_dir, params, build)


# ----------------------------------------------------------------------------- Montgomery, labels


def _build_split(df, source, split, fractions, draws, seed):
    manifest = split(df)
    check_split_counts(manifest, source)
    return manifest, _train_subsets(manifest, fractions, draws, seed)


def prepare_montgomery(folder: str | os.PathLike, out_dir: str | os.PathLike,
                       fractions: Sequence[float] = SHENZHEN_FRACTIONS,
                       draws: Sequence[int] = SHENZHEN_DRAWS, seed: int = 0,
                       split_fractions: Sequence[float] = TRANSFER_SPLIT,
                       name: str = "montgomery") -> PreparedDataset:
    """Montgomery manifest: Shenzhen's stratified 65/15/20 split and label fractions."""
    df = read_montgomery(folder)
    params = {"format": "montgomery", "folder": str(Path(folder).expanduser().resolve()),
              "images_fingerprint": files_fingerprint(df["path"].tolist()), "n_images": len(df),
              "split_fractions": [float(f) for f in split_fractions],
              **_common(fractions, draws, seed)}
    split = partial(split_stratified, fractions=split_fractions, seed=seed)
    build = partial(_build_split, df, f"Montgomery data in {folder}", split, fractions, draws,
                    seed)
    return _prepare(name, out_dir, params, build)


def prepare_labels(folder: str | os.PathLike, out_dir: str | os.PathLike,
                   split_fractions: Sequence[float] = TRANSFER_SPLIT, frontal_only: bool = True,
                   fractions: Sequence[float] = SHENZHEN_FRACTIONS,
                   draws: Sequence[int] = SHENZHEN_DRAWS, seed: int = 0,
                   check_images: bool = True, name: str = "labels") -> PreparedDataset:
    """Labels-CSV manifest: train/val/test by patient (per image without a ``patient`` column),
    stratified by label; ``frontal_only`` drops rows whose ``view`` is lateral."""
    df = read_labels(folder, check_images=check_images)
    df["raw_label"] = df["label"].astype(float)  # no uncertain labels: the label itself
    if frontal_only and "view" in df.columns:
        df = df[df["view"] != "lateral"].reset_index(drop=True)
    params = {"format": "labels", "csv": str(find_labels_csv(folder).resolve()),
              "csv_sha256": keys.file_sha1(find_labels_csv(folder), algorithm="sha256"),
              "images_fingerprint": files_fingerprint(df["path"].tolist()) if check_images else None,
              "split_fractions": [float(f) for f in split_fractions],
              "frontal_only": frontal_only, **_common(fractions, draws, seed)}
    split = partial(split_patients, fractions=split_fractions, seed=seed)
    build = partial(_build_split, df, f"labelled data in {folder}", split, fractions, draws, seed)
    return _prepare(name, out_dir, params, build)
