import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from mocoxr import moco
from mocoxr.moco import (
    MoCo,
    SplitBatchNorm2d,
    enqueue,
    moco_logits,
    moco_loss,
    projection_head,
    split_batchnorm,
    split_shuffle,
    split_unshuffle,
    update_momentum,
)




def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# --- loss ----------------------------------------------------------------------------------------


def test_moco_loss_matches_naive_computation():
    q, k, queue = _unit(4, 6, seed=1), _unit(4, 6, seed=2), _unit(10, 6, seed=3)
    for t in (0.07, 0.2, 1.0):
        naive = []
        for i in range(4):
            pos = math.exp(float(q[i] @ k[i]) / t)
            neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(10))
            naive.append(-math.log(pos / (pos + neg)))
        assert moco_loss(q, k, queue, t).item() == pytest.approx(sum(naive) / 4, rel=1e-10)


def test_moco_loss_hand_case_orthogonal_queue():
    d, n_neg, t = 8, 5, 0.2
    eye = torch.eye(d, dtype=torch.float64)
    q = k = eye[:1]  # identical query and key: q.k = 1
    queue = eye[1 : 1 + n_neg]  # orthogonal negatives: q.n = 0
    # logits [1/T, 0, ..., 0] -> loss = -1/T + log(exp(1/T) + K) = log(1 + K exp(-1/T))
    expected = math.log(1 + n_neg * math.exp(-1 / t))
    assert moco_loss(q, k, queue, t).item() == pytest.approx(expected, rel=1e-12)
    # the opposite key is much worse: log(exp(-1/T) + K) + 1/T
    assert moco_loss(q, -k, queue, t).item() == pytest.approx(math.log(math.exp(-1 / t) + n_neg) + 1 / t)


def test_moco_logits_layout_and_errors():
    q, k, queue = _unit(3, 4), _unit(3, 4, seed=1), _unit(7, 4, seed=2)
    logits = moco_logits(q, k, queue, 0.5)
    assert logits.shape == (3, 8)
    assert torch.allclose(logits[:, 0], (q * k).sum(1) / 0.5)
    assert torch.allclose(logits[:, 1:], q @ queue.T / 0.5)
    with pytest.raises(ValueError, match="queue"):
        moco_loss(q, k, _unit(7, 5), 0.2)
    with pytest.raises(ValueError, match="key"):
        moco_loss(q, k[:2], queue, 0.2)
    with pytest.raises(ValueError, match="temperature"):
        moco_loss(q, k, queue, 0.0)


def test_projection_head_shape():
    head = projection_head(16, 32, 8)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 16)).shape == (5, 8)
    assert head[0].out_features == 32


# --- momentum -----------------------------------------------------------------------------------


def _pair():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.normal_()
    a[1].running_mean.fill_(2.0)
    a[1].num_batches_tracked.fill_(7)
    return a, b


def test_update_momentum_m0_copies_m1_keeps_m09_is_exact_ema():
    a, b = _pair()
    update_momentum(a, b, 0.0)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert torch.equal(b[1].running_mean, a[1].running_mean) and int(b[1].num_batches_tracked) == 7

    a, b = _pair()
    old = [p.clone() for p in b.parameters()]
    update_momentum(a, b, 1.0)
    assert all(torch.equal(pb, o) for pb, o in zip(b.parameters(), old))

    a, b = _pair()
    old = [p.clone() for p in b.parameters()]
    update_momentum(a, b, 0.9)
    for pa, pb, o in zip(a.parameters(), b.parameters(), old):
        assert torch.allclose(pb, 0.9 * o + 0.1 * pa, atol=1e-7, rtol=0)
        assert not torch.allclose(pb, pa)
    assert torch.equal(b[1].running_mean, a[1].running_mean)  # buffers copied, not averaged


