"""Tests for mocoxr.weights (model card, load_backbone, input checks) and hubconf.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

import mocoxr
from mocoxr import models, weights
from mocoxr.pretrain import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD, SIZE = 0.45, 0.22, 32


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A 2-step MoCo run: pretrain.pretrain exports backbone.pt and writes its card."""
    out = tmp_path_factory.mktemp("pre")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, SIZE, SIZE), dtype=np.uint8)
    cfg = PretrainConfig(backbone="resnet18", init="random", image_size=SIZE, batch_size=8, epochs=1,
                         queue_size=16, device="cpu", lr_drops=(), monitor_every=1)
    monitor = lambda enc: {"knn_auc": 0.5, "linear_auc": 0.6}  # noqa: E731
    pretrain(images, np.arange(16), cfg, out, MEAN, STD, monitor=monitor, progress=False,
             data={"dataset": "random pixels"})
    return out / "backbone.pt"


def test_pretraining_writes_a_complete_model_card(pretrained: Path):
    card = json.loads(weights.card_path(pretrained).read_text())
    assert weights.card_path(pretrained).name == "backbone.card.json"
    assert set(weights.CARD_FIELDS) <= set(card)
    assert card["backbone"] == "resnet18" and card["input_size"] == SIZE and card["steps"] == 2
    assert card["normalisation"]["mean"] == [MEAN] * 3 and card["normalisation"]["std"] == [STD] * 3
    assert card["recipe"]["lr"] == 1e-4 and card["recipe"]["queue_size"] == 16
    assert card["data"] == {"pretraining_images": 16, "dataset": "random pixels"}
    assert card["monitor"]["linear_auc"] == {"first": 0.6, "last": 0.6, "best": 0.6}
    assert card["mocoxr_version"] == mocoxr.__version__ and card["date"].endswith("Z")
    assert card["sha256"] == weights.sha256_file(pretrained)
    # the weights stay a plain torchvision state dict
    torchvision.models.resnet18().load_state_dict(torch.load(pretrained, weights_only=True))


def test_load_backbone_returns_the_weights_in_eval_mode(pretrained: Path):
    model = mocoxr.load_backbone(pretrained)
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    ref = torch.load(pretrained, weights_only=True)
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert model.card["backbone"] == "resnet18"
    x = np.random.default_rng(1).integers(0, 255, (2, SIZE, SIZE), dtype=np.uint8)
    inp = model.preprocess(x)
    assert inp.shape == (2, 3, SIZE, SIZE)
    expected = (torch.from_numpy(x).float() / 255 - MEAN) / STD
    torch.testing.assert_close(inp[:, 0], expected)
    torch.testing.assert_close(inp[:, 2], expected)
    with torch.no_grad():
        out = model(inp)
    assert out.shape == (2, 512) and not torch.allclose(out[0], out[1])  # embeddings
    assert model.card["embedding_dim"] == 512 and "(B, 512)" in model.card["output"]
    clf = mocoxr.load_backbone(pretrained, head="classifier")  # for fine-tuning
    assert isinstance(clf.fc, torch.nn.Linear) and clf.fc.out_features == 1000
    with torch.no_grad():
        assert clf(inp).shape == (2, 1000)
    with pytest.raises(ValueError, match="head="):
        mocoxr.load_backbone(pretrained, head="logits")


