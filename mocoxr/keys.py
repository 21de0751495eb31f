"""Content fingerprints for cache keys: data folders, decoded images, labels, package code.

A cached result (features, fine-tuned predictions, a pretraining folder, an executed notebook)
is keyed by what it was computed from. These fingerprints are content-based and never hold an
absolute path, so moving a run folder or a data folder keeps every key, while changed images,
labels or code change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mocoxr import store

PACKAGE_DIR = Path(__file__).resolve().parent
# the modules whose code decides what a trained model computes (cache keys of models/features)
TRAINING_CODE = ("augment", "checkpoint", "distributed", "finetune", "models", "moco", "pretrain",
                 "probe", "runtime")
_SMALL_FILE = 1 << 20  # files up to this size (CSVs, JSON) are hashed whole
# the notebook parameters that describe one dataset; a notebook whose parameters all belong to
# these groups (or are DATA_STEP_COMMON) only prepares data, and later steps see it per dataset
DATASETS = {"chexpert": ("data_dir", "phantom", "chexpert"),
            "shenzhen": ("shenzhen_dir", "phantom_shenzhen", "shenzhen")}
DATA_STEP_COMMON = ("seed", "image_size")
DATA_FOLDERS = ("data_dir", "shenzhen_dir")


def sha(obj: Any) -> str:
    """SHA-256 of ``obj``'s canonical JSON (bytes are hashed as they are)."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()


def file_sha1(path: str | Path, chunk: int = 1 << 22, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes (``algorithm``: any hashlib name; SHA-1 by default)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes, memoised in a ``.<name>.digest`` sidecar on (size, mtime):
    a 20 GB image cache is hashed once, not by every notebook that loads it."""
    path = Path(path)
    st = path.stat()
    memo = path.with_name(f".{path.name}.digest")
    stat = [st.st_size, st.st_mtime_ns]
    try:
        saved = json.loads(memo.read_text())
        if saved["stat"] == stat:
            return str(saved["sha1"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = file_sha1(path)
    try:
        store.atomic_write_text(memo, json.dumps({"stat": stat, "sha1": digest}))
    except (OSError, store.StorageError):
        pass  # read-only folder: no memo, same digest
    return digest


def array_digest(a: np.ndarray) -> str:
    """Content hash of an array: of its backing file for a file memmap (memoised), else of its
    bytes, shape and dtype."""
    if isinstance(a, np.memmap) and getattr(a, "filename", None) and Path(a.filename).is_file():
        full = np.load(a.filename, mmap_mode="r")
        if full.shape == a.shape:
            return file_digest(a.filename)
    a = np.ascontiguousarray(a)
    return sha(f"{a.dtype}|{a.shape}".encode() + a.tobytes())


def labels_digest(*arrays: Iterable) -> str:
    """Hash of label / row arrays (as int64), in order."""
    h = hashlib.sha256()
    for arr in arrays:
        a = np.asarray(arr).astype(np.int64)
        h.update(f"{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """Content fingerprint of a data folder: every file's path relative to the folder and its
    size, and the bytes of the small files (label CSVs). Neither the folder's own location nor
    the files' times enter it, so a moved or copied folder keeps its fingerprint."""
    folder = Path(folder).expanduser().resolve()
    if folder.is_file():
        return file_sha1(folder)
    return listing_fingerprint(folder_listing(folder))


def folder_listing(folder: str | Path) -> dict[str, list]:
    """``{path relative to the folder: [size, SHA-1 of a small label file or None]}`` of every
    file of a data folder (hidden files left out), in a fixed order: what
    :func:`folder_fingerprint` hashes. An unreadable file (a broken link) raises OSError."""
    folder = Path(folder).expanduser().resolve()
    out: dict[str, list] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            size = p.stat().st_size
            small = size <= _SMALL_FILE and p.suffix in (".csv", ".gz", ".json", ".txt")
            out[p.relative_to(folder).as_posix()] = [size, file_sha1(p) if small else None]
    return out


def listing_fingerprint(listing: dict[str, list]) -> str:
    """The fingerprint of a :func:`folder_listing`."""
    h = hashlib.sha256()
    for rel, (size, digest) in listing.items():
        h.update(f"{rel}\0{size}\0".encode())
        if digest is not None:
            h.update(digest.encode())
    return h.hexdigest()


def code_digest(modules: Iterable[str] | None = None) -> str:
    """Hash of the named ``mocoxr`` modules' source (None: every file of the package but the
    profiles, mocoxr/book/ and notebook.py included)."""
    h = hashlib.sha256()
    if modules is None:
        files = [p for p in sorted(PACKAGE_DIR.rglob("*"))
                 if p.is_file() and p.suffix != ".pyc"
                 and p.relative_to(PACKAGE_DIR).parts[0] not in ("profiles", "__pycache__")]
    else:
        files = [PACKAGE_DIR / f"{m}.py" for m in sorted(set(modules))]
    for p in files:
        h.update(p.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _dataset_of(name: str) -> str | None:
    return next((g for g, names in DATASETS.items() if name in names), None)


def data_step_view(dep: dict[str, Any], run: dict[str, Any], ignore: tuple = ()) -> dict | None:
    """When the upstream step with parameters ``dep`` only prepares data and the step with
    parameters ``run`` declares some dataset's parameters: the part of ``dep`` that step reads
    (whole datasets it declares any parameter of, plus seed and image size); else None (the
    whole upstream key counts). So changing only the Shenzhen settings leaves
    the CheXpert steps up to date."""
    names = [k for k in dep if k not in tuple(ignore) + DATA_STEP_COMMON]
    if not names or any(_dataset_of(k) is None for k in names):
        return None
    wanted = {g for g, ns in DATASETS.items() if any(n in run for n in ns)}
    if not wanted:  # a step that names no dataset (reads them from upstream): sees it all
        return None
    return {k: v for k, v in dep.items() if k not in ignore and _dataset_of(k) in wanted | {None}}


def key_parameters(params: dict[str, Any], fingerprint=folder_fingerprint,
                   ignore: tuple = ()) -> dict[str, Any]:
    """Parameters as a key holds them: without ``ignore`` (the run folder), data folders by
    their content fingerprint (so moving one keeps the key)."""
    out = {k: v for k, v in params.items() if k not in ignore}
    for name in DATA_FOLDERS:
        if out.get(name):
            out[name] = {"fingerprint": fingerprint(str(out[name]))}
    return out
