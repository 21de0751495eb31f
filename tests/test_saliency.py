"""Tests for mocoxr.saliency (Grad-CAM, pointing game, share inside), mocoxr.calibration and
phantom.effusion_masks (the ground-truth region, without changing the generated images)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from mocoxr import calibration, data, finetune, models, phantom, saliency


def one_logit(name: str = "resnet18") -> nn.Module:
    return finetune.replace_head(models.create_backbone(name, seed=0), 0).eval()


# ----------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_shape_range_and_no_parameter_gradients():
    model = one_logit()
    x = torch.randn(3, 3, 32, 32)
    cams = saliency.grad_cam(model, x)
    assert cams.shape == (3, 32, 32) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert np.allclose(cams.reshape(3, -1).max(1), 1.0)  # scaled per image
    assert all(p.grad is None for p in model.parameters())
    dense = saliency.grad_cam(one_logit("densenet121"), x[:1])
    assert dense.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="one-logit"):
        saliency.grad_cam(models.create_backbone("resnet18").eval(), x[:1])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        saliency.grad_cam(model, x[:, :1])


def test_grad_cam_weighs_channels_by_their_gradient():
    """Logit = sum of channel 0 of the activations over the lower-right quadrant; channel 1
    carries a brighter blob elsewhere but no gradient: the map must follow channel 0."""

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.feat = nn.Identity()
            self.bias = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            a = self.feat(x[:, :2])
            return a[:, 0, 16:, 16:].sum(dim=(1, 2))[:, None] + self.bias

    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 20:26, 22:28] = 1.0  # channel 0: blob at the lower right
    x[0, 1, 2:10, 2:10] = 5.0  # channel 1: brighter, upper left, no gradient
    model = Tiny()
    cams = saliency.grad_cam(model, x, layer=model.feat)
    peak = np.unravel_index(cams[0].argmax(), cams[0].shape)
    assert 20 <= peak[0] < 26 and 22 <= peak[1] < 28
    assert cams[0, :12, :12].max() == 0.0


def test_pointing_game_and_share_inside():
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    cams = np.zeros((2, 4, 4))
    cams[0, 0, 0], cams[0, 3, 3] = 1.0, 0.5  # peak inside, 2/3 of the mass
    cams[1, 3, 3], cams[1, 1, 1] = 1.0, 1.0 / 3  # peak outside, 1/4 of the mass
    np.testing.assert_array_equal(saliency.pointing_game(cams, masks), [True, False])
    np.testing.assert_allclose(saliency.share_inside(cams, masks), [2 / 3, 1 / 4])
    table = saliency.localisation_table({"a": cams, "b": cams[::-1]}, masks)
    assert list(table["pointing_hit_rate"]) == [0.5, 0.5] and table["region_area"].iloc[0] == 0.25
    with pytest.raises(ValueError, match="every mask"):
        saliency.pointing_game(cams, np.zeros_like(masks))
    with pytest.raises(ValueError, match="both be"):
        saliency.share_inside(cams[:1], masks)


# ----------------------------------------------------------------------------- layer rule


def test_cam_layer_is_the_deepest_block_with_at_least_8x8_cells():
    model = one_logit()
    assert saliency.block_grids(model, 64) == {"layer1": (16, 16), "layer2": (8, 8),
                                               "layer3": (4, 4), "layer4": (2, 2)}
    assert saliency.cam_layer(model, 64) == ("layer2", (8, 8))
    assert saliency.cam_layer(model, 320) == ("layer4", (10, 10))  # the paper's size
    assert saliency.cam_layer(model, 32) == ("layer1", (8, 8))
    assert saliency.cam_layer(model, 16) == ("layer1", (4, 4))  # none has 8x8: the shallowest
    assert saliency.cam_layer(model, 64, min_cells=2) == ("layer4", (2, 2))
    assert saliency.cam_layer(one_logit("densenet121"), 64) == ("features.denseblock2", (8, 8))
    x = torch.randn(2, 3, 64, 64)
    fine = saliency.grad_cam(model, x, layer="layer2")
    assert fine.shape == (2, 64, 64)
    assert not np.allclose(fine, saliency.grad_cam(model, x))  # default: layer4
    assert model.training is False


# ----------------------------------------------------------------------------- occlusion


class OnePixel(nn.Module):
    """Logit = 3 x (channel 0 at pixel (5, 9)) + 1: reads one pixel and nothing else."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        return (self.w * x[:, 0, 5, 9] + 1.0)[:, None]


