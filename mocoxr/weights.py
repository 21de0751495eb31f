"""Exported backbones that load in one line: the model card and :func:`load_backbone`.

Every exported backbone ``<name>.pt`` (a plain torchvision state dict) gets a model card
``<name>.card.json`` beside it: backbone, input size, normalisation, recipe, data, steps,
monitor AUCs, date, the ``mocoxr`` version and the sha256 of the weights file.

``load_backbone(path)`` reads the card and returns the torchvision model in eval mode, as an
**embedding model**: its classifier (``fc`` / ``classifier``) is replaced by ``Identity``, so
``model(model.preprocess(images))`` gives the pooled features the linear probe reads, (B, 512)
for ResNet18, (B, 2048) for ResNet50, (B, 1024) for DenseNet121 (``card["embedding_dim"]``).
``load_backbone(path, head="classifier")`` returns the plain torchvision classifier instead,
for fine-tuning: its 1000-class layer is an untrained placeholder kept for loading
compatibility, to be replaced (e.g. ``model.fc = torch.nn.Linear(512, n_classes)``). Both have

- ``model.card``: the card (a dict);
- ``model.preprocess(images)``: the card's preprocessing. It takes gray images as uint8 (values
  0-255) or float in [0, 1], shaped (H, W), (B, H, W) or (B, 1, H, W), numpy or torch, and
  returns the normalised (B, 3, S, S) float tensor the network was trained on. Documented
  conversions: RGB input ((H, W, 3) or (B, 3, H, W)) becomes gray (the channel mean); any other
  size is resized (shorter side to S, bilinear, then centre crop), as the training cache did.
  Errors: float values outside [0, 1] (already normalised, or 0-255 stored as float), a
  constant image, other channel counts.
- a forward check: calling the model on a tensor that is not (B, 3, S, S) or whose values lie
  outside the range normalisation can produce (e.g. raw 0-255 pixels) raises ``ValueError``
  naming ``model.preprocess`` instead of returning a meaningless, near-constant output.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mocoxr import __version__, keys, models, runtime, store

__all__ = ["CARD_FIELDS", "card_path", "sha256_file", "make_card", "write_model_card",
           "read_model_card", "load_backbone", "Preprocess"]

EMBEDDING_DIM = {"resnet18": 512, "resnet50": 2048, "densenet121": 1024}
HEADS = ("embedding", "classifier")
CARD_FIELDS = ("backbone", "weights_file", "format", "input_size", "input_channels",
               "normalisation", "recipe", "data", "steps", "monitor", "date",
               "mocoxr_version", "sha256")


def card_path(weights: str | Path) -> Path:
    """``backbone.pt`` -> ``backbone.card.json`` (beside the weights)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".card.json")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the model card's checksum)."""
    return keys.file_sha1(path, algorithm="sha256")


def _monitor_summary(log: Any) -> dict[str, dict[str, float]]:
    """First / last / best of every ``*_auc`` column of a pretraining log (DataFrame)."""
    out: dict[str, dict[str, float]] = {}
    if log is None:
        return out
    for col in [c for c in log.columns if str(c).endswith("_auc")]:
        curve = log[col].dropna()
        if len(curve):
            out[col] = {"first": float(curve.iloc[0]), "last": float(curve.iloc[-1]),
                        "best": float(curve.max())}
    return out


def make_card(weights: str | Path, backbone: str, input_size: int, mean: float, std: float,
              recipe: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
              steps: int | None = None, log: Any = None) -> dict[str, Any]:
    """The model card of an exported weights file (see :data:`CARD_FIELDS`)."""
    models._check_name(backbone)
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ValueError(f"model card: mean/std must be finite with std > 0, got {mean}, {std}")
    return {
        "backbone": backbone,
        "weights_file": Path(weights).name,
        "format": f"plain torchvision state dict: torchvision.models.{backbone}().load_state_dict",
        "input_size": int(input_size),
        "input_channels": "3 (the gray image replicated)",
        "embedding_dim": EMBEDDING_DIM[backbone],
        "output": f"load_backbone: (B, {EMBEDDING_DIM[backbone]}) embeddings (classifier -> "
                  "Identity); head='classifier': the torchvision model, 1000-class placeholder fc",
        "normalisation": {"mean": [float(mean)] * 3, "std": [float(std)] * 3,
                          "units": "pixel values scaled to [0, 1]"},
        "recipe": json.loads(json.dumps(dict(recipe or {}), default=str)),
        "data": json.loads(json.dumps(dict(data or {}), default=str)),
        "steps": None if steps is None else int(steps),
        "monitor": _monitor_summary(log),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mocoxr_version": __version__,
        "sha256": sha256_file(weights),
    }


