"""Readers, splits and label-fraction subsets for CheXpert and Shenzhen.

Everything here produces a *dataset manifest*: a DataFrame with one row per image and at least
the columns ``path`` (absolute), ``patient``, ``label`` (0/1) and ``split`` (train/val/test).
Subsets refer to images by positional row index; see :class:`PreparedDataset`.

Decisions (also stated where they apply):

* Label-fraction subsets sample **images** of the training split (as the paper does), uniformly
  at random, and do **not** nest: every (fraction, draw) has its own random stream derived from
  ``(seed, fraction, draw)``, so adding a fraction or a draw never changes the other subsets.
* Subset size is ``max(2, round(f * n))`` (capped at ``n``); a subset that happens to miss a
  class gets one randomly chosen member of the majority class swapped for a random image of the
  missing class, so every subset has at least one positive and one negative.
* Draws are numbered from 0.
* Shenzhen: PNG files whose names do not match ``CHNCXR_NNNN_L.png`` are skipped with a warning
  (the official archive ships no such files, but copies often carry masks or extras).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mocoxr import store

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
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
CHEXPERT_FRACTIONS = (0.001, 0.01, 0.1, 1.0)
CHEXPERT_DRAWS = (5, 5, 5, 1)
SHENZHEN_FRACTIONS = (0.0625, 0.25, 1.0)
SHENZHEN_DRAWS = (8, 4, 1)

CHEXPERT_DIR_NAMES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
SHENZHEN_PATTERN = re.compile(r"^(CHNCXR_\d{4})_([01])\.png$", re.IGNORECASE)
_MANIFEST_DTYPES = {"path": str, "patient": str, "study": str, "view": str, "split": str}
_FORMAT_VERSION = 1
_SHOW = 5  # how many offending paths an error message lists


# ----------------------------------------------------------------------------- CheXpert reader


def _find_csv(directory: Path, stem: str) -> Path | None:
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
        if cand.is_dir() and (_find_csv(cand, "train") or _find_csv(cand, "valid")):
            return cand.resolve()
    raise FileNotFoundError(
        f"{folder}: expected train.csv[.gz]/valid.csv[.gz] in it or in a subfolder named "
        f"{' or '.join(CHEXPERT_DIR_NAMES)}"
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


def _normalise_views(col: pd.Series) -> np.ndarray:
    """``Frontal``/``Lateral`` (any case, spaces) -> ``frontal``/``lateral`` (else as given)."""
    codes, uniques = pd.factorize(col.astype(str), use_na_sentinel=False)
    norm = np.array([str(u).strip().lower() for u in uniques], dtype=object)
    return norm[codes]


def _missing_files(paths: Sequence[str]) -> list[str]:
    isfile = os.path.isfile
    return [p for p in paths if not isfile(p)]


def _raise_missing(source: Path | str, missing: list[str], total: int) -> None:
    if missing:
        raise FileNotFoundError(
            f"{source}: {len(missing)} of {total} image files do not exist, e.g. "
            f"{', '.join(missing[:_SHOW])}: is the dataset completely unpacked next to its CSVs?"
        )


def apply_uncertain_policy(raw: pd.Series, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Map raw CheXpert labels (1, 0, -1, NaN) to ``(label 0/1, keep mask)``.

    Blank (NaN) is negative. Uncertain (-1): ``ones`` -> 1 (the paper's reorganize script),
    ``zeros`` -> 0, ``ignore`` -> row dropped (``keep`` False).
    """
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_policy={policy!r}; expected one of {UNCERTAIN_POLICIES}")
    values = raw.to_numpy(dtype=float)
    uncertain = values == -1
    label = (values == 1) | (uncertain & (policy == "ones"))
    keep = ~uncertain if policy == "ignore" else np.ones(len(values), dtype=bool)
    return label.astype(np.int64), keep


