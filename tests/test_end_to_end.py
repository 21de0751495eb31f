"""End to end through the package, no notebooks: generate a tiny synthetic CheXpert- and
Shenzhen-format set, pretrain MoCo a few steps, probe, fine-tune, transfer, check the tables.

Also runs the transfer path on the 18 real Shenzhen PNGs in ../shared/data when present
(too few for tight CIs: it checks that loaders, cache and transfer work on real radiographs).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mocoxr import data, evaluate, experiments, phantom
from mocoxr.pretrain import PretrainConfig, pretrain

SIZE = 32
BACKBONE = "resnet18"




def load(prep: data.PreparedDataset, cache_file: Path):
    images = data.load_image_cache(list(prep.manifest["path"]), SIZE, cache_file)
    mean, std = data.image_stats(images, prep.rows("train"))
    return images, mean, std


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The whole pipeline once, at toy sizes; returns the run folder and what it made."""
    tmp = tmp_path_factory.mktemp("e2e")
    chex_dir = phantom.generate_chexpert_tree(tmp / "data" / "chexpert", n_patients=40,
                                              n_valid_patients=16, image_size=48, seed=1)
    shen_dir = phantom.generate_shenzhen_tree(tmp / "data" / "shenzhen", n_images=40,
                                              image_size=48, seed=1)
    chex = data.prepare_chexpert(chex_dir.parent, tmp / "manifests", fractions=(0.1, 1.0),
                                 draws=(2, 1), seed=0)
    shen = data.prepare_shenzhen(shen_dir, tmp / "manifests", fractions=(0.25, 1.0),
                                 draws=(2, 1), seed=0)
    images, mean, std = load(chex, tmp / "cache" / "chexpert.npy")
    cfg = PretrainConfig(backbone=BACKBONE, init="random", image_size=SIZE, batch_size=8,
                         epochs=1, max_steps=3, queue_size=16, momentum=0.99, device="cpu")
    pre = pretrain(images, chex.rows("train"), cfg, tmp / "checkpoints", mean, std,
                   progress=False)
    inits = {"moco": str(pre["backbone"]), "random": "random"}
    out = tmp / "run"
    experiments.run_linear_experiment(chex, images, inits, BACKBONE, mean=mean, std=std,
                                      image_size=SIZE, out_dir=out, n_boot=200, progress=False)
    experiments.run_finetune_experiment(chex, images, inits, BACKBONE, mean=mean, std=std,
                                        image_size=SIZE, out_dir=out, max_draws=1, max_epochs=1,
                                        n_boot=200, device="cpu", batch_size=8, progress=False)
    s_images, s_mean, s_std = load(shen, tmp / "cache" / "shenzhen.npy")
    experiments.run_linear_experiment(shen, s_images, inits, BACKBONE, mean=s_mean, std=s_std,
                                      image_size=SIZE, out_dir=out, experiment="shenzhen_linear",
                                      n_boot=200, progress=False)
    experiments.run_finetune_experiment(shen, s_images, inits, BACKBONE, mean=s_mean, std=s_std,
                                        image_size=SIZE, out_dir=out,
                                        experiment="shenzhen_finetune", max_draws=1, max_epochs=1,
                                        n_boot=200, device="cpu", batch_size=8, progress=False)
    for name in experiments.EXPERIMENTS:
        experiments.compute_deltas(out, name, BACKBONE, n_boot=200)
    return out, pre, chex, shen


def test_pretraining_exports_a_torchvision_backbone(run):
    _, pre, _, _ = run
    import torchvision

    state = torch.load(pre["backbone"], weights_only=True)
    torchvision.models.resnet18().load_state_dict(state)
    assert pre["step"] == 3 and len(pre["log"]) == 3
    assert np.isfinite(pre["log"]["loss"]).all()


