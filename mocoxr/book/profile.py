"""Profiles: which notebooks to execute, with which parameters (format in ``mocoxr.book``).

:func:`load_profile` reads a profile, checks every key and value against the parameters the
notebooks declare (every error names the file and the key), and expands it into
:class:`Run` s with their dependencies.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from mocoxr import schema
from mocoxr.book import paths
from mocoxr.book.ipynb import find_notebook, notebook_parameters

PROFILE_KEYS = ("description", "requires", "parameters", "notebooks")
NOTEBOOK_KEYS = ("runs", "needs")
RUNNER_PARAMETERS = ("run_dir",)  # set by the runner, never by a profile
SHARED_DATA_PARAMETERS = ("data_dir", "shenzhen_dir", "phantom", "phantom_shenzhen", "chexpert",
                          "shenzhen", "seed")  # one value per run folder (seed: the phantoms)


class ProfileError(ValueError):
    """A profile file is malformed; the message names the file and the offending key."""


@dataclass
class Run:
    """One execution of one notebook with one parameter set."""

    notebook: str  # e.g. "03_linear_probe"
    run_id: str  # e.g. "03_linear_probe-densenet121"
    source: Path  # notebooks/03_linear_probe.py
    overrides: dict[str, Any]  # per-run parameters from the profile
    parameters: dict[str, Any]  # everything injected (defaults <- shared <- run), minus run_dir
    needs: list[str] = field(default_factory=list)  # notebook names
    deps: list[str] = field(default_factory=list)  # run ids


@dataclass
class Profile:
    """A loaded profile: its shared parameters and its runs, in execution order."""

    name: str
    path: Path
    description: str
    requires: list[str]
    parameters: dict[str, Any]
    runs: list[Run]

    def run(self, run_id: str) -> Run:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise KeyError(f"profile {self.name} has no run {run_id!r}")


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` on top of ``base``; dicts merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


# ----------------------------------------------------------------------------- checks


def _check_keys(where: str, given: Iterable[str], allowed: Sequence[str], path: Path) -> None:
    for k in given:
        if k not in allowed:
            raise ProfileError(f"{path}: unknown key {where}{k!r}; expected one of {list(allowed)}")


def _check_subkeys(path: Path, where: str, name: str, value: Any, defaults: list[Any]) -> None:
    """A dict parameter may only set keys that a declaring notebook's default dict has."""
    dict_defaults = [d for d in defaults if isinstance(d, dict)]
    if not isinstance(value, dict) or not dict_defaults:
        return
    known = set().union(*(d.keys() for d in dict_defaults))
    for k in value:
        if k not in known:
            raise ProfileError(
                f"{path}: {where}{name}.{k} is not a key of the notebooks' default {name!r} "
                f"(known keys: {sorted(known)})"
            )


def _check_values(path: Path, where: str, i: int, rs: dict, shared: dict, params: dict,
                  defaults: dict) -> None:
    """Every parameter value of a run passes :mod:`mocoxr.schema` (the error names the file,
    where the value was set, the value and what was expected)."""
    bad = schema.problems(params, defaults)
    if bad:
        key, value, want = bad[0]
        top = key.split(".")[0]
        at = (f"{where}.runs[{i}]." if top in rs else "parameters." if top in shared
              else f"the default of notebook {where.split('.', 1)[1]}: ")
        raise ProfileError(f"{path}: {at}{key} = {value!r}: expected {want}")


def _check_shared(path: Path, shared: dict, declared: dict[str, dict], requires: list[str]) -> None:
    """Shared parameters: declared by some notebook of the profile, not the runner's; the
    ``requires`` ones given."""
    for name, value in shared.items():
        if name in RUNNER_PARAMETERS:
            raise ProfileError(f"{path}: parameters.{name} is set by the runner, not by a profile")
        owners = [d[name] for d in declared.values() if name in d]
        if not owners:
            raise ProfileError(f"{path}: parameters.{name} is not a parameter of any notebook in this profile")
        _check_subkeys(path, "parameters.", name, value, owners)
    for name in requires:
        if shared.get(name) is None:
            raise ProfileError(
                f"{path}: profile {path.stem!r} requires parameter {name!r} "
                f"(give it on the command line, e.g. --{name.replace('_', '-')} PATH)"
            )