def read_chexpert_csv(
    csv_path: str | os.PathLike,
    target: str = "Pleural Effusion",
    uncertain_policy: str = "ones",
    frontal_only: bool = True,
    check_images: bool = True,
    image_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Read a CheXpert ``train.csv``/``valid.csv`` (plain or ``.gz``) into a manifest.

    Returns columns ``path`` (absolute), ``patient`` (``patientNNNNN``), ``study``
    (``patientNNNNN/studyN``, unique across patients), ``view`` (``frontal``/``lateral``),
    ``label`` (0/1 after ``uncertain_policy``) and ``raw_label`` (1, 0, -1 or NaN for blank),
    in CSV order. CSV paths start with ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/``; that
    prefix is replaced by ``image_root`` (default: the CSV's own folder, i.e. the CheXpert dir);
    absolute paths are kept.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"CheXpert CSV {csv_path} does not exist")
    if target not in CHEXPERT_OBSERVATIONS:
        raise ValueError(
            f"{csv_path}: unknown target {target!r}; expected one of {list(CHEXPERT_OBSERVATIONS)}"
        )
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise ValueError(
            f"uncertain_policy={uncertain_policy!r}; expected one of {UNCERTAIN_POLICIES}"
        )
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

    view = _normalise_views(df["Frontal/Lateral"])
    bad_view = ~np.isin(view, ["frontal", "lateral"])
    if bad_view.any():
        raise ValueError(
            f"{csv_path}: {int(bad_view.sum())} rows have Frontal/Lateral not in "
            f"(Frontal, Lateral), e.g. {df['Frontal/Lateral'][bad_view].head(_SHOW).tolist()}"
        )
    raw = pd.to_numeric(df[target], errors="coerce")
    bad = (raw.notna() & ~raw.isin([1.0, 0.0, -1.0])) | (raw.isna() & df[target].notna())
    if bad.any():
        raise ValueError(
            f"{csv_path}: {int(bad.sum())} values of {target!r} are not 1, 0, -1 or blank, "
            f"e.g. {df[target][bad].head(_SHOW).tolist()}"
        )

    if len(df) == 0:
        raise ValueError(f"{csv_path}: the CSV has a header but no rows: no images to read")
    twice = df["Path"].duplicated()
    if twice.any():
        raise ValueError(
            f"{csv_path}: {int(twice.sum())} of {len(df)} rows repeat an image path listed above "
            f"them (is the file concatenated twice?), e.g. {df['Path'][twice].head(_SHOW).tolist()}"
        )
    rel, patient, study, ok = _parse_image_paths(df["Path"].astype(str).to_numpy())
    if not ok.all():
        raise ValueError(
            f"{csv_path}: {int((~ok).sum())} paths are not of the form "
            f".../patientNNNNN/studyN/viewN_<view>.jpg, e.g. {rel[~ok][:_SHOW].tolist()}"
        )
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
        _raise_missing(csv_path, _missing_files(out["path"].tolist()), len(out))
    return out


# ----------------------------------------------------------------------------- splits


def _allocate(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Split ``n`` items into counts proportional to ``fractions`` (largest remainder).

    Every part with a positive fraction gets at least one item when ``n`` allows it.
    """
    f = np.asarray(fractions, dtype=float)
    raw = f * n
    counts = np.floor(raw).astype(int)
    positive = f > 0
    if n >= positive.sum():
        counts[positive] = np.maximum(counts[positive], 1)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < n:
        counts[order[i % len(f)]] += 1
        i += 1
    while counts.sum() > n:  # only after the at-least-one bump: take the most over-served
        excess = np.where(counts > 1, counts - raw, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    return counts


def _check_fractions(fractions: Sequence[float], name: str) -> None:
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or len(f) == 0 or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"{name}={tuple(fractions)}; expected non-negative fractions summing to 1")


def split_by_patient(
    df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0, max_tries: int = 100
) -> pd.DataFrame:
    """Copy of ``df`` with ``split`` in {train, val}; no patient on both sides.

    ``round(val_fraction * n_patients)`` patients (at least one when ``0 < val_fraction``)
    chosen at random go to val. When ``df`` has a ``label`` column, up to ``max_tries``
    seeded shuffles are tried so that both sides hold both classes (tiny synthetic sets); the
    first shuffle is kept with a warning when none does.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}; expected 0 <= val_fraction < 1")
    if "patient" not in df.columns:
        raise ValueError("split_by_patient: df has no 'patient' column")
    patients = np.sort(df["patient"].astype(str).unique())
    n_val = 0
    if val_fraction > 0:
        if len(patients) < 2:
            raise ValueError(
                f"split_by_patient: need >= 2 patients for a val split, got {len(patients)}"
            )
        n_val = min(max(int(round(val_fraction * len(patients))), 1), len(patients) - 1)
    rng = np.random.default_rng(seed)
    codes = pd.Categorical(df["patient"].astype(str), categories=patients).codes
    has_labels = "label" in df.columns and n_val > 0
    first = None
    for _ in range(max(1, max_tries)):
        is_val_patient = np.zeros(len(patients), dtype=bool)
        is_val_patient[rng.permutation(len(patients))[:n_val]] = True
        is_val = is_val_patient[codes]
        if first is None:
            first = is_val
        if not has_labels:
            break
        y = df["label"].to_numpy()
        if all(len(np.unique(y[m])) == 2 for m in (is_val, ~is_val)):
            break
    else:
        is_val = first
        warnings.warn(
            f"split_by_patient: no split with both classes on both sides in {max_tries} tries "
            f"(seed={seed}); keeping the first",
            stacklevel=2,
        )
    out = df.copy()
    out["split"] = np.where(is_val, "val", "train")
    return out


def split_stratified(
    df: pd.DataFrame, fractions: Sequence[float] = (0.65, 0.15, 0.20), seed: int = 0
) -> pd.DataFrame:
    """Copy of ``df`` with ``split`` in {train, val, test}, stratified by ``label``.

    Each class is shuffled (seeded) and cut by the largest-remainder rule, so every split with
    a positive fraction receives at least one image of each class when the class has at least
    three. Rows are images (for Shenzhen one image per patient).
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions={tuple(fractions)}; expected (train, val, test)")
    _check_fractions(fractions, "fractions")
    if "label" not in df.columns:
        raise ValueError("split_stratified: df has no 'label' column")
    rng = np.random.default_rng(seed)
    y = df["label"].to_numpy()
    split = np.empty(len(df), dtype=object)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        counts = _allocate(len(idx), fractions)
        split[idx] = np.repeat(np.array(["train", "val", "test"], dtype=object), counts)
    out = df.copy()
    out["split"] = split.astype(str)
    return out


# ----------------------------------------------------------------------------- label fractions


def subset_size(fraction: float, n: int) -> int:
    """Images in a ``fraction`` subset of ``n``: ``max(2, round(fraction * n))``, at most ``n``."""
    return int(min(n, max(2, round(fraction * n))))


def _draw_rng(seed: int, fraction: float, draw: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(round(fraction * 1_000_000)), draw])


def _draw_subset(labels: np.ndarray, fraction: float, draw: int, seed: int) -> np.ndarray:
    n = len(labels)
    k = subset_size(fraction, n)
    if k == n:
        return np.arange(n)
    rng = _draw_rng(seed, fraction, draw)
    rows = rng.choice(n, size=k, replace=False)
    sub = labels[rows]
    for missing in (0, 1):
        if not (sub == missing).any():  # swap one majority member for a missing-class image
            candidates = np.flatnonzero(labels == missing)
            rows[rng.integers(k)] = candidates[rng.integers(len(candidates))]
            sub = labels[rows]
    return np.sort(rows)


def make_label_fraction_subsets(
    labels: np.ndarray,
    fractions: Sequence[float] = CHEXPERT_FRACTIONS,
    draws: Sequence[int] = CHEXPERT_DRAWS,
    seed: int = 0,
) -> pd.DataFrame:
    """Seeded label-fraction subsets of a training split, as a long table.

    Returns columns ``label_fraction``, ``draw`` (0-based) and ``row`` (sorted positional
    index into ``labels``). Sampling unit: images, uniformly at random without replacement.
    Size ``max(2, round(f * n))``. Every subset holds >= 1 positive and >= 1 negative (a
    missing class is swapped in for a random member). Subsets do **not** nest: each
    (fraction, draw) uses its own generator seeded by ``(seed, fraction, draw)``; fraction 1.0
    is the whole split. Raises ValueError when ``labels`` lacks a class.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, [0, 1]).all():
        raise ValueError("labels: expected a 1-D array of 0/1")
    if len(fractions) != len(draws):
        raise ValueError(f"fractions {tuple(fractions)} and draws {tuple(draws)} differ in length")
    for f, d in zip(fractions, draws):
        if not 0 < f <= 1 or int(d) < 1:
            raise ValueError(f"label fraction {f} with {d} draws; expected 0 < f <= 1, draws >= 1")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError(
            f"cannot draw label-fraction subsets with >= 1 positive and >= 1 negative: the "
            f"training split has {n_pos} positives and {len(labels) - n_pos} negatives"
        )
    parts = []
    for f, d in zip(fractions, draws):
        for draw in range(int(d)):
            rows = _draw_subset(labels, float(f), draw, seed)
            parts.append(pd.DataFrame({"label_fraction": float(f), "draw": draw, "row": rows}))
    return pd.concat(parts, ignore_index=True).astype({"draw": np.int64, "row": np.int64})


