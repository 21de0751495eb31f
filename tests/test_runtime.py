"""runtime: one device default for the whole package."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import mocoxr
from mocoxr import runtime


def _device_defaults() -> dict[str, object]:
    """The default of every public ``device`` parameter and dataclass field in mocoxr."""
    found = {}
    for info in pkgutil.walk_packages(mocoxr.__path__, "mocoxr."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            where = f"{module.__name__}.{name}"
            if dataclasses.is_dataclass(obj):
                for f in dataclasses.fields(obj):
                    if f.name == "device" and f.default is not dataclasses.MISSING:
                        found[where] = f.default
            elif inspect.isfunction(obj) or inspect.isclass(obj):
                try:
                    params = inspect.signature(obj).parameters
                except (TypeError, ValueError):
                    continue
                if "device" in params and params["device"].default is not inspect.Parameter.empty:
                    found[where] = params["device"].default
    return found


def test_every_device_default_is_the_one_default():
    defaults = _device_defaults()
    assert {"mocoxr.pretrain.PretrainConfig", "mocoxr.finetune.FinetuneConfig",
            "mocoxr.probe.extract_features", "mocoxr.weights.load_backbone"} <= set(defaults)
    others = {k: v for k, v in defaults.items() if v != runtime.DEFAULT_DEVICE}
    assert not others, f"device defaults other than runtime.DEFAULT_DEVICE: {others}"


def test_the_default_resolves_to_a_device_that_exists():
    import torch

    dev = runtime.resolve_device(runtime.DEFAULT_DEVICE)
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