def test_occlusion_finds_the_one_pixel_a_model_reads():
    x = torch.rand(2, 3, 16, 16) + 0.5  # positive: occluding (setting 0) lowers the logit
    exact = saliency.occlusion(OnePixel(), x, patch=1)
    assert exact.shape == (2, 16, 16) and exact.max() == 1.0
    for m in exact:
        assert np.unravel_index(m.argmax(), m.shape) == (5, 9)
        assert (m > 0).sum() == 1
    coarse = saliency.occlusion(OnePixel(), x, patch=4, stride=2)
    for m in coarse:  # the squares covering (5, 9) are the ones that light up
        r, c = np.unravel_index(m.argmax(), m.shape)
        assert abs(r - 5) < 4 and abs(c - 9) < 4 and m[5, 9] == m.max()
        assert m[:, :6].max() == 0 and m[10:].max() == 0
    # a pixel that raises the logit when hidden is no evidence: the map is all zero
    assert saliency.occlusion(OnePixel(), -x, patch=2).max() == 0.0
    with pytest.raises(ValueError, match="patch"):
        saliency.occlusion(OnePixel(), x, patch=17)
    assert saliency._starts(10, 4, 4) == [0, 4, 6]  # the last square is flush with the edge


# ----------------------------------------------------------------------------- sanity check


def test_rank_correlation():
    a = np.arange(16, dtype=float).reshape(1, 4, 4)
    np.testing.assert_allclose(saliency.rank_correlation(np.r_[a, a], np.r_[a ** 3, -a]), [1, -1])
    assert saliency.rank_correlation(a, np.zeros_like(a))[0] == 0.0  # a constant map: no ranking
    with pytest.raises(ValueError, match="both be"):
        saliency.rank_correlation(a, a[0])


def test_cascading_randomisation_changes_grad_cam_but_not_a_weight_blind_map():
    torch.manual_seed(0)
    model = one_logit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    methods = {"Grad-CAM": lambda m, x: saliency.grad_cam(m, x, layer="layer1"),
               "edges": lambda m, x: x[:, 0].abs().numpy()}  # ignores the weights
    t = saliency.cascading_randomisation(model, x, methods, seed=0)
    assert len(t) == 2 * 7 * 3 and list(t["randomised"].unique()) == [
        "none", "fc", "layer4", "layer3", "layer2", "layer1", "conv1"]
    cam = t[t["method"] == "Grad-CAM"].groupby("step")["spearman"].mean()
    assert cam[0] == pytest.approx(1.0) and cam[6] < 0.5
    assert (t.loc[t["method"] == "edges", "spearman"] > 0.999).all()  # fails the check
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy
    again = saliency.cascading_randomisation(model, x, methods, seed=0)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(t, again)  # seeded
    fig = saliency.plot_randomisation(t)
    assert fig.get_size_inches()[0] <= 7.5
    assert [b for b in saliency.cascade_blocks(one_logit("densenet121"))][0] == ("classifier",)


# ----------------------------------------------------------------------------- phantom region


@pytest.fixture(scope="module")
def phantom_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ph")
    return phantom.generate_chexpert_tree(out, n_patients=3, n_valid_patients=12, image_size=64,
                                          seed=0)


def test_effusion_masks_mark_the_effusion_and_leave_the_images_alone(phantom_tree: Path):
    import pandas as pd

    truth = pd.read_csv(phantom_tree / "phantom_truth.csv")
    truth = truth[truth["Path"].str.contains("/valid/") & truth["Path"].str.contains("frontal")]
    wet = (truth["effusion_right"] > 0.2) | (truth["effusion_left"] > 0.2)
    dry = (truth["effusion_right"] == 0) & (truth["effusion_left"] == 0)
    assert wet.any() and dry.any()
    paths = list(truth.loc[wet, "Path"]) + list(truth.loc[dry, "Path"])
    before = {p: hashlib.sha1((phantom_tree.parent / p).read_bytes()).hexdigest() for p in paths}
    masks = phantom.effusion_masks(phantom_tree, paths, 32)
    n_wet = int(wet.sum())
    assert masks.shape == (len(paths), 32, 32) and masks.dtype == bool
    assert masks[:n_wet].any(axis=(1, 2)).all() and not masks[n_wet:].any()
    # effusion collects at the lung bases: more of the region in the lower half than the top
    assert masks[:n_wet, 16:].sum() > 2 * masks[:n_wet, :10].sum()
    # deterministic, and the images on disk are untouched
    np.testing.assert_array_equal(masks, phantom.effusion_masks(phantom_tree, paths, 32))
    assert before == {p: hashlib.sha1((phantom_tree.parent / p).read_bytes()).hexdigest()
                      for p in paths}
    # the re-rendered image is the one on disk (up to JPEG): the mask belongs to that image
    r = [x for x in phantom.sample_chexpert_records(12, 0, "valid") if x["path"] == paths[0]][0]
    again = phantom.render_radiograph(np.random.default_rng(r["image_seed"]), (78, 64),
                                      r["findings"], projection=r["projection"],
                                      supine=r["supine"], female=r["female"],
                                      anatomy_seed=r["anatomy_seed"])
    disk = data.decode_image(phantom_tree.parent / paths[0], 64)
    assert again.shape == (78, 64)
    assert np.abs(again[7:71].astype(float) - disk).mean() < 4
    abs_paths = [str(phantom_tree.parent / p) for p in paths]
    np.testing.assert_array_equal(saliency.phantom_masks(phantom_tree.parent, abs_paths, 32), masks)
    with pytest.raises(ValueError, match="not an image"):
        phantom.effusion_masks(phantom_tree, ["CheXpert-v1.0-small/valid/patient99999/x.jpg"], 32)
    with pytest.raises(FileNotFoundError, match="phantom.json"):
        phantom.effusion_masks(phantom_tree / "valid", paths, 32)


