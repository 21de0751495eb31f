"""Backbones (torchvision ResNet-18/50, DenseNet-121), their initialisations, export and loading.

Every model here is a *plain torchvision model*, so a backbone exported by mocoxr loads into
``torchvision.models.resnet18()`` with a strict ``load_state_dict`` and vice versa.

Initialisations (``init``):
- ``"random"``: torchvision's default initialisation under ``torch.manual_seed(seed)`` (the global
  RNG state is restored afterwards).
- ``"imagenet"``: torchvision's ImageNet weights (``IMAGENET1K_V1``, the weights the paper's
  ``pretrained=True`` loaded), read from the torch hub cache ``$TORCH_HOME/hub/checkpoints/``
  (default ``~/.cache/torch/hub/checkpoints``) **without downloading**. When the file is not there
  a ``FileNotFoundError`` says which file to put where (or to pass its path as ``init``).
- a path: an exported backbone (plain torchvision state dict), a torchvision weight file, or a
  mocoxr MoCo checkpoint (a dict whose ``"model"``/``"state_dict"`` entry, or the dict itself,
  holds ``encoder_q.*`` keys; a DDP ``module.`` prefix is accepted). Only the classifier may be
  missing from a checkpoint (MoCo's query encoder has none); it then keeps its seeded random init.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from mocoxr import store
from mocoxr.schema import BACKBONES

__all__ = [
    "BACKBONES",
    "IMAGENET_WEIGHTS",
    "create_backbone",
    "feature_dim",
    "encoder",
    "head_name",
    "export_backbone",
    "load_backbone",
    "load_state_dict_file",
    "imagenet_weight_file",
]


# torchvision weight enums used for init="imagenet": IMAGENET1K_V1 are the original
# (pre-2021) torchvision weights, i.e. what `pretrained=True` gave the paper's code.
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "densenet121": "DenseNet121_Weights.IMAGENET1K_V1",
}

# Old torchvision DenseNet checkpoints name layers 'norm.1', 'conv.2', ...; modern modules 'norm1'.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


def head_name(model: nn.Module) -> str:
    """Attribute holding the classifier: ``fc`` (ResNet) or ``classifier`` (DenseNet)."""
    if isinstance(model, torchvision.models.ResNet):
        return "fc"
    if isinstance(model, torchvision.models.DenseNet):
        return "classifier"
    raise ValueError(f"expected a torchvision ResNet or DenseNet, got {type(model).__name__}")


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features (512 resnet18, 2048 resnet50, 1024 densenet121).

    Read from the network itself, so it also works when the classifier was replaced by Identity.
    """
    if isinstance(model, torchvision.models.ResNet):
        last = model.layer4[-1]
        bn = last.bn3 if hasattr(last, "bn3") else last.bn2  # Bottleneck / BasicBlock
        return int(bn.num_features)
    if isinstance(model, torchvision.models.DenseNet):
        return int(model.features.norm5.num_features)
    raise ValueError(f"expected a torchvision ResNet or DenseNet, got {type(model).__name__}")


def encoder(model: nn.Module) -> nn.Module:
    """The model as a feature extractor (B,3,H,W) -> (B,D): classifier replaced by Identity.

    A shallow copy that **shares every parameter and buffer** with ``model`` (training one trains
    the other); ``model`` itself keeps its classifier. Returns ``model`` when its head already is
    Identity.
    """
    name = head_name(model)
    if isinstance(getattr(model, name), nn.Identity):
        return model
    enc = copy.copy(model)
    enc._modules = type(model._modules)(model._modules)  # own module table, shared modules
    setattr(enc, name, nn.Identity())
    return enc


def _fix_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _weights_enum(name: str):
    enum_name, member = IMAGENET_WEIGHTS[name].split(".")
    return getattr(getattr(torchvision.models, enum_name), member)