def test_update_momentum_rejects_mismatch_and_bad_m():
    a, b = _pair()
    with pytest.raises(ValueError, match="different parameters"):
        update_momentum(a, nn.Linear(4, 3), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(a, b, 1.5)


# --- queue --------------------------------------------------------------------------------------


def test_enqueue_batches_3_5_7_into_8_with_wraparound():
    k_size, d = 8, 2
    queue = torch.full((k_size, d), -1.0)
    expected = torch.full((k_size, d), -1.0)
    ptr, counter, slot = 0, 0, 0
    for n in (3, 5, 7):
        keys = torch.arange(counter, counter + n, dtype=torch.float32)[:, None].repeat(1, d)
        ptr = enqueue(queue, ptr, keys)
        for i in range(n):  # key number `counter + i` lands in slot (global index) mod K
            expected[slot % k_size] = counter + i
            slot += 1
        counter += n
        assert ptr == slot % k_size
        assert torch.equal(queue, expected)
    # after 15 keys into 8 slots: the last 8 keys (7..14) are all there, oldest overwritten
    assert sorted(queue[:, 0].tolist()) == list(range(7, 15))
    assert ptr == 15 % 8


def test_enqueue_more_keys_than_slots_keeps_the_last_k():
    queue = torch.zeros(4, 1)
    keys = torch.arange(10, dtype=torch.float32)[:, None]
    ptr = enqueue(queue, 1, keys)
    assert ptr == (1 + 10) % 4
    # key i goes to (1 + i) % 4; the last write to each slot wins
    assert queue[:, 0].tolist() == [7.0, 8.0, 9.0, 6.0]
    assert enqueue(queue, 3, torch.zeros(0, 1)) == 3
    with pytest.raises(ValueError, match="ptr"):
        enqueue(queue, 4, keys)
    with pytest.raises(ValueError, match="keys"):
        enqueue(queue, 0, torch.zeros(2, 3))


# --- the model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_moco():
    def make(**kw):
        kw = {"backbone": "resnet18", "queue_size": 8, "momentum": 0.5, "dim": 16, "seed": 0, **kw}
        return MoCo(**kw)

    return make


def _views(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)


def test_moco_structure(small_moco):
    m = small_moco()
    assert isinstance(m.encoder_q, torchvision.models.ResNet) and isinstance(m.encoder_q.fc, nn.Identity)
    assert m.head_q[0].in_features == 512 and m.head_q[0].out_features == 512 and m.head_q[2].out_features == 16
    assert m.queue.shape == (8, 16) and int(m.queue_ptr) == 0
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(8))
    assert all(not p.requires_grad for p in m.encoder_k.parameters())
    assert all(torch.equal(a, b) for a, b in zip(m.encoder_q.parameters(), m.encoder_k.parameters()))
    assert "queue" in m.state_dict() and "queue_ptr" in m.state_dict()
    v1 = small_moco(mlp=False)
    assert len(v1.head_q) == 1


