"""Tests for mocoxr.experiments: linear / fine-tuning sweeps, results and deltas tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mocoxr import augment, evaluate, experiments, finetune, models
from mocoxr.data import PreparedDataset

MEAN, STD = 0.5, 0.25




def tiny_prepared(tmp_path) -> tuple[PreparedDataset, np.ndarray]:
    """48 images (24 train / 12 val / 12 test); subsets f=0.5 x 2 draws and f=1 x 1 draw."""
    rng = np.random.default_rng(0)
    n = 48
    y = np.arange(n) % 2
    images = rng.integers(0, 160, (n, 32, 32), dtype=np.uint8)
    images[y == 1, 16:, :16] = 250
    split = np.array(["train"] * 24 + ["val"] * 12 + ["test"] * 12)
    manifest = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(n)],
                             "patient": [f"p{i}" for i in range(n)], "label": y, "split": split})
    train_rows = np.arange(24)
    subs = []
    for f, draws in ((0.5, 2), (1.0, 1)):
        for d in range(draws):
            pick = np.sort(np.random.default_rng(d).permutation(24)[: int(24 * f)])
            subs.append(pd.DataFrame({"label_fraction": f, "draw": d, "row": train_rows[pick],
                                      "train_row": pick}))
    subsets = pd.concat(subs, ignore_index=True)
    prep = PreparedDataset("tiny", manifest, subsets, tmp_path / "tiny.csv",
                           tmp_path / "tiny_subsets.csv")
    return prep, images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    prep, images = tiny_prepared(tmp)
    moco_path = models.export_backbone(models.create_backbone("resnet18", "random", seed=7),
                                       tmp / "moco_backbone.pt")
    return tmp, prep, images, {"moco": str(moco_path), "random": "random"}


def test_plan_selects_fractions_and_caps_draws(setup):
    _, prep, _, _ = setup
    assert experiments.plan(prep) == [(0.5, [0, 1]), (1.0, [0])]
    assert experiments.plan(prep, fractions=[0.5], max_draws=1) == [(0.5, [0])]
    with pytest.raises(ValueError, match="not in the subsets"):
        experiments.plan(prep, fractions=[0.1])


def test_linear_experiment_results_predictions_and_deltas(setup, monkeypatch):
    tmp, prep, images, backbones = setup
    out = tmp / "run"
    kw = dict(mean=MEAN, std=STD, image_size=32, out_dir=out, n_boot=50, progress=False)
    res = experiments.run_linear_experiment(prep, images, backbones, "resnet18", **kw)
    assert list(res.columns) == evaluate.RESULTS_COLUMNS
    # 2 inits x (3 draw rows + 2 draw-averaged rows)
    assert len(res) == 10 and (res["draw"] == evaluate.MEAN_DRAW).sum() == 4
    assert (res["ci_low"] <= res["ci_high"]).all()
    assert set(res["n_test"]) == {12}
    mean_row = res[(res["init"] == "moco") & (res["label_fraction"] == 0.5) & (res["draw"] == -1)]
    draw_rows = res[(res["init"] == "moco") & (res["label_fraction"] == 0.5) & (res["draw"] >= 0)]
    assert mean_row["auc"].item() == pytest.approx(draw_rows["auc"].mean())
    assert mean_row["n_train"].item() == 12
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == evaluate.RESULTS_COLUMNS and len(table) == 10
    rows, y, s = evaluate.load_predictions(out / "predictions", "linear", "resnet18", "moco", 0.5, 1)
    np.testing.assert_array_equal(rows, prep.rows("test"))
    feats = sorted((out / "features").glob("*.npy"))
    assert len(feats) == 2
    mtimes = [f.stat().st_mtime_ns for f in feats]

    # rerun: cached features (nothing extracted), results upserted rather than duplicated
    monkeypatch.setattr(augment, "resize_batch", lambda *a: pytest.fail("re-extracted"))
    experiments.run_linear_experiment(prep, images, backbones, "resnet18", **kw)
    assert [f.stat().st_mtime_ns for f in feats] == mtimes
    assert len(pd.read_csv(out / "results.csv")) == 10

    deltas = experiments.compute_deltas(out, "linear", "resnet18", ("moco", "random"), n_boot=50)
    assert list(deltas.columns) == evaluate.DELTAS_COLUMNS
    assert list(deltas["label_fraction"]) == [0.5, 1.0]
    assert set(deltas["comparison"]) == {"moco - random"}
    by_f = res[res["draw"] == -1].set_index(["init", "label_fraction"])["auc"]
    for _, d in deltas.iterrows():
        f = d["label_fraction"]
        assert d["delta"] == pytest.approx(by_f[("moco", f)] - by_f[("random", f)])
        assert d["ci_low"] <= d["delta"] <= d["ci_high"]
    experiments.compute_deltas(out, "linear", "resnet18", n_boot=50)
    assert len(pd.read_csv(out / "deltas.csv")) == 2
    with pytest.raises(ValueError, match="no label fraction"):
        experiments.compute_deltas(out, "linear", "resnet18", ("moco", "imagenet"), n_boot=50)


def test_finetune_experiment_caps_draws_and_reuses_predictions(setup, monkeypatch):
    tmp, prep, images, backbones = setup
    out = tmp / "ft"
    kw = dict(mean=MEAN, std=STD, image_size=32, out_dir=out, experiment="shenzhen_finetune",
              fractions=[0.5], max_draws=1, max_epochs=1, n_boot=50, batch_size=8, device="cpu", min_steps=2,
              progress=False)
    res = experiments.run_finetune_experiment(prep, images, backbones, "resnet18", lr=3e-4, **kw)
    assert list(res.columns) == evaluate.RESULTS_COLUMNS
    key = json.loads((out / "finetune" / "shenzhen_finetune__resnet18__moco__f0.5__d0.json").read_text())
    assert key["config"]["lr"] == 3e-4  # the learning rate reaches FinetuneConfig and the cache key
    assert sorted(res["draw"]) == [-1, -1, 0, 0] and set(res["experiment"]) == {"shenzhen_finetune"}
    hist = pd.read_csv(out / "finetune" / "shenzhen_finetune__resnet18__moco__f0.5__d0__history.csv")
    assert hist["epoch"].iloc[-1] == 1 and len(hist) == 2  # 1 epoch, validated at n_evals=5 -> 2 steps
    steps = res.set_index("draw")["n_steps"]
    assert steps.loc[0].tolist() == [hist["step"].max()] * 2 and (steps >= 2).all()
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: pytest.fail("retrained"))
    again = experiments.run_finetune_experiment(prep, images, backbones, "resnet18", lr=3e-4, **kw)
    pd.testing.assert_frame_equal(again, res)
    deltas = experiments.compute_deltas(out, "shenzhen_finetune", "resnet18", n_boot=50)
    assert len(deltas) == 1 and deltas["label_fraction"].item() == 0.5
    # more draws, then fewer again: the table keeps only the draws of the latest run
    monkeypatch.undo()
    experiments.run_finetune_experiment(prep, images, {"moco": backbones["moco"]}, "resnet18",
                                        **{**kw, "max_draws": 2})
    experiments.run_finetune_experiment(prep, images, {"moco": backbones["moco"]}, "resnet18", **kw)
    table = pd.read_csv(out / "results.csv")
    assert sorted(table.loc[table["init"] == "moco", "draw"]) == [-1, 0]


def test_bad_inputs_are_named(setup):
    tmp, prep, images, backbones = setup
    kw = dict(mean=MEAN, std=STD, image_size=32, out_dir=tmp / "bad", progress=False)
    with pytest.raises(ValueError, match="manifest has 48"):
        experiments.run_linear_experiment(prep, images[:10], backbones, "resnet18", **kw)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        experiments.run_linear_experiment(prep, images, {"moco": "nope.pt"}, "resnet18", **kw)
    with pytest.raises(FileNotFoundError, match="results"):
        experiments.compute_deltas(tmp / "empty", "linear", "resnet18")


def test_finetune_key_holds_labels_data_and_code(setup, monkeypatch):
    """Changed training labels (e.g. another uncertain-label policy), other images or edited
    training code retrain the model; the same inputs reuse it."""
    tmp, prep, images, backbones = setup
    out = tmp / "ft_keys"
    kw = dict(mean=MEAN, std=STD, image_size=32, out_dir=out, fractions=[1.0], max_draws=1,
              max_epochs=1, n_boot=20, batch_size=8, device="cpu", progress=False, min_steps=2)
    calls = []
    real = finetune.finetune
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    one = {"moco": backbones["moco"]}
    experiments.run_finetune_experiment(prep, images, one, "resnet18", **kw)
    experiments.run_finetune_experiment(prep, images, one, "resnet18", **kw)
    assert len(calls) == 1  # reused
    flipped = prep.manifest.copy()
    tr = prep.subset_rows(1.0, 0)
    flipped.loc[tr[:3], "label"] = 1 - flipped.loc[tr[:3], "label"]  # same rows, other labels
    prep2 = PreparedDataset(prep.name, flipped, prep.subsets, prep.manifest_path, prep.subsets_path)
    experiments.run_finetune_experiment(prep2, images, one, "resnet18", **kw)
    assert len(calls) == 2
    other = images.copy()
    other[:, 0, 0] ^= 1  # same shape, same rows, other pixels
    experiments.run_finetune_experiment(prep2, other, one, "resnet18", **kw)
    assert len(calls) == 3
    from mocoxr import keys
    monkeypatch.setattr(keys, "code_digest", lambda modules=None: "edited")
    experiments.run_finetune_experiment(prep2, other, one, "resnet18", **kw)
    assert len(calls) == 4
    # the precision is a setting of the run: fp32 and bf16 models are never mixed up
    experiments.run_finetune_experiment(prep2, other, one, "resnet18", amp="off", **kw)
    experiments.run_finetune_experiment(prep2, other, one, "resnet18", amp="bf16", **kw)
    assert len(calls) == 6
    experiments.run_finetune_experiment(prep2, other, one, "resnet18", amp="off", **kw)
    assert len(calls) == 7  # one model per name: the bf16 one replaced the fp32 one
    saved = json.loads(next((out / "finetune").glob("*.json")).read_text())
    assert saved["precision"] == "fp32" and saved["config"]["amp"] == "off"


def test_feature_cache_key_holds_the_images(setup):
    tmp, prep, images, backbones = setup
    kw = dict(mean=MEAN, std=STD, image_size=32, out_dir=tmp / "feat_keys")
    a = experiments.dataset_features(prep, images, "resnet18", "moco", backbones["moco"], **kw)
    other = images.copy()
    other[:, 8:24, 8:24] = 255 - other[:, 8:24, 8:24]  # same shape and count, other content
    b = experiments.dataset_features(prep, other, "resnet18", "moco", backbones["moco"], **kw)
    assert not np.allclose(a, b)  # recomputed, not served from the cache of the first images
