"""CheXpert: find the dataset folder and read ``train.csv``/``valid.csv`` into a manifest.

A manifest has one row per image: ``path`` (absolute), ``patient`` (``patientNNNNN``),
``study`` (``patientNNNNN/studyN``), ``view`` (``frontal``/``lateral``), ``label`` (0/1 after
the uncertain-label policy) and ``raw_label`` (1, 0, -1, or NaN for blank).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mocoxr.schema import UNCERTAIN_POLICIES

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_DIR_NAMES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
SHOW = 5  # how many offending values an error message lists


def find_csv(directory: Path, stem: str) -> Path | None:
    """``directory/stem.csv`` or ``directory/stem.csv.gz``, whichever exists (plain first)."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_chexpert_dir(folder: str | os.PathLike) -> Path:
    """Return the CheXpert dir (the one holding ``train.csv[.gz]``/``valid.csv[.gz]``).

    ``folder`` is that dir itself or a folder holding ``CheXpert-v1.0-small/`` or
    ``CheXpert-v1.0/`` (the small release is preferred when both are present).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"CheXpert folder {folder} does not exist")
    for cand in (folder, *(folder / n for n in CHEXPERT_DIR_NAMES)):
        if cand.is_dir() and (find_csv(cand, "train") or find_csv(cand, "valid")):
            return cand.resolve()
    raise FileNotFoundError(
        f"{folder}: expected train.csv[.gz]/valid.csv[.gz] in it or in a subfolder named "
        f"{' or '.join(CHEXPERT_DIR_NAMES)}"
    )


def _check_policy(policy: str) -> None:
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_policy={policy!r}; expected one of {UNCERTAIN_POLICIES}")


def apply_uncertain_policy(raw: pd.Series, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Map raw CheXpert labels (1, 0, -1, NaN) to ``(label 0/1, keep mask)``.

    Blank (NaN) is negative. Uncertain (-1): ``ones`` -> 1 (the paper's reorganize script),
    ``zeros`` -> 0, ``ignore`` -> row dropped (``keep`` False).
    """
    _check_policy(policy)
    values = raw.to_numpy(dtype=float)
    uncertain = values == -1
    label = (values == 1) | (uncertain & (policy == "ones"))
    keep = ~uncertain if policy == "ignore" else np.ones(len(values), dtype=bool)
    return label.astype(np.int64), keep


# ----------------------------------------------------------------------------- reading steps


def _read_columns(csv_path: Path, target: str) -> pd.DataFrame:
    """The CSV's ``Path``, ``Frontal/Lateral`` and ``target`` columns (all must be there)."""
    needed = ["Path", "Frontal/Lateral", target]
    try:
        df = pd.read_csv(csv_path, usecols=lambda c: c in needed, dtype={"Path": str})
    except (ValueError, OSError, EOFError) as exc:  # empty, corrupt gzip, bad encoding
        raise ValueError(f"{csv_path}: cannot read as a CheXpert CSV ({exc})") from exc
    missing_cols = [c for c in needed if c not in df.columns]
    if missing_cols:
        raise ValueError(
            f"{csv_path}: missing columns {missing_cols}; expected at least {needed} "
            f"(target must be one of the 14 CheXpert observations)"
        )
    return df


def _normalise_views(col: pd.Series) -> np.ndarray:
    """``Frontal``/``Lateral`` (any case, spaces) -> ``frontal``/``lateral`` (else as given)."""
    codes, uniques = pd.factorize(col.astype(str), use_na_sentinel=False)
    norm = np.array([str(u).strip().lower() for u in uniques], dtype=object)
    return norm[codes]


def _checked_views(csv_path: Path, df: pd.DataFrame) -> np.ndarray:
    view = _normalise_views(df["Frontal/Lateral"])
    bad_view = ~np.isin(view, ["frontal", "lateral"])
    if bad_view.any():
        raise ValueError(
            f"{csv_path}: {int(bad_view.sum())} rows have Frontal/Lateral not in "
            f"(Frontal, Lateral), e.g. {df['Frontal/Lateral'][bad_view].head(SHOW).tolist()}"
        )
    return view


def _checked_labels(csv_path: Path, df: pd.DataFrame, target: str) -> pd.Series:
    raw = pd.to_numeric(df[target], errors="coerce")
    bad = (raw.notna() & ~raw.isin([1.0, 0.0, -1.0])) | (raw.isna() & df[target].notna())
    if bad.any():
        raise ValueError(
            f"{csv_path}: {int(bad.sum())} values of {target!r} are not 1, 0, -1 or blank, "
            f"e.g. {df[target][bad].head(SHOW).tolist()}"
        )
    return raw


