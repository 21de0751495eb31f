"""Tests of the synthetic radiograph generator (mocoxr.phantom): determinism, real on-disk
formats, label proportions, and that the planted findings change the right part of the image."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mocoxr import phantom as ph

SIZE = (40, 32)  # (height, width): tiny, portrait like CheXpert-small
PATH_RE = re.compile(r"^CheXpert-v1\.0-small/(train|valid)/patient(\d{5})/study(\d+)/view(\d+)_(frontal|lateral)\.jpg$")
LABEL_VALUES = {"1.0", "0.0", "-1.0", ""}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Pixels in a box given in the renderer's normalised image coordinates."""
    h, w = img.shape
    s = min(h, w) / 2
    cols = slice(int((w - 1) / 2 + x0 * s), int((w - 1) / 2 + x1 * s) + 1)
    rows = slice(int((h - 1) / 2 + y0 * s), int((h - 1) / 2 + y1 * s) + 1)
    return img[rows, cols].astype(float)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    return ph.generate_chexpert_tree(out, n_patients=14, image_size=SIZE, seed=0, n_valid_patients=5)


# ----------------------------------------------------------------------------- renderer


def test_render_shape_dtype_and_determinism():
    f = {"effusion_right": 0.3, "support_devices": 0.5}
    a = ph.render_radiograph(np.random.default_rng(5), SIZE, f)
    b = ph.render_radiograph(np.random.default_rng(5), SIZE, f)
    c = ph.render_radiograph(np.random.default_rng(6), SIZE, f)
    assert a.dtype == np.uint8 and a.shape == SIZE
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 20, "a radiograph has contrast (black background, bright mediastinum)"
    assert ph.render_radiograph(7, 24).shape == (24, 24)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown finding"):
        ph.render_radiograph(0, SIZE, {"effusion": 0.5})
    with pytest.raises(ValueError, match="severity"):
        ph.render_radiograph(0, SIZE, {"edema": 1.5})
    with pytest.raises(ValueError, match="view"):
        ph.render_radiograph(0, SIZE, {}, view="oblique")
    with pytest.raises(ValueError, match="size"):
        ph.render_radiograph(0, (8, 8), {})


@pytest.mark.parametrize("side,x0,x1", [("right", -0.75, -0.35), ("left", 0.35, 0.75)])
def test_effusion_opacifies_the_lung_base_graded(side, x0, x1):
    """Same patient and exposure with and without fluid: the lower-lateral lung gets brighter,
    more so for a larger effusion, while the upper zone is left alone."""
    size = (96, 80)
    gains_small, gains_large, upper = [], [], []
    for seed in range(6):
        imgs = {sev: ph.render_radiograph(np.random.default_rng(seed), size,
                                          {f"effusion_{side}": sev} if sev else {})
                for sev in (0.0, 0.15, 0.6)}
        base = lambda im: _region(im, x0, x1, 0.15, 0.5).mean()  # noqa: E731
        top = lambda im: _region(im, x0, x1, -0.6, -0.3).mean()  # noqa: E731
        gains_small.append(base(imgs[0.15]) - base(imgs[0.0]))
        gains_large.append(base(imgs[0.6]) - base(imgs[0.0]))
        upper.append(abs(top(imgs[0.15]) - top(imgs[0.0])))
    assert min(gains_small) > 1.0, gains_small
    assert np.mean(gains_large) > np.mean(gains_small) + 5, (gains_large, gains_small)
    assert np.mean(upper) < 0.25 * np.mean(gains_small), (upper, gains_small)


def test_findings_do_not_change_the_patient():
    """Fixed sub-streams: adding a finding elsewhere leaves the rest of the image alone."""
    a = ph.render_radiograph(np.random.default_rng(11), (64, 64), {})
    b = ph.render_radiograph(np.random.default_rng(11), (64, 64), {"effusion_left": 0.4})
    right_half = (slice(None), slice(0, 24))  # patient's right, far from a left effusion
    assert np.abs(a[right_half].astype(int) - b[right_half].astype(int)).mean() < 1.0


def test_tb_lives_in_the_upper_zones():
    size = (96, 96)
    up, low = [], []
    for seed in range(4):
        a = ph.render_radiograph(np.random.default_rng(seed), size, {})
        b = ph.render_radiograph(np.random.default_rng(seed), size, {"tb": 0.8})
        d = np.abs(b.astype(float) - a.astype(float))
        up.append(_region(d, -0.7, 0.7, -0.75, -0.2).mean())
        low.append(_region(d, -0.7, 0.7, 0.2, 0.5).mean())
    assert np.mean(up) > 3 * np.mean(low) and np.mean(up) > 1.0, (up, low)


