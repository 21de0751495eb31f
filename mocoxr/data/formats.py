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
