"""Which dataset a folder holds, told from its files, and its preparation for one role.

Two roles: the pretraining/target data (``--data-dir``, the notebooks' ``chexpert`` dataset):
CheXpert, NIH ChestX-ray14 or a labels CSV; and the transfer data (``--transfer-dir``, the
notebooks' ``shenzhen`` dataset): Shenzhen, Montgomery or a labels CSV. A folder that is none of
them gets one error listing what was looked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from mocoxr.data.chexpert import find_chexpert_dir
from mocoxr.data.labels import find_labels_csv
from mocoxr.data.montgomery import montgomery_png_dir
from mocoxr.data.nih import find_data_entry
from mocoxr.data.shenzhen import SHENZHEN_PATTERN

ROLES = {"chexpert": ("chexpert", "nih", "labels"), "shenzhen": ("shenzhen", "montgomery", "labels")}
OPTIONS = {"data_dir": "chexpert", "shenzhen_dir": "shenzhen"}  # parameter -> role
LOOKED_FOR = {
    "chexpert": "CheXpert: train.csv[.gz] or valid.csv[.gz] in it or in CheXpert-v1.0-small/ "
                "or CheXpert-v1.0/",
    "nih": "NIH ChestX-ray14: Data_Entry_2017_v2020.csv or Data_Entry_2017.csv beside images*/",
    "labels": "a labelled folder: labels.csv (or one *.csv) with the columns path,label",
    "shenzhen": "Shenzhen: CHNCXR_NNNN_L.png in CXR_png/, ChinaSet_AllFiles/CXR_png/ or in it",
    "montgomery": "Montgomery: MCUCXR_NNNN_L.png in CXR_png/, MontgomerySet/CXR_png/ or in it",
}
FORMAT_NAMES = {"chexpert": "CheXpert", "nih": "NIH ChestX-ray14", "labels": "labels CSV",
                "shenzhen": "Shenzhen", "montgomery": "Montgomery"}


def _is_chexpert(folder: Path) -> bool:
    try:
        find_chexpert_dir(folder)
        return True
    except FileNotFoundError:
        return False


def _has_named_pngs(pattern: re.Pattern) -> Callable[[Path], bool]:
    def check(folder: Path) -> bool:
        for cand in (folder / "CXR_png", folder / "ChinaSet_AllFiles" / "CXR_png", folder):
            if cand.is_dir() and any(pattern.match(p.name) for p in cand.iterdir()):
                return True
        return False
    return check


DETECTORS: dict[str, Callable[[Path], bool]] = {
    "chexpert": _is_chexpert,
    "nih": lambda f: find_data_entry(f) is not None,
    "labels": lambda f: find_labels_csv(f) is not None,
    "shenzhen": _has_named_pngs(SHENZHEN_PATTERN),
    "montgomery": lambda f: montgomery_png_dir(f) is not None,
}


def detect_format(folder: str | os.PathLike, role: str = "chexpert") -> str:
    """The format of ``folder`` among the ``role``'s (:data:`ROLES`), checked in that order."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}; expected one of {list(ROLES)}")
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    for fmt in ROLES[role]:
        if DETECTORS[fmt](folder):
            return fmt
    looked = "; ".join(LOOKED_FOR[f] for f in ROLES[role])
    raise FileNotFoundError(f"{folder}: not a dataset this package reads. Looked for {looked}")


def _pick(options: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in names}


