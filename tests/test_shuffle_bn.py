"""Shuffle-BN in one process: BatchNorm over groups of the batch, key batch shuffled across them."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from mocoxr import moco
from mocoxr.moco import MoCo, SplitBatchNorm2d, split_batchnorm, split_shuffle, split_unshuffle


def _x(b=8, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, 5, 5, generator=g) * 2 + torch.arange(b).view(b, 1, 1, 1)


def test_one_split_is_ordinary_batchnorm():
    bn, split = nn.BatchNorm2d(3), SplitBatchNorm2d(3, num_splits=1)
    x = _x()
    assert torch.equal(bn(x), split(x))
    assert torch.equal(bn.running_var, split.running_var)


def test_each_group_is_normalised_with_its_own_statistics():
    split = SplitBatchNorm2d(3, num_splits=4)
    x = _x(8)
    out = split(x)
    for g, (xg, og) in enumerate(zip(x.chunk(4), out.chunk(4))):
        expected = F.batch_norm(xg, None, None, training=True)
        assert torch.allclose(og, expected, atol=1e-5), g
    # ordinary BatchNorm normalises with the whole batch: a different output
    assert not torch.allclose(out, nn.BatchNorm2d(3)(x), atol=1e-3)


def test_running_statistics_follow_ordinary_batchnorm():
    bn, split = nn.BatchNorm2d(3), SplitBatchNorm2d(3, num_splits=4)
    x = _x(8)
    bn(x), split(x)
    # the mean of equal groups' means is the batch mean: identical running means
    assert torch.allclose(split.running_mean, bn.running_mean, atol=1e-6)
    # the variance is the mean of the groups' unbiased variances (what 4 devices would hold)
    group_var = torch.stack([xg.var(dim=(0, 2, 3), unbiased=True) for xg in x.chunk(4)]).mean(0)
    assert torch.allclose(split.running_var, 0.9 * torch.ones(3) + 0.1 * group_var, atol=1e-5)
    assert int(split.num_batches_tracked) == 1
    # eval mode: ordinary BatchNorm with the running statistics
    split.eval()
    ref = nn.BatchNorm2d(3).eval()
    ref.load_state_dict(split.state_dict())
    assert torch.equal(split(x), ref(x))


def test_split_batchnorm_keeps_torchvision_state_dict_and_needs_two_images_per_group(tmp_path):
    net = split_batchnorm(torchvision.models.resnet18(num_classes=2), 4)
    kinds = {type(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    assert kinds == {SplitBatchNorm2d}
    plain = torchvision.models.resnet18(num_classes=2)
    plain.load_state_dict(net.state_dict())  # strict: same keys and shapes
    with pytest.raises(ValueError, match="groups of at least 2"):
        net.train()(torch.randn(6, 3, 32, 32))
    with pytest.raises(ValueError, match="bn_splits"):
        split_batchnorm(plain, 0)


def test_split_shuffle_moves_keys_to_other_groups_and_unshuffle_restores_order():
    x = torch.arange(32.0).view(32, 1)
    shuffled, back = split_shuffle(x, torch.Generator().manual_seed(0))
    assert torch.equal(split_unshuffle(shuffled, back), x)
    query_groups = [set(g.view(-1).tolist()) for g in x.chunk(4)]
    key_groups = [set(g.view(-1).tolist()) for g in shuffled.chunk(4)]
    assert all(k != q for k, q in zip(key_groups, query_groups))
    # over many draws, a key shares its query's group about 1 time in 4, not always
    same = 0
    for s in range(50):
        perm_x, _ = split_shuffle(x, torch.Generator().manual_seed(s))
        pos = torch.empty(32, dtype=torch.long)
        pos[perm_x.view(-1).long()] = torch.arange(32)
        same += int((pos // 8 == torch.arange(32) // 8).sum())
    assert 0.15 < same / (50 * 32) < 0.35


@pytest.fixture
def split_moco():
    torch.manual_seed(0)
    return MoCo(backbone="resnet18", dim=16, queue_size=32, momentum=0.9, seed=0, bn_splits=4)


def test_moco_keys_are_computed_shuffled_and_returned_in_order(split_moco, monkeypatch):
    im = torch.randn(8, 3, 32, 32)
    seen = []
    real = moco.split_shuffle
    monkeypatch.setattr(moco, "split_shuffle", lambda x: seen.append(real(x)) or seen[-1])
    torch.manual_seed(3)
    k = split_moco.keys(im)
    (shuffled, back), = seen
    perm = torch.argsort(back)
    assert not torch.equal(perm, torch.arange(8))
    assert torch.equal(shuffled, im[perm])
    expected = F.normalize(split_moco.head_k(split_moco.encoder_k(im[perm])), dim=1)[back]
    assert torch.allclose(k, expected, atol=1e-6)
    # without the unshuffle the keys would be out of order
    assert not torch.allclose(k, expected[perm], atol=1e-3)


def test_moco_with_split_bn_trains_and_exports_plain_torchvision(split_moco, tmp_path):
    im_q, im_k = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    loss, logits = split_moco(im_q, im_k)
    loss.backward()
    assert logits.shape == (8, 33) and torch.isfinite(loss)
    path = split_moco.export_backbone(tmp_path / "b.pt")
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(path, weights_only=True))
    assert not any(isinstance(m, SplitBatchNorm2d) for m in net.modules())
    # eval mode of the split encoder is ordinary BatchNorm: the exported model agrees
    split_moco.eval()
    net.fc = nn.Identity()
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(split_moco.encoder_q(x), net(x), atol=1e-5)