def _check_run_overrides(path: Path, where: str, nb_name: str, rs: dict, defaults: dict) -> None:
    """A run may set only its notebook's own parameters, and none of the shared data settings."""
    for k, v in rs.items():
        if k in SHARED_DATA_PARAMETERS:
            raise ProfileError(
                f"{path}: {where} sets {k!r}: the data settings are shared by "
                "every notebook of a run folder; set it under `parameters:` instead"
            )
        if k not in defaults or k in RUNNER_PARAMETERS:
            raise ProfileError(
                f"{path}: {where}: unknown parameter {k!r} "
                f"(notebook {nb_name} declares {sorted(defaults)})"
            )
        _check_subkeys(path, f"{where}.", k, v, [defaults[k]])


# ----------------------------------------------------------------------------- reading


def _parse_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None


def _read_top(path: Path, overrides: dict[str, Any] | None) -> tuple[dict, dict, list[str], dict]:
    """The profile's raw mapping, its shared parameters (``overrides`` applied), its
    ``requires`` and its ``notebooks`` entries, each checked for shape."""
    raw = _parse_yaml(path)
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping with keys {list(PROFILE_KEYS)}")
    _check_keys("", raw, PROFILE_KEYS, path)
    shared = raw.get("parameters") or {}
    if not isinstance(shared, dict):
        raise ProfileError(f"{path}: 'parameters' must be a mapping of name: value")
    shared = deep_merge(shared, overrides or {})
    requires = raw.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ProfileError(f"{path}: 'requires' must be a list of parameter names")
    entries = raw.get("notebooks")
    if not isinstance(entries, dict) or not entries:
        raise ProfileError(f"{path}: 'notebooks' must be a non-empty mapping of notebook name: settings")
    return raw, shared, requires, entries


def _declared(path: Path, entries: dict, notebooks_dir: Path) -> dict[str, dict[str, Any]]:
    """Each listed notebook's declared parameters (the defaults of its parameters cell)."""
    declared: dict[str, dict[str, Any]] = {}
    for nb_name in entries:
        try:
            declared[nb_name] = notebook_parameters(find_notebook(notebooks_dir, str(nb_name)))
        except FileNotFoundError as exc:
            raise ProfileError(f"{path}: notebooks.{nb_name}: {exc}") from None
    return declared


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")


def _entry_settings(path: Path, where: str, entry: Any, seen: list[str]) -> tuple[list, list]:
    """``(needs, run parameter sets)`` of one ``notebooks:`` entry, checked."""
    entry = {} if entry is None else entry
    if not isinstance(entry, dict):
        raise ProfileError(f"{path}: {where} must be a mapping (keys {list(NOTEBOOK_KEYS)})")
    _check_keys(f"{where}.", entry, NOTEBOOK_KEYS, path)
    needs = entry.get("needs", list(seen))
    if not isinstance(needs, list):
        raise ProfileError(f"{path}: {where}.needs must be a list of notebook names")
    for n in needs:
        if n not in seen:
            raise ProfileError(f"{path}: {where}.needs names {n!r}, which is not a notebook listed above it")
    run_sets = entry.get("runs", [{}])
    if not isinstance(run_sets, list) or not run_sets:
        raise ProfileError(f"{path}: {where}.runs must be a non-empty list of parameter mappings")
    return needs, run_sets


def _run_parameters(defaults: dict, shared: dict, rs: dict) -> dict[str, Any]:
    """What a run injects: the notebook's defaults <- shared parameters <- the run's own."""
    params = {
        k: deep_merge(defaults[k], shared[k]) if k in shared else copy.deepcopy(defaults[k])
        for k in defaults if k not in RUNNER_PARAMETERS
    }
    return {k: deep_merge(params[k], rs[k]) if k in rs else v for k, v in params.items()}


