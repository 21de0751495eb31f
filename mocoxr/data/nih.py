"""NIH ChestX-ray14: read ``Data_Entry_2017[_v2020].csv`` and the image folders into a manifest.

The official layout, as downloaded: ``images_001/images/*.png`` ... ``images_012/images/*.png``
(or one flat ``images/``), ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv`` and the
official patient-disjoint split ``train_val_list.txt`` / ``test_list.txt`` (one image name a
line). ``Finding Labels`` joins the 14 findings with ``|`` (``No Finding`` when none); the
labels were mined from the reports by NLP and there is **no uncertain class**, so the
uncertain-label policy does not apply. ``Effusion`` is the paper's pleural effusion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mocoxr.data.chexpert import SHOW

NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
# CheXpert observation names that mean an NIH finding (so one profile serves both)
CHEXPERT_TO_NIH = {"Pleural Effusion": "Effusion", "Pleural Thickening": "Pleural_Thickening"}
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_LISTS = ("train_val_list.txt", "test_list.txt")
_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")


def nih_target(target: str) -> str:
    """The NIH finding for ``target`` (an NIH name, or a CheXpert name such as Pleural Effusion)."""
    name = CHEXPERT_TO_NIH.get(target, target)
    if name not in NIH_FINDINGS:
        raise ValueError(f"target={target!r}: not one of the 14 NIH ChestX-ray14 findings "
                         f"{list(NIH_FINDINGS)} (Pleural Effusion maps to Effusion)")
    return name


def find_data_entry(folder: str | os.PathLike) -> Path | None:
    """``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` in ``folder`` (None if neither)."""
    for name in DATA_ENTRY_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def image_index(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: absolute path}`` of the PNGs in ``images*/images/`` and ``images*/``."""
    folder = Path(folder).resolve()
    found: dict[str, str] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("images")):
        for d in (sub / "images", sub):
            if d.is_dir():
                for e in os.scandir(d):
                    if e.name.lower().endswith(".png") and e.is_file():
                        found.setdefault(e.name, e.path)
    return found


def _read_data_entry(csv_path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(csv_path, usecols=lambda c: c in _COLUMNS, dtype=str)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{csv_path}: cannot read as an NIH Data_Entry CSV ({exc})") from exc
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}; expected the NIH header "
                         f"with at least {list(_COLUMNS)}")
    if len(df) == 0:
        raise ValueError(f"{csv_path}: the CSV has a header but no rows")
    return df


def _labels(csv_path: Path, findings: pd.Series, target: str) -> np.ndarray:
    parts = findings.fillna("").str.split("|")
    known = set(NIH_FINDINGS) | {"No Finding"}
    bad = parts.map(lambda p: any(x.strip() not in known for x in p))
    if bad.any():
        raise ValueError(f"{csv_path}: {int(bad.sum())} rows have Finding Labels outside the 14 "
                         f"findings and 'No Finding', e.g. {findings[bad].head(SHOW).tolist()}")
    return parts.map(lambda p: target in (x.strip() for x in p)).to_numpy(dtype=np.int64)


def _views(csv_path: Path, col: pd.Series) -> np.ndarray:
    proj = col.fillna("").str.strip().str.upper().to_numpy(dtype=object)
    bad = ~np.isin(proj, ["PA", "AP"])
    if bad.any():
        raise ValueError(f"{csv_path}: {int(bad.sum())} rows have View Position not PA or AP, "
                         f"e.g. {col[bad].head(SHOW).tolist()}")
    return proj


def official_split(folder: str | os.PathLike, names: pd.Series) -> np.ndarray | None:
    """``train_val`` / ``test`` per image from the official lists, or None when absent."""
    lists = [Path(folder) / n for n in SPLIT_LISTS]
    if not all(p.is_file() for p in lists):
        return None
    test = set(lists[1].read_text().split())
    train_val = set(lists[0].read_text().split())
    out = np.where(names.isin(test), "test", np.where(names.isin(train_val), "train_val", ""))
    if (out == "").any():
        raise ValueError(f"{folder}: {int((out == '').sum())} images are in neither "
                         f"{SPLIT_LISTS[0]} nor {SPLIT_LISTS[1]}, e.g. "
                         f"{names[out == ''].head(SHOW).tolist()}")
    return out


def read_nih(folder: str | os.PathLike, target: str = "Effusion",
             check_images: bool = True) -> pd.DataFrame:
    """Read NIH ChestX-ray14 into a manifest, in CSV order.

    Columns: ``path``, ``patient`` (``Patient ID``), ``study`` (patient and ``Follow-up #``),
    ``view`` (``frontal``: every NIH image is), ``projection`` (``View Position``: PA/AP),
    ``label`` (0/1: ``target`` among the ``Finding Labels``), ``raw_label`` (the same, as float:
    there is no uncertain class) and ``findings`` (the ``Finding Labels`` text); plus
    ``official_split`` (``train_val``/``test``) when ``train_val_list.txt`` and
    ``test_list.txt`` are present. With ``check_images`` every image must be found in
    ``images*/images/`` or ``images*/`` (one error counting the missing ones); without, rows
    whose image is absent keep the path they would have in a flat ``images/``.
    """
    folder = Path(folder).expanduser().resolve()
    csv_path = find_data_entry(folder)
    if csv_path is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(DATA_ENTRY_NAMES)}")
    target = nih_target(target)
    df = _read_data_entry(csv_path)
    names = df["Image Index"].str.strip()
    if names.duplicated().any():
        raise ValueError(f"{csv_path}: image names appear twice, e.g. "
                         f"{names[names.duplicated()].head(SHOW).tolist()}")
    index = image_index(folder)
    missing = [n for n in names if n not in index]
    if check_images and missing:
        raise FileNotFoundError(
            f"{csv_path}: {len(missing)} of {len(names)} images are not in images*/images/ or "
            f"images*/, e.g. {missing[:SHOW]}: is every images_NNN.tar.gz unpacked beside it?")
    label = _labels(csv_path, df["Finding Labels"], target)
    patient = df["Patient ID"].str.strip().str.zfill(8)
    out = pd.DataFrame({
        "path": [index.get(n, str(folder / "images" / n)) for n in names],
        "patient": patient,
        "study": patient + "/" + df["Follow-up #"].str.strip().str.zfill(3),
        "view": "frontal",
        "projection": _views(csv_path, df["View Position"]),
        "label": label,
        "raw_label": label.astype(float),
        "findings": df["Finding Labels"].fillna(""),
    })
    split = official_split(folder, names)
    if split is not None:
        out["official_split"] = split
    return out.astype({"path": str, "patient": str, "study": str, "view": str})