def write_model_card(weights: str | Path, **fields: Any) -> Path:
    """Write ``make_card(weights, **fields)`` beside ``weights`` (atomically); returns its path."""
    path = card_path(weights)
    store.atomic_write_text(path, json.dumps(make_card(weights, **fields), indent=1))
    return path


def read_model_card(weights: str | Path) -> dict[str, Any]:
    """The card beside ``weights``, checked: every field present, sha256 matching the file."""
    weights = Path(weights)
    path = card_path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    if not path.is_file():
        raise FileNotFoundError(
            f"no model card {path.name} beside {weights}: mocoxr writes one with every exported "
            f"backbone; for other weights use mocoxr.models.create_backbone(name, init=path)")
    try:
        card = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"model card {path} is not valid JSON: {e}") from None
    missing = [k for k in CARD_FIELDS if k not in card]
    if missing:
        raise ValueError(f"model card {path} lacks the fields {missing}")
    if card["sha256"] != sha256_file(weights):
        raise ValueError(f"{weights} does not match its model card {path.name} (sha256 differs): "
                         "the weights changed after the card was written")
    return card


class Preprocess:
    """The card's preprocessing: gray uint8 / [0, 1] images -> normalised (B, 3, S, S) float."""

    def __init__(self, size: int, mean: float, std: float, device: str | torch.device) -> None:
        self.size, self.mean, self.std = int(size), float(mean), float(std)
        self.device = torch.device(device)  # the model's: its output goes where the model is

    def __repr__(self) -> str:
        return f"Preprocess(size={self.size}, mean={self.mean:.4f}, std={self.std:.4f})"

    def _gray01(self, images: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.dim() == 3 and x.shape[-1] in (3, 4) and x.shape[0] not in (1, 3, 4):
            x = x.permute(2, 0, 1).unsqueeze(0)  # one (H, W, C) image
        if x.dim() == 2:
            x = x[None, None]
        elif x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images: expected (H, W), (B, H, W), (B, 1, H, W), (H, W, 3) or "
                             f"(B, 3, H, W), got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"images: float values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; pass "
                    "uint8 (0-255) or scale to [0, 1] (already normalised input goes to the model "
                    "directly)")
        else:
            raise ValueError(f"images: expected uint8 or float, got {x.dtype}")
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)  # documented conversion: RGB -> gray
        flat = x.flatten(1)
        if bool((flat.max(1).values - flat.min(1).values == 0).any()):
            raise ValueError("images: a constant image (every pixel equal) carries nothing to "
                             "classify; check how the images were read")
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        return x[..., top:top + self.size, left:left + self.size]

    def __call__(self, images: Any) -> torch.Tensor:
        x = self._resize(self._gray01(images).to(self.device))
        return ((x - self.mean) / self.std).expand(-1, 3, -1, -1).contiguous()


def _input_check(pre: Preprocess):
    lo, hi = (0.0 - pre.mean) / pre.std, (1.0 - pre.mean) / pre.std
    tol = 0.05 * (hi - lo)

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3 \
                or tuple(x.shape[-2:]) != (pre.size, pre.size):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"expected a (B, 3, {pre.size}, {pre.size}) normalised tensor, got "
                             f"{shape}: call model(model.preprocess(images))")
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - tol or xmax > hi + tol:
            raise ValueError(
                f"input values [{xmin:.3g}, {xmax:.3g}] are outside what the card's normalisation "
                f"gives ([{lo:.3g}, {hi:.3g}]): raw pixels? call model(model.preprocess(images))")
    return hook


def load_backbone(path: str | Path, device: str | torch.device = runtime.DEFAULT_DEVICE,
                  expect: str | None = None, check_inputs: bool = True,
                  head: str = "embedding") -> nn.Module:
    """The exported backbone at ``path`` in eval mode, with ``.card``, ``.preprocess`` and
    (``check_inputs``) the forward input check (module docstring). ``head="embedding"``: the
    classifier replaced by Identity, output (B, card["embedding_dim"]); ``"classifier"``: the
    plain torchvision model (placeholder 1000-class head, to replace for fine-tuning).
    ``expect``: the backbone name the caller requires (e.g. hubconf's ``moco_resnet18``)."""
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {HEADS}")
    card = read_model_card(path)
    if expect is not None and card["backbone"] != expect:
        raise ValueError(f"{path} holds a {card['backbone']} (model card), not a {expect}")
    device = runtime.resolve_device(device)
    model = models.create_backbone(card["backbone"], init=Path(path)).eval().to(device)
    card.setdefault("embedding_dim", models.feature_dim(model))  # cards written before the field
    if head == "embedding":
        model = models.encoder(model).eval()
    norm = card["normalisation"]
    model.card = card
    model.preprocess = Preprocess(card["input_size"], norm["mean"][0], norm["std"][0], device)
    if check_inputs:
        model.register_forward_pre_hook(_input_check(model.preprocess))
    return model