def _vec(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def test_moco_step_momentum_queue_gradients_and_short_last_batch(small_moco):
    m = small_moco()
    with torch.no_grad():  # make q and k encoders differ, so the EMA is visible
        for p in m.encoder_q.parameters():
            p.add_(0.01 * torch.randn_like(p))
    queue0 = m.queue.clone()
    ptr = 0
    for step, b in enumerate((3, 5)):  # 3 + 5 = 8: the last (short) batch wraps the queue to 0
        im_q, im_k = _views(b, seed=step)
        q_old, k_old = _vec(m.encoder_q.parameters()), _vec(m.encoder_k.parameters())
        queue_before = m.queue.clone()
        m.zero_grad(set_to_none=True)
        loss, logits = m(im_q, im_k)
        assert logits.shape == (b, 9) and torch.isfinite(loss)
        # the loss is the InfoNCE of the returned logits; the negatives are the queue *before* this step
        assert torch.allclose(loss, F.cross_entropy(logits, torch.zeros(b, dtype=torch.long)))
        with torch.no_grad():  # recompute q and k: same batch -> same BatchNorm statistics
            q_new = F.normalize(m.head_q(m.encoder_q(im_q)), dim=1)
            k_new = F.normalize(m.head_k(m.encoder_k(im_k)), dim=1)
        assert torch.allclose(logits[:, 0], (q_new * k_new).sum(1) / m.temperature, atol=1e-4)
        assert torch.allclose(logits[:, 1:], q_new @ queue_before.T / m.temperature, atol=1e-4)
        loss.backward()
        # key encoder: exact EMA (m = 0.5) of the pre-step weights, and never a gradient
        assert torch.allclose(_vec(m.encoder_k.parameters()), 0.5 * k_old + 0.5 * q_old, atol=1e-6)
        assert all(p.grad is None for p in list(m.encoder_k.parameters()) + list(m.head_k.parameters()))
        assert m.encoder_q.conv1.weight.grad is not None and m.head_q[0].weight.grad is not None
        # the enqueued rows are the keys of im_k, in their circular slots; the others are untouched
        rows = [(ptr + i) % 8 for i in range(b)]
        assert torch.allclose(m.queue[rows], k_new, atol=1e-5)
        untouched = [r for r in range(8) if r not in rows]
        assert torch.equal(m.queue[untouched], queue_before[untouched])
        ptr = (ptr + b) % 8
        assert int(m.queue_ptr) == ptr
    assert int(m.queue_ptr) == 0
    assert not torch.isclose(m.queue, queue0).all(dim=1).any()  # every initial key was replaced
    # a batch larger than the queue (and odd) still works
    loss, _ = m(*_views(11, seed=9))
    assert torch.isfinite(loss) and int(m.queue_ptr) == 11 % 8


def test_moco_eval_mode_is_pure_and_uses_moco_loss(small_moco):
    m = small_moco().eval()  # eval: BN uses running stats, so q and k can be recomputed exactly
    with torch.no_grad():
        m.encoder_q.conv1.weight.add_(0.1)
    queue, kw = m.queue.clone(), _vec(m.encoder_k.parameters())
    im_q, im_k = _views(2, seed=4)
    with torch.no_grad():
        loss, logits = m(im_q, im_k)
        q = F.normalize(m.head_q(m.encoder_q(im_q)), dim=1)
        k = F.normalize(m.head_k(m.encoder_k(im_k)), dim=1)
    assert torch.allclose(logits, moco_logits(q, k, queue, m.temperature), atol=1e-5)
    assert torch.allclose(loss, moco_loss(q, k, queue, m.temperature), atol=1e-5)
    # no momentum update, no enqueue outside training
    assert torch.equal(m.queue, queue) and int(m.queue_ptr) == 0
    assert torch.equal(_vec(m.encoder_k.parameters()), kw)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # logits stay fp32 under AMP
        loss_bf16, logits_bf16 = m(im_q, im_k)
    assert logits_bf16.dtype == torch.float32 and torch.isfinite(loss_bf16)


def test_moco_seeded_and_export_backbone(small_moco, tmp_path):
    a, b = small_moco(seed=3), small_moco(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    path = a.export_backbone(tmp_path / "backbone.pt")
    plain = torchvision.models.resnet18()
    plain.load_state_dict(torch.load(path, weights_only=True))  # strict
    assert torch.equal(plain.layer3[0].conv1.weight, a.encoder_q.layer3[0].conv1.weight)
    # and a full MoCo checkpoint dict initialises a backbone with the query encoder
    torch.save({"model": a.state_dict(), "step": 1}, tmp_path / "checkpoint.pt")
    from mocoxr.models import create_backbone

    r = create_backbone("resnet18", init=tmp_path / "checkpoint.pt")
    assert torch.equal(r.layer4[1].bn2.running_var, a.encoder_q.layer4[1].bn2.running_var)


# --- shuffle-BN in one process: BatchNorm over groups of the batch, keys shuffled across them


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