def prepare_dataset(role: str, folder: str | os.PathLike, out_dir: str | os.PathLike,
                    options: Mapping[str, Any] | None = None, seed: int = 0):
    """Prepare ``folder`` in whichever format it holds, under the role's name (``chexpert`` or
    ``shenzhen``). ``options`` are the notebook's ``chexpert``/``shenzhen`` options; each format
    takes those that apply to it (NIH and labels CSVs have no uncertain labels and no test CSV;
    a target-role labels CSV is split by patient (1 - val_fraction) * 80% / val_fraction * 80%
    / 20%, a transfer-role one 65/15/20 like Shenzhen)."""
    from mocoxr.data import prepare_formats as pf
    from mocoxr.data.prepared import prepare_chexpert, prepare_shenzhen

    options = dict(options or {})
    fmt = detect_format(folder, role)
    if fmt == "chexpert":
        return prepare_chexpert(folder, out_dir, seed=seed, **options)
    if fmt == "shenzhen":
        return prepare_shenzhen(folder, out_dir, seed=seed, **options)
    common = _pick(options, ("fractions", "draws"))
    if fmt == "nih":
        return pf.prepare_nih(folder, out_dir, seed=seed, name=role, **common, **_pick(
            options, ("target", "val_fraction", "check_images")))
    if fmt == "montgomery":
        return pf.prepare_montgomery(folder, out_dir, seed=seed, name=role, **common,
                                     **_pick(options, ("split_fractions",)))
    if role == "chexpert":
        v = float(options.get("val_fraction", 0.1))
        split = (0.8 * (1 - v), 0.8 * v, 0.2)
    else:
        split = tuple(options.get("split_fractions", pf.TRANSFER_SPLIT))
    return pf.prepare_labels(folder, out_dir, split_fractions=split, seed=seed, name=role,
                             **common, **_pick(options, ("frontal_only", "check_images")))


def label_file(folder: str | os.PathLike, role: str = "chexpert") -> Path:
    """The file holding the labels: CheXpert's train.csv[.gz], NIH's Data_Entry CSV or the
    labels CSV (Shenzhen and Montgomery keep theirs in the file names: the PNG folder)."""
    from mocoxr.data.chexpert import find_csv
    from mocoxr.data.shenzhen import _shenzhen_png_dir

    fmt = detect_format(folder, role)
    if fmt == "chexpert":
        cdir = find_chexpert_dir(folder)
        return find_csv(cdir, "train") or find_csv(cdir, "valid")
    if fmt == "nih":
        return find_data_entry(folder)
    if fmt == "labels":
        return find_labels_csv(folder)
    return montgomery_png_dir(folder) if fmt == "montgomery" else _shenzhen_png_dir(Path(folder))


def _csv_names(header: str) -> list[str]:
    """NIH's header names ``OriginalImage[Width,Height]`` once for two fields: one name each."""
    names = []
    for name in re.split(r",(?![^\[]*\])", header.strip()):
        stem, _, inner = name.partition("[")
        names += [f"{stem} {p}" for p in inner.rstrip("]").split(",")] if inner else [name]
    return names


def label_file_head(folder: str | os.PathLike, role: str = "chexpert", nrows: int = 6):
    """The first ``nrows`` rows of :func:`label_file` as it is on disk (a DataFrame)."""
    import pandas as pd

    path = label_file(folder, role)
    if path.is_dir():
        return pd.DataFrame({"file": sorted(p.name for p in path.glob("*.png"))[:nrows]})
    if detect_format(folder, role) == "nih":
        with open(path) as fh:
            names = _csv_names(fh.readline())
        return pd.read_csv(path, nrows=nrows, header=0, names=names)
    return pd.read_csv(path, nrows=nrows)


def read_target_labels(folder: str | os.PathLike, target: str = "Pleural Effusion",
                       frontal_only: bool = True):
    """Training labels of a pretraining/target folder without opening images: the manifest of
    CheXpert's train.csv, or of the whole NIH / labels CSV (``raw_label``: 1/0, as NIH and
    labels CSVs have no uncertain or blank labels)."""
    from mocoxr.data.chexpert import find_csv, read_chexpert_csv
    from mocoxr.data.labels import read_labels
    from mocoxr.data.nih import read_nih

    fmt = detect_format(folder, "chexpert")
    if fmt == "chexpert":
        cdir = find_chexpert_dir(folder)
        csv = find_csv(cdir, "train")
        if csv is None:
            raise FileNotFoundError(f"{cdir}: no train.csv or train.csv.gz")
        return read_chexpert_csv(csv, target=target, uncertain_policy="ones",
                                 frontal_only=frontal_only, check_images=False, image_root=cdir)
    df = read_nih(folder, target, check_images=False) if fmt == "nih" else \
        read_labels(folder, check_images=False)
    if frontal_only and "view" in df.columns:
        df = df[df["view"] != "lateral"]
    return df.assign(raw_label=df["label"].astype(float))