# ----------------------------------------------------------------------------- Shenzhen reader


def _shenzhen_png_dir(folder: Path) -> Path:
    for cand in (folder / "CXR_png", folder / "ChinaSet_AllFiles" / "CXR_png", folder):
        if cand.is_dir() and any(p.suffix.lower() == ".png" for p in cand.iterdir()):
            return cand.resolve()
    raise FileNotFoundError(
        f"{folder}: expected PNGs in it, in CXR_png/ or in ChinaSet_AllFiles/CXR_png/"
    )


def read_shenzhen(folder: str | os.PathLike, check_images: bool = True) -> pd.DataFrame:
    """Read the Shenzhen TB set: columns ``path``, ``patient`` (e.g. ``CHNCXR_0001``), ``label``.

    ``folder`` holds ``CXR_png/`` (or ``ChinaSet_AllFiles/CXR_png/``) or the PNGs directly.
    ``CHNCXR_NNNN_L.png`` gives the label (L=1 TB). Other PNG names are skipped with a warning.
    With ``check_images`` each file must be non-empty and start with the PNG signature.
    Rows are sorted by file name.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Shenzhen folder {folder} does not exist")
    png_dir = _shenzhen_png_dir(folder)
    pngs = sorted(p for p in png_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    matches = [(p, SHENZHEN_PATTERN.match(p.name)) for p in pngs]
    skipped = [p.name for p, m in matches if m is None]
    if skipped:
        warnings.warn(
            f"{png_dir}: skipped {len(skipped)} PNGs not named CHNCXR_NNNN_L.png, e.g. "
            f"{skipped[:_SHOW]}",
            stacklevel=2,
        )
    rows = [(str(p), m.group(1).upper(), int(m.group(2))) for p, m in matches if m is not None]
    if not rows:
        raise FileNotFoundError(f"{png_dir}: no PNGs named CHNCXR_NNNN_L.png")
    df = pd.DataFrame(rows, columns=["path", "patient", "label"]).astype(
        {"path": str, "patient": str, "label": np.int64}
    )
    dup = df["patient"].duplicated(keep=False)
    if dup.any():
        twice = sorted(set(df.patient[dup]))[:_SHOW]
        raise ValueError(f"{png_dir}: image ids appear twice (labels differ?): {twice}")
    if check_images:
        bad = [p for p in df["path"] if not _looks_like_png(p)]
        if bad:
            raise ValueError(
                f"{png_dir}: {len(bad)} files are empty or not PNGs, e.g. {bad[:_SHOW]}"
            )
    return df


def _looks_like_png(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- prepared datasets


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
        if split not in ("train", "val", "test"):
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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (used to notice a changed source CSV)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    store.atomic_write_text(path, text)  # a full disk or read-only folder: one-line StorageError


def _atomic_write_csv(df: pd.DataFrame, path: Path) -> None:
    store.atomic_write(path, lambda fh: df.to_csv(fh, index=False), mode="w")


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


def _prepare(name: str, out_dir, params: dict, build) -> PreparedDataset:
    """Reuse ``out_dir/{name}.csv`` + ``{name}_subsets.csv`` when ``{name}.json`` == params."""
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / f"{name}.csv"
    subsets_path = out_dir / f"{name}_subsets.csv"
    sidecar = out_dir / f"{name}.json"
    params = json.loads(json.dumps({"format_version": _FORMAT_VERSION, **params}))
    if sidecar.is_file() and manifest_path.is_file() and subsets_path.is_file():
        try:
            if json.loads(sidecar.read_text()) == params:
                return _load_prepared(name, manifest_path, subsets_path)
        except (ValueError, KeyError):  # corrupt sidecar or CSV: rebuild
            pass
    sidecar.unlink(missing_ok=True)
    manifest, subsets = build()
    _atomic_write_csv(manifest, manifest_path)
    _atomic_write_csv(subsets, subsets_path)
    _atomic_write_text(sidecar, json.dumps(params, indent=2))
    return _load_prepared(name, manifest_path, subsets_path)


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
    cdir = find_chexpert_dir(folder)
    train_csv = _find_csv(cdir, "train")
    if train_csv is None:
        raise FileNotFoundError(f"{cdir}: no train.csv or train.csv.gz")
    test_path = Path(test_csv).expanduser().resolve() if test_csv else _find_csv(cdir, "valid")
    if test_path is None or not test_path.is_file():
        raise FileNotFoundError(f"{test_path or cdir}: test CSV (valid.csv[.gz]) not found")
    kw = dict(target=target, uncertain_policy=uncertain_policy, frontal_only=frontal_only)
    params = {
        "chexpert_dir": str(cdir),
        "train_csv": str(train_csv),
        "train_csv_sha256": file_sha256(train_csv),
        "test_csv": str(test_path),
        "test_csv_sha256": file_sha256(test_path),
        **kw,
        "val_fraction": val_fraction,
        "fractions": [float(f) for f in fractions],
        "draws": [int(d) for d in draws],
        "seed": seed,
        "check_images": check_images,
    }

    def build() -> tuple[pd.DataFrame, pd.DataFrame]:
        train = read_chexpert_csv(train_csv, check_images=check_images, image_root=cdir, **kw)
        test = read_chexpert_csv(test_path, check_images=check_images, image_root=cdir, **kw)
        shared = np.intersect1d(train["patient"].unique(), test["patient"].unique())
        if len(shared):
            raise ValueError(
                f"{test_path}: {len(shared)} test patients also appear in {train_csv}, e.g. "
                f"{list(shared[:_SHOW])}; the test set must not share patients with training"
            )
        train = split_by_patient(train, val_fraction=val_fraction, seed=seed)
        test = test.assign(split="test")
        manifest = pd.concat([train, test], ignore_index=True)
        check_split_counts(manifest, f"CheXpert data in {cdir}")
        return manifest, _train_subsets(manifest, fractions, draws, seed)

    return _prepare("chexpert", out_dir, params, build)


MIN_PER_CLASS = 1  # images of each class every split needs (an AUC needs both classes)


def check_split_counts(manifest: pd.DataFrame, source: str, minimum: int = MIN_PER_CLASS) -> None:
    """Every split (train, val, test) must hold ``minimum`` images of each class; otherwise a
    ValueError at the data step that says "too few images" with the counts of every split."""
    counts = {s: (int((g["label"] == 1).sum()), int((g["label"] == 0).sum()))
              for s, g in manifest.groupby("split")}
    short = [s for s in ("train", "val", "test") if min(counts.get(s, (0, 0))) < minimum]
    if short:
        table = ", ".join(f"{s} {counts.get(s, (0, 0))[0]} positive / {counts.get(s, (0, 0))[1]} "
                          f"negative" for s in ("train", "val", "test"))
        raise ValueError(
            f"{source}: too few images ({len(manifest)} in all: {table}); every split needs at "
            f"least {minimum} image(s) of each class; short: {', '.join(short)}"
        )


def _dir_fingerprint(paths: Sequence[str]) -> str:
    """Hash of (name, size, mtime) of the given files."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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
        "images_fingerprint": _dir_fingerprint(df["path"].tolist()),
        "n_images": len(df),
        "split_fractions": [float(f) for f in split_fractions],
        "fractions": [float(f) for f in fractions],
        "draws": [int(d) for d in draws],
        "seed": seed,
    }

    def build() -> tuple[pd.DataFrame, pd.DataFrame]:
        manifest = split_stratified(df, split_fractions, seed=seed)
        check_split_counts(manifest, f"Shenzhen data in {folder}")
        return manifest, _train_subsets(manifest, fractions, draws, seed)

    return _prepare("shenzhen", out_dir, params, build)