def _check_rows(csv_path: Path, df: pd.DataFrame) -> None:
    if len(df) == 0:
        raise ValueError(f"{csv_path}: the CSV has a header but no rows: no images to read")
    twice = df["Path"].duplicated()
    if twice.any():
        raise ValueError(
            f"{csv_path}: {int(twice.sum())} of {len(df)} rows repeat an image path listed above "
            f"them (is the file concatenated twice?), e.g. {df['Path'][twice].head(SHOW).tolist()}"
        )


def _parse_image_paths(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised parse of CSV image paths -> (relative path, patient, study, ok mask).

    A leading ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/`` is stripped; the last three path
    components must be ``patientNNNNN/studyN/<file>``.
    """
    rel = np.strings.replace(np.asarray(paths, dtype=str), "\\", "/")
    for name in CHEXPERT_DIR_NAMES:
        prefix = name + "/"
        stripped = np.strings.slice(rel, len(prefix), None)
        rel = np.where(np.strings.startswith(rel, prefix), stripped, rel)
    head, _, file = np.strings.rpartition(rel, "/")
    head, _, study = np.strings.rpartition(head, "/")
    _, _, patient = np.strings.rpartition(head, "/")
    ok = (
        np.strings.startswith(patient, "patient")
        & np.strings.isdecimal(np.strings.slice(patient, 7, None))
        & np.strings.startswith(study, "study")
        & np.strings.isdecimal(np.strings.slice(study, 5, None))
        & (np.strings.str_len(file) > 0)
    )
    return rel, patient, study, ok


def _checked_paths(csv_path: Path, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rel, patient, study, ok = _parse_image_paths(df["Path"].astype(str).to_numpy())
    if not ok.all():
        raise ValueError(
            f"{csv_path}: {int((~ok).sum())} paths are not of the form "
            f".../patientNNNNN/studyN/viewN_<view>.jpg, e.g. {rel[~ok][:SHOW].tolist()}"
        )
    return rel, patient, study


def _check_images_exist(csv_path: Path, paths: Sequence[str]) -> None:
    """One error naming the CSV, how many image files are missing and the first few."""
    isfile = os.path.isfile
    missing = [p for p in paths if not isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{csv_path}: {len(missing)} of {len(paths)} image files do not exist, e.g. "
            f"{', '.join(missing[:SHOW])}: is the dataset completely unpacked next to its CSVs?"
        )


# ----------------------------------------------------------------------------- the reader


def read_chexpert_csv(
    csv_path: str | os.PathLike,
    target: str = "Pleural Effusion",
    uncertain_policy: str = "ones",
    frontal_only: bool = True,
    check_images: bool = True,
    image_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Read a CheXpert ``train.csv``/``valid.csv`` (plain or ``.gz``) into a manifest.

    Returns columns ``path``, ``patient``, ``study`` (unique across patients), ``view``,
    ``label`` and ``raw_label``, in CSV order. CSV paths start with ``CheXpert-v1.0-small/`` or
    ``CheXpert-v1.0/``; that prefix is replaced by ``image_root`` (default: the CSV's own folder,
    i.e. the CheXpert dir); absolute paths are kept.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"CheXpert CSV {csv_path} does not exist")
    if target not in CHEXPERT_OBSERVATIONS:
        raise ValueError(
            f"{csv_path}: unknown target {target!r}; expected one of {list(CHEXPERT_OBSERVATIONS)}"
        )
    _check_policy(uncertain_policy)
    df = _read_columns(csv_path, target)
    view = _checked_views(csv_path, df)
    raw = _checked_labels(csv_path, df, target)
    _check_rows(csv_path, df)
    rel, patient, study = _checked_paths(csv_path, df)
    label, keep = apply_uncertain_policy(raw, uncertain_policy)
    if frontal_only:
        keep &= view == "frontal"

    root = Path(image_root).expanduser() if image_root else csv_path.parent
    root_prefix = str(root.resolve()) + "/"
    rel = rel[keep]
    out = pd.DataFrame(
        {
            "path": np.where(np.strings.startswith(rel, "/"), rel, np.strings.add(root_prefix, rel)),
            "patient": patient[keep],
            "study": np.strings.add(np.strings.add(patient[keep], "/"), study[keep]),
            "view": view[keep],
            "label": label[keep],
            "raw_label": raw.to_numpy(dtype=float)[keep],
        }
    )
    out = out.astype({"path": str, "patient": str, "study": str, "view": str})
    if check_images:
        _check_images_exist(csv_path, out["path"].tolist())
    return out
