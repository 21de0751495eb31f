"""A labelled folder: a CSV with ``path,label`` (and optional ``patient``, ``study``, ``view``).

Paths are relative to the CSV (absolute paths are kept); images may be PNG, JPEG or DICOM
(:mod:`mocoxr.data.dicom` decodes DICOM). ``label`` is 0 or 1. Without a ``patient`` column each
image counts as its own patient: the split is then per image, and two images of one patient can
land on both sides of it (leakage), which the reader says in a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mocoxr.data.chexpert import SHOW

LABELS_CSV = "labels.csv"
REQUIRED = ("path", "label")
OPTIONAL = ("patient", "study", "view")
_FRONTAL = {"frontal", "pa", "ap", "front", "f"}
_LATERAL = {"lateral", "lat", "ll", "rl", "l"}
NO_PATIENT_WARNING = ("has no 'patient' column: each image counts as its own patient, so the "
                      "split is per image and images of one patient can fall into both training "
                      "and test (leakage); add a patient column to split by patient")


def _header(csv_path: Path) -> list[str]:
    try:
        return [c.strip().lower() for c in pd.read_csv(csv_path, nrows=0).columns]
    except (ValueError, OSError, UnicodeDecodeError):
        return []


def find_labels_csv(folder: str | os.PathLike) -> Path | None:
    """The labels CSV of ``folder``: ``labels.csv``, else the one ``*.csv`` whose header holds
    ``path`` and ``label``; ``folder`` may also be that CSV itself. None when there is none."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        return folder if set(REQUIRED) <= set(_header(folder)) else None
    if not folder.is_dir():
        return None
    named = folder / LABELS_CSV
    cands = [named] if named.is_file() else sorted(folder.glob("*.csv"))
    hits = [p for p in cands if set(REQUIRED) <= set(_header(p))]
    return hits[0] if len(hits) == 1 else None


def normalise_views(csv_path: Path, col: pd.Series) -> np.ndarray:
    """PA/AP/frontal -> ``frontal``, LAT/LL/lateral -> ``lateral``; anything else an error."""
    v = col.fillna("").astype(str).str.strip().str.lower()
    out = np.where(v.isin(_FRONTAL), "frontal", np.where(v.isin(_LATERAL), "lateral", ""))
    if (out == "").any():
        raise ValueError(f"{csv_path}: {int((out == '').sum())} values of 'view' are neither "
                         f"frontal (PA, AP, frontal) nor lateral (LAT, LL, lateral), e.g. "
                         f"{col[out == ''].head(SHOW).tolist()}")
    return out


def _checked_labels(csv_path: Path, col: pd.Series) -> np.ndarray:
    y = pd.to_numeric(col, errors="coerce")
    bad = ~y.isin([0, 1])
    if bad.any():
        raise ValueError(f"{csv_path}: {int(bad.sum())} values of 'label' are not 0 or 1, e.g. "
                         f"{col[bad].head(SHOW).tolist()}")
    return y.to_numpy(dtype=np.int64)


def _absolute(csv_path: Path, rel: pd.Series) -> list[str]:
    root = csv_path.parent.resolve()
    return [p if os.path.isabs(p) else str(root / p) for p in rel.str.replace("\\", "/")]


def read_labels(source: str | os.PathLike, check_images: bool = True) -> pd.DataFrame:
    """Read a labels CSV (``source``: the CSV or its folder) into a manifest, in CSV order.

    Columns ``path`` (absolute), ``patient``, ``label`` and, when the CSV has them, ``study`` and
    ``view`` (normalised to ``frontal``/``lateral``). Without ``patient``, the image's path is its
    patient and a warning says that the split is then per image. With ``check_images`` every
    file must exist (one error counting the missing ones).
    """
    csv_path = find_labels_csv(source)
    if csv_path is None:
        raise FileNotFoundError(f"{source}: no labels CSV ({LABELS_CSV}, or one *.csv whose "
                                f"header holds the columns {list(REQUIRED)})")
    df = pd.read_csv(csv_path, dtype=str)
    df.columns = [c.strip().lower() for c in df.columns]
    if len(df) == 0:
        raise ValueError(f"{csv_path}: the CSV has a header but no rows")
    rel = df["path"].fillna("").str.strip()
    if (rel == "").any() or rel.duplicated().any():
        raise ValueError(f"{csv_path}: every row needs its own non-empty 'path' (empty or "
                         f"repeated: {rel[(rel == '') | rel.duplicated()].head(SHOW).tolist()})")
    out = pd.DataFrame({"path": _absolute(csv_path, rel)})
    if "patient" in df.columns:
        out["patient"] = df["patient"].fillna("").str.strip()
        if (out["patient"] == "").any():
            raise ValueError(f"{csv_path}: {int((out['patient'] == '').sum())} rows have an "
                             "empty 'patient'")
    else:
        warnings.warn(f"{csv_path} {NO_PATIENT_WARNING}", stacklevel=2)
        out["patient"] = rel.to_numpy()
    if "study" in df.columns:
        out["study"] = out["patient"] + "/" + df["study"].fillna("").str.strip()
    if "view" in df.columns:
        out["view"] = normalise_views(csv_path, df["view"])
    out["label"] = _checked_labels(csv_path, df["label"])
    if check_images:
        missing = [p for p in out["path"] if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{csv_path}: {len(missing)} of {len(out)} image files do "
                                    f"not exist (paths are relative to the CSV), e.g. "
                                    f"{missing[:SHOW]}")
    return out.astype({"path": str, "patient": str})