# ----------------------------------------------------------------------------- calibration


def test_ece_and_reliability_bins():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.05, 0.15, 0.85, 0.95, 0.55, 0.45, 0.65, 0.35])
    r = calibration.reliability(y, p, n_bins=2)
    assert list(r["count"]) == [4, 4] and list(r["positive_rate"]) == [0.0, 1.0]
    assert calibration.ece(y, p, n_bins=2) == pytest.approx(0.25)
    assert calibration.ece(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    with pytest.raises(ValueError, match="probabilities"):
        calibration.ece(y, p * 2)
    with pytest.raises(ValueError, match="one label per score"):
        calibration.reliability(y[:3], p)


def test_temperature_scaling_repairs_overconfidence_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at T = 1
    over = 1 / (1 + np.exp(-3 * z))  # logits tripled: over-confident
    t = calibration.fit_temperature(y[:2000], over[:2000])
    assert t == pytest.approx(3.0, rel=0.15)
    fixed = calibration.apply_temperature(over[2000:], t)
    assert calibration.ece(y[2000:], fixed) < calibration.ece(y[2000:], over[2000:]) / 2
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[2000:], fixed) == pytest.approx(roc_auc_score(y[2000:], over[2000:]),
                                                           abs=1e-4)  # the ranking stays
    table = calibration.calibration_table({"m": (y[:2000], over[:2000], y[2000:], over[2000:])})
    assert table["ece_after"].iloc[0] < table["ece_before"].iloc[0]
    with pytest.raises(ValueError, match="temperature"):
        calibration.apply_temperature(over, 0.0)


# ----------------------------------------------------------------------------- kept models


def test_finetune_keeps_first_draw_models_that_reproduce_their_predictions(tmp_path, monkeypatch):
    import pandas as pd

    from mocoxr import evaluate, experiments
    from mocoxr.data import PreparedDataset

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    images = rng.integers(0, 160, (40, 32, 32), dtype=np.uint8)
    images[y == 1, 16:, :16] = 250
    split = np.array(["train"] * 20 + ["val"] * 10 + ["test"] * 10)
    manifest = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(40)],
                             "patient": [f"p{i}" for i in range(40)], "label": y, "split": split})
    subsets = pd.DataFrame({"label_fraction": 1.0, "draw": [0] * 20 + [1] * 20,
                            "row": list(range(20)) * 2, "train_row": list(range(20)) * 2})
    prep = PreparedDataset("t", manifest, subsets, tmp_path / "t.csv", tmp_path / "ts.csv")
    kw = dict(mean=0.4, std=0.25, image_size=32, out_dir=tmp_path, max_epochs=1, n_boot=20,
              batch_size=8, device="cpu", progress=False, keep_models=True)
    experiments.run_finetune_experiment(prep, images, {"random": "random"}, "resnet18", **kw)
    kept = sorted(p.name for p in (tmp_path / "finetune").glob("*__model.pt"))
    assert kept == ["finetune__resnet18__random__f1__d0__model.pt"]  # first draw only
    model = experiments.load_finetuned(tmp_path, "finetune", "resnet18", "random", 1.0)
    rows, _, saved = evaluate.load_predictions(tmp_path / "predictions", "finetune", "resnet18",
                                               "random", 1.0, 0)
    np.testing.assert_allclose(finetune.predict(model, images, rows, 0.4, 0.25, 32), saved,
                                  rtol=1e-4, atol=1e-5)
    assert saliency.grad_cam_rows(model, images, rows[:2], 0.4, 0.25, 32).shape == (2, 32, 32)
    # reused when kept; a missing kept model is trained again (draw 0 only)
    calls = []
    real = finetune.finetune
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: calls.append(k) or real(*a, **k))
    experiments.run_finetune_experiment(prep, images, {"random": "random"}, "resnet18", **kw)
    assert calls == []
    (tmp_path / "finetune" / kept[0]).unlink()
    experiments.run_finetune_experiment(prep, images, {"random": "random"}, "resnet18", **kw)
    assert len(calls) == 1 and (tmp_path / "finetune" / kept[0]).is_file()
    with pytest.raises(FileNotFoundError, match="keep_models=True"):
        experiments.load_finetuned(tmp_path, "finetune", "resnet18", "random", 1.0, draw=1)
    other = tmp_path / "other"
    experiments.run_finetune_experiment(prep, images, {"random": "random"}, "resnet18",
                                        **{**kw, "out_dir": other, "keep_models": [0.5]})
    assert not list((other / "finetune").glob("*__model.pt"))  # only the fractions asked for
