"""Phantom trees in the NIH ChestX-ray14, Montgomery and labelled-folder (PNG, JPEG, DICOM)
formats, drawn from the same population and renderer as the CheXpert and Shenzhen trees.

- :func:`generate_nih_tree`: ``Data_Entry_2017_v2020.csv`` (the real 11-field header),
  ``images_001/images/*.png`` ... (``nested``) or one flat ``images/``, and the official-style
  ``train_val_list.txt`` / ``test_list.txt`` (patient-disjoint); frontal images only, labels
  joined by ``|`` (``No Finding`` when none), a CheXpert-style uncertain label counted present;
- :func:`generate_montgomery_tree`: ``CXR_png/MCUCXR_NNNN_L.png`` as 16-bit PNGs holding 12 bits;
- :func:`generate_labels_tree`: ``labels.csv`` (``path,label[,patient,study,view]``) over
  ``images/`` in PNG, JPEG or DICOM (12 bits stored, a VOI window, MONOCHROME2, MONOCHROME1 or
  both alternating).

Each writes a JSON sidecar and is skipped when it matches; a folder not written here is never
overwritten.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from mocoxr.phantom.population import PhantomPopulation, make_population
from mocoxr.phantom.records import sample_chexpert_records, sample_shenzhen_records
from mocoxr.phantom.render import as_hw, render_radiograph
from mocoxr.phantom.trees import GENERATOR_VERSION

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# NIH finding <- CheXpert observation of the phantom's report labels
NIH_FROM_CHEXPERT = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity", "Nodule": "Lung Lesion", "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation", "Edema": "Edema",
    "Pleural_Thickening": "Pleural Other",
}
IMAGE_FORMATS = ("png", "jpeg", "dicom")
PHOTOMETRIC = ("MONOCHROME2", "MONOCHROME1", "mixed")


def _render(rec: Mapping[str, Any], hw, pop: PhantomPopulation, view: str = "frontal") -> np.ndarray:
    return render_radiograph(np.random.default_rng(rec["image_seed"]), hw, rec["findings"],
                             view=view, projection=rec.get("projection", "PA"),
                             supine=rec.get("supine", False), female=rec["female"],
                             anatomy_seed=rec["anatomy_seed"], population=pop)


def _fresh(out: Path, sidecar: Path, params: dict) -> bool:
    """True when ``out`` must be (re)written: no sidecar matching ``params``. Clears an older
    phantom tree there; refuses a non-empty folder that has no sidecar."""
    if sidecar.is_file():
        if json.loads(sidecar.read_text()) == params:
            return False
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and was not written by mocoxr.phantom (no "
                              f"{sidecar.name}); refusing to overwrite it. Use another out_dir.")
    out.mkdir(parents=True, exist_ok=True)
    return True


def _params(kind: str, pop: PhantomPopulation, **fields: Any) -> dict:
    return {"generator": "mocoxr.phantom", "kind": kind, "version": GENERATOR_VERSION,
            **fields, "population": pop.to_dict()}


def _finish(sidecar: Path, params: dict) -> None:
    sidecar.write_text(json.dumps(params, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- NIH


def _nih_findings(labels: Mapping[str, float | None]) -> str:
    found = [nih for nih, obs in NIH_FROM_CHEXPERT.items() if labels.get(obs) in (1.0, -1.0)]
    return "|".join(found) if found else "No Finding"


def _nih_rows(records: Sequence[dict]) -> list[dict]:
    """Frontal records as NIH rows: ``PPPPPPPP_FFF.png``, follow-up numbers from 0 per patient."""
    rows, follow = [], {}
    for r in records:
        if r["view"] != "Frontal":
            continue
        k = follow.get(r["patient"], 0)
        follow[r["patient"]] = k + 1
        rows.append({"name": f"{r['patient']:08d}_{k:03d}.png", "rec": r, "follow": k})
    return rows


def _write_nih_csv(path: Path, rows: Sequence[dict], hw) -> None:
    with open(path, "w", newline="") as fh:
        fh.write(NIH_HEADER + "\n")
        wr = csv.writer(fh, lineterminator="\n")
        for row in rows:
            r = row["rec"]
            wr.writerow([row["name"], _nih_findings(r["labels"]), row["follow"], r["patient"],
                         r["age"], r["sex"][0], r["projection"], hw[1], hw[0], 0.143, 0.143])


def generate_nih_tree(out_dir: str | os.PathLike, n_patients: int = 200,
                      image_size: int | Sequence[int] = 128, seed: int = 0, nested: bool = True,
                      official_lists: bool = True,
                      population: PhantomPopulation | Mapping[str, Any] | None = None) -> Path:
    """Write an NIH ChestX-ray14 tree in ``out_dir`` (module docstring); returns ``out_dir``.
    ``nested``: ``images_001/images/`` and ``images_002/images/`` (as the tarballs unpack),
    else one flat ``images/``. The last fifth of the patients form ``test_list.txt``."""
    pop, hw, out = make_population(population), as_hw(image_size), Path(out_dir)
    params = _params("nih", pop, n_patients=int(n_patients), image_size=list(hw), seed=int(seed),
                     nested=bool(nested), official_lists=bool(official_lists))
    sidecar = out / "phantom_nih.json"
    if not _fresh(out, sidecar, params):
        return out
    rows = _nih_rows(sample_chexpert_records(n_patients, seed, "train", pop))
    half = (len(rows) + 1) // 2
    for i, row in enumerate(rows):
        folder = out / (f"images_{1 + i // half:03d}/images" if nested else "images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_render(row["rec"], hw, pop), "L").save(folder / row["name"], format="PNG")
    _write_nih_csv(out / "Data_Entry_2017_v2020.csv", rows, hw)
    if official_lists:
        first_test = n_patients - max(1, n_patients // 5) + 1
        test = [r["name"] for r in rows if r["rec"]["patient"] >= first_test]
        train = [r["name"] for r in rows if r["rec"]["patient"] < first_test]
        (out / "train_val_list.txt").write_text("\n".join(train) + "\n")
        (out / "test_list.txt").write_text("\n".join(test) + "\n")
    _finish(sidecar, params)
    return out


# ----------------------------------------------------------------------------- Montgomery


def to_12_bits(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8-bit pixels as 12-bit values (x 16 plus a dither below one 8-bit step), uint16."""
    return (img.astype(np.uint16) * 16 + rng.integers(0, 16, img.shape, dtype=np.uint16))