def _notebook_runs(path: Path, nb_name: str, entry: Any, seen: list[str], defaults: dict,
                   shared: dict, src: Path, runs: list[Run]) -> list[Run]:
    """The runs of one notebook entry (the first is named after the notebook, the others get
    a suffix from their ``name`` or their own parameter values)."""
    where = f"notebooks.{nb_name}"
    needs, run_sets = _entry_settings(path, where, entry, seen)
    out: list[Run] = []
    for i, rs in enumerate(run_sets):
        rs = {} if rs is None else rs
        if not isinstance(rs, dict):
            raise ProfileError(f"{path}: {where}.runs[{i}] must be a mapping of parameter: value")
        rs = dict(rs)
        label = rs.pop("name", None)
        _check_run_overrides(path, f"{where}.runs[{i}]", nb_name, rs, defaults)
        params = _run_parameters(defaults, shared, rs)
        _check_values(path, where, i, rs, shared, params, defaults)
        if i == 0:
            run_id = str(nb_name)
        else:
            suffix = _slug(label) if label is not None else "-".join(_slug(v) for v in rs.values())
            if not suffix:
                raise ProfileError(f"{path}: {where}.runs[{i}] needs a `name` or its own parameters")
            run_id = f"{nb_name}-{suffix}"
        if any(r.run_id == run_id for r in [*runs, *out]):
            raise ProfileError(f"{path}: {where}.runs[{i}] repeats run {run_id!r}; give it a `name`")
        out.append(Run(str(nb_name), run_id, src, rs, params, list(needs)))
    return out


def _check_outputs(path: Path, runs: list[Run], root: Path) -> None:
    """The files a profile has a notebook write (:data:`mocoxr.schema.OUTPUTS`) stay under
    ``<root>/book/recorded`` also through symbolic links (their text is checked by the schema)."""
    for run in runs:
        for name, key in schema.OUTPUTS.items():
            value = run.parameters.get(name)
            target = value.get(key) if isinstance(value, dict) else None
            if isinstance(target, str) and schema.escapes(root, target):
                raise ProfileError(
                    f"{path}: {name}.{key} = {target!r} (run {run.run_id}) leads outside "
                    f"{schema.RECORDED_DIR}/ through a symbolic link: expected a file under "
                    f"{schema.RECORDED_DIR}/ of the project"
                )


def _link_deps(path: Path, runs: list[Run]) -> None:
    """A run depends on the runs of the notebooks it needs whose own parameters agree with its
    parameters; a needed notebook without such a run is an error."""
    by_id = {r.run_id: r for r in runs}
    for run in runs:
        for other in runs:
            if other.notebook in run.needs and all(
                run.parameters.get(k, v) == v for k, v in other.overrides.items()
            ):
                run.deps.append(other.run_id)
        for nb_name in run.needs:
            if not any(by_id[d].notebook == nb_name for d in run.deps):
                ours = {k: run.parameters.get(k) for o in runs if o.notebook == nb_name for k in o.overrides}
                raise ProfileError(
                    f"{path}: run {run.run_id} needs {nb_name}, but no run of {nb_name} has its "
                    f"parameters {ours}; add such a run to notebooks.{nb_name}.runs"
                )


def load_profile(
    profile: str | Path,
    notebooks_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Profile:
    """Read and validate a profile against the notebooks' declared parameters.

    ``overrides`` replace shared parameters (the command line's ``--data-dir`` etc.).
    Every error names the file and the key.
    """
    path = paths.profile_path(profile)
    notebooks_dir = Path(notebooks_dir or paths.project_root() / "notebooks")
    raw, shared, requires, entries = _read_top(path, overrides)
    declared = _declared(path, entries, notebooks_dir)
    _check_shared(path, shared, declared, requires)
    runs: list[Run] = []
    seen: list[str] = []
    for nb_name, entry in entries.items():
        runs += _notebook_runs(path, nb_name, entry, seen, declared[nb_name], shared,
                               find_notebook(notebooks_dir, nb_name), runs)
        seen.append(str(nb_name))
    _link_deps(path, runs)
    _check_outputs(path, runs, notebooks_dir.parent)
    return Profile(path.stem, path, str(raw.get("description") or ""), requires, shared, runs)
