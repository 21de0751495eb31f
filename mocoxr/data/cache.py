"""Decoded-image cache: decode every image once into a uint8 ``.npy`` memmap.

Row ``i`` of a cache is ``paths[i]``, so a cache built from a manifest's ``path`` column is
row-aligned with the manifest. Images are gray: 8-bit RGB with equal channels is read as gray,
other colour images as luminance (ITU-R 601-2), 16-bit gray is scaled by 1/257 (by 255/4095 when
no value exceeds 4095: 12-bit data in a 16-bit PNG, as in the Montgomery set), DICOM goes
through :func:`mocoxr.data.dicom.read_dicom` (VOI, MONOCHROME1 inverted). Resizing
follows the paper's torchvision pipeline: shorter side to ``size`` (bilinear, antialiased),
then a centre crop to ``size x size``.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mocoxr import store
from mocoxr.data.dicom import is_dicom, read_dicom

_FORMAT_VERSION = 1
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_gray(im: Image.Image) -> Image.Image:
    """A mode-``L`` copy of ``im`` (equal-channel RGB -> that channel, else luminance)."""
    if im.mode == "L":
        return im
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im, dtype=np.float64)
        a = a * (255.0 / 4095.0) if a.max() <= 4095 else a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode == "LA":
        return im.getchannel("L")
    if im.mode != "RGB":
        im = im.convert("RGB")  # P, RGBA, CMYK, 1, ...: to RGB first
    a = np.asarray(im)
    if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        return Image.fromarray(np.ascontiguousarray(a[..., 0]), "L")
    return im.convert("L")


def _resize_crop(im: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` then centre crop, done as one resize of the centre square."""
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    out = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image to a gray uint8 ``(size, size)`` array (shorter side, centre crop).

    DICOM files (``.dcm`` or the ``DICM`` magic) are read with pydicom (module docstring).
    Raises FileNotFoundError for a missing file and ValueError naming the file when it cannot
    be decoded (corrupt, truncated, not an image). JPEGs are decoded at reduced scale
    (PIL ``draft``) when they are at least twice ``size``.
    """
    if int(size) < 1:
        raise ValueError(f"size={size}; expected a positive image size")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file does not exist")
    if is_dicom(path):
        return _resize_crop(Image.fromarray(read_dicom(path), "L"), int(size))
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("L", (size, size))  # keeps both sides >= size
            im.load()
            if min(im.size) < 1:
                raise ValueError(f"empty image {im.size}")
            return _resize_crop(_to_gray(im), int(size))
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def _sidecar_path(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.name + ".json")


def files_fingerprint(paths: Sequence[str]) -> str:
    """SHA-256 over (path, size, mtime) of each file, in order; a missing file is an error."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: image file does not exist (image cache)") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(paths: Sequence[str], size: int) -> dict:
    """What a cache depends on: image size and a hash of (path, file size, mtime) per row."""
    return {
        "format_version": _FORMAT_VERSION,
        "size": int(size),
        "n_images": len(paths),
        "sources_sha256": files_fingerprint(paths),
    }


def _decode_all(paths: Sequence[str], size: int, workers: int) -> Iterator[np.ndarray]:
    if workers <= 0:
        for p in paths:
            yield decode_image(p, size)
        return
    chunk = max(1, min(64, len(paths) // (4 * workers)))
    # fork where available: spawn/forkserver re-import __main__, which breaks unguarded scripts
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(partial(decode_image, size=size), paths, chunksize=chunk)


def _open(cache_file: Path, key: dict) -> np.ndarray | None:
    """The cache as a read-only memmap, or None when its shape or dtype is not the key's."""
    images = np.load(cache_file, mmap_mode="r")
    expected = (key["n_images"], key["size"], key["size"])
    return images if images.shape == expected and images.dtype == np.uint8 else None


def _build(paths: Sequence[str], size: int, cache_file: Path, workers: int) -> None:
    """Decode every image into a temporary ``.npy`` moved onto ``cache_file`` when complete."""
    with store.atomic_path(cache_file) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(paths), size, size))
        bar = tqdm(_decode_all(paths, size, workers), total=len(paths), unit="img",
                   desc=f"decoding {cache_file.name}", mininterval=1.0)
        for i, img in enumerate(bar):
            out[i] = img
        out.flush()
        del out


def load_image_cache(
    paths: Sequence[str], size: int, cache_file: str | os.PathLike, workers: int = 0
) -> np.ndarray:
    """Read-only memmap ``(N, size, size)`` uint8 of the decoded ``paths`` (row i = paths[i]).

    Reuses ``cache_file`` when its JSON sidecar (``<cache_file>.json``) matches
    :func:`cache_key`; otherwise decodes everything (``workers`` > 0: that many processes)
    into a temporary file and moves it into place atomically, sidecar last.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError(f"{cache_file}: no image paths given")
    if int(size) < 1:
        raise ValueError(f"size={size}; expected a positive image size")
    size = int(size)
    cache_file = Path(cache_file).expanduser()
    key = cache_key(paths, size)
    return store.reuse_or_build(
        _sidecar_path(cache_file), key, [cache_file],
        load=lambda: _open(cache_file, key),
        build=lambda: _build(paths, size, cache_file, workers),
    )


def image_stats(
    images: np.ndarray, rows: np.ndarray | Sequence[int] | None = None, max_images: int = 2000
) -> tuple[float, float]:
    """Mean and std of the pixels in [0, 1] units, over ``rows`` (all when None).

    More than ``max_images`` rows: an evenly spaced (deterministic) sample of them is used.
    """
    idx = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
    if len(idx) == 0:
        raise ValueError("image_stats: no rows given")
    if max_images and len(idx) > max_images:
        idx = idx[np.linspace(0, len(idx) - 1, int(max_images)).round().astype(np.int64)]
    total = total_sq = 0.0
    count = 0
    for chunk in np.array_split(np.sort(idx), math.ceil(len(idx) / 256)):
        x = np.asarray(images[chunk], dtype=np.float64)
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean / 255.0, math.sqrt(var) / 255.0
