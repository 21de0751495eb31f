"""Small synthetic CheXpert / Shenzhen trees and the real-data fixtures shared by the
tests of mocoxr.data (test_data_*.py import them; real data skips when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mocoxr.data.chexpert import CHEXPERT_OBSERVATIONS

TARGET = "Pleural Effusion"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]


def write_chexpert(
    root: Path,
    split: str,
    rows: list[tuple[int, int, str, float]],
    name: str = "CheXpert-v1.0-small",
    prefix: str | None = None,
    gz: bool = False,
    images: bool = True,
) -> Path:
    """Write ``root/name/{split}.csv[.gz]`` with rows (patient, study, view, effusion) + JPEGs."""
    cdir = root / name
    prefix = name if prefix is None else prefix
    records, counter = [], {}
    for patient, study, view, effusion in rows:
        k = counter[(patient, study)] = counter.get((patient, study), 0) + 1
        rel = f"{split}/patient{patient:05d}/study{study}/view{k}_{view}.jpg"
        rec = dict.fromkeys(HEADER, np.nan)
        rec.update({"Path": f"{prefix}/{rel}", "Sex": "Female", "Age": 60,
                    "Frontal/Lateral": view.capitalize(), "AP/PA": "AP" if view == "frontal" else "",
                    TARGET: effusion, "Edema": 1.0})
        records.append(rec)
        if images:
            img = cdir / rel
            img.parent.mkdir(parents=True, exist_ok=True)
            value = (patient * 37 + study * 11 + k) % 256
            Image.fromarray(np.full((24, 20), value, np.uint8)).save(img, quality=90)
    cdir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(records, columns=HEADER)
    csv = cdir / (f"{split}.csv.gz" if gz else f"{split}.csv")
    df.to_csv(csv, index=False, compression="gzip" if gz else None)
    return csv


def synthetic_rows(n_patients: int, start: int = 1, seed: int = 0) -> list[tuple[int, int, str, float]]:
    """Several studies per patient, frontal + some lateral views, labels 1/0/-1/blank."""
    rng = np.random.default_rng(seed)
    values = [1.0, 0.0, -1.0, np.nan]
    rows = []
    for p in range(start, start + n_patients):
        for s in range(1, 1 + int(rng.integers(1, 3))):
            lab = values[int(rng.integers(4))]
            rows.append((p, s, "frontal", lab))
            if rng.random() < 0.4:
                rows.append((p, s, "lateral", lab))
    return rows


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small CheXpert-v1.0-small tree with images: 20 train patients, 4 valid patients."""
    write_chexpert(tmp_path, "train", synthetic_rows(20))
    write_chexpert(tmp_path, "valid", [(101, 1, "frontal", 1.0), (102, 1, "frontal", 0.0),
                                       (102, 1, "lateral", 0.0), (103, 1, "frontal", np.nan),
                                       (104, 1, "frontal", -1.0)])
    return tmp_path


def write_shenzhen(folder: Path, labels: list[int], start: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, lab in enumerate(labels, start=start):
        p = folder / f"CHNCXR_{i:04d}_{lab}.png"
        Image.fromarray(np.full((20, 16), 40 * lab + i, np.uint8)).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def real_chexpert(shared_data: Path) -> Path:
    cdir = shared_data / "chexpert" / "CheXpert-v1.0-small"
    if not (cdir / "valid.csv").is_file() or not (cdir / "train.csv.gz").is_file():
        pytest.skip(f"real CheXpert CSVs not available in {cdir}")
    return cdir


@pytest.fixture(scope="module")
def real_shenzhen(shared_data: Path) -> Path:
    folder = shared_data / "shenzhen"
    if not (folder / "CXR_png").is_dir():
        pytest.skip(f"real Shenzhen PNGs not available in {folder}")
    return folder
