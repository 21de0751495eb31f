import os

import pytest
import torch
import torch.nn as nn
import torchvision

from mocoxr import models
from mocoxr.models import (
    BACKBONES,
    create_backbone,
    encoder,
    export_backbone,
    feature_dim,
    imagenet_weight_file,
    load_backbone,
)




def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def densenet():
    return create_backbone("densenet121", seed=0)  # slowish: built once for the module


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_backbone("resnet18", seed=0)
    after = torch.rand(1)
    assert torch.equal(before, after)  # global RNG untouched
    assert _same_weights(a, create_backbone("resnet18", seed=0))
    assert not torch.equal(a.conv1.weight, create_backbone("resnet18", seed=1).conv1.weight)
    assert type(a) is torchvision.models.ResNet


def test_feature_dims_and_encoder_outputs(densenet):
    r50 = create_backbone("resnet50")
    assert feature_dim(create_backbone("resnet18")) == 512
    assert feature_dim(r50) == 2048
    assert feature_dim(densenet) == 1024
    model = create_backbone("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    enc = encoder(model)
    assert enc(x).shape == (2, 512) and feature_dim(enc) == 512
    assert model(x).shape == (2, 1000)  # the original keeps its classifier
    enc_d = encoder(densenet)  # (a DenseNet forward is slow on CPU: structure only)
    assert isinstance(enc_d.classifier, nn.Identity) and isinstance(densenet.classifier, nn.Linear)
    assert enc_d.features is densenet.features and feature_dim(enc_d) == 1024
    assert set(BACKBONES) == {"resnet18", "resnet50", "densenet121"}


def test_encoder_shares_parameters():
    model = create_backbone("resnet18")
    enc = encoder(model)
    assert enc.conv1.weight is model.conv1.weight
    with torch.no_grad():
        enc.layer1[0].conv1.weight.add_(1.0)
    assert torch.equal(enc.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    assert isinstance(model.fc, nn.Linear) and isinstance(enc.fc, nn.Identity)
    assert encoder(enc) is enc


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_export_round_trip_with_strict_torchvision_load(name, tmp_path, densenet):
    model = densenet if name == "densenet121" else create_backbone(name, seed=3)
    path = export_backbone(model, tmp_path / "sub" / "backbone.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["backbone.pt"]  # no tmp file left behind
    plain = getattr(torchvision.models, name)()
    plain.load_state_dict(torch.load(path, weights_only=True))  # strict
    assert _same_weights(plain, model)
    assert _same_weights(load_backbone(name, path), model)


def test_export_of_encoder_without_classifier_still_loads_strictly(tmp_path):
    model = create_backbone("resnet18", seed=2)
    enc = encoder(model)
    path = export_backbone(enc, tmp_path / "enc.pt")
    state = torch.load(path, weights_only=True)
    torchvision.models.resnet18().load_state_dict(state)
    assert state["fc.weight"].shape == (1000, 512)
    assert torch.equal(state["layer4.1.bn2.weight"], model.layer4[1].bn2.weight)


def test_init_from_moco_checkpoint_dict(tmp_path):
    src = create_backbone("resnet18", seed=5)
    ckpt = {
        "model": {
            **{f"encoder_q.{k}": v for k, v in encoder(src).state_dict().items()},
            **{f"encoder_k.{k}": torch.zeros_like(v) for k, v in encoder(src).state_dict().items()},
            "head_q.0.weight": torch.zeros(512, 512),
            "queue": torch.zeros(8, 128),
        },
        "optimizer": {"state": {}, "param_groups": []},
        "step": 10,
    }
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    model = create_backbone("resnet18", init=tmp_path / "checkpoint.pt", seed=0)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in own.items())
    # the head, absent from the checkpoint, keeps the seeded random init
    assert torch.equal(model.fc.weight, create_backbone("resnet18", seed=0).fc.weight)
    # DDP-style prefixes work too
    torch.save({"state_dict": {f"module.{k}": v for k, v in ckpt["model"].items()}}, tmp_path / "ddp.pt")
    assert torch.equal(create_backbone("resnet18", init=str(tmp_path / "ddp.pt")).conv1.weight, src.conv1.weight)


def test_corrupt_and_mismatched_files_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="corrupt.pt"):
        create_backbone("resnet18", init=bad)
    good = tmp_path / "r18.pt"
    export_backbone(create_backbone("resnet18"), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pt"):
        create_backbone("resnet18", init=truncated)
    with pytest.raises(ValueError, match=r"r18\.pt.*resnet50"):
        create_backbone("resnet50", init=good)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt"):
        create_backbone("resnet18", init=tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        create_backbone("resnet18", init=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="imagenett"):
        create_backbone("resnet18", init="imagenett")
    with pytest.raises(ValueError, match="resnet34"):
        create_backbone("resnet34")


def test_imagenet_init_without_weights_explains_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weight_file("resnet18") == expected
    with pytest.raises(FileNotFoundError) as err:
        create_backbone("resnet18", init="imagenet")
    msg = str(err.value)
    assert "TORCH_HOME" in msg and "resnet18-f37072fd.pth" in msg and str(expected.parent) in msg
    assert "init=" in msg
    # once the file is in the cache it is used (no download)
    src = create_backbone("resnet18", seed=9)
    expected.parent.mkdir(parents=True)
    torch.save(src.state_dict(), expected)
    assert _same_weights(create_backbone("resnet18", init="imagenet"), src)


def test_old_densenet_checkpoint_keys_are_renamed():
    state = {
        "features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
        "features.denseblock1.denselayer1.conv.2.weight": torch.ones(1),
        "features.norm5.weight": torch.ones(1),
        "classifier.bias": torch.ones(1),
    }
    fixed = models._fix_densenet_keys(state)
    assert set(fixed) == {
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.conv2.weight",
        "features.norm5.weight",
        "classifier.bias",
    }


def test_export_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "b.pt"
    export_backbone(create_backbone("resnet18", seed=1), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(models.torch, "save", boom)
    with pytest.raises(RuntimeError):
        export_backbone(create_backbone("resnet18", seed=2), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["b.pt"]
