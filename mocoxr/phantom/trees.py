"""Writing the on-disk trees: CheXpert-v1.0-small (CSVs, JPEGs, hidden truth) and Shenzhen
(``CXR_png``), rendered serially or in worker processes, reused when their JSON sidecar matches
and swapped in atomically (a folder not written by the phantom is never overwritten).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from mocoxr import store
from mocoxr.data import CHEXPERT_OBSERVATIONS
from mocoxr.phantom.population import PhantomPopulation, make_population
from mocoxr.phantom.records import (CHEXPERT_DIRNAME, VALID_FIRST_PATIENT, sample_chexpert_records,
                                    sample_shenzhen_records)
from mocoxr.phantom.render import FINDING_KEYS, as_hw, render_radiograph

GENERATOR_VERSION = 1  # bump when rendering or sampling changes, so cached trees are rebuilt
SIDECAR = "phantom.json"
CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_OBSERVATIONS


def _format_label(v: float | None) -> str:
    return "" if v is None else f"{float(v):.1f}"


def _write_chexpert_csv(path: Path, records: Sequence[dict]) -> None:
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(CHEXPERT_COLUMNS)
        for r in records:
            wr.writerow([r["path"], r["sex"], r["age"], r["view"], r["ap_pa"]]
                        + [_format_label(r["labels"][o]) for o in CHEXPERT_OBSERVATIONS])


def _write_truth_csv(path: Path, records: Sequence[dict]) -> None:
    """Hidden ground truth next to the CSVs (the readers ignore it): severities per image."""
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["Path", "projection", "supine", "icu"] + list(FINDING_KEYS))
        for r in records:
            wr.writerow([r["path"], r["projection"], int(r["supine"]), int(r.get("icu", False))]
                        + [f"{r['findings'].get(k, 0.0):.4f}" for k in FINDING_KEYS])


def _render_job(job: tuple) -> None:
    path, image_seed, findings, view, projection, supine, female, anatomy_seed, size, pop, fmt = job
    img = render_radiograph(np.random.default_rng(image_seed), size, findings, view=view,
                            projection=projection, supine=supine, female=female,
                            anatomy_seed=anatomy_seed, population=pop)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jpeg":
        Image.fromarray(img, "L").save(path, format="JPEG", quality=pop.jpeg_quality)
    elif fmt == "png_rgb":
        Image.fromarray(np.repeat(img[:, :, None], 3, axis=2), "RGB").save(path, format="PNG")
    else:
        Image.fromarray(img, "L").save(path, format="PNG")


def _run_jobs(jobs: list[tuple], workers: int | None, progress: bool, desc: str) -> None:
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    it: Iterable = jobs
    if n_workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        # spawn: safe after torch/OpenMP threads exist in the parent (fork is not)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as ex:
            it = ex.map(_render_job, jobs, chunksize=max(1, min(64, len(jobs) // (4 * n_workers))))
            if progress:
                it = _tqdm(it, len(jobs), desc)
            for _ in it:
                pass
        return
    if progress:
        it = _tqdm(jobs, len(jobs), desc)
    for job in it:
        _render_job(job)


def _tqdm(it: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc)


def _chexpert_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """An int is the width (the shorter side); height follows CheXpert-small's 390:320."""
    if isinstance(image_size, (int, np.integer)):
        return as_hw((int(round(int(image_size) * 390 / 320)), int(image_size)))
    return as_hw(image_size)


def _up_to_date(sidecar: Path, params: dict, required: Sequence[Path]) -> bool:
    """The tree's sidecar matches ``params`` and its folders and CSVs are all there."""
    return all(p.exists() for p in required) and store.sidecar_matches(sidecar, params)


