"""Tests of mocoxr.data.montgomery and prepare_montgomery: names, 8- and 16-bit PNGs, the
Shenzhen split (65/15/20, stratified) and fractions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mocoxr import phantom
from mocoxr.data.cache import decode_image
from mocoxr.data.montgomery import read_montgomery
from mocoxr.data.prepare_formats import prepare_montgomery


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return phantom.generate_montgomery_tree(tmp_path_factory.mktemp("mc"), n_images=40,
                                            image_size=32)


def test_names_labels_and_16_bit_pngs(tree: Path):
    df = read_montgomery(tree)
    assert df["patient"].tolist() == [f"MCUCXR_{i:04d}" for i in range(1, 41)]
    assert df["label"].tolist() == [int(Path(p).stem[-1]) for p in df["path"]]
    assert 0 < df["label"].sum() < 40
    with Image.open(df["path"][0]) as im:
        assert im.mode.startswith("I") and im.size == (32, round(32 * 4892 / 4020))
        a = np.asarray(im)
    assert a.max() <= 4095 and a.max() > 255  # 12 bits of gray in a 16-bit PNG


def test_12_bit_png_decodes_like_its_8_bit_source(tmp_path: Path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(img8, "L").save(tmp_path / "MCUCXR_0001_0.png")
    Image.fromarray(phantom.formats.to_12_bits(img8, rng)).save(tmp_path / "MCUCXR_0002_1.png")
    a = decode_image(tmp_path / "MCUCXR_0001_0.png", 40).astype(int)
    b = decode_image(tmp_path / "MCUCXR_0002_1.png", 40).astype(int)
    assert np.abs(a - b).max() <= 1
    df = read_montgomery(tmp_path)  # 8-bit and 16-bit side by side
    assert df["label"].tolist() == [0, 1]


def test_layouts_odd_names_and_errors(tmp_path: Path, tree: Path):
    nested = tmp_path / "MontgomerySet" / "CXR_png"
    nested.mkdir(parents=True)
    for p in sorted((tree / "CXR_png").iterdir())[:4]:
        (nested / p.name).write_bytes(p.read_bytes())
    (nested / "MCUCXR_0001_0_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(read_montgomery(tmp_path)) == 4
    assert any("MCUCXR_0001_0_mask.png" in str(x.message) for x in w)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no PNGs named MCUCXR_NNNN_L.png"):
        read_montgomery(tmp_path / "empty")


def test_prepare_uses_shenzhens_split_and_fractions(tree: Path, tmp_path: Path):
    prep = prepare_montgomery(tree, tmp_path)
    m = prep.manifest
    counts = m["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (26, 6, 8)
    for s in ("train", "val", "test"):
        assert set(m.loc[m.split == s, "label"]) == {0, 1}
    assert sorted(prep.subsets["label_fraction"].unique()) == [0.0625, 0.25, 1.0]
    assert (tmp_path / "montgomery.json").is_file()
