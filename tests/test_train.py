"""Tests for mocoxr.train: pretraining loop (log, atomic checkpoints, resume, cache), features,
probes and fine-tuning. Tiny sizes: 32 px, resnet18, batch 8, queue 32, CPU."""

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.metrics import roc_auc_score

from mocoxr import models, train

MEAN, STD = 0.5, 0.25




def tiny_images(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images; label-1 images carry a bright block at the bottom (learnable)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    img = rng.integers(0, 160, (n, size, size), dtype=np.uint8)
    img[y == 1, size // 2:, : size // 2] = 250
    return img, y


def cfg(**kw) -> train.PretrainConfig:
    base = dict(backbone="resnet18", init="random", image_size=32, batch_size=8, epochs=2,
                queue_size=32, device="cpu", lr_drops=(), checkpoint_every_steps=2)
    return train.PretrainConfig(**{**base, **kw})


IMAGES, LABELS = tiny_images(24)  # 24 rows, batch 8 -> 3 steps per epoch, 6 steps in all


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at the epoch ends, steps 3 and 6)."""
    out = tmp_path_factory.mktemp("full")
    return out, train.pretrain(IMAGES, np.arange(24), cfg(checkpoint_every_steps=None), out,
                               MEAN, STD, progress=False)


def test_pretrain_writes_log_checkpoint_and_backbone(full_run):
    out, res = full_run
    assert not res["cached"] and res["step"] == 6
    log = pd.read_csv(out / "loss_log.csv")
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(log["epoch"]) == [0, 0, 0, 1, 1, 1]
    assert np.isfinite(log["loss"]).all() and (log["loss"] > 0).all()
    assert [p.name for p in out.iterdir() if "tmp" in p.name] == []
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["done"] and ckpt["config"]["lr"] == 1e-4
    assert {"model", "optimizer", "rng", "epoch"} <= set(ckpt)
    assert ckpt["model"]["queue"].shape == (32, 128)
    assert int(ckpt["model"]["queue_ptr"]) == (6 * 8) % 32
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(out / "backbone.pt", weights_only=True))
    enc_q = {k[len("encoder_q."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder_q.")}
    assert torch.equal(net.state_dict()["conv1.weight"], enc_q["conv1.weight"])


def test_finished_run_is_cached(full_run, monkeypatch):
    out, _ = full_run
    mtime = (out / "checkpoint.pt").stat().st_mtime_ns
    monkeypatch.setattr(train.moco, "MoCo", lambda *a, **k: pytest.fail("retrained"))
    res = train.pretrain(IMAGES, np.arange(24), cfg(), out, MEAN, STD, progress=False)
    assert res["cached"] and len(res["log"]) == 6
    assert (out / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_extend_then_crash_mid_epoch_then_resume_matches_uninterrupted(full_run, tmp_path):
    full_out, _ = full_run
    rows = np.arange(24)
    # 1) a shorter run, then extended: resume continues from step 2
    res = train.pretrain(IMAGES, rows, cfg(max_steps=2), tmp_path, MEAN, STD, progress=False)
    assert res["step"] == 2
    # 2) extended run with a k-NN monitor that "crashes" the process at step 5 (mid epoch 1)
    knn = train.make_knn_monitor(IMAGES, rows[:12], LABELS[:12], rows[12:], LABELS[12:],
                                 MEAN, STD, image_size=32, k=5)
    seen = []

    def monitor(encoder):
        seen.append(1)
        if len(seen) == 3:  # steps 3, 4, then 5
            raise KeyboardInterrupt
        return knn(encoder)

    with pytest.raises(KeyboardInterrupt):
        train.pretrain(IMAGES, rows, cfg(monitor_every=1), tmp_path, MEAN, STD, monitor=monitor,
                       progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["step_in_epoch"] == 1 and not ckpt["done"]
    # 3) restart: resumes at step 4 and ends with exactly the uninterrupted weights and losses
    res = train.pretrain(IMAGES, rows, cfg(), tmp_path, MEAN, STD, progress=False)
    assert res["step"] == 6 and not res["cached"]
    a = torch.load(full_out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    ba = torch.load(full_out / "backbone.pt", weights_only=True)
    bb = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    la, lb = pd.read_csv(full_out / "loss_log.csv"), res["log"]
    assert list(lb["step"]) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(la["loss"].to_numpy(), lb["loss"].to_numpy())
    knn_logged = lb.set_index("step")["knn_auc"]
    assert knn_logged[[3, 4]].between(0, 1).all() and knn_logged[[1, 2, 5, 6]].isna().all()


def test_config_mismatch_and_corrupt_checkpoint_give_clear_errors(full_run, tmp_path):
    out, _ = full_run
    with pytest.raises(ValueError, match=r"lr: saved 0\.0001"):
        train.pretrain(IMAGES, np.arange(24), cfg(lr=1e-3), out, MEAN, STD, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.pt is corrupt"):
        train.pretrain(IMAGES, np.arange(24), cfg(), tmp_path, MEAN, STD, progress=False)
    with open(out / "checkpoint.pt", "rb") as fh:  # a truncated real one
        (tmp_path / "checkpoint.pt").write_bytes(fh.read(1 << 20))
    with pytest.raises(ValueError, match="corrupt"):
        train.load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save({"step": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a mocoxr-pretrain"):
        train.load_checkpoint(tmp_path / "checkpoint.pt")


def test_pretrain_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train.pretrain(IMAGES, np.arange(4), cfg(), tmp_path, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        train.pretrain(IMAGES.astype(np.float32), np.arange(24), cfg(), tmp_path, MEAN, STD)
    with pytest.raises(ValueError, match="outside"):
        train.pretrain(IMAGES, np.arange(20, 40), cfg(), tmp_path, MEAN, STD)


def test_schedule_and_order_are_pure_functions_of_seed_and_step():
    c = train.PretrainConfig(lr=1e-4, lr_drops=(0.6, 0.9))
    assert [train.lr_at(c, s, 100) for s in (0, 59, 60, 89, 90)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-5, 1e-6])
    np.testing.assert_array_equal(train.epoch_order(10, 0, 3), train.epoch_order(10, 0, 3))
    assert not np.array_equal(train.epoch_order(50, 0, 0), train.epoch_order(50, 0, 1))
    assert train.total_steps(cfg(max_steps=4), 24) == 4 and train.total_steps(cfg(), 25) == 6


def test_extract_features_cache_is_reused_and_keyed(tmp_path, monkeypatch):
    model = models.create_backbone("resnet18", "random", seed=0)
    model.train()
    cache = tmp_path / "f.npy"
    rows = np.arange(10)
    f1 = train.extract_features(model, IMAGES, rows, MEAN, STD, 32, batch_size=4, cache_file=cache)
    assert f1.shape == (10, 512) and f1.dtype == np.float32 and model.training
    assert cache.exists() and cache.with_suffix(".json").exists()
    with monkeypatch.context() as m:  # a cache hit computes nothing
        m.setattr(train.augment, "resize_batch", lambda *a: pytest.fail("recomputed"))
        f2 = train.extract_features(model, IMAGES, rows, MEAN, STD, 32, cache_file=cache)
    np.testing.assert_array_equal(f1, f2)
    f4 = train.extract_features(model, IMAGES, rows[:6], MEAN, STD, 32, cache_file=cache)
    np.testing.assert_allclose(f4, f1[:6], rtol=1e-4, atol=1e-5)  # other rows: recomputed
    other = models.create_backbone("resnet18", "random", seed=1)
    f5 = train.extract_features(other, IMAGES, rows[:6], MEAN, STD, 32, cache_file=cache)
    assert not np.allclose(f5, f4)  # other weights: other key, recomputed
    # an explicit key with a lazily built model: built once, then served from the cache
    built = []
    lazy = lambda: built.append(1) or model  # noqa: E731
    train.extract_features(lazy, IMAGES, rows, MEAN, STD, 32, cache_file=tmp_path / "g.npy", key="k")
    train.extract_features(lazy, IMAGES, rows, MEAN, STD, 32, cache_file=tmp_path / "g.npy", key="k")
    assert built == [1]


def test_extract_features_keeps_row_order_and_channels_last_matches_nchw():
    """Rows come back in the order asked (unsorted, a ragged last batch), channels-last and
    NCHW give the same features, and a bad setting is refused before any work."""
    model = models.create_backbone("resnet18", "random", seed=0)
    rows = np.array([7, 2, 19, 0, 11, 5, 23])
    nchw = train.extract_features(model, IMAGES, rows, MEAN, STD, 32, batch_size=3,
                                  channels_last="off")
    assert not train._is_channels_last(model)
    nhwc = train.extract_features(model, IMAGES, rows, MEAN, STD, 32, batch_size=3,
                                  channels_last="on")
    assert train._is_channels_last(model)  # converted in place, like .to(device)
    np.testing.assert_allclose(nhwc, nchw, rtol=1e-4, atol=1e-5)
    one_by_one = np.concatenate([train.extract_features(model, IMAGES, [r], MEAN, STD, 32,
                                                        channels_last="off") for r in rows])
    np.testing.assert_allclose(nchw, one_by_one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels_last"):
        train.extract_features(model, IMAGES, rows, MEAN, STD, 32, channels_last="nhwc")


def test_predict_feeds_a_channels_last_model_and_scores_like_nchw():
    model = train._replace_head(models.create_backbone("resnet18", "random", seed=0), seed=0)
    rows = np.array([3, 1, 2, 0, 9])
    a = train.predict(model, IMAGES, rows, MEAN, STD, 32, batch_size=2)
    b = train.predict(model.to(memory_format=torch.channels_last), IMAGES, rows, MEAN, STD, 32,
                      batch_size=2)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert a.shape == (5,) and np.unique(a).size == 5  # five different images, in order


def test_probe_epochs_follow_the_paper_rule():
    assert [train.probe_epochs(f) for f in (1.0, 0.1, 0.01, 0.001)] == [5, 23, 107, 500]
    assert [train.probe_epochs(f) for f in (0.25, 0.0625)] == [12, 31]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="label_fraction"):
            train.probe_epochs(bad)


def easy_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    X = rng.normal(size=(n, 16)) * 2.0 + 1.0
    X[:, 3] += 5.0 * y
    return X, y


@pytest.mark.parametrize("method,kw", [("logreg", {}), ("adam", dict(lr=1e-2, epochs=20, standardize=True))])
def test_linear_probes_separate_an_easy_problem(method, kw):
    X, y = easy_features(200, 0)
    V, vy = easy_features(100, 1)
    T, ty = easy_features(300, 2)
    s, info = train.linear_probe(X, y, T, method=method, val=(V, vy), seed=0, return_info=True, **kw)
    assert s.shape == (300,) and np.all((s >= 0) & (s <= 1))
    assert roc_auc_score(ty, s) > 0.9
    assert info["val_auc"] > 0.9
    s2 = train.linear_probe(X, y, T, method=method, seed=0, **kw)  # no val: fixed C / last epoch
    assert roc_auc_score(ty, s2) > 0.9


def test_adam_probe_uses_the_paper_epoch_rule_and_keeps_the_best_val_epoch():
    X, y = easy_features(40, 0)
    V, vy = easy_features(40, 1)
    _, info = train.linear_probe(X, y, X, method="adam", label_fraction=0.25, val=(V, vy),
                                 return_info=True)
    assert info["epochs"] == 12 and len(info["val_auc_history"]) == 12
    assert info["val_auc"] == max(info["val_auc_history"])
    assert info["best_epoch"] == 1 + int(np.argmax(info["val_auc_history"]))


def test_linear_probe_rejects_bad_input():
    X, y = easy_features(50, 0)
    with pytest.raises(ValueError, match="one positive and one negative"):
        train.linear_probe(X, np.zeros(50, int), X)
    with pytest.raises(ValueError, match="test_X"):
        train.linear_probe(X, y, X[:, :5])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train.linear_probe(bad, y, X)
    with pytest.raises(ValueError, match="method"):
        train.linear_probe(X, y, X, method="svm")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        train.linear_probe(X, y[:10], X)


def test_probe_scaler_fitted_on_the_unlabelled_pool():
    """With 2 labelled rows a scaler fitted on them maps every feature to +-1; fitted on the
    unlabelled pool it keeps which features vary. The wiring: pool scaler == pre-scaled input."""
    from sklearn.preprocessing import StandardScaler

    pool, pool_y = easy_features(400, 3)
    T, ty = easy_features(300, 2)
    rows = np.array([int(np.flatnonzero(pool_y == 0)[0]), int(np.flatnonzero(pool_y == 1)[0])])
    X, y = pool[rows], pool_y[rows]
    s = train.linear_probe(X, y, T, unlabelled_X=pool, seed=0)
    sc = StandardScaler().fit(pool)
    ref = train.linear_probe(sc.transform(X), y, sc.transform(T), standardize=False, seed=0)
    np.testing.assert_allclose(s, ref)
    own = train.linear_probe(X, y, T, seed=0)  # scaler on the 2 rows: a different model
    assert not np.allclose(s, own)
    with pytest.raises(ValueError, match="unlabelled_X"):
        train.linear_probe(X, y, T, unlabelled_X=pool[:, :5])


def test_monitor_reports_knn_and_linear_auc():
    X, y = easy_features(60, 0)
    images = np.random.default_rng(0).integers(0, 255, size=(60, 32, 32), dtype=np.uint8)
    images[y == 1, 20:, :] = 255  # a bright base: something a random encoder can see
    rows = np.arange(60)
    enc = models.encoder(models.create_backbone("resnet18", init="random", seed=0))
    mon = train.make_knn_monitor(images, rows[:40], y[:40], rows[40:], y[40:], 0.5, 0.25, 32, k=5)
    out = mon(enc)
    assert not train._is_channels_last(enc)  # the monitor keeps the training model's format
    assert set(out) == {"knn_auc", "linear_auc"} and all(0 <= v <= 1 for v in out.values())
    assert out["linear_auc"] > 0.8
    assert set(train.make_knn_monitor(images, rows[:40], y[:40], rows[40:], y[40:], 0.5, 0.25, 32,
                                      linear_C=None)(enc)) == {"knn_auc"}
    with pytest.raises(ValueError, match="linear_C"):
        train.make_knn_monitor(images, rows[:40], y[:40], rows[40:], y[40:], 0.5, 0.25, 32, linear_C=0)


def test_finetune_keeps_the_best_validation_epoch():
    images, y = tiny_images(40, seed=3)
    tr, va = np.arange(24), np.arange(24, 40)
    fcfg = train.FinetuneConfig(image_size=32, batch_size=8, max_epochs=3, label_fraction=1.0,
                                device="cpu", seed=0)
    # score the validation rows as "test": the returned scores must be the best epoch's
    scores, hist = train.finetune("resnet18", "random", images, tr, y[tr], va, y[va], va,
                                  MEAN, STD, fcfg, return_history=True)
    assert list(hist["epoch"]) == [1, 2, 3]  # min(probe_epochs(1.0) = 5, max_epochs = 3)
    best = int(np.argmax(hist["val_auc"].to_numpy()))
    assert hist["best"].tolist() == [i == best for i in range(3)]
    assert roc_auc_score(y[va], scores) == pytest.approx(hist["val_auc"].max(), abs=1e-9)
    with pytest.raises(ValueError, match="both classes"):
        train.finetune("resnet18", "random", images, tr, np.zeros(24, int), va, y[va], va,
                       MEAN, STD, fcfg)


def test_finetune_head_warmup_freezes_the_encoder_and_its_batchnorm(tmp_path, monkeypatch):
    images, y = tiny_images(40, seed=3)
    tr, va = np.arange(24), np.arange(24, 40)
    net = models.create_backbone("resnet18", init="random", seed=5)
    path = models.export_backbone(net, tmp_path / "b.pt")
    before = torch.load(path, weights_only=True)
    kept = {}
    real = train.predict
    def spy(model, *a, **k):  # the state after the (only) epoch
        kept.update({n: t.detach().clone() for n, t in model.state_dict().items()})
        return real(model, *a, **k)
    monkeypatch.setattr(train, "predict", spy)
    fcfg = train.FinetuneConfig(image_size=32, batch_size=8, max_epochs=1, device="cpu",
                                head_warmup_epochs=1)
    train.finetune("resnet18", str(path), images, tr, y[tr], va, y[va], va, MEAN, STD, fcfg)
    body = [n for n in before if not n.startswith("fc.")]
    assert all(torch.equal(before[n], kept[n]) for n in body)  # weights and BN statistics
    fresh_head = train._replace_head(models.create_backbone("resnet18", seed=0), 0).fc.weight
    assert kept["fc.weight"].shape == fresh_head.shape
    assert not torch.equal(kept["fc.weight"], fresh_head.detach())  # the head did train
    # without warm-up the same epoch moves the encoder and its running statistics
    fcfg.head_warmup_epochs = 0
    train.finetune("resnet18", str(path), images, tr, y[tr], va, y[va], va, MEAN, STD, fcfg)
    assert not torch.equal(before["conv1.weight"], kept["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], kept["bn1.running_mean"])


def test_finetune_optimizer_groups_and_bad_options():
    model = train._replace_head(models.create_backbone("resnet18", seed=0), 0)
    opt = train._finetune_optimizer(model, train.FinetuneConfig(lr=1e-3, encoder_lr_scale=0.1),
                                    torch.device("cpu"))
    body, head = opt.param_groups
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        train._finetune_optimizer(model, train.FinetuneConfig(encoder_lr_scale=0),
                                  torch.device("cpu"))
