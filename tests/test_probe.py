"""Tests for mocoxr.probe: feature extraction and its cache, the k-NN monitor, the probe epoch
rule and the linear probes. Tiny sizes: 32 px, resnet18, CPU."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mocoxr import augment, models, probe, runtime

from tiny_images import MEAN, STD, tiny_images


IMAGES, LABELS = tiny_images(24)


def test_extract_features_cache_is_reused_and_keyed(tmp_path, monkeypatch):
    model = models.create_backbone("resnet18", "random", seed=0)
    model.train()
    cache = tmp_path / "f.npy"
    rows = np.arange(10)
    f1 = probe.extract_features(model, IMAGES, rows, MEAN, STD, 32, batch_size=4, cache_file=cache)
    assert f1.shape == (10, 512) and f1.dtype == np.float32 and model.training
    assert cache.exists() and cache.with_suffix(".json").exists()
    with monkeypatch.context() as m:  # a cache hit computes nothing
        m.setattr(augment, "resize_batch", lambda *a: pytest.fail("recomputed"))
        f2 = probe.extract_features(model, IMAGES, rows, MEAN, STD, 32, cache_file=cache)
    np.testing.assert_array_equal(f1, f2)
    f4 = probe.extract_features(model, IMAGES, rows[:6], MEAN, STD, 32, cache_file=cache)
    np.testing.assert_allclose(f4, f1[:6], rtol=1e-4, atol=1e-5)  # other rows: recomputed
    other = models.create_backbone("resnet18", "random", seed=1)
    f5 = probe.extract_features(other, IMAGES, rows[:6], MEAN, STD, 32, cache_file=cache)
    assert not np.allclose(f5, f4)  # other weights: other key, recomputed
    # an explicit key with a lazily built model: built once, then served from the cache
    built = []
    lazy = lambda: built.append(1) or model  # noqa: E731
    probe.extract_features(lazy, IMAGES, rows, MEAN, STD, 32, cache_file=tmp_path / "g.npy", key="k")
    probe.extract_features(lazy, IMAGES, rows, MEAN, STD, 32, cache_file=tmp_path / "g.npy", key="k")
    assert built == [1]


def test_extract_features_keeps_row_order_and_channels_last_matches_nchw():
    """Rows come back in the order asked (unsorted, a ragged last batch), channels-last and
    NCHW give the same features, and a bad setting is refused before any work."""
    model = models.create_backbone("resnet18", "random", seed=0)
    rows = np.array([7, 2, 19, 0, 11, 5, 23])
    nchw = probe.extract_features(model, IMAGES, rows, MEAN, STD, 32, batch_size=3,
                                  channels_last="off")
    assert not runtime.is_channels_last(model)
    nhwc = probe.extract_features(model, IMAGES, rows, MEAN, STD, 32, batch_size=3,
                                  channels_last="on")
    assert runtime.is_channels_last(model)  # converted in place, like .to(device)
    np.testing.assert_allclose(nhwc, nchw, rtol=1e-4, atol=1e-5)
    one_by_one = np.concatenate([probe.extract_features(model, IMAGES, [r], MEAN, STD, 32,
                                                        channels_last="off") for r in rows])
    np.testing.assert_allclose(nchw, one_by_one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels_last"):
        probe.extract_features(model, IMAGES, rows, MEAN, STD, 32, channels_last="nhwc")


def test_probe_epochs_follow_the_paper_rule():
    assert [probe.probe_epochs(f) for f in (1.0, 0.1, 0.01, 0.001)] == [5, 23, 107, 500]
    assert [probe.probe_epochs(f) for f in (0.25, 0.0625)] == [12, 31]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="label_fraction"):
            probe.probe_epochs(bad)


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
    s, info = probe.fit_linear_probe(X, y, T, method=method, val=(V, vy), seed=0, **kw)
    assert s.shape == (300,) and np.all((s >= 0) & (s <= 1))
    assert roc_auc_score(ty, s) > 0.9
    assert info["val_auc"] > 0.9
    s2 = probe.linear_probe(X, y, T, method=method, seed=0, **kw)  # no val: fixed C / last epoch
    assert roc_auc_score(ty, s2) > 0.9


def test_adam_probe_uses_the_paper_epoch_rule_and_keeps_the_best_val_epoch():
    X, y = easy_features(40, 0)
    V, vy = easy_features(40, 1)
    _, info = probe.fit_linear_probe(X, y, X, method="adam", label_fraction=0.25, val=(V, vy))
    assert info["epochs"] == 12 and len(info["val_auc_history"]) == 12
    assert info["val_auc"] == max(info["val_auc_history"])
    assert info["best_epoch"] == 1 + int(np.argmax(info["val_auc_history"]))


def test_linear_probe_rejects_bad_input():
    X, y = easy_features(50, 0)
    with pytest.raises(ValueError, match="one positive and one negative"):
        probe.linear_probe(X, np.zeros(50, int), X)
    with pytest.raises(ValueError, match="test_X"):
        probe.linear_probe(X, y, X[:, :5])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe.linear_probe(bad, y, X)
    with pytest.raises(ValueError, match="method"):
        probe.linear_probe(X, y, X, method="svm")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        probe.linear_probe(X, y[:10], X)


def test_probe_scaler_fitted_on_the_unlabelled_pool():
    """With 2 labelled rows a scaler fitted on them maps every feature to +-1; fitted on the
    unlabelled pool it keeps which features vary. The wiring: pool scaler == pre-scaled input."""
    from sklearn.preprocessing import StandardScaler

    pool, pool_y = easy_features(400, 3)
    T, ty = easy_features(300, 2)
    rows = np.array([int(np.flatnonzero(pool_y == 0)[0]), int(np.flatnonzero(pool_y == 1)[0])])
    X, y = pool[rows], pool_y[rows]
    s = probe.linear_probe(X, y, T, unlabelled_X=pool, seed=0)
    sc = StandardScaler().fit(pool)
    ref = probe.linear_probe(sc.transform(X), y, sc.transform(T), standardize=False, seed=0)
    np.testing.assert_allclose(s, ref)
    own = probe.linear_probe(X, y, T, seed=0)  # scaler on the 2 rows: a different model
    assert not np.allclose(s, own)
    with pytest.raises(ValueError, match="unlabelled_X"):
        probe.linear_probe(X, y, T, unlabelled_X=pool[:, :5])


def test_monitor_reports_knn_and_linear_auc():
    X, y = easy_features(60, 0)
    images = np.random.default_rng(0).integers(0, 255, size=(60, 32, 32), dtype=np.uint8)
    images[y == 1, 20:, :] = 255  # a bright base: something a random encoder can see
    rows = np.arange(60)
    enc = models.encoder(models.create_backbone("resnet18", init="random", seed=0))
    mon = probe.make_knn_monitor(images, rows[:40], y[:40], rows[40:], y[40:], 0.5, 0.25, 32, k=5)
    out = mon(enc)
    assert not runtime.is_channels_last(enc)  # the monitor keeps the training model's format
    assert set(out) == {"knn_auc", "linear_auc"}
    assert out["linear_auc"] > 0.8
    assert set(probe.make_knn_monitor(images, rows[:40], y[:40], rows[40:], y[40:], 0.5, 0.25, 32,
                                      linear_C=None)(enc)) == {"knn_auc"}
    with pytest.raises(ValueError, match="linear_C"):
        probe.make_knn_monitor(images, rows[:40], y[:40], rows[40:], y[40:], 0.5, 0.25, 32, linear_C=0)