def imagenet_weight_file(name: str) -> Path:
    """Where torchvision caches the ImageNet weights of ``name`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    _check_name(name)
    url = _weights_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_missing_error(name: str, path: Path) -> FileNotFoundError:
    url = _weights_enum(name).url
    return FileNotFoundError(
        f"ImageNet weights for {name} not found at {path} (mocoxr never downloads; this machine may "
        f"be offline). Provide them in one of two ways:\n"
        f"  1. put the torchvision weight file {path.name} (from {url}) in $TORCH_HOME/hub/checkpoints/ "
        f"(here: {path.parent}); on a machine with internet, "
        f"`python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"` "
        f"fills that cache, then copy it or set TORCH_HOME to it;\n"
        f"  2. or pass the file's path as init, e.g. init='/path/to/{path.name}'."
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint (``weights_only=True``) and return the backbone state dict inside it.

    Accepts a plain state dict, or a dict with ``model``/``state_dict`` holding one; MoCo keys
    (``encoder_q.``, optionally ``module.encoder_q.``) are reduced to the query encoder.
    Errors (missing, unreadable, no tensors) name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, not a torch file, unsafe pickle
        raise ValueError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {path} holds no state dict (expected a dict of tensors, or a dict with a "
            f"'model'/'state_dict' entry), got {type(obj).__name__}"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("encoder_q.") for k in state):
        state = {k[len("encoder_q."):]: v for k, v in state.items() if k.startswith("encoder_q.")}
    return _fix_densenet_keys(state)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Load ``state``; only the classifier may be missing; anything else is a clear error."""
    head = head_name(model) + "."
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    bad_missing = [k for k in missing if not k.startswith(head)]
    if bad_missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {source} does not fit a torchvision {name}: "
            f"{len(bad_missing)} missing keys {bad_missing[:4]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:4]}, {len(shapes)} shape mismatches {shapes[:3]}"
        )
    model.load_state_dict({**own, **state}, strict=True)


def create_backbone(name: str, init: str | Path = "random", seed: int = 0) -> nn.Module:
    """A plain torchvision ``name`` model (with its 1000-class head) initialised by ``init``.

    ``init``: ``"random"`` (seeded), ``"imagenet"`` (from the torch hub cache, never downloaded),
    or a path to an exported backbone / torchvision weight file / mocoxr MoCo checkpoint.
    """
    _check_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, name)(weights=None)
    init_s = str(init)
    if isinstance(init, str) and init == "random":
        return model
    if isinstance(init, str) and init == "imagenet":
        path = imagenet_weight_file(name)
        if not path.is_file():
            raise _imagenet_missing_error(name, path)
        _load_into(model, load_state_dict_file(path), str(path), name)
        return model
    path = Path(init_s).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"init {init_s!r} is neither 'random', 'imagenet' nor an existing checkpoint file"
        )
    _load_into(model, load_state_dict_file(path), str(path), name)
    return model


def _atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` through :func:`store.atomic_write` (a reader never sees half a file)."""
    store.atomic_write(path, lambda fh: torch.save(obj, fh))
    return Path(path)


def _plain_state_dict(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of the model as torchvision builds it; an Identity head becomes a placeholder
    1000-class linear layer (seeded default init) so strict torchvision loading works."""
    name = head_name(model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if isinstance(getattr(model, name), nn.Identity):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Linear(feature_dim(model), 1000)
        state.update({f"{name}.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    return state


def export_backbone(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights as a plain torchvision state dict, atomically (tmp + os.replace).

    The file loads strictly into ``torchvision.models.<name>()`` with
    ``torch.load(path, weights_only=True)``. A model whose classifier is Identity (a MoCo encoder)
    gets a placeholder, seeded, 1000-class classifier: downstream code replaces it anyway.
    """
    return _atomic_save(_plain_state_dict(model), path)


def load_backbone(name: str, path: str | Path) -> nn.Module:
    """``create_backbone(name, init=path)``: a torchvision model with the weights of ``path``."""
    return create_backbone(name, init=Path(path))