def _replace_dir(tmp: Path, final: Path, ours: bool) -> None:
    """Move a freshly written ``tmp`` tree to ``final``, removing an older phantom tree there."""
    if final.exists():
        if not ours:
            shutil.rmtree(tmp.parent, ignore_errors=True)
            raise FileExistsError(f"{final} exists and was not written by mocoxr.phantom "
                                  f"(no sidecar); refusing to overwrite it")
        trash = final.with_name(final.name + f".old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def generate_chexpert_tree(out_dir: str | os.PathLike, n_patients: int = 1000,
                           image_size: int | Sequence[int] = 160, seed: int = 0,
                           n_valid_patients: int = 200,
                           population: PhantomPopulation | Mapping[str, Any] | None = None,
                           workers: int | None = 0, progress: bool = False) -> Path:
    """Write a synthetic CheXpert-v1.0-small tree under ``out_dir`` and return the CheXpert dir.

    Layout and CSVs follow the real release: ``train.csv`` (labeler-style 1.0 / 0.0 / -1.0 /
    blank labels, several studies per patient, some lateral views), ``valid.csv`` (patients from
    64541, one study each, clean 1.0 / 0.0 labels), ``train/patientNNNNN/studyN/viewN_frontal.jpg``
    and ``viewN_lateral.jpg``. ``image_size`` is (height, width) or an int width (height =
    width * 390 / 320, like CheXpert-small's portrait images). Also writes ``phantom_truth.csv``
    (true finding severities per image, for analysis; readers ignore it) and ``phantom.json``
    (the parameters). When ``phantom.json`` matches the requested parameters the existing tree is
    reused; otherwise a phantom tree is rebuilt (a non-phantom folder is never overwritten).
    ``population``: a :class:`PhantomPopulation` or a dict of overrides of the defaults.
    ``workers``: processes for rendering (0 or 1: serial; None: all cores).
    """
    if n_patients < 1 or n_valid_patients < 1:
        raise ValueError(f"n_patients and n_valid_patients must be >= 1, got {n_patients}, "
                         f"{n_valid_patients}")
    if n_valid_patients > 99_999 - VALID_FIRST_PATIENT or n_patients >= VALID_FIRST_PATIENT:
        raise ValueError(f"n_patients must be < {VALID_FIRST_PATIENT} (train ids stop before the "
                         f"valid ids), got {n_patients}")
    hw = _chexpert_hw(image_size)
    population = make_population(population)
    out = Path(out_dir)
    final = out / CHEXPERT_DIRNAME
    params = {"generator": "mocoxr.phantom", "kind": "chexpert", "version": GENERATOR_VERSION,
              "n_patients": int(n_patients), "n_valid_patients": int(n_valid_patients),
              "image_size": list(hw), "seed": int(seed), "population": population.to_dict()}
    sidecar = final / SIDECAR
    if _up_to_date(sidecar, params, [final / "train.csv", final / "valid.csv"]):
        return final
    ours = sidecar.is_file()
    if final.exists() and not ours:
        raise FileExistsError(f"{final} exists and was not written by mocoxr.phantom (no "
                              f"{SIDECAR}); refusing to overwrite it. Use another out_dir.")
    out.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".phantom-chexpert-", dir=out))
    try:
        tmp = tmp_root / CHEXPERT_DIRNAME
        tmp.mkdir()
        train = sample_chexpert_records(n_patients, seed, "train", population)
        valid = sample_chexpert_records(n_valid_patients, seed, "valid", population)
        jobs = [(str(tmp_root / r["path"]), r["image_seed"], r["findings"], r["view"].lower(),
                 r["projection"], r["supine"], r["female"], r["anatomy_seed"], hw, population, "jpeg")
                for r in train + valid]
        _run_jobs(jobs, workers, progress, "phantom CheXpert")
        _write_chexpert_csv(tmp / "train.csv", train)
        _write_chexpert_csv(tmp / "valid.csv", valid)
        _write_truth_csv(tmp / "phantom_truth.csv", train + valid)
        (tmp / SIDECAR).write_text(json.dumps(params, indent=1, sort_keys=True))
        _replace_dir(tmp, final, ours)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def generate_shenzhen_tree(out_dir: str | os.PathLike, n_images: int = 662,
                           image_size: int | Sequence[int] = 256, seed: int = 0,
                           population: PhantomPopulation | Mapping[str, Any] | None = None,
                           workers: int | None = 0, progress: bool = False) -> Path:
    """Write ``out_dir/CXR_png/CHNCXR_NNNN_L.png`` (L = 1 tuberculosis) and return ``out_dir``.

    About half the images show TB (upper-zone nodules and infiltrates, cavities, fibrotic
    strands; graded), the rest are normal screening films; 8-bit gray PNGs, a fraction
    stored as 8-bit RGB with equal channels like the real set. ``image_size``: int (square) or
    (height, width). Reuses the tree when ``out_dir/phantom_shenzhen.json`` matches.
    """
    hw = as_hw(image_size)
    population = make_population(population)
    out = Path(out_dir)
    final = out / "CXR_png"
    sidecar = out / "phantom_shenzhen.json"
    params = {"generator": "mocoxr.phantom", "kind": "shenzhen", "version": GENERATOR_VERSION,
              "n_images": int(n_images), "image_size": list(hw), "seed": int(seed),
              "population": population.to_dict()}
    if _up_to_date(sidecar, params, [final]):
        return out
    ours = sidecar.is_file()
    if final.exists() and not ours:
        raise FileExistsError(f"{final} exists and was not written by mocoxr.phantom (no "
                              f"{sidecar.name}); refusing to overwrite it. Use another out_dir.")
    records = sample_shenzhen_records(n_images, seed, population)
    out.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".phantom-shenzhen-", dir=out))
    try:
        tmp = tmp_root / "CXR_png"
        tmp.mkdir()
        jobs = [(str(tmp / r["name"]), r["image_seed"], r["findings"], "frontal", "PA", False,
                 r["female"], r["anatomy_seed"], hw, population, "png_rgb" if r["rgb"] else "png")
                for r in records]
        _run_jobs(jobs, workers, progress, "phantom Shenzhen")
        if sidecar.exists():
            sidecar.unlink()
        _replace_dir(tmp, final, ours)
        store.atomic_write_text(sidecar, json.dumps(params, indent=1, sort_keys=True))
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return out
