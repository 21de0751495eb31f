"""Tests of mocoxr.data.cache: decoding, the memmap cache (reuse/rebuild/atomicity), image stats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mocoxr.data import cache
from mocoxr.data.cache import decode_image, image_stats, load_image_cache


def save(path: Path, array: np.ndarray, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return str(path)


def gradient(h: int, w: int) -> np.ndarray:
    return (np.linspace(0, 255, h)[:, None] * np.ones((1, w))).astype(np.uint8)


# ----------------------------------------------------------------------------- decode_image


def test_decode_resizes_shorter_side_then_centre_crops(tmp_path: Path):
    wide = np.zeros((50, 100), np.uint8)
    wide[:, 25:75] = 128
    wide[:, 75:] = 255
    out = decode_image(save(tmp_path / "wide.png", wide), 10)
    assert out.shape == (10, 10) and out.dtype == np.uint8
    assert (out[:, 1:-1] == 128).all()  # side bands cropped away (edges blend, as in torchvision)
    assert (out[:, 0] > 100).all() and (out[:, -1] < 160).all()
    tall = decode_image(save(tmp_path / "tall.png", gradient(390, 320)), 32)
    assert tall.shape == (32, 32)
    assert tall[0].mean() < tall[-1].mean()  # top stays on top
    # matches "resize shorter side, then centre crop" done in two steps
    im = Image.open(tmp_path / "tall.png")
    two = np.asarray(im.resize((32, round(390 * 32 / 320)), Image.Resampling.BILINEAR))
    top = (two.shape[0] - 32) // 2
    assert np.abs(two[top:top + 32].astype(int) - tall).max() <= 6


def test_decode_equal_rgb_is_gray_and_colour_is_luminance(tmp_path: Path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 36), dtype=np.uint8)
    as_l = decode_image(save(tmp_path / "l.png", gray), 16)
    as_rgb = decode_image(save(tmp_path / "rgb.png", np.stack([gray] * 3, -1)), 16)
    np.testing.assert_array_equal(as_rgb, as_l)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert (decode_image(save(tmp_path / "red.png", red), 8) == 76).all()  # 0.299 * 255
    rgba = np.concatenate([np.stack([gray] * 3, -1), np.full((40, 36, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(decode_image(save(tmp_path / "rgba.png", rgba), 16), as_l)
    jpg = decode_image(save(tmp_path / "rgb.jpg", np.stack([gray] * 3, -1), quality=95), 16)
    assert jpg.shape == (16, 16)


def test_decode_16bit_png_scaled(tmp_path: Path):
    a = np.full((12, 12), 65535, np.uint16)
    a[:6] = 257 * 100
    p = tmp_path / "16.png"
    Image.fromarray(a).save(p)
    out = decode_image(p, 12)
    assert out[0, 0] == 100 and out[-1, 0] == 255


def test_decode_large_jpeg_with_draft_close_to_full_decode(tmp_path: Path):
    rng = np.random.default_rng(0)
    big = gradient(1200, 1000).astype(int) + rng.integers(-10, 10, (1200, 1000))
    p = save(tmp_path / "big.jpg", np.clip(big, 0, 255).astype(np.uint8), quality=90)
    fast = decode_image(p, 64)
    with Image.open(p) as im:
        ref = cache._resize_crop(im.convert("L"), 64)
    assert np.abs(fast.astype(int) - ref).mean() < 2.0


def test_decode_errors_name_the_file(tmp_path: Path):
    body = (tmp_path / "ok.jpg")
    save(body, gradient(60, 50), quality=90)
    raw = body.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"trunc\.jpg: cannot decode image"):
        decode_image(tmp_path / "trunc.jpg", 16)
    save(tmp_path / "ok.png", gradient(60, 50))
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"trunc\.png: cannot decode image"):
        decode_image(tmp_path / "trunc.png", 16)
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    with pytest.raises(ValueError, match=r"junk\.png"):
        decode_image(tmp_path / "junk.png", 16)
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        decode_image(tmp_path / "gone.png", 16)
    with pytest.raises(ValueError, match="size"):
        decode_image(tmp_path / "ok.png", 0)


# ----------------------------------------------------------------------------- load_image_cache


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(1)
    return [save(tmp_path / "img" / f"{i}.jpg", rng.integers(0, 256, (30 + i, 26), dtype=np.uint8),
                 quality=90) for i in range(6)]


def test_cache_rows_align_and_is_read_only(images: list[str], tmp_path: Path):
    f = tmp_path / "c" / "x_16px.npy"
    arr = load_image_cache(images, 16, f)
    assert arr.shape == (6, 16, 16) and arr.dtype == np.uint8
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    for i, p in enumerate(images):
        np.testing.assert_array_equal(arr[i], decode_image(p, 16))
    side = json.loads((tmp_path / "c" / "x_16px.npy.json").read_text())
    assert side["size"] == 16 and side["n_images"] == 6
    assert sorted(os.listdir(tmp_path / "c")) == ["x_16px.npy", "x_16px.npy.json"]  # no tmp left


def test_cache_reused_without_decoding(images: list[str], tmp_path: Path, monkeypatch):
    f = tmp_path / "x.npy"
    first = np.array(load_image_cache(images, 16, f))
    stamp = f.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "decode_image", boom)
    again = load_image_cache(images, 16, f)
    np.testing.assert_array_equal(again, first)
    assert f.stat().st_mtime_ns == stamp


def test_cache_rebuilds_when_sources_change(images: list[str], tmp_path: Path):
    f = tmp_path / "x.npy"
    first = np.array(load_image_cache(images, 16, f))
    # a changed image file (new content, new mtime)
    save(Path(images[2]), np.full((30, 26), 200, np.uint8), quality=95)
    st = os.stat(images[2])
    os.utime(images[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = np.array(load_image_cache(images, 16, f))
    assert np.abs(second[2].astype(int) - 200).max() <= 3
    np.testing.assert_array_equal(second[[0, 1, 3, 4, 5]], first[[0, 1, 3, 4, 5]])
    # another order of the paths, another size
    rev = load_image_cache(images[::-1], 16, f)
    np.testing.assert_array_equal(rev[::-1], second)
    assert load_image_cache(images, 8, f).shape == (6, 8, 8)
    # a corrupt sidecar just rebuilds
    (tmp_path / "x.npy.json").write_text("{not json")
    assert load_image_cache(images, 8, f).shape == (6, 8, 8)


def test_cache_bad_image_errors_and_leaves_nothing(images: list[str], tmp_path: Path):
    raw = Path(images[3]).read_bytes()
    Path(images[3]).write_bytes(raw[: len(raw) // 3])
    out = tmp_path / "c"
    with pytest.raises(ValueError, match=r"3\.jpg: cannot decode image"):
        load_image_cache(images, 16, out / "x.npy")
    assert os.listdir(out) == []
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        load_image_cache([*images, str(tmp_path / "missing.jpg")], 16, out / "x.npy")
    with pytest.raises(ValueError, match="no image paths"):
        load_image_cache([], 16, out / "x.npy")


def test_cache_workers_match_serial(images: list[str], tmp_path: Path):
    serial = load_image_cache(images, 16, tmp_path / "a.npy")
    parallel = load_image_cache(images, 16, tmp_path / "b.npy", workers=2)
    np.testing.assert_array_equal(serial, parallel)


def test_real_shenzhen_pngs_through_cache(shared_data: Path, tmp_path: Path):
    folder = shared_data / "shenzhen" / "CXR_png"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    paths = sorted(str(p) for p in folder.glob("*.png"))
    assert len(paths) == 18
    sizes = {Image.open(p).size for p in paths}
    assert (256, 256) in sizes and any(min(s) > 700 for s in sizes)
    arr = load_image_cache(paths, 64, tmp_path / "shenzhen_64px.npy")
    assert arr.shape == (18, 64, 64)
    assert (arr.reshape(18, -1).std(axis=1) > 20).all()  # real content, not blank
    mean, std = image_stats(arr)
    assert 0.2 < mean < 0.8 and 0.1 < std < 0.4
    with Image.open(paths[0]) as im:
        assert im.mode == "L"
        w, h = im.size
        s = 64 / min(w, h)
        two = np.asarray(im.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR))
    top, left = (two.shape[0] - 64) // 2, (two.shape[1] - 64) // 2
    assert np.abs(two[top:top + 64, left:left + 64].astype(int) - arr[0]).mean() < 3


# ----------------------------------------------------------------------------- image_stats


def test_image_stats_known_values():
    imgs = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8), np.full((4, 4), 51, np.uint8)])
    mean, std = image_stats(imgs, rows=[0, 1])
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.5)
    mean, std = image_stats(imgs, rows=np.array([2]))
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    many = rng.integers(0, 256, (600, 8, 8), dtype=np.uint8)
    full = image_stats(many)
    ref = many.astype(float) / 255
    assert full == pytest.approx((ref.mean(), ref.std()), rel=1e-9)
    sampled = image_stats(many, max_images=100)
    assert sampled == pytest.approx(full, abs=0.02) and sampled != full
    with pytest.raises(ValueError, match="no rows"):
        image_stats(many, rows=[])
