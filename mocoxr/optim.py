"""Adam that updates channels-last weights where they lie.

A channels-last convolution weight (O, I, kh, kw) is one dense block of memory, but not a
*contiguous* (O, I, kh, kw) tensor. torch's fused CPU Adam kernel therefore copies each such
weight, its gradient and both moments to contiguous buffers and back at every step: for a
ResNet18 about a third of a small-batch fine-tuning step on the 2-core CPU. The same memory
read as (O, kh, kw, I) (``weight.permute(0, 2, 3, 1)``) *is* contiguous, and Adam's update is
elementwise, so :class:`DenseAdam` hands the fused kernel those views. The arithmetic is
unchanged: parameters come out bit for bit as with ``torch.optim.Adam``
(``tests/test_optim.py``), and its ``state_dict`` is plain Adam's, in the parameters' shapes.
``benchmarks/bench_optimizer.py`` measures the two side by side.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def is_channels_last_weight(t: torch.Tensor) -> bool:
    """A 4-D tensor stored channels-last (and not also plain contiguous, as 1x1 ones can be)."""
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


def to_dense_view(t: torch.Tensor) -> torch.Tensor:
    """(O, I, kh, kw) -> the (O, kh, kw, I) view of the same memory (contiguous when ``t`` is
    stored channels-last)."""
    return t.permute(0, 2, 3, 1)


def from_dense_view(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_dense_view`: (O, kh, kw, I) -> (O, I, kh, kw), same memory."""
    return t.permute(0, 3, 1, 2)


class DenseAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments) whose update sees each channels-last weight
    through its contiguous view. ``step`` reads the gradients from the model's parameters;
    ``zero_grad`` clears them there. Build it after the model has its final device and memory
    format: moving the model afterwards would leave the optimizer on the old memory, and
    ``step`` then raises rather than train nothing."""

    def __init__(self, params: Iterable, **kwargs: Any) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self._pairs: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        view_groups = []
        for group in groups:
            views = []
            for p in group["params"]:
                permuted = is_channels_last_weight(p)
                view = to_dense_view(p.detach()) if permuted else p.detach()
                self._pairs.append((p, view, permuted))
                views.append(view)
            view_groups.append({**group, "params": views})
        super().__init__(view_groups, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p, _, _ in self._pairs:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()
        super().zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            with torch.enable_grad():
                closure()
        for p, view, permuted in self._pairs:
            if p.data_ptr() != view.data_ptr():
                raise RuntimeError(
                    "DenseAdam: a parameter no longer lives in the memory the optimizer was built "
                    f"on (shape {tuple(p.shape)}); the model was moved or converted after the "
                    "optimizer was made. Build the optimizer after model.to(...).")
            view.grad = None if p.grad is None else (
                to_dense_view(p.grad) if permuted else p.grad)
        return super().step()

    def state_dict(self) -> dict[str, Any]:
        """Plain Adam's state dict: moments in the parameters' own shapes."""
        sd = super().state_dict()
        return {**sd, "state": {i: self._moments(s, from_dense_view, i)
                                for i, s in sd["state"].items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Accepts :meth:`state_dict`'s (and plain Adam's) state."""
        state = {i: self._moments(s, lambda t: to_dense_view(
                     t.contiguous(memory_format=torch.channels_last)), i)
                 for i, s in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})

    def _moments(self, s: dict[str, Any], convert: Any, index: int) -> dict[str, Any]:
        if not self._pairs[int(index)][2]:
            return s
        return {k: convert(v) if k in _MOMENTS and torch.is_tensor(v) and v.dim() == 4 else v
                for k, v in s.items()}
