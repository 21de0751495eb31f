"""Tests for mocoxr.finetune: scoring (predict), the fine-tuning loop, its head warm-up and
optimizer groups. Tiny sizes: 32 px, resnet18, CPU."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mocoxr import finetune, models

from tiny_images import MEAN, STD, tiny_images


IMAGES, LABELS = tiny_images(24)


def test_predict_feeds_a_channels_last_model_and_scores_like_nchw():
    model = finetune.replace_head(models.create_backbone("resnet18", "random", seed=0), seed=0)
    rows = np.array([3, 1, 2, 0, 9])
    a = finetune.predict(model, IMAGES, rows, MEAN, STD, 32, batch_size=2)
    b = finetune.predict(model.to(memory_format=torch.channels_last), IMAGES, rows, MEAN, STD, 32,
                         batch_size=2)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert a.shape == (5,) and np.unique(a).size == 5  # five different images, in order


def test_finetune_keeps_the_best_validation_epoch():
    images, y = tiny_images(40, seed=3)
    tr, va = np.arange(24), np.arange(24, 40)
    fcfg = finetune.FinetuneConfig(image_size=32, batch_size=8, max_epochs=3, label_fraction=1.0,
                                   device="cpu", seed=0, min_steps=0, n_evals=3)
    # score the validation rows as "test": the returned scores must be the best point's
    scores, hist = finetune.finetune("resnet18", "random", images, tr, y[tr], va, y[va], va,
                                     MEAN, STD, fcfg)
    # min(probe_epochs(1.0) = 5, max_epochs = 3) epochs of 24 images in batches of 8: 9 steps
    assert list(hist["step"]) == [3, 6, 9] and list(hist["epoch"]) == [1, 2, 3]
    best = int(np.argmax(hist["val_auc"].to_numpy()))
    assert hist["best"].tolist() == [i == best for i in range(3)]
    assert roc_auc_score(y[va], scores) == pytest.approx(hist["val_auc"].max(), abs=1e-9)
    with pytest.raises(ValueError, match="both classes"):
        finetune.finetune("resnet18", "random", images, tr, np.zeros(24, int), va, y[va], va,
                          MEAN, STD, fcfg)


def test_finetune_head_warmup_freezes_the_encoder_and_its_batchnorm(tmp_path, monkeypatch):
    images, y = tiny_images(40, seed=3)
    tr, va = np.arange(24), np.arange(24, 40)
    net = models.create_backbone("resnet18", init="random", seed=5)
    path = models.export_backbone(net, tmp_path / "b.pt")
    before = torch.load(path, weights_only=True)
    kept = {}
    real = finetune.predict
    def spy(model, *a, **k):  # the state after the (only) epoch
        kept.update({n: t.detach().clone() for n, t in model.state_dict().items()})
        return real(model, *a, **k)
    monkeypatch.setattr(finetune, "predict", spy)
    fcfg = finetune.FinetuneConfig(image_size=32, batch_size=8, max_epochs=1, device="cpu",
                                   head_warmup_epochs=1, min_steps=0, n_evals=1)
    finetune.finetune("resnet18", str(path), images, tr, y[tr], va, y[va], va, MEAN, STD, fcfg)
    body = [n for n in before if not n.startswith("fc.")]
    assert all(torch.equal(before[n], kept[n]) for n in body)  # weights and BN statistics
    fresh_head = finetune.replace_head(models.create_backbone("resnet18", seed=0), 0).fc.weight
    assert kept["fc.weight"].shape == fresh_head.shape
    assert not torch.equal(kept["fc.weight"], fresh_head.detach())  # the head did train
    # without warm-up the same epoch moves the encoder and its running statistics
    fcfg.head_warmup_epochs = 0
    finetune.finetune("resnet18", str(path), images, tr, y[tr], va, y[va], va, MEAN, STD, fcfg)
    assert not torch.equal(before["conv1.weight"], kept["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], kept["bn1.running_mean"])


def test_finetune_optimizer_groups_and_bad_options():
    model = finetune.replace_head(models.create_backbone("resnet18", seed=0), 0)
    opt = finetune.finetune_optimizer(model, finetune.FinetuneConfig(lr=1e-3, encoder_lr_scale=0.1),
                                         torch.device("cpu"))
    body, head = opt.param_groups
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    # the optimizer holds views of the parameters' memory (optim.DenseAdam)
    assert {p.data_ptr() for p in head["params"]} == {p.data_ptr() for p in model.fc.parameters()}
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        finetune.finetune_optimizer(model, finetune.FinetuneConfig(encoder_lr_scale=0),
                                       torch.device("cpu"))


# ----------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("fraction, n_train, batch, steps", [
    (0.001, 2, 10, 100),    # 500 epochs x 2 images = 1000 passes: 100 steps of 10
    (0.01, 12, 12, 107),    # 107 epochs x 12 = 1284 passes
    (0.1, 123, 28, 102),    # 23 epochs x 123 = 2829 passes
    (1.0, 1232, 32, 193),   # 5 epochs x 1232 = 6160 passes: the configured batch
    (0.0625, 27, 8, 105),   # Shenzhen 6.25%: 31 epochs x 27 = 837 passes
])
def test_schedule_keeps_the_papers_image_passes_in_at_least_min_steps(fraction, n_train, batch,
                                                                        steps):
    cfg = finetune.FinetuneConfig(batch_size=32, label_fraction=fraction, min_steps=100)
    got_batch, got_steps = finetune.finetune_schedule(cfg, n_train)
    assert (got_batch, got_steps) == (batch, steps)
    passes = finetune.finetune_epochs(cfg) * n_train
    assert got_steps >= 100 and passes <= got_batch * got_steps < passes + 100 * got_batch


def test_schedule_never_goes_below_min_batch_or_min_steps():
    cfg = finetune.FinetuneConfig(batch_size=32, label_fraction=1.0, max_epochs=1, min_steps=100,
                                  min_batch=4)
    assert finetune.finetune_schedule(cfg, 10) == (4, 100)  # 10 passes: 100 steps of 4
    with pytest.raises(ValueError, match="min_batch"):
        finetune.finetune_schedule(finetune.FinetuneConfig(min_batch=1), 10)


def test_batch_positions_see_every_image_once_per_pass():
    pos = finetune.batch_positions(5, 4, 5, seed=0)  # 20 positions = 4 passes over 5 images
    assert pos.shape == (5, 4)
    for p in range(4):
        assert sorted(pos.reshape(-1)[5 * p:5 * p + 5]) == [0, 1, 2, 3, 4]
    assert not np.array_equal(pos.reshape(-1)[:5], pos.reshape(-1)[5:10])  # reshuffled per pass
    assert finetune.eval_steps(100, 5) == [20, 40, 60, 80, 100]
    assert finetune.eval_steps(3, 5) == [1, 2, 3]


def test_finetune_takes_the_scheduled_steps_at_a_small_fraction():
    """2 labelled images at 0.1%: 1000 image passes, at least 10 steps here (min_steps)."""
    images, y = tiny_images(40, seed=3)
    tr, va = np.array([0, 1]), np.arange(24, 40)
    y = y.copy()
    y[:2] = [0, 1]
    calls = []
    real = finetune.finetune_step
    cfg = finetune.FinetuneConfig(image_size=32, batch_size=8, label_fraction=0.001, max_epochs=20,
                                  device="cpu", min_steps=10, n_evals=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune, "finetune_step", lambda *a, **k: calls.append(a[5].shape) or real(*a, **k))
        _, hist = finetune.finetune("resnet18", "random", images, tr, y[tr], va, y[va], va,
                                    MEAN, STD, cfg)
    # 20 epochs x 2 images = 40 passes: 10 steps of 4 images (each image twice per batch)
    assert len(calls) == 10 and all(c[0] == 4 for c in calls)
    assert list(hist["step"]) == [5, 10] and set(hist["batch_size"]) == {4}
