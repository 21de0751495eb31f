"""Patient-aware positive pairs for MoCo (MedAug: Vu et al., MLHC 2021, arXiv 2102.10663).

MoCo-CXR makes the query and the key of a training image from two augmentations of that one
image (``image``). MedAug draws the key from *another image of the same patient*: of the same
study (``same_study``) or of any study (``same_patient``), optionally allowing lateral views as
keys (``pair_laterals``; MedAug's best strategy: same patient, same study, all lateralities).

The **candidate table** lists, for every training row (``row``, positional index into the
dataset manifest), the images its key may come from: ``source`` ``manifest`` (a row of the
dataset manifest and its image cache) or ``lateral`` (a row of a separate lateral manifest
and cache, for a frontal-only manifest), ``key_row`` in that source. Candidates are training
images of the same patient (and study), never the query itself, and of the query's view unless
``pair_laterals``; a query without any falls back to itself (``source`` ``manifest``,
``key_row == row``). Nothing outside the training rows is ever a candidate: lateral keys are
restricted to patients of the training rows.

The key of a query at a step is drawn uniformly among its candidates with a generator seeded
by ``(seed, step)`` (:meth:`PairSampler.keys`), a pure function of (seed, step, row): a killed
and resumed run draws the same keys, on any number of processes.

The study comparing the rules (pretrain per rule, probe, paired differences, the recorded
comparison table) is :mod:`mocoxr.pairs_study`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mocoxr import store

POSITIVE_PAIRS = ("image", "same_study", "same_patient")
TABLE_COLUMNS = ["row", "source", "key_row", "patient", "study", "view", "key_study",
                 "key_view"]
LATERAL_SUFFIX = "+laterals"


def check_mode(positive_pairs: str, pair_laterals: bool = False) -> None:
    """Clear error for an unknown ``positive_pairs`` or laterals without patient pairing."""
    if positive_pairs not in POSITIVE_PAIRS:
        raise ValueError(f"positive_pairs must be one of {POSITIVE_PAIRS}, got {positive_pairs!r}")
    if pair_laterals and positive_pairs == "image":
        raise ValueError("pair_laterals=True needs positive_pairs 'same_study' or 'same_patient' "
                         "(with 'image' the key is the query's own image)")


def parse_pairing(name: str) -> tuple[str, bool]:
    """``"same_study+laterals"`` -> ``("same_study", True)``; ``"image"`` -> ``("image", False)``."""
    mode, laterals = (name[: -len(LATERAL_SUFFIX)], True) if name.endswith(LATERAL_SUFFIX) \
        else (name, False)
    try:
        check_mode(mode, laterals)
    except ValueError as err:
        raise ValueError(f"pairing {name!r}: {err} (write e.g. 'same_study{LATERAL_SUFFIX}')") \
            from None
    return mode, laterals


def pairing_name(positive_pairs: str, pair_laterals: bool) -> str:
    """Inverse of :func:`parse_pairing`."""
    check_mode(positive_pairs, pair_laterals)
    return positive_pairs + (LATERAL_SUFFIX if pair_laterals else "")


def _frame(manifest: pd.DataFrame, where: str) -> pd.DataFrame:
    need = ["patient", "study"]
    missing = [c for c in need if c not in manifest.columns]
    if missing:
        raise ValueError(f"{where} lacks columns {missing}: patient pairing needs a CheXpert-format "
                         "manifest (columns patient, study, view)")
    out = manifest[need].astype(str).copy()
    out["view"] = manifest["view"].astype(str) if "view" in manifest else "frontal"
    return out


def candidate_table(manifest: pd.DataFrame, rows: np.ndarray, positive_pairs: str,
                    pair_laterals: bool = False,
                    laterals: pd.DataFrame | None = None) -> pd.DataFrame:
    """The candidate keys of every training row (columns :data:`TABLE_COLUMNS`, sorted).

    ``rows``: the training rows (positional, into ``manifest``); ``laterals``: extra lateral
    images (columns patient, study[, view]) available as keys when ``pair_laterals``; rows of
    patients outside ``rows`` are ignored. See the module docstring for the rules.
    """
    check_mode(positive_pairs, pair_laterals)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= len(manifest)):
        raise ValueError(f"rows must index the manifest of {len(manifest)} rows, got "
                         f"{rows[0]}..{rows[-1]}")
    q = _frame(manifest, "manifest").iloc[rows].assign(row=rows).reset_index(drop=True)
    if positive_pairs == "image":
        pool = q.iloc[:0].assign(source="manifest", key_row=q["row"].iloc[:0])
    else:
        pool = q.assign(source="manifest", key_row=q["row"])
        if pair_laterals and laterals is not None and len(laterals):
            lat = _frame(laterals, "lateral manifest").assign(source="lateral",
                                                               key_row=np.arange(len(laterals)))
            lat = lat[lat["patient"].isin(set(q["patient"]))]
            pool = pd.concat([pool, lat], ignore_index=True)
    group = ["patient"] if positive_pairs == "same_patient" else ["patient", "study"]
    pool = pool.assign(key_study=pool["study"], key_view=pool["view"])
    pool = pool[group + ["source", "key_row", "key_study", "key_view"]]
    pairs = q.merge(pool, on=group, how="inner")
    keep = ~((pairs["source"] == "manifest") & (pairs["key_row"] == pairs["row"]))
    if not pair_laterals:
        keep &= pairs["key_view"] == pairs["view"]
    pairs = pairs[keep]
    alone = q[~q["row"].isin(pairs["row"])]
    self_pairs = alone.assign(source="manifest", key_row=alone["row"], key_study=alone["study"],
                              key_view=alone["view"])
    table = pd.concat([pairs, self_pairs], ignore_index=True)[TABLE_COLUMNS]
    table["key_row"] = table["key_row"].astype(np.int64)
    return table.sort_values(["row", "source", "key_row"], kind="stable").reset_index(drop=True)


def table_sha1(table: pd.DataFrame) -> str:
    """Content hash of a candidate table (what a checkpoint was trained with)."""
    return hashlib.sha1(table[TABLE_COLUMNS].to_csv(index=False).encode()).hexdigest()


@dataclass
class PairSampler:
    """Draws each query's key image from its candidates (see the module docstring).

    ``images``: the dataset's image cache (row i = manifest row i); ``lateral_images``: the
    cache of the lateral manifest (``source == "lateral"`` rows), None when there are none."""

    positive_pairs: str
    pair_laterals: bool
    table: pd.DataFrame
    images: np.ndarray
    lateral_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_mode(self.positive_pairs, self.pair_laterals)
        missing = [c for c in TABLE_COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"candidate table lacks columns {missing} (see candidate_table)")
        self.table = t = self.table.sort_values("row", kind="stable").reset_index(drop=True)
        lateral = (t["source"] == "lateral").to_numpy()
        if lateral.any() and (self.lateral_images is None
                              or t.loc[lateral, "key_row"].max() >= len(self.lateral_images)):
            raise ValueError("the candidate table names lateral images beyond lateral_images "
                             f"({0 if self.lateral_images is None else len(self.lateral_images)})")
        # keys as one index space: manifest rows, then lateral rows after len(images)
        flat = t["key_row"].to_numpy(np.int64) + np.where(lateral, len(self.images), 0)
        self._queries, self._start, self._count = np.unique(
            t["row"].to_numpy(np.int64), return_index=True, return_counts=True)
        self._flat = flat
        self.sha1 = table_sha1(t)

    @property
    def queries(self) -> np.ndarray:
        """The training rows the table covers (sorted)."""
        return self._queries

    def keys(self, query_rows: np.ndarray, seed: int, step: int) -> np.ndarray:
        """Key indices (manifest rows; ``len(images) + j`` for lateral row j), one per query."""
        q = np.asarray(query_rows, dtype=np.int64)
        pos = np.searchsorted(self._queries, q)
        if (pos >= len(self._queries)).any() or (self._queries[np.minimum(
                pos, len(self._queries) - 1)] != q).any():
            raise ValueError("query rows outside the candidate table (not training rows)")
        u = np.random.default_rng([int(seed), int(step), 13]).random(len(self._queries))[pos]
        pick = np.minimum((u * self._count[pos]).astype(np.int64), self._count[pos] - 1)
        return self._flat[self._start[pos] + pick]

    def key_batch(self, query_rows: np.ndarray, seed: int, step: int) -> torch.Tensor:
        """uint8 (B, H, W) key images aligned with ``np.sort(query_rows)`` (the order in which
        ``runtime.load_batch`` reads the query batch)."""
        keys = self.keys(np.sort(np.asarray(query_rows, dtype=np.int64)), seed, step)
        n = len(self.images)
        out = np.empty((len(keys),) + self.images.shape[1:], dtype=np.uint8)
        main = keys < n
        out[main] = self.images[keys[main]]
        if (~main).any():
            out[~main] = self.lateral_images[keys[~main] - n]
        return torch.from_numpy(out)


def attach(sampler: PairSampler | None, cfg: Any, rows: np.ndarray, images: np.ndarray,
           out_dir: Path) -> tuple[PairSampler | None, str | None]:
    """Check ``sampler`` against the pretraining config and rows; save its table as
    ``out_dir/pairs.csv``. Returns ``(sampler or None for image pairs, table hash or None)``."""
    mode, laterals = getattr(cfg, "positive_pairs", "image"), getattr(cfg, "pair_laterals", False)
    check_mode(mode, laterals)
    if mode == "image":
        if sampler is not None and sampler.positive_pairs != "image":
            raise ValueError(f"pairs is a {sampler.positive_pairs!r} sampler but the config says "
                             "positive_pairs='image'")
        return None, None
    if sampler is None:
        raise ValueError(f"positive_pairs={mode!r} needs pairs= a pairs.PairSampler "
                         "(e.g. from pairs.sampler_for_dataset)")
    if (sampler.positive_pairs, sampler.pair_laterals) != (mode, laterals):
        raise ValueError(f"pairs sampler is ({sampler.positive_pairs!r}, pair_laterals="
                         f"{sampler.pair_laterals}) but the config asks for ({mode!r}, "
                         f"pair_laterals={laterals})")
    if sampler.images is not images and len(sampler.images) != len(images):
        raise ValueError("the pairs sampler was built on another image cache")
    if not np.array_equal(sampler.queries, np.unique(rows)):
        raise ValueError("the pairs sampler's candidate table does not cover exactly the "
                         "training rows")
    saved = Path(out_dir) / "pairs.csv"
    if not (Path(out_dir) / "checkpoint.pt").exists() or not saved.exists():
        # a checkpoint's own table is kept: pretrain refuses to resume it with another one
        store.atomic_write(saved, lambda fh: sampler.table.to_csv(fh, index=False), mode="w")
    return sampler, sampler.sha1


# ----------------------------------------------------------------------------- on a dataset


def lateral_manifest(folder: str | Path, manifest: pd.DataFrame, rows: np.ndarray,
                     target: str = "Pleural Effusion",
                     uncertain_policy: str = "ones") -> pd.DataFrame:
    """The lateral images of the CheXpert ``train.csv`` in ``folder`` whose patient is among
    the training ``rows`` of ``manifest`` and that the manifest does not already hold (a
    frontal-only manifest keeps none). Columns of ``data.read_chexpert_csv``."""
    from mocoxr import data

    cdir = data.find_chexpert_dir(folder)
    csv = data.find_csv(cdir, "train")
    if csv is None:
        raise FileNotFoundError(f"{cdir}: no train.csv or train.csv.gz to read lateral views from")
    df = data.read_chexpert_csv(csv, target=target, uncertain_policy=uncertain_policy,
                                frontal_only=False, image_root=cdir)
    patients = set(manifest["patient"].astype(str).iloc[np.asarray(rows, dtype=np.int64)])
    keep = (df["view"] == "lateral") & df["patient"].isin(patients) \
        & ~df["path"].isin(set(manifest["path"]))
    return df[keep].reset_index(drop=True)


def sampler_for_dataset(run_dir: str | Path, ds: Any, folder: str | Path, positive_pairs: str,
                        pair_laterals: bool = False,
                        chexpert: dict | None = None) -> PairSampler | None:
    """The :class:`PairSampler` of a ``notebook.Dataset``'s training split (None for ``image``).

    With ``pair_laterals`` the lateral views of the training patients are read from the
    CheXpert folder ``folder``, listed in ``<run_dir>/manifests/chexpert_laterals.csv`` and
    decoded at the dataset's image size into ``<run_dir>/cache/`` (a key-only cache: the
    dataset manifest, its splits and every later step stay frontal-only). ``chexpert``: the
    ``prepare_chexpert`` options (its target and uncertain policy are used).
    """
    from mocoxr import data
    from mocoxr.book.paths import run_paths

    check_mode(positive_pairs, pair_laterals)
    if positive_pairs == "image":
        return None
    rows = ds.prepared.rows("train")
    lat, lat_images = None, None
    if pair_laterals:
        opts = {k: v for k, v in (chexpert or {}).items() if k in ("target", "uncertain_policy")}
        lat = lateral_manifest(folder, ds.manifest, rows, **opts)
        paths = run_paths(run_dir)
        paths.manifests.mkdir(parents=True, exist_ok=True)
        lat.to_csv(paths.manifests / "chexpert_laterals.csv", index=False)
        if len(lat):
            size = int(ds.images.shape[1])
            lat_images = data.load_image_cache(lat["path"].tolist(), size,
                                               paths.cache / f"chexpert_laterals_{size}px.npy")
    table = candidate_table(ds.manifest, rows, positive_pairs, pair_laterals, lat)
    return PairSampler(positive_pairs, pair_laterals, table, ds.images, lat_images)


def table_summary(table: pd.DataFrame) -> dict[str, float]:
    """How many training images have another image as key, and how many candidates each."""
    own = (table["source"] == "manifest") & (table["key_row"] == table["row"])
    per_row = table.groupby("row").size()
    return {"n_rows": int(per_row.size), "n_paired": int(per_row.size - own.sum()),
            "share_paired": float(1 - own.sum() / max(per_row.size, 1)),
            "mean_candidates": float(per_row[~per_row.index.isin(table.loc[own, "row"])].mean())
            if per_row.size > own.sum() else 0.0,
            "n_lateral_keys": int((table["source"] == "lateral").sum())}
