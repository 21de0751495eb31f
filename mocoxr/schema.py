"""What every notebook parameter may hold: types, ranges and choices, checked when a profile is
loaded so that a bad value is refused with the file, the key, the value and what was expected
(instead of failing deep inside a notebook without naming the key).

A checker is a callable ``value -> None | str``: None when the value is fine, else a description
of what was expected. Parameters and dict keys without a checker here must at least have the type
of the notebook's default (an int is accepted for a float; a None default accepts anything).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

Checker = Callable[[Any], "str | None"]
# A checker applies to a notebook whose own default passes it (a notebook with another meaning
# for the same name, e.g. a test stand-in, gets the type check of its default instead).

# The one definition of each choice (models and data import them from here: this module
# imports neither torch nor pandas, so checking a profile stays fast).
BACKBONES = ("resnet18", "resnet50", "densenet121")
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None, none: bool = False) -> Checker:
    want = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" and <= {hi}" if hi is not None else "")
    want += " (or null)" if none else ""
    return lambda v: None if (v is None and none) or (
        _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)) else want


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, none: bool = False) -> Checker:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    want = "a number" + (" " + " and ".join(parts) if parts else "") + (" (or null)" if none else "")

    def check(v: Any) -> str | None:
        if v is None and none:
            return None
        if not _is_num(v):
            return want
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return want
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return want
        return None
    return check


def choice(*values: Any) -> Checker:
    return lambda v: None if any(v == c and type(v) is type(c) for c in values) else \
        f"one of {list(values)}"


def boolean() -> Checker:
    return lambda v: None if isinstance(v, bool) else "true or false"


def text(none: bool = False) -> Checker:
    return lambda v: None if isinstance(v, str) and v or (v is None and none) else \
        "a non-empty string" + (" (or null)" if none else "")


def list_of(item: Checker, min_len: int = 1, none: bool = False) -> Checker:
    def check(v: Any) -> str | None:
        if v is None and none:
            return None
        if not isinstance(v, list) or len(v) < min_len:
            return f"a list of at least {min_len} item(s)" + (" (or null)" if none else "")
        bad = [(i, item(x)) for i, x in enumerate(v) if item(x)]
        return f"a list whose items are each {bad[0][1]} (item {bad[0][0]} is {v[bad[0][0]]!r})" if bad else None
    return check


def device(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", v)
    return None if ok else "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"


RECORDED_DIR = "book/recorded"  # where a profile may have a notebook write (project-relative)


def project_path(under: str | None = None, suffix: str | None = None, none: bool = False) -> Checker:
    """A relative path inside the project (no ``..``, not absolute), optionally under the
    folder ``under`` and ending in ``suffix``; symbolic links are checked by :func:`escapes`."""
    want = ("a relative path inside the project" + (f" under {under}/" if under else "")
            + (f" ending in {suffix}" if suffix else "") + ", without '..'" + (" (or null)" if none else ""))

    def check(v: Any) -> str | None:
        if v is None and none:
            return None
        if not isinstance(v, str) or not v or v.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", v):
            return want
        parts = [p for p in re.split(r"[\\/]+", v) if p not in ("", ".")]
        if ".." in parts or (under and parts[:len(under.split("/"))] != under.split("/")) \
                or (suffix and not v.endswith(suffix)):
            return want
        return None
    return check


def escapes(root: Any, value: str, under: str = RECORDED_DIR) -> bool:
    """Whether project-relative ``value`` resolves (symbolic links followed) outside
    ``<root>/<under>``."""
    from pathlib import Path

    base = (Path(root) / under).resolve()
    target = (Path(root) / value).resolve()
    return target != base and base not in target.parents


FRACTION = number(0, 1, lo_open=True)
FRACTIONS = list_of(FRACTION)
DRAWS = list_of(integer(1))
SWITCH = lambda v: None if v in ("auto", "on", "off") and isinstance(v, str) else "'auto', 'on' or 'off'"  # noqa: E731
LINEAR = {"method": choice("logreg", "adam"), "fractions": list_of(FRACTION, none=True),
          "max_draws": integer(1, none=True), "batch_size": integer(1),
          "standardize_on": choice("train_split", "labelled")}
FINETUNE = {"fractions": list_of(FRACTION, none=True), "max_draws": integer(1, none=True),
            "max_epochs": integer(1, none=True), "batch_size": integer(1),
            "lr": number(0, lo_open=True), "overwrite": boolean(),
            "head_warmup_epochs": integer(0), "encoder_lr_scale": number(0, lo_open=True),
            "min_steps": integer(0), "n_evals": integer(1)}

PARAMETERS: dict[str, Checker | dict[str, Checker]] = {
    "seed": integer(0),
    "device": device,
    "image_size": integer(8, 4096),
    "n_boot": integer(1),
    "backbone": choice(*BACKBONES),
    "baseline": choice("random", "imagenet"),
    "data_dir": text(none=True),
    "shenzhen_dir": text(none=True),
    "embedding": choice("umap", "pca"),
    "embedding_max": integer(3),
    "recorded": project_path(none=True),
    "recorded_seeds": project_path(),
    "record": {"csv": project_path(RECORDED_DIR, ".csv", none=True), "command": text(none=True)},
    "phantom": {"n_patients": integer(2), "n_valid_patients": integer(1),
                "image_size": integer(16, 4096), "workers": integer(0)},
    "phantom_shenzhen": {"n_images": integer(2), "image_size": integer(16, 4096), "workers": integer(0)},
    "chexpert": {"uncertain_policy": choice(*UNCERTAIN_POLICIES), "frontal_only": boolean(),
                 "val_fraction": number(0, 1, lo_open=True, hi_open=True), "test_csv": text(none=True),
                 "target": text(), "fractions": FRACTIONS, "draws": DRAWS},
    "shenzhen": {"fractions": FRACTIONS, "draws": DRAWS},
    "pretrain": {"init": choice("random", "imagenet"), "batch_size": integer(2), "epochs": integer(1),
                 "max_steps": integer(1, none=True), "lr": number(0, lo_open=True),
                 "weight_decay": number(0), "lr_drops": list_of(FRACTION, min_len=0),
                 "queue_size": integer(1), "momentum": number(0, 1, hi_open=True),
                 "temperature": number(0, lo_open=True), "dim": integer(1), "mlp": boolean(),
                 "bn_splits": integer(1),
                 "monitor_every": integer(0), "checkpoint_every_steps": integer(1, none=True),
                 "amp": choice("auto", "bf16", "off"), "channels_last": SWITCH, "compile": boolean()},
    "monitor": {"k": integer(1), "max_train": integer(1), "max_eval": integer(1)},
    "linear": LINEAR,
    "transfer_linear": LINEAR,
    "finetune": FINETUNE,
    "transfer_finetune": FINETUNE,
    "saliency_options": {"max_images": integer(1), "occlusion_images": integer(1),
                         "sanity_images": integer(1), "occlusion_grid": integer(1)},
}
PAIRED = {"chexpert": ("fractions", "draws"), "shenzhen": ("fractions", "draws")}
OUTPUTS = {"record": "csv"}  # the parameters (and key) a notebook writes to: under RECORDED_DIR


def _like_default(value: Any, default: Any) -> str | None:
    """Fallback check: the value has the default's type (int accepted for float)."""
    if default is None or value is None and default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false (like the default)"
    if isinstance(default, float):
        return None if _is_num(value) else f"a number (like the default {default!r})"
    if _is_int(default):
        return None if _is_int(value) else f"an integer (like the default {default!r})"
    if isinstance(default, (str, list, dict)) and not isinstance(value, type(default)):
        return f"a {type(default).__name__} (like the default {default!r})"
    return None


def problems(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, expected)`` for every value in ``params`` that its checker (or its
    default's type) refuses."""
    out = []
    for name, value in params.items():
        spec, default = PARAMETERS.get(name), defaults.get(name)
        if callable(spec) and name in defaults and spec(default):
            spec = None
        if isinstance(spec, dict) or (spec is None and isinstance(default, dict)):
            if not isinstance(value, dict):
                out.append((name, value, "a mapping of key: value"))
                continue
            sub = spec or {}
            for k, v in value.items():
                d = default.get(k) if isinstance(default, dict) else None
                own = k in sub and (not isinstance(default, dict) or k not in default or not sub[k](d))
                why = sub[k](v) if own else _like_default(v, d)
                if why:
                    out.append((f"{name}.{k}", v, why))
            pair = PAIRED.get(name)
            if pair and all(isinstance(value.get(p), list) for p in pair) and \
                    len(value[pair[0]]) != len(value[pair[1]]):
                out.append((f"{name}.{pair[1]}", value[pair[1]],
                            f"as many entries as {name}.{pair[0]} ({len(value[pair[0]])})"))
        else:
            why = spec(value) if spec is not None else _like_default(value, default)
            if why:
                out.append((name, value, why))
    return out