def test_lateral_view_is_not_a_frontal():
    """A frontal film has a bright mediastinum between two dark lungs at mid-chest; a lateral
    one has a single lung field there (the spine lies posteriorly, at one side)."""
    def mediastinal_contrast(im):
        centre = _region(im, -0.06, 0.06, -0.4, 0.0).mean()
        lungs = (_region(im, -0.55, -0.35, -0.4, 0.0).mean() + _region(im, 0.35, 0.55, -0.4, 0.0).mean()) / 2
        return centre - lungs
    fr = [mediastinal_contrast(ph.render_radiograph(s, (64, 52), {})) for s in range(4)]
    la = [mediastinal_contrast(ph.render_radiograph(s, (64, 52), {}, view="lateral")) for s in range(4)]
    assert min(fr) > 25 and max(la) < 15, (fr, la)
    lat = ph.render_radiograph(0, (64, 52), {}, view="lateral")
    assert not np.array_equal(lat, ph.render_radiograph(0, (64, 52), {}))


def test_renderer_survives_random_populations():
    recs = ph.sample_chexpert_records(60, seed=3)
    for r in recs:
        img = ph.render_radiograph(np.random.default_rng(r["image_seed"]), (24, 20), r["findings"],
                                   view=r["view"].lower(), projection=r["projection"],
                                   supine=r["supine"], female=r["female"],
                                   anatomy_seed=r["anatomy_seed"])
        assert img.shape == (24, 20) and img.dtype == np.uint8


# ----------------------------------------------------------------------------- population


def test_label_proportions_look_like_chexpert(shared_data_optional):
    recs = [r for r in ph.sample_chexpert_records(1500, seed=0) if r["view"] == "Frontal"]
    eff = np.array([np.nan if r["labels"]["Pleural Effusion"] is None else r["labels"]["Pleural Effusion"]
                    for r in recs])
    frac = {v: float(np.mean(eff == v)) for v in (1.0, 0.0, -1.0)}
    frac["blank"] = float(np.mean(np.isnan(eff)))
    assert 0.28 < frac[1.0] < 0.50 and 0.02 < frac[-1.0] < 0.12
    assert 0.07 < frac[0.0] < 0.22 and 0.30 < frac["blank"] < 0.55
    # uncertain effusion labels mostly sit on subtle effusions
    sev = np.array([max(r["findings"].get("effusion_right", 0), r["findings"].get("effusion_left", 0))
                    for r in recs])
    unc, pos = eff == -1.0, eff == 1.0
    assert np.mean(sev[unc] > 0) > 0.5
    assert np.median(sev[unc & (sev > 0)]) < np.median(sev[pos])
    # devices and effusion co-occur (acuity), as in real data
    dev = np.array([r["findings"].get("support_devices", 0) > 0 for r in recs])
    has = sev > 0
    assert has[dev].mean() > has[~dev].mean()
    # No Finding only without positive/uncertain pathology
    for r in recs:
        if r["labels"]["No Finding"] == 1.0:
            assert all(r["labels"][o] not in (1.0, -1.0) for o in ph.CHEXPERT_OBSERVATIONS[1:-1])
    if shared_data_optional is not None:  # compare with the real train.csv marginals
        import pandas as pd
        real = pd.read_csv(shared_data_optional / "chexpert/CheXpert-v1.0-small/train.csv.gz",
                           usecols=["Frontal/Lateral", "Pleural Effusion"], dtype=str,
                           keep_default_na=False)
        real = real.loc[real["Frontal/Lateral"] == "Frontal", "Pleural Effusion"]
        for v, key in (("1.0", 1.0), ("0.0", 0.0), ("-1.0", -1.0), ("", "blank")):
            assert abs(float((real == v).mean()) - frac[key]) < 0.08, (v, frac)


@pytest.fixture
def shared_data_optional() -> Path | None:
    """``../shared/data`` when present (the real-format checks then also run), else None."""
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return shared if shared.is_dir() else None


