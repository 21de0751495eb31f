"""Fingerprint of a tiny pretrain -> features -> linear probe -> fine-tune chain.

The literals below were recorded with the code at commit 501e7de (before mocoxr/train.py was split
into pretrain/probe/finetune/distributed, issue 12). The refactor must not change one random draw
or its order: any such change moves these numbers by far more than the tolerance (1e-6 relative,
which only absorbs last-bit differences between CPU instruction sets)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from mocoxr import models, pairs
from mocoxr.finetune import FinetuneConfig, finetune
from mocoxr.pretrain import PretrainConfig, pretrain
from mocoxr.probe import extract_features, fit_linear_probe, linear_probe, make_knn_monitor, state_dict_sha1

MEAN, STD = 0.45, 0.25


def _images(n: int = 32, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def _summary(state: dict) -> list[float]:
    """Order-independent float summaries of a state dict (sum, sum of squares)."""
    ts = [t.double() for t in state.values() if t.is_floating_point()]
    return [float(sum(t.sum() for t in ts)), float(sum((t * t).sum() for t in ts))]


def fingerprint(tmp) -> tuple[dict, dict]:
    """(values compared with a tolerance, exact sha1s for a same-machine check)."""
    images = _images()
    rows, y = np.arange(32), np.arange(32) % 2
    cfg = PretrainConfig(backbone="resnet18", init="random", image_size=32, batch_size=16,
                               epochs=2, lr_drops=(0.5,), queue_size=64, momentum=0.99,
                               bn_splits=4, device="cpu", monitor_every=2)
    mon = make_knn_monitor(images, rows[:16], y[:16], rows[16:], y[16:], MEAN, STD, 32, k=5)
    res = pretrain(images, rows, cfg, tmp / "pre", MEAN, STD, monitor=mon, progress=False)
    log = res["log"]
    backbone = torch.load(res["backbone"], weights_only=True)
    # MedAug pairs: keys from another image of the same patient
    m = __import__("pandas").DataFrame({"patient": [f"p{i // 4}" for i in range(32)]})
    m["study"], m["view"] = m["patient"] + "/s0", "frontal"
    sampler = pairs.PairSampler("same_patient", False,
                                pairs.candidate_table(m, rows, "same_patient"), images)
    pcfg = PretrainConfig(backbone="resnet18", init="random", image_size=32, batch_size=8,
                                epochs=1, max_steps=2, queue_size=32, device="cpu",
                                positive_pairs="same_patient", channels_last="off")
    pres = pretrain(images, rows, pcfg, tmp / "pairs", MEAN, STD, progress=False,
                          pairs=sampler)
    net = models.create_backbone("resnet18", init=res["backbone"])
    feats = extract_features(net, images, rows, MEAN, STD, 32, batch_size=8)
    tr, va, te = rows[:16], rows[16:24], rows[24:]
    logreg = linear_probe(feats[tr], y[tr], feats[te], val=(feats[va], y[va]))
    adam, info = fit_linear_probe(feats[tr], y[tr], feats[te], method="adam", epochs=3,
                                  val=(feats[va], y[va]))
    fcfg = FinetuneConfig(image_size=32, batch_size=8, max_epochs=2, device="cpu",
                                head_warmup_epochs=1, encoder_lr_scale=0.5)
    ft, hist = finetune("resnet18", str(res["backbone"]), images, tr, y[tr], va, y[va], te,
                        MEAN, STD, fcfg)
    values = {
        "loss": log["loss"].tolist()[1:], "lr": log["lr"].tolist(),
        "knn_auc": log["knn_auc"].dropna().tolist(), "linear_auc": log["linear_auc"].dropna().tolist(),
        "backbone": _summary(backbone),
        "pairs_loss": pres["log"]["loss"].tolist(),
        "features": [float(feats.astype(np.float64).sum()), float(np.abs(feats).max())],
        "logreg": logreg.tolist(), "adam": adam.tolist(), "adam_val": info["val_auc_history"],
        "finetune": ft.tolist(), "finetune_loss": hist["train_loss"].tolist(),
    }
    sha = lambda b: hashlib.sha1(b).hexdigest()  # noqa: E731
    exact = {"backbone": state_dict_sha1(net), "features": sha(feats.tobytes()),
             "log": sha(log.to_csv(index=False).encode()),
             "pairs_log": sha(pres["log"].to_csv(index=False).encode()),
             "probes": sha(logreg.tobytes() + adam.tobytes()), "finetune": sha(ft.tobytes()),
             "history": sha(hist.to_csv(index=False).encode())}
    return values, exact


RECORDED: dict = {  # at 501e7de, CPU (AMD EPYC, AVX2), torch 1 thread
    'loss': [1.8152661323547363, 2.96502947807312, 3.6134395599365234, 4.015204906463623],
    'lr': [0.0001, 0.0001, 0.0001, 1e-05, 1e-05],
    'knn_auc': [0.484375, 0.25, 0.4375],
    'linear_auc': [0.453125, 0.328125, 0.53125],
    'backbone': [8838.943084719744, 16604.814642053778],
    'pairs_loss': [1.224490761756897, 2.4308111667633057],
    'features': [1874.0745801503344, 1.0014140605926514],
    'logreg': [0.5195020342557704, 0.5208064769927578, 0.5166766236511771, 0.5142976305534419, 0.5536661246003075, 0.5212938898262216, 0.5271481839625637, 0.5302716275211387],
    'adam': [0.4970797896385193, 0.48471519351005554, 0.4725664258003235, 0.5576019287109375, 0.47867515683174133, 0.4970860779285431, 0.4621184170246124, 0.504418671131134],
    'adam_val': [0.4375, 0.4375, 0.4375],
    'finetune': [0.4980487823486328, 0.48547816276550293, 0.4736539125442505, 0.5586482286453247, 0.4793621897697449, 0.497942715883255, 0.46301180124282837, 0.505318284034729],
    'finetune_loss': [0.7009744644165039, 0.7789860963821411],
}
EXACT_501E7DE = {'backbone': 'c1bf4aeabab7d0ca16a731eca1c4fc014fa2a91b',
                 'features': 'a97d7ed41c1045ffbe7d0997d696b7e1f400c916',
                 'log': '7878bc22796c99a19c6a2aeae2397738b5cf5e16',
                 'pairs_log': '41e413745bb36a1449277ccf981eee6f42d353c1',
                 'probes': '41af83ac4b18ddb0a1cdd6b710111b6acddd1c95',
                 'finetune': 'c79eea0acb5f33040753dd0cbbe076bb6c10e18d',
                 'history': 'f81992369c4ca23456dbbebbd52b749d686183e5'}  # same machine only


def test_tiny_chain_matches_the_numbers_recorded_before_the_split(tmp_path):
    values, _ = fingerprint(tmp_path)
    assert values.keys() == RECORDED.keys()
    for k, v in RECORDED.items():
        np.testing.assert_allclose(values[k], v, rtol=1e-6, atol=1e-9, err_msg=k)


if __name__ == "__main__":  # print the fingerprint (python tests/test_fingerprint.py)
    import json
    import sys
    import tempfile
    from pathlib import Path

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        v, e = fingerprint(Path(d))
    json.dump({"values": v, "exact": e}, sys.stdout, indent=1)
    print("\nexact sha1s as at 501e7de:", e == EXACT_501E7DE, file=sys.stderr)
