"""Tests of the on-disk trees (mocoxr.phantom.trees): byte-identical output against recorded
hashes, the real CheXpert and Shenzhen layouts and CSV formats, reuse and rebuild through the
sidecar, never overwriting real data, and reading them back through mocoxr.data.

The golden hashes pin the generator: a change there is a change of the generated data (same random
draws in the same order, same float operations); bump ``GENERATOR_VERSION`` and record new hashes
on purpose."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mocoxr import data
from mocoxr import phantom as ph
from mocoxr.data import CHEXPERT_OBSERVATIONS
from mocoxr.phantom.records import VALID_FIRST_PATIENT
from mocoxr.phantom.trees import CHEXPERT_COLUMNS

SIZE = (40, 32)  # (height, width): tiny, portrait like CheXpert-small
PATH_RE = re.compile(r"^CheXpert-v1\.0-small/(train|valid)/patient(\d{5})/study(\d+)/view(\d+)_(frontal|lateral)\.jpg$")
LABEL_VALUES = {"1.0", "0.0", "-1.0", ""}
# Recorded at commit 501e7de (mocoxr/phantom.py as one 1,642-line module), numpy 2.4.6,
# scipy 1.17.1, Pillow 13.0.0 (JPEG/PNG encoders).
CHEXPERT_TREE_SHA256 = "51ae07143e40834ec90c8f627de555956c9ea8b12958f40b57e587bf992d93cb"
SHENZHEN_TREE_SHA256 = "b9062eb727f83710ede37f8e9d354290228de8bf7053f4a9110098d957ad8839"


def tree_sha256(root: Path) -> str:
    """SHA-256 over (relative path, bytes) of every file under ``root``, in sorted path order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix().encode()
        blob = p.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(blob).to_bytes(8, "little") + blob)
    return h.hexdigest()


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    return ph.generate_chexpert_tree(out, n_patients=14, image_size=SIZE, seed=0, n_valid_patients=5)


def test_chexpert_tree_bytes_are_unchanged(tmp_path):
    """12 train patients (several studies, AP/PA, supine, lateral views) and 6 valid patients."""
    ph.generate_chexpert_tree(tmp_path, n_patients=12, n_valid_patients=6, image_size=48, seed=0)
    assert tree_sha256(tmp_path) == CHEXPERT_TREE_SHA256


def test_shenzhen_tree_bytes_are_unchanged(tmp_path):
    """Both classes, TB findings (two with a pleurisy), gray and RGB PNGs, rendered by two
    worker processes."""
    ph.generate_shenzhen_tree(tmp_path, n_images=10, image_size=(52, 48), seed=0, workers=2,
                              population={"shenzhen_rgb_fraction": 0.5, "tb_effusion_prob": 0.5})
    assert tree_sha256(tmp_path) == SHENZHEN_TREE_SHA256


def test_chexpert_csv_format(tree, shared_data_optional):
    expected = list(CHEXPERT_COLUMNS)
    if shared_data_optional is not None:
        with open(shared_data_optional / "chexpert/CheXpert-v1.0-small/valid.csv", newline="") as fh:
            expected = next(csv.reader(fh))
        assert expected == list(CHEXPERT_COLUMNS)
    for name in ("train.csv", "valid.csv"):
        header, rows = _read_csv(tree / name)
        assert header == expected
        assert rows
        for r in rows:
            assert PATH_RE.match(r["Path"]), r["Path"]
            assert r["Sex"] in ("Male", "Female") and r["Age"].isdigit()
            assert all(r[o] in LABEL_VALUES for o in CHEXPERT_OBSERVATIONS), r
            if r["Frontal/Lateral"] == "Frontal":
                assert r["AP/PA"] in ("AP", "PA")
            else:
                assert r["Frontal/Lateral"] == "Lateral" and r["AP/PA"] == ""
    _, valid = _read_csv(tree / "valid.csv")
    assert all(r[o] in ("1.0", "0.0") for r in valid for o in CHEXPERT_OBSERVATIONS)
    _, train = _read_csv(tree / "train.csv")
    used = {r[o] for r in train for o in CHEXPERT_OBSERVATIONS}
    assert used == LABEL_VALUES  # all four kinds occur


def test_chexpert_layout(tree):
    _, train = _read_csv(tree / "train.csv")
    _, valid = _read_csv(tree / "valid.csv")
    parsed = {split: [PATH_RE.match(r["Path"]) for r in rows]
              for split, rows in (("train", train), ("valid", valid))}
    train_pat = {int(m.group(2)) for m in parsed["train"]}
    valid_pat = {int(m.group(2)) for m in parsed["valid"]}
    assert train_pat == set(range(1, 15))
    assert min(valid_pat) == VALID_FIRST_PATIENT and not train_pat & valid_pat
    assert all(m.group(1) == "train" for m in parsed["train"])
    assert all(m.group(1) == "valid" for m in parsed["valid"])
    studies: dict[int, set] = {}
    for m in parsed["train"]:
        studies.setdefault(int(m.group(2)), set()).add(int(m.group(3)))
    assert max(len(s) for s in studies.values()) >= 2  # several studies per patient
    assert all(s == set(range(1, len(s) + 1)) for s in studies.values())
    assert any(m.group(5) == "lateral" for m in parsed["train"] + parsed["valid"])
    for r in train + valid:
        p = tree.parent / r["Path"]
        assert p.is_file(), p
    im = Image.open(tree.parent / train[0]["Path"])
    assert im.format == "JPEG" and im.mode == "L" and im.size == (SIZE[1], SIZE[0])
    truth = tree / "phantom_truth.csv"
    assert truth.is_file() and len(_read_csv(truth)[1]) == len(train) + len(valid)