def generate_montgomery_tree(out_dir: str | os.PathLike, n_images: int = 138,
                             image_size: int | Sequence[int] = 128, seed: int = 0,
                             population: PhantomPopulation | Mapping[str, Any] | None = None
                             ) -> Path:
    """Write ``out_dir/CXR_png/MCUCXR_NNNN_L.png`` (16-bit PNGs, 12-bit values, L = 1 TB) from
    the Shenzhen-like screening population; an int ``image_size`` is the width, the height
    follows Montgomery's 4892:4020. Returns ``out_dir``."""
    pop, out = make_population(population), Path(out_dir)
    hw = as_hw(image_size if not isinstance(image_size, (int, np.integer))
               else (round(int(image_size) * 4892 / 4020), int(image_size)))
    params = _params("montgomery", pop, n_images=int(n_images), image_size=list(hw),
                     seed=int(seed))
    sidecar = out / "phantom_montgomery.json"
    if not _fresh(out, sidecar, params):
        return out
    (out / "CXR_png").mkdir(exist_ok=True)
    for i, rec in enumerate(sample_shenzhen_records(n_images, seed + 7919, pop), start=1):
        img = to_12_bits(_render(rec, hw, pop), np.random.default_rng([seed, i]))
        Image.fromarray(img).save(out / "CXR_png" / f"MCUCXR_{i:04d}_{rec['label']}.png",
                                  format="PNG")
    _finish(sidecar, params)
    return out
