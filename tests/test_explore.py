"""Tests for mocoxr.explore: the pure functions behind each explorer (figures from the controls'
values and what a run wrote), and the widget redrawing when a control changes (in-process;
tests/test_explore_kernel.py drives the explorers in a real kernel)."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mocoxr import augment, evaluate, experiments, explore, finetune, models, saliency  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def manifest() -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"/d/p{i}.jpg" for i in range(8)],
        "patient": [f"patient{i // 2:05d}" for i in range(8)],
        "study": ["study1"] * 8,
        "view": ["frontal"] * 6 + ["lateral"] * 2,
        "label": [1, 0, 1, 0, 1, 1, 0, 0],
        "raw_label": [1.0, np.nan, -1.0, 0.0, 1.0, -1.0, 0.0, np.nan],
        "split": ["train", "train", "train", "val", "test", "test", "test", "train"],
    })


def images(n: int = 8, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def texts(fig: plt.Figure) -> str:
    out = [t.get_text() for ax in fig.axes for t in ax.texts + [ax.title]]
    for ax in fig.axes:
        for table in ax.tables:
            out += [c.get_text().get_text() for c in table.get_celld().values()]
    return "\n".join(out + [fig._suptitle.get_text() if fig._suptitle else ""])


# ----------------------------------------------------------------------------- 01


def test_select_rows_filters_by_split_label_and_view():
    m = manifest()
    assert explore.select_rows(m).tolist() == list(range(8))
    assert explore.select_rows(m, "train", 1).tolist() == [0, 2]
    assert explore.select_rows(m, "train", explore.ANY, "lateral").tolist() == [7]
    assert explore.select_rows(m.drop(columns="view"), "test", 0, "lateral").tolist() == [6]


def test_manifest_row_shows_raw_label_and_label_after_the_policy():
    m = manifest()
    assert explore.manifest_row(m, 2) == {"row": "2", "patient": "patient00001", "study": "study1",
                                          "view": "frontal", "raw label": "-1 (uncertain)",
                                          "label": "1", "split": "train"}
    assert explore.manifest_row(m, 1)["raw label"] == "blank"
    sz = m[["path", "patient", "label", "split"]]  # Shenzhen: no study, view, raw label
    assert list(explore.manifest_row(sz, 0)) == ["row", "patient", "label", "split"]


def test_image_card_shows_the_chosen_image_and_its_row():
    imgs, m = images(), manifest()
    fig = explore.image_card(imgs, m, "train", 1, explore.ANY, index=1)  # rows 0, 2 -> row 2
    shown = fig.axes[0].images[0].get_array()
    assert np.array_equal(shown, imgs[2])
    text = texts(fig)
    assert "patient00001" in text and "-1 (uncertain)" in text and "image 2 of 2" in text
    assert np.array_equal(explore.image_card(imgs, m, "train", 1, index=99).axes[0].images[0]
                          .get_array(), imgs[2])  # clamped to the last match
    assert "no image with split val, label 1" in texts(explore.image_card(imgs, m, "val", 1))


# ----------------------------------------------------------------------------- 02


def test_views_are_seeded_by_step_and_use_the_training_augmentation():
    img = images(1, 48)[0]
    cfg = augment.AugmentConfig(out_size=32)
    (orig, q, k), params = explore.views(img, cfg, seed=3, step=5)
    (_, q2, k2), _ = explore.views(img, cfg, seed=3, step=5)
    (_, q3, _), _ = explore.views(img, cfg, seed=3, step=6)
    assert orig.shape == q.shape == (32, 32)
    assert np.array_equal(q, q2) and np.array_equal(k, k2) and not np.array_equal(q, q3)
    assert not np.array_equal(q, k)
    assert all(0.85 <= p["scale"] <= 1.0 and abs(p["angle"]) <= 10 for p in params)
    still = augment.AugmentConfig(out_size=32, max_rotation=0, flip_p=0, scale=(1, 1), max_translate=0)
    (orig, q, k), _ = explore.views(img, still, 0, 0)
    assert np.allclose(q, orig, atol=1e-5) and np.allclose(k, orig, atol=1e-5)
    mirror = augment.AugmentConfig(out_size=32, max_rotation=0, flip_p=1, scale=(1, 1), max_translate=0)
    (orig, q, _), params = explore.views(img, mirror, 0, 0)
    assert np.allclose(q, orig[:, ::-1], atol=1e-5) and params[0]["flip"] == 1.0


def test_augment_card_follows_the_sliders():
    imgs, rows = images(4, 40), np.array([1, 3])
    fig = explore.augment_card(imgs, rows, 32, seed=0, overrides={}, index=1, smallest_crop=1.0,
                               rotation=0.0, flip_p=1.0, step=2)
    text = texts(fig)
    assert "image (row 3)" in text and text.count("flipped, +0.0°, crop 1.00") == 2
    assert "step 2" in text
    fig = explore.augment_card(imgs, rows, 32, 0, {}, 0, 0.5, 30.0, 0.0, 0)
    assert "flipped" not in texts(fig)
    with pytest.raises(ValueError, match="flip_p"):
        explore.augment_card(imgs, rows, 32, 0, {}, 0, 0.9, 10.0, 1.5, 0)


# ----------------------------------------------------------------------------- 03 / 04


def write_run(root, experiment="finetune"):
    """A run folder with results.csv and predictions for 2 inits x fractions (0.1: 2 draws, 1.0)."""
    m = manifest()
    test = np.flatnonzero(m["split"] == "test")
    y = m["label"].to_numpy()[test]
    rows = []
    for init in ("moco", "random"):
        for f, draws in ((0.1, (0, 1)), (1.0, (0,))):
            for d in draws:
                s = np.linspace(0, 1, len(test)) + (0.1 * d if init == "moco" else -0.2)
                evaluate.save_predictions(root / "predictions", experiment, "resnet18", init, f, d,
                                          test, y, s)
                rows.append({"experiment": experiment, "backbone": "resnet18", "init": init,
                             "label_fraction": f, "draw": d, "auc": 0.7 + d / 10, "ci_low": 0.5,
                             "ci_high": 0.9, "n_train": 4, "n_test": len(test)})
    pd.DataFrame(rows, columns=evaluate.RESULTS_COLUMNS).to_csv(root / "results.csv", index=False)
    return SimpleNamespace(images=images(), manifest=m, mean=0.5, std=0.25, image_size=32)


def tiny_model():
    return finetune.replace_head(models.create_backbone("resnet18"), 0).eval()


def test_model_card_draws_the_roc_and_the_auc_of_results_csv(tmp_path):
    from sklearn.metrics import roc_curve

    ds = write_run(tmp_path, "linear")
    run = explore.ModelRun(tmp_path, "linear", "resnet18", ds)
    fig = explore.model_card(run, "moco", 0.1, 1)
    _, y, s = evaluate.load_predictions(tmp_path / "predictions", "linear", "resnet18", "moco", 0.1, 1)
    fpr, tpr, _ = roc_curve(y, s)
    assert np.array_equal(fig.axes[0].lines[0].get_xdata(), fpr)
    text = texts(fig)
    assert "AUC 0.800, 95% CI 0.500 to 0.900" in text and "linear: moco, 10% of labels, draw 1" in text
    assert len(fig.axes) == 1
    with pytest.raises(FileNotFoundError, match="no predictions"):
        explore.model_card(run, "moco", 0.01, 0)


def test_model_card_shows_grad_cam_beside_the_true_region(tmp_path, monkeypatch):
    ds = write_run(tmp_path)
    net = tiny_model()
    monkeypatch.setattr(experiments, "load_finetuned",
                        lambda root, exp, bb, init, f, d: net if f == 0.1 else
                        (_ for _ in ()).throw(FileNotFoundError("not kept")))
    mask = np.zeros((32, 32), bool)
    mask[20:, :10] = True
    asked = []
    monkeypatch.setattr(saliency, "phantom_masks",
                        lambda folder, paths, size: asked.append(list(paths)) or mask[None])
    run = explore.ModelRun(tmp_path, "finetune", "resnet18", ds, phantom_folder=tmp_path)
    fig = explore.model_card(run, "moco", 0.1, 0, image=0)  # positives first: test row 4
    assert len(fig.axes) == 4 and "row 4: label 1" in texts(fig)
    cam = fig.axes[2].images[1].get_array()
    x = torch.from_numpy(ds.images[[4]])
    expected = saliency.grad_cam(net, augment.to_model_input(augment.resize_batch(x, 32), 0.5, 0.25))
    assert np.allclose(cam, expected[0], atol=1e-5)
    assert fig.axes[3].collections and asked == [["/d/p4.jpg"]]  # the region's outline
    explore.model_card(run, "moco", 0.1, 0, image=0)
    assert len(asked) == 1  # masks and models are read once
    text = texts(explore.model_card(run, "random", 1.0, 0, image=2))  # row 6, negative
    assert "no kept model" in text and "row 6: label 0" in text
    run.phantom_folder = None
    assert "not a phantom" in texts(explore.model_card(run, "moco", 0.1, 0, image=0))


def test_positives_first():
    assert explore.positives_first(np.array([0, 1, 0, 1])).tolist() == [1, 3, 0, 2]


# ----------------------------------------------------------------------------- the widgets


def png_of(explorer) -> bytes:
    (out,) = explorer.output.outputs
    return base64.b64decode(out["data"]["image/png"])


def test_image_explorer_redraws_when_a_control_changes():
    ds = SimpleNamespace(images=images(), manifest=manifest())
    ex = explore.images(ds)
    first = png_of(ex)
    assert first.startswith(b"\x89PNG") and ex.values()["split"] == "train"
    assert ex.controls["index"].max == 3  # four training images
    ex.controls["split"].value = "test"
    assert ex.controls["index"].max == 2 and png_of(ex) != first
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == png_of(ex)  # what a page without kernel shows


def test_a_failing_redraw_is_reported_in_the_widget():
    ds = SimpleNamespace(images=images(), manifest=manifest())
    ex = explore.images(ds)
    ex.render = lambda **v: (_ for _ in ()).throw(ValueError("bad value"))
    ex.controls["index"].value = 1
    (out,) = ex.output.outputs
    assert out["output_type"] == "stream" and "ValueError: bad value" in out["text"]


def test_augmentation_and_model_explorers(tmp_path):
    ds = write_run(tmp_path, "linear")
    ds.prepared = SimpleNamespace(rows=lambda split: np.flatnonzero(ds.manifest["split"] == split))
    cfg = SimpleNamespace(image_size=32, seed=0, augment={"max_rotation": 5.0})
    ex = explore.augmentations(ds, cfg)
    assert ex.controls["rotation"].value == 5.0 and ex.controls["smallest_crop"].value == 0.85
    before = png_of(ex)
    ex.controls["step"].value = 7
    assert png_of(ex) != before
    mx = explore.models(ds, tmp_path, "linear", "resnet18")
    assert set(mx.controls) == {"init", "fraction", "draw"}  # no Grad-CAM for a linear probe
    assert mx.values() == {"init": "moco", "fraction": 0.1, "draw": 0}
    assert list(mx.controls["draw"].options) == [0, 1]
    mx.controls["fraction"].value = 1.0
    assert list(mx.controls["draw"].options) == [0] and mx.values()["draw"] == 0
    with pytest.raises(FileNotFoundError, match="results.csv not found"):
        explore.models(ds, tmp_path / "empty", "linear", "resnet18")
