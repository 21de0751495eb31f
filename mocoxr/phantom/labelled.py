"""A phantom labelled folder: ``labels.csv`` over PNG, JPEG or DICOM images.

DICOM files are what a hospital's PACS exports for a digital radiograph: Digital X-Ray Image
Storage (For Presentation), 16 bits allocated with 12 stored, a VOI window (``WindowCenter`` /
``WindowWidth``) that maps the stored range back to the rendered image, and
``MONOCHROME2`` (high values bright) or ``MONOCHROME1`` (the stored values and the window
mirrored, so that after inversion the image is the same).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from mocoxr.phantom.formats import (IMAGE_FORMATS, PHOTOMETRIC, _finish, _fresh, _params,
                                    _render)
from mocoxr.phantom.population import PhantomPopulation, make_population
from mocoxr.phantom.records import sample_chexpert_records
from mocoxr.phantom.render import as_hw

_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
OFFSET, GAIN = 400, 12  # stored value = OFFSET + GAIN * pixel (+ dither): 400..3471, 12 bits
_SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def write_dicom(path: str | os.PathLike, img: np.ndarray, photometric: str = "MONOCHROME2",
                patient: str = "ANON", uid_seed: Sequence[Any] = (0,)) -> None:
    """Write the uint8 image ``img`` as a 12-bit DICOM DX file (module docstring)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(list(uid_seed))
    stored = OFFSET + GAIN * img.astype(np.int32) + rng.integers(0, GAIN, img.shape)
    centre = OFFSET + GAIN * 128.0
    if photometric == "MONOCHROME1":
        stored, centre = 4095 - stored, 4095 - centre
    uid = generate_uid(entropy_srcs=[str(v) for v in uid_seed])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = _DX_STORAGE, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _DX_STORAGE, uid
    ds.Modality, ds.PatientID, ds.PresentationIntentType = "DX", patient, "FOR PRESENTATION"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = f"{centre:.1f}", f"{GAIN * 256:.1f}"
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(os.fspath(path), enforce_file_format=True)


def _photometric(choice: str, i: int) -> str:
    return ("MONOCHROME2", "MONOCHROME1")[i % 2] if choice == "mixed" else choice


def _save(path: Path, img: np.ndarray, fmt: str, photometric: str, patient: str, seed) -> None:
    if fmt == "dicom":
        write_dicom(path, img, photometric, patient, seed)
    elif fmt == "jpeg":
        Image.fromarray(img, "L").save(path, format="JPEG", quality=90)
    else:
        Image.fromarray(img, "L").save(path, format="PNG")


def _check(image_format: str, photometric: str) -> None:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}; expected one of {IMAGE_FORMATS}")
    if photometric not in PHOTOMETRIC:
        raise ValueError(f"photometric={photometric!r}; expected one of {PHOTOMETRIC}")


def generate_labels_tree(out_dir: str | os.PathLike, n_patients: int = 100,
                         image_size: int | Sequence[int] = 128, seed: int = 0,
                         image_format: str = "png", photometric: str = "mixed",
                         with_patient: bool = True,
                         population: PhantomPopulation | Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/labels.csv`` and ``out_dir/images/`` and return ``out_dir``.

    One row per image of the phantom CheXpert population (frontal and lateral views): ``label``
    is pleural effusion (an uncertain report counted positive). ``with_patient``: the CSV also
    has ``patient``, ``study`` and ``view``; without, only ``path,label``. ``photometric``
    applies to DICOM: ``MONOCHROME2``, ``MONOCHROME1`` or ``mixed`` (alternating)."""
    _check(image_format, photometric)
    pop, hw, out = make_population(population), as_hw(image_size), Path(out_dir)
    params = _params("labels", pop, n_patients=int(n_patients), image_size=list(hw),
                     seed=int(seed), image_format=image_format, photometric=photometric,
                     with_patient=bool(with_patient))
    sidecar = out / "phantom_labels.json"
    if not _fresh(out, sidecar, params):
        return out
    (out / "images").mkdir(exist_ok=True)
    header = ["path", "label"] + (["patient", "study", "view"] if with_patient else [])
    rows = []
    for i, r in enumerate(sample_chexpert_records(n_patients, seed, "train", pop)):
        name = f"p{r['patient']:05d}_s{r['study']}_v{r['view_index']}{_SUFFIX[image_format]}"
        img = _render(r, hw, pop, view=r["view"].lower())
        _save(out / "images" / name, img, image_format, _photometric(photometric, i),
              f"P{r['patient']:05d}", (seed, r["patient"], r["study"], r["view_index"]))
        label = int(r["labels"].get("Pleural Effusion") in (1.0, -1.0))
        extra = [f"P{r['patient']:05d}", f"s{r['study']}", r["view"]] if with_patient else []
        rows.append([f"images/{name}", label] + extra)
    with open(out / "labels.csv", "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(header)
        wr.writerows(rows)
    _finish(sidecar, params)
    return out