def test_embeddings_give_the_linear_probes_auc(pretrained: Path, tmp_path: Path):
    """A logistic regression fitted on load_backbone's embeddings of the embedded (phantom)
    data scores the test images as the package's linear probe does (AUC within 0.01)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mocoxr import data, phantom, probe
    from mocoxr.evaluate import roc_auc

    folder = phantom.generate_chexpert_tree(tmp_path, n_patients=60, n_valid_patients=40,
                                            image_size=40).parent
    prep = data.prepare_chexpert(folder, tmp_path / "m", fractions=[1.0], draws=[1])
    images = data.load_image_cache(prep.manifest["path"].tolist(), SIZE, tmp_path / "c.npy")
    train, test = prep.rows("train"), prep.rows("test")
    y_train, y_test = prep.labels(train), prep.labels(test)
    encoder = models.encoder(models.create_backbone("resnet18", init=pretrained)).eval()
    feats = probe.extract_features(encoder, images, np.arange(len(images)), MEAN, STD, SIZE)
    probe_auc = roc_auc(y_test, probe.linear_probe(feats[train], y_train, feats[test], C=1.0))
    model = mocoxr.load_backbone(pretrained)
    with torch.no_grad():
        emb = model(model.preprocess(np.array(images))).numpy()
    assert emb.shape == (len(images), 512)
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    user_auc = roc_auc(y_test, lr.fit(emb[train], y_train).predict_proba(emb[test])[:, 1])
    assert abs(user_auc - probe_auc) <= 0.01 and 0.0 < probe_auc < 1.0


def test_documented_conversions_give_the_same_input(pretrained: Path):
    pre = mocoxr.load_backbone(pretrained).preprocess
    x = np.random.default_rng(2).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    ref = pre(x)
    torch.testing.assert_close(pre(x.astype(np.float32) / 255), ref)  # [0, 1] floats
    torch.testing.assert_close(pre(np.repeat(x[:, :, None], 3, axis=2)), ref)  # RGB (H, W, 3)
    torch.testing.assert_close(pre(torch.from_numpy(x)[None, None]), ref)  # (B, 1, H, W)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    smooth = (127 + 100 * np.sin(xx / 6.0) * np.cos(yy / 5.0)).astype(np.uint8)
    big = pre(np.kron(smooth, np.ones((2, 2), np.uint8)))  # twice the size: resized back
    assert big.shape == ref.shape and float((big - pre(smooth)).abs().mean()) < 0.1
    assert pre(np.zeros((40, 64), np.uint8) + np.arange(64, dtype=np.uint8)).shape == (1, 3, SIZE, SIZE)


def test_wrong_inputs_get_clear_errors(pretrained: Path):
    model = mocoxr.load_backbone(pretrained)
    x = np.random.default_rng(3).integers(0, 255, (1, SIZE, SIZE), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.preprocess(x.astype(np.float32))  # 0-255 stored as float
    with pytest.raises(ValueError, match="constant"):
        model.preprocess(np.full((SIZE, SIZE), 7, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        model.preprocess(np.zeros((1, 2, SIZE, SIZE), np.uint8))
    raw = torch.from_numpy(x).float()[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        with pytest.raises(ValueError, match="preprocess"):
            model(raw)  # raw 0-255 pixels straight into the network
        with pytest.raises(ValueError, match="preprocess"):
            model(model.preprocess(x)[:, :1])  # one channel
        with pytest.raises(ValueError, match="preprocess"):
            model(torch.zeros(1, 3, SIZE * 2, SIZE * 2))  # wrong size


def test_card_problems_are_reported(pretrained: Path, tmp_path: Path):
    other = tmp_path / "backbone.pt"
    other.write_bytes(pretrained.read_bytes())
    with pytest.raises(FileNotFoundError, match="no model card"):
        weights.load_backbone(other)
    card = json.loads(weights.card_path(pretrained).read_text())
    weights.card_path(other).write_text(json.dumps({**card, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):
        weights.load_backbone(other)
    weights.card_path(other).write_text(json.dumps({k: v for k, v in card.items() if k != "steps"}))
    with pytest.raises(ValueError, match="steps"):
        weights.load_backbone(other)
    weights.card_path(other).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not a densenet121"):
        weights.load_backbone(other, expect="densenet121")


def test_torch_hub_local_loads_resnet18_and_densenet121(pretrained: Path, tmp_path: Path):
    model = torch.hub.load(str(ROOT), "moco_resnet18", source="local", weights=str(pretrained))
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    assert model.card["sha256"] == weights.sha256_file(pretrained)
    dense = models.create_backbone("densenet121", seed=1)
    path = models.export_backbone(dense, tmp_path / "d121.pt")
    weights.write_model_card(path, backbone="densenet121", input_size=SIZE, mean=MEAN, std=STD,
                             steps=0, log=pd.DataFrame({"knn_auc": [0.5]}))
    hub = torch.hub.load(str(ROOT), "moco_densenet121", source="local", weights=str(path))
    assert isinstance(hub, torchvision.models.DenseNet)
    x = np.random.default_rng(4).integers(0, 255, (2, SIZE, SIZE), dtype=np.uint8)
    with torch.no_grad():
        assert hub(hub.preprocess(x)).shape == (2, 1024) and hub.card["embedding_dim"] == 1024
    assert torch.equal(hub.features.conv0.weight, dense.features.conv0.weight)
    with pytest.raises(ValueError, match="not a resnet18"):
        torch.hub.load(str(ROOT), "moco_resnet18", source="local", weights=str(path))
    with pytest.raises(ValueError, match="weights="):
        torch.hub.load(str(ROOT), "moco_resnet18", source="local")