def test_population_does_not_depend_on_patient_count():
    a = ph.sample_chexpert_records(5, seed=2)
    b = ph.sample_chexpert_records(9, seed=2)
    assert a == [r for r in b if r["patient"] <= 5]
    assert ph.sample_chexpert_records(5, seed=3) != a


def test_population_dict_is_json_and_overridable():
    d = ph.DEFAULT_POPULATION.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["prevalence"]["effusion"] == ph.DEFAULT_POPULATION.prevalence["effusion"]
    pop = ph.make_population({"prevalence": {"effusion": 0.05}, "noise_range": [0.01, 0.02],
                              "labels": {"Edema": {"pos": 0.5}}})
    assert pop.prevalence["effusion"] == 0.05 and pop.prevalence["edema"] == ph.DEFAULT_POPULATION.prevalence["edema"]
    assert pop.noise_range == (0.01, 0.02) and pop.labels["Edema"]["pos"] == 0.5
    assert ph.make_population(pop) is pop and ph.make_population(None) is ph.DEFAULT_POPULATION
    rare = ph.sample_chexpert_records(300, seed=0, population={"prevalence": {"effusion": 0.05}})
    common = ph.sample_chexpert_records(300, seed=0)
    n_eff = lambda recs: sum("effusion_right" in r["findings"] or "effusion_left" in r["findings"] for r in recs)  # noqa: E731
    assert n_eff(rare) < 0.4 * n_eff(common)
    for bad in ({"bogus": 1}, {"prevalence": {"flu": 0.1}}, {"noise_range": [0.1]}):
        with pytest.raises(ValueError):
            ph.make_population(bad)


# ----------------------------------------------------------------------------- CheXpert tree


def test_chexpert_csv_format(tree, shared_data_optional):
    expected = list(ph.CHEXPERT_COLUMNS)
    if shared_data_optional is not None:
        with open(shared_data_optional / "chexpert/CheXpert-v1.0-small/valid.csv", newline="") as fh:
            expected = next(csv.reader(fh))
        assert expected == list(ph.CHEXPERT_COLUMNS)
    for name in ("train.csv", "valid.csv"):
        header, rows = _read_csv(tree / name)
        assert header == expected
        assert rows
        for r in rows:
            assert PATH_RE.match(r["Path"]), r["Path"]
            assert r["Sex"] in ("Male", "Female") and r["Age"].isdigit()
            assert all(r[o] in LABEL_VALUES for o in ph.CHEXPERT_OBSERVATIONS), r
            if r["Frontal/Lateral"] == "Frontal":
                assert r["AP/PA"] in ("AP", "PA")
            else:
                assert r["Frontal/Lateral"] == "Lateral" and r["AP/PA"] == ""
    _, valid = _read_csv(tree / "valid.csv")
    assert all(r[o] in ("1.0", "0.0") for r in valid for o in ph.CHEXPERT_OBSERVATIONS)
    _, train = _read_csv(tree / "train.csv")
    used = {r[o] for r in train for o in ph.CHEXPERT_OBSERVATIONS}
    assert used == LABEL_VALUES  # all four kinds occur


def test_chexpert_layout(tree):
    _, train = _read_csv(tree / "train.csv")
    _, valid = _read_csv(tree / "valid.csv")
    parsed = {split: [PATH_RE.match(r["Path"]) for r in rows]
              for split, rows in (("train", train), ("valid", valid))}
    train_pat = {int(m.group(2)) for m in parsed["train"]}
    valid_pat = {int(m.group(2)) for m in parsed["valid"]}
    assert train_pat == set(range(1, 15))
    assert min(valid_pat) == ph.VALID_FIRST_PATIENT and not train_pat & valid_pat
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


# ----------------------------------------------------------------------------- Shenzhen tree


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


def test_shenzhen_population():
    recs = ph.sample_shenzhen_records(662, seed=0)
    labels = np.array([r["label"] for r in recs])
    assert labels.sum() == 336 and (labels[:326] == 0).all()
    assert 0.08 < np.mean([r["rgb"] for r in recs]) < 0.25
    assert all((r["findings"].get("tb", 0) > 0) == bool(r["label"]) for r in recs)


# ----------------------------------------------------------------------------- readers


def test_trees_read_through_mocoxr_data(tree, tmp_path):
    data = pytest.importorskip("mocoxr.data")
    if not hasattr(data, "read_chexpert_csv") or not hasattr(data, "read_shenzhen"):
        pytest.skip("mocoxr.data readers not available yet")
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