def test_chexpert_tree_is_reused_and_rebuilt(tree, tmp_path):
    csv_mtime = (tree / "train.csv").stat().st_mtime_ns
    again = ph.generate_chexpert_tree(tree.parent, n_patients=14, image_size=SIZE, seed=0, n_valid_patients=5)
    assert again == tree and (tree / "train.csv").stat().st_mtime_ns == csv_mtime
    # deterministic: the same parameters elsewhere give identical bytes; another seed does not
    other = ph.generate_chexpert_tree(tmp_path / "a", n_patients=14, image_size=SIZE, seed=0,
                                      n_valid_patients=5)
    assert (other / "train.csv").read_bytes() == (tree / "train.csv").read_bytes()
    first = _read_csv(tree / "train.csv")[1][0]["Path"]
    assert (other.parent / first).read_bytes() == (tree.parent / first).read_bytes()
    # fewer patients: the common images are the same (independent of generation order/count)
    fewer = ph.generate_chexpert_tree(tmp_path / "b", n_patients=3, image_size=SIZE, seed=0,
                                      n_valid_patients=2)
    assert (fewer.parent / first).read_bytes() == (tree.parent / first).read_bytes()
    # new parameters rebuild the phantom tree in place
    before = (fewer / "train.csv").read_bytes()
    rebuilt = ph.generate_chexpert_tree(tmp_path / "b", n_patients=3, image_size=SIZE, seed=1,
                                        n_valid_patients=2)
    assert rebuilt == fewer and json.loads((rebuilt / "phantom.json").read_text())["seed"] == 1
    assert (rebuilt / "train.csv").read_bytes() != before
    assert not list((tmp_path / "b").glob(".phantom-*")) and not list((tmp_path / "b").glob("*.old-*"))


def test_chexpert_tree_never_overwrites_real_data(tmp_path):
    real = tmp_path / "CheXpert-v1.0-small"
    real.mkdir()
    (real / "train.csv").write_text("Path\n")
    with pytest.raises(FileExistsError, match="not written by mocoxr.phantom"):
        ph.generate_chexpert_tree(tmp_path, n_patients=2, image_size=SIZE, n_valid_patients=1)
    assert (real / "train.csv").read_text() == "Path\n"


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        ph.generate_chexpert_tree(tmp_path, n_patients=0, image_size=SIZE)
    with pytest.raises(ValueError, match="n_images"):
        ph.generate_shenzhen_tree(tmp_path, n_images=1, image_size=32)


def test_shenzhen_tree(tmp_path):
    pop = dataclasses.replace(ph.DEFAULT_POPULATION, shenzhen_rgb_fraction=0.5)
    folder = ph.generate_shenzhen_tree(tmp_path, n_images=8, image_size=32, seed=0, population=pop)
    assert folder == tmp_path
    names = sorted(p.name for p in (tmp_path / "CXR_png").iterdir())
    assert names == [f"CHNCXR_{i:04d}_{int(i > 4)}.png" for i in range(1, 9)]
    modes = set()
    for n in names:
        im = Image.open(tmp_path / "CXR_png" / n)
        assert im.format == "PNG" and im.size == (32, 32)
        modes.add(im.mode)
        a = np.asarray(im)
        if im.mode == "RGB":
            assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
        else:
            assert im.mode == "L"
    assert modes == {"L", "RGB"}
    stamp = (tmp_path / "CXR_png" / names[0]).stat().st_mtime_ns
    ph.generate_shenzhen_tree(tmp_path, n_images=8, image_size=32, seed=0, population=pop)
    assert (tmp_path / "CXR_png" / names[0]).stat().st_mtime_ns == stamp


def test_trees_read_through_mocoxr_data(tree, tmp_path):
    _, train = _read_csv(tree / "train.csv")
    df = data.read_chexpert_csv(tree / "train.csv", uncertain_policy="ones")
    frontal = [r for r in train if r["Frontal/Lateral"] == "Frontal"]
    assert len(df) == len(frontal)
    expected = [1 if r["Pleural Effusion"] in ("1.0", "-1.0") else 0 for r in frontal]
    assert df["label"].tolist() == expected
    assert all(Path(p).is_file() for p in df["path"])
    valid = data.read_chexpert_csv(tree / "valid.csv")
    assert not set(valid["patient"]) & set(df["patient"])
    ph.generate_shenzhen_tree(tmp_path, n_images=6, image_size=24)
    sz = data.read_shenzhen(tmp_path)
    assert sz["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert sz["patient"].tolist()[0] == "CHNCXR_0001"
