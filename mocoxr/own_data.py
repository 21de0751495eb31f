"""What the page "Your own data" shows: an example folder of each format (written by the
phantom in that exact format), its files, the one command that reads it, and the manifest it
becomes (paths shown relative to the folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from mocoxr import phantom
from mocoxr.data.formats import FORMAT_NAMES, detect_format, prepare_dataset

COMMAND = "python -m mocoxr.book run --profile quick {flag} {folder}"
FLAGS = {"chexpert": "--data-dir", "shenzhen": "--transfer-dir"}


def example_folders(root: str | os.PathLike, n_patients: int = 30, image_size: int = 64,
                    seed: int = 0) -> dict[str, tuple[str, Path]]:
    """``{example name: (role, folder)}``: NIH (nested images), Montgomery (16-bit PNGs) and a
    labels CSV over DICOM (MONOCHROME1 and MONOCHROME2), written under ``root``."""
    root = Path(root)
    makers: dict[str, tuple[str, Callable[[], Path]]] = {
        "NIH ChestX-ray14": ("chexpert", lambda: phantom.generate_nih_tree(
            root / "nih", n_patients=n_patients, image_size=image_size, seed=seed)),
        "Montgomery": ("shenzhen", lambda: phantom.generate_montgomery_tree(
            root / "montgomery", n_images=max(n_patients, 20), image_size=image_size, seed=seed)),
        "labels CSV (DICOM)": ("chexpert", lambda: phantom.generate_labels_tree(
            root / "hospital", n_patients=n_patients, image_size=image_size, seed=seed,
            image_format="dicom", photometric="mixed")),
    }
    return {name: (role, make()) for name, (role, make) in makers.items()}


def folder_listing(folder: str | os.PathLike, per_dir: int = 3) -> str:
    """A short ``tree``-like text of ``folder``: each subfolder's first ``per_dir`` files and
    how many more there are (the phantom's own sidecars left out)."""
    folder = Path(folder)
    lines = [f"{folder.name}/"]
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        depth = len(Path(dirpath).relative_to(folder).parts)
        if depth:
            lines.append("    " * depth + Path(dirpath).name + "/")
        files = sorted(f for f in filenames if not f.startswith(("phantom", ".")))
        pad = "    " * (depth + 1)
        lines += [pad + f for f in files[:per_dir]]
        if len(files) > per_dir:
            lines.append(f"{pad}... ({len(files) - per_dir} more)")
    return "\n".join(lines)


def command(role: str, folder_name: str = "D") -> str:
    """The one command that reads a folder of that role."""
    return COMMAND.format(flag=FLAGS[role], folder=folder_name)


def manifest_preview(role: str, folder: str | os.PathLike, out_dir: str | os.PathLike,
                     options: dict[str, Any] | None = None, seed: int = 0,
                     rows: int = 5) -> tuple[str, pd.DataFrame]:
    """(detected format name, the first ``rows`` of the prepared manifest) with ``path``
    relative to ``folder``, as :func:`mocoxr.data.prepare_dataset` writes it."""
    folder = Path(folder).resolve()
    fmt = FORMAT_NAMES[detect_format(folder, role)]
    m = prepare_dataset(role, folder, out_dir, options, seed=seed).manifest.head(rows).copy()
    m["path"] = [Path(p).relative_to(folder).as_posix() for p in m["path"]]
    return fmt, m
