"""DenseAdam: Adam's arithmetic on channels-last weights, plain Adam's state dict, and a clear
stop when the model moved after the optimizer was built."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mocoxr import optim


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 6 * 6, 1))
    return net.to(memory_format=torch.channels_last)


def _groups(net: nn.Module) -> list[dict]:
    head = list(net[-1].parameters())
    body = [p for p in net.parameters() if all(p is not h for h in head)]
    return [{"params": body, "lr": 1e-3}, {"params": head, "lr": 3e-3}]


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for s in steps:
        g = torch.Generator().manual_seed(s)
        x = torch.randn(4, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_dense_adam_matches_torch_adam_bit_for_bit(fused):
    a, b = _net(), _net()
    assert optim.is_channels_last_weight(a[0].weight)
    kw = dict(weight_decay=1e-4, fused=fused, foreach=None if fused else True)
    _train(a, torch.optim.Adam(_groups(a), **kw), range(5))
    _train(b, optim.DenseAdam(_groups(b), **kw), range(5))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a[0].weight, _net()[0].weight)  # it trained
    assert b[0].weight.is_contiguous(memory_format=torch.channels_last)  # layout kept


def test_zero_grad_clears_the_models_gradients_and_frozen_parameters_stay():
    net = _net()
    opt = optim.DenseAdam(_groups(net), fused=True)
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    _train(net, opt, range(2))
    assert torch.equal(net[0].weight, frozen)
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_dict_is_plain_adams_and_resuming_continues_the_same_run():
    ref, net = _net(), _net()
    ref_opt = optim.DenseAdam(_groups(ref), fused=True)
    _train(ref, ref_opt, range(6))

    opt = optim.DenseAdam(_groups(net), fused=True)
    _train(net, opt, range(3))
    sd = copy.deepcopy(opt.state_dict())  # as from a checkpoint file
    conv_state = sd["state"][0]["exp_avg"]
    assert conv_state.shape == net[0].weight.shape  # the parameter's shape, not the view's
    torch.optim.Adam(_groups(_net()), fused=True).load_state_dict(sd)  # plain Adam takes it

    resumed = _net()
    resumed.load_state_dict(net.state_dict())
    opt2 = optim.DenseAdam(_groups(resumed), fused=True)
    opt2.load_state_dict(sd)
    _train(resumed, opt2, range(3, 6))
    for (name, pa), pb in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_plain_adam_state_loads_into_dense_adam():
    a, b = _net(), _net()
    opt_a = torch.optim.Adam(_groups(a), fused=True)
    _train(a, opt_a, range(2))
    b.load_state_dict(a.state_dict())
    opt_b = optim.DenseAdam(_groups(b), fused=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint file
    _train(a, opt_a, range(2, 4))
    _train(b, opt_b, range(2, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_moving_the_model_after_building_the_optimizer_is_an_error():
    net = _net()
    opt = optim.DenseAdam(_groups(net), fused=True)
    net.to(memory_format=torch.contiguous_format)
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    with pytest.raises(RuntimeError, match="Build the optimizer after model.to"):
        opt.step()