def test_results_table_has_every_experiment_init_fraction_and_draw(run):
    out, _, chex, shen = run
    res = pd.read_csv(out / "results.csv")
    assert list(res.columns) == evaluate.RESULTS_COLUMNS
    expected_draws = {"linear": {0.1: 2, 1.0: 1}, "finetune": {0.1: 1, 1.0: 1},
                      "shenzhen_linear": {0.25: 2, 1.0: 1}, "shenzhen_finetune": {0.25: 1, 1.0: 1}}
    for name, fractions in expected_draws.items():
        for init in ("moco", "random"):
            for f, n_draws in fractions.items():
                sel = res[(res["experiment"] == name) & (res["init"] == init)
                          & np.isclose(res["label_fraction"], f)]
                assert sorted(sel["draw"]) == [evaluate.MEAN_DRAW, *range(n_draws)], (name, init, f)
    assert ((res["ci_low"] <= res["auc"]) & (res["auc"] <= res["ci_high"])).all()
    n_test = {"linear": len(chex.rows("test")), "shenzhen_linear": len(shen.rows("test"))}
    for name, n in n_test.items():
        assert (res.loc[res["experiment"] == name, "n_test"] == n).all()
    full = res[(res["experiment"] == "linear") & np.isclose(res["label_fraction"], 1.0)]
    assert (full["n_train"] == len(chex.rows("train"))).all()


def test_deltas_are_paired_differences_of_the_saved_predictions(run):
    out, _, chex, _ = run
    deltas = pd.read_csv(out / "deltas.csv")
    assert list(deltas.columns) == evaluate.DELTAS_COLUMNS
    assert set(deltas["experiment"]) == set(experiments.EXPERIMENTS)
    assert set(deltas["comparison"]) == {"moco - random"}
    assert ((deltas["ci_low"] <= deltas["delta"]) & (deltas["delta"] <= deltas["ci_high"])).all()
    res = pd.read_csv(out / "results.csv")
    mean_rows = res[(res["draw"] == evaluate.MEAN_DRAW) & (res["experiment"] == "linear")]
    for _, d in deltas[deltas["experiment"] == "linear"].iterrows():
        at = mean_rows[np.isclose(mean_rows["label_fraction"], d["label_fraction"])]
        moco = at.loc[at["init"] == "moco", "auc"].item()
        rand = at.loc[at["init"] == "random", "auc"].item()
        assert d["delta"] == pytest.approx(moco - rand, abs=1e-9)
    rows, y, _ = evaluate.load_predictions(out / "predictions", "linear", BACKBONE, "moco", 1.0, 0)
    np.testing.assert_array_equal(rows, chex.rows("test"))
    np.testing.assert_array_equal(y, chex.labels(chex.rows("test")))


def test_transfer_on_the_real_shenzhen_pngs(shared_data, tmp_path, run):
    """Real radiographs through reader, cache, and the CheXpert-format-pretrained encoder."""
    _, pre, _, _ = run
    shen = data.prepare_shenzhen(shared_data / "shenzhen", tmp_path / "manifests",
                                 fractions=(1.0,), draws=(1,), seed=0)
    assert len(shen.manifest) == 18 and shen.manifest["label"].sum() == 3
    images, mean, std = load(shen, tmp_path / "shenzhen.npy")
    assert images.shape == (18, SIZE, SIZE) and images.std() > 10  # real pictures, not blank
    inits = {"moco": str(pre["backbone"]), "random": "random"}
    res = experiments.run_linear_experiment(shen, images, inits, BACKBONE, mean=mean, std=std,
                                            image_size=SIZE, out_dir=tmp_path / "run",
                                            experiment="shenzhen_linear", n_boot=200,
                                            progress=False)
    summary = res[res["draw"] == evaluate.MEAN_DRAW]
    assert set(summary["init"]) == {"moco", "random"}
    for _, r in summary.iterrows():  # 4 test images: the CI is wide, but it must be a CI
        assert 0 <= r["ci_low"] <= r["auc"] <= r["ci_high"] <= 1
        print(f"real Shenzhen, {r['init']}: AUC {r['auc']:.3f} ({r['ci_low']:.3f}, {r['ci_high']:.3f}) "
              f"n_test={r['n_test']}")
