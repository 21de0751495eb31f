"""Tests for mocoxr.counterfactual: each phantom image rendered again without its effusion, and
the drop in the model's score."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.nn as nn

from mocoxr import counterfactual, data, finetune, models, phantom
from mocoxr.phantom import masks as phantom_masks


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """A phantom tree, its wet and dry frontal validation images (paths as in the CSVs)."""
    out = tmp_path_factory.mktemp("cf")
    cdir = phantom.generate_chexpert_tree(out, n_patients=3, n_valid_patients=12, image_size=64,
                                          seed=0)
    truth = pd.read_csv(cdir / "phantom_truth.csv")
    truth = truth[truth["Path"].str.contains("/valid/") & truth["Path"].str.contains("frontal")]
    wet = (truth["effusion_right"] > 0.2) | (truth["effusion_left"] > 0.2)
    dry = (truth["effusion_right"] == 0) & (truth["effusion_left"] == 0)
    assert wet.sum() >= 2 and dry.any()
    return cdir, list(truth.loc[wet, "Path"]), list(truth.loc[dry, "Path"])


def test_a_phantom_without_its_effusion_differs_from_it_only_inside_the_region(tree):
    cdir, wet, dry = tree
    root = cdir.parent
    before = {p: hashlib.sha1((root / p).read_bytes()).hexdigest() for p in wet + dry}
    cf = counterfactual.counterfactual_images(root, [str(root / p) for p in wet + dry], 32)
    n = len(wet)
    assert cf.original.shape == cf.without.shape == cf.restored.shape == (n + len(dry), 32, 32)
    # the re-rendered original is the cached image itself (same JPEG, same decoding)
    for i, p in enumerate(wet + dry):
        np.testing.assert_array_equal(cf.original[i], data.decode_image(root / p, 32))
    # the region is where the effusion is; outside it the two versions barely differ
    np.testing.assert_array_equal(cf.mask, phantom.effusion_masks(cdir, wet + dry, 32))
    assert cf.mask[:n].any(axis=(1, 2)).all() and not cf.mask[n:].any()
    for i in range(n):
        diff = np.abs(cf.original[i].astype(float) - cf.without[i])
        inside, outside = diff[cf.mask[i]].mean(), diff[~cf.mask[i]].mean()
        assert inside > 15 and outside < 2 and inside > 10 * outside
    for a, b in phantom_masks.effusion_renders(cdir, wet):  # at the rendered size, before JPEG
        region = np.abs(a.astype(int) - b.astype(int)) >= 8
        assert region.any() and np.abs(a.astype(int) - b.astype(int))[~region].max() < 8
        assert np.abs(a.astype(float) - b)[~region].mean() < 1.5
    # the region restored: the original inside, the image without effusion outside
    np.testing.assert_array_equal(cf.restored[cf.mask], cf.original[cf.mask])
    np.testing.assert_array_equal(cf.restored[~cf.mask], cf.without[~cf.mask])
    # images without an effusion: all three versions are the image
    for v in (cf.without, cf.restored):
        np.testing.assert_array_equal(v[n:], cf.original[n:])
    assert before == {p: hashlib.sha1((root / p).read_bytes()).hexdigest() for p in wet + dry}
    sub = cf.take(np.array([1, 0]))
    np.testing.assert_array_equal(sub.without[0], cf.without[1])


def test_logits_are_the_scores_of_evaluation():
    model = finetune.replace_head(models.create_backbone("resnet18", seed=0), 0).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 40, 40), dtype=np.uint8)
    z = counterfactual.logits(model, images, 0.4, 0.25, 32, batch_size=2)
    p = finetune.predict(model, images, np.arange(5), 0.4, 0.25, 32)
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), p, rtol=1e-5, atol=1e-6)
    assert isinstance(model, nn.Module) and counterfactual.logits(model, images[:0], 0.4, 0.25,
                                                                  32).shape == (0,)


def test_bootstrap_mean_and_drop_table():
    x = np.random.default_rng(1).normal(2.0, 1.0, 200)
    m, lo, hi = counterfactual.bootstrap_mean(x, n_boot=500, seed=0)
    assert m == pytest.approx(x.mean()) and lo < m < hi and hi - lo < 0.5
    assert counterfactual.bootstrap_mean(np.ones(5), n_boot=50) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        counterfactual.bootstrap_mean(np.zeros(0))
    reads = {"original": np.full(10, 2.0), "without": np.full(10, -2.0),
             "restored": np.full(10, 2.0)}  # reads the region and only it
    blind = {v: np.zeros(10) for v in counterfactual.VERSIONS}  # ignores the effusion
    t = counterfactual.drop_table({("moco", 1.0): reads, ("random", 0.01): blind}, n_boot=50)
    assert list(t["init"]) == ["moco", "random"] and list(t["images"]) == [10, 10]
    r = t.iloc[0]
    assert r["drop_logit"] == pytest.approx(4.0) and r["drop_logit_lo"] == pytest.approx(4.0)
    p = 1 / (1 + np.exp(-2.0))
    assert r["drop_prob"] == pytest.approx(2 * p - 1) and r["p_without"] == pytest.approx(1 - p)
    assert r["restored_drop_prob"] == 0.0
    assert (t.iloc[1][["drop_prob", "drop_logit", "restored_drop_prob"]] == 0).all()
    shown = counterfactual.drop_display(t)
    assert shown["drop in logit [95% CI]"].iloc[0] == "+4.000 [+4.000, +4.000]"
    assert list(shown["labels"]) == ["100%", "1%"] and shown["P(original)"].iloc[1] == "0.500"
