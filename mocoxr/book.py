"""The book: profiles, the papermill runner and the Jupyter Book site build.

A *profile* is a small YAML file (``mocoxr/profiles/<name>.yaml``, or any path) that says which
notebooks to execute and with which parameters::

    description: what this profile is for            # optional, free text
    requires: [data_dir]                             # optional: parameters that must not be null
    parameters:                                      # shared: given to every notebook declaring them
      image_size: 64
      pretrain: {epochs: 2}                          # dicts are merged key by key into the default
    notebooks:                                       # executed in this order
      01_data: {}                                    # one run with the shared parameters
      02_pretrain:
        needs: [01_data]                             # default: every notebook listed above it
        runs:                                        # default: [{}]
          - {backbone: resnet18}
          - {backbone: densenet121, name: densenet121}   # `name`: suffix of the executed copy

Each run of notebook ``NN_x`` is written to ``<run_dir>/executed/NN_x.ipynb`` (first run) or
``NN_x-<name>.ipynb`` (the others; the name defaults to the run's own parameter values). A run
depends on the runs of the notebooks it ``needs`` whose per-run parameters agree with its own
(``03_linear_probe`` for densenet121 needs ``02_pretrain`` for densenet121, not for resnet18).

A run is skipped when its stamp (``<run_dir>/stamps/<run>.json``) holds the same key: a hash of
the notebook source, the parameters, the package code and the keys of the runs it depends on,
and its executed notebook exists without an error. So a rerun after a failure resumes where it
stopped, and editing a notebook reruns it and everything downstream. A failed run leaves its
partial notebook in ``<run_dir>/failed/`` and the runs that need it are skipped; independent runs
go on, and the command exits non-zero.

``build`` stages the prose (``book/*.md``), ``_config.yml``, ``_toc.yml`` and the executed
notebooks of a profile into ``<run_dir>/site/`` and runs ``jupyter-book build`` on it (notebooks
are not re-executed), then copies ``results.csv`` and ``deltas.csv`` beside the site.

Command line::

    python -m mocoxr.book run   --profile quick [--data-dir D] [--shenzhen-dir D] [--run-dir D] [--force]
    python -m mocoxr.book build --profile quick [--run-dir D] [--output D]
    python -m mocoxr.book status --profile quick
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mocoxr import keys, schema, sources, store

PACKAGE_DIR = Path(__file__).resolve().parent
PROFILES_DIR = PACKAGE_DIR / "profiles"
PAPER_RESULTS = PACKAGE_DIR / "data" / "paper_results.csv"
PROFILE_KEYS = ("description", "requires", "parameters", "notebooks")
NOTEBOOK_KEYS = ("runs", "needs")
RUNNER_PARAMETERS = ("run_dir",)  # set by the runner, never by a profile
BOOK_FILES = ("_config.yml", "_toc.yml")
SITE_CSVS = ("results.csv", "deltas.csv")
KERNEL = "python3"
SHARED_DATA_PARAMETERS = ("data_dir", "shenzhen_dir", "phantom", "phantom_shenzhen", "chexpert",
                          "shenzhen", "seed")  # one value per run folder (seed: the phantoms)
STABILITY_NOTEBOOK = "08_stability"  # reads <run_dir>/seeds/ (or the recorded copy)


class ProfileError(ValueError):
    """A profile file is malformed; the message names the file and the offending key."""


# ----------------------------------------------------------------------------- paths


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``_toc.yml`` and ``notebooks/``: the source checkout of this package,
    else the first such folder at or above ``start`` (default: the working directory)."""
    candidates = [PACKAGE_DIR.parent]
    here = Path(start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    for c in candidates:
        if (c / "_toc.yml").is_file() and (c / "notebooks").is_dir():
            return c
    raise FileNotFoundError(
        f"no project root (a folder with _toc.yml and notebooks/) at or above {here} "
        f"or at {PACKAGE_DIR.parent}"
    )


def profile_path(profile: str | Path) -> Path:
    """A packaged profile name (``quick``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"profile file {p} does not exist")
        return p.resolve()
    packaged = PROFILES_DIR / f"{profile}.yaml"
    if not packaged.is_file():
        names = sorted(q.stem for q in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile named {profile!r}; packaged profiles: {names}")
    return packaged


def default_run_dir(profile_name: str, root: Path | None = None) -> Path:
    """``<project root>/runs/<profile>``."""
    return (root or project_root()) / "runs" / profile_name


# ----------------------------------------------------------------------------- run folder


@dataclass(frozen=True)
class RunPaths:
    """Layout of a run folder (see ../shared/DESIGN.md, and book/usage.md)."""

    root: Path

    @property
    def executed(self) -> Path:
        return self.root / "executed"

    @property
    def stamps(self) -> Path:
        return self.root / "stamps"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def executed_nb(self, run_id: str) -> Path:
        return self.executed / f"{run_id}.ipynb"

    def stamp(self, run_id: str) -> Path:
        return self.stamps / f"{run_id}.json"

    def failed_nb(self, run_id: str) -> Path:
        return self.failed / f"{run_id}.ipynb"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    @property
    def deltas(self) -> Path:
        return self.root / "deltas.csv"

    def moco_backbone(self, backbone: str) -> Path:
        """The exported (plain torchvision) MoCo-pretrained backbone that 02_pretrain recorded
        last for ``backbone`` (see :func:`record_pretrained`); error if there is none."""
        pointer = self.checkpoints / f"moco_{backbone}.json"
        p = self.checkpoints / json.loads(pointer.read_text())["backbone"] if pointer.is_file() else None
        if p is None or not p.is_file():
            raise FileNotFoundError(
                f"no pretrained {backbone} recorded in {pointer}: run notebooks/02_pretrain with "
                f"backbone={backbone!r} and run_dir={str(self.root)!r} first"
            )
        return p


def run_paths(run_dir: str | Path) -> RunPaths:
    """The run folder's layout; creates the folder."""
    root = Path(run_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return RunPaths(root)


# ----------------------------------------------------------------------------- notebooks


def read_notebook(path: Path):
    """Read a notebook (``.py`` percent script or ``.ipynb``) with jupytext."""
    import jupytext

    return jupytext.read(str(path))


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Defaults declared in the notebook's single cell tagged ``parameters``.

    The cell may only hold assignments of Python literals (and comments), so that the defaults
    can be read without running anything.
    """
    nb = read_notebook(path)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ValueError(f"{path}: the parameters cell is not valid Python: {exc}") from None
    params: dict[str, Any] = {}
    for stmt in tree.body:
        target = value = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        if not isinstance(target, ast.Name):
            raise ValueError(
                f"{path}: line {stmt.lineno} of the parameters cell is not `name = literal`"
            )
        try:
            params[target.id] = ast.literal_eval(value)
        except ValueError:
            raise ValueError(
                f"{path}: parameter {target.id!r} must default to a literal "
                f"(number, string, None, list, dict), got `{ast.unparse(value)}`"
            ) from None
    return params


def find_notebook(notebooks_dir: Path, name: str) -> Path:
    """``notebooks/<name>.py`` (the jupytext source), else ``<name>.ipynb``."""
    for ext in (".py", ".ipynb"):
        p = notebooks_dir / f"{name}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no notebook {name}.py or {name}.ipynb in {notebooks_dir}")


# ----------------------------------------------------------------------------- profiles


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


def _check_keys(where: str, given: Iterable[str], allowed: Sequence[str], path: Path) -> None:
    for k in given:
        if k not in allowed:
            raise ProfileError(
                f"{path}: unknown key {where}{k!r}; expected one of {list(allowed)}"
            )


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


def prof_run(runs: Sequence[Run], run_id: str) -> Run:
    return next(r for r in runs if r.run_id == run_id)


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


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")


def load_profile(
    profile: str | Path,
    notebooks_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Profile:
    """Read and validate a profile against the notebooks' declared parameters.

    ``overrides`` replace shared parameters (the command line's ``--data-dir`` etc.).
    Every error names the file and the key.
    """
    import yaml

    path = profile_path(profile)
    notebooks_dir = Path(notebooks_dir or project_root() / "notebooks")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
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

    declared: dict[str, dict[str, Any]] = {}
    for nb_name in entries:
        try:
            declared[nb_name] = notebook_parameters(find_notebook(notebooks_dir, str(nb_name)))
        except FileNotFoundError as exc:
            raise ProfileError(f"{path}: notebooks.{nb_name}: {exc}") from None

    for name, value in shared.items():
        if name in RUNNER_PARAMETERS:
            raise ProfileError(f"{path}: parameters.{name} is set by the runner, not by a profile")
        owners = [d[name] for d in declared.values() if name in d]
        if not owners:
            raise ProfileError(
                f"{path}: parameters.{name} is not a parameter of any notebook in this profile"
            )
        _check_subkeys(path, "parameters.", name, value, owners)
    for name in requires:
        if shared.get(name) is None:
            raise ProfileError(
                f"{path}: profile {path.stem!r} requires parameter {name!r} "
                f"(give it on the command line, e.g. --{name.replace('_', '-')} PATH)"
            )

    runs: list[Run] = []
    seen: list[str] = []
    for nb_name, entry in entries.items():
        where = f"notebooks.{nb_name}"
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ProfileError(f"{path}: {where} must be a mapping (keys {list(NOTEBOOK_KEYS)})")
        _check_keys(f"{where}.", entry, NOTEBOOK_KEYS, path)
        needs = entry.get("needs", list(seen))
        if not isinstance(needs, list):
            raise ProfileError(f"{path}: {where}.needs must be a list of notebook names")
        for n in needs:
            if n not in seen:
                raise ProfileError(
                    f"{path}: {where}.needs names {n!r}, which is not a notebook listed above it"
                )
        run_sets = entry.get("runs", [{}])
        if not isinstance(run_sets, list) or not run_sets:
            raise ProfileError(f"{path}: {where}.runs must be a non-empty list of parameter mappings")
        defaults = declared[nb_name]
        src = find_notebook(notebooks_dir, nb_name)
        for i, rs in enumerate(run_sets):
            rs = {} if rs is None else rs
            if not isinstance(rs, dict):
                raise ProfileError(f"{path}: {where}.runs[{i}] must be a mapping of parameter: value")
            rs = dict(rs)
            label = rs.pop("name", None)
            for k, v in rs.items():
                if k in SHARED_DATA_PARAMETERS:
                    raise ProfileError(
                        f"{path}: {where}.runs[{i}] sets {k!r}: the data settings are shared by "
                        "every notebook of a run folder; set it under `parameters:` instead"
                    )
                if k not in defaults or k in RUNNER_PARAMETERS:
                    raise ProfileError(
                        f"{path}: {where}.runs[{i}]: unknown parameter {k!r} "
                        f"(notebook {nb_name} declares {sorted(defaults)})"
                    )
                _check_subkeys(path, f"{where}.runs[{i}].", k, v, [defaults[k]])
            params = {
                k: deep_merge(defaults[k], shared[k]) if k in shared else copy.deepcopy(defaults[k])
                for k in defaults if k not in RUNNER_PARAMETERS
            }
            params = {k: deep_merge(params[k], rs[k]) if k in rs else v for k, v in params.items()}
            _check_values(path, where, i, rs, shared, params, defaults)
            if i == 0:
                run_id = str(nb_name)
            else:
                suffix = _slug(label) if label is not None else "-".join(_slug(v) for v in rs.values())
                if not suffix:
                    raise ProfileError(f"{path}: {where}.runs[{i}] needs a `name` or its own parameters")
                run_id = f"{nb_name}-{suffix}"
            if any(r.run_id == run_id for r in runs):
                raise ProfileError(f"{path}: {where}.runs[{i}] repeats run {run_id!r}; give it a `name`")
            runs.append(Run(str(nb_name), run_id, src, rs, params, list(needs)))
        seen.append(str(nb_name))

    for run in runs:  # a run depends on the runs of needed notebooks whose own parameters agree
        for other in runs:
            if other.notebook in run.needs and all(
                run.parameters.get(k, v) == v for k, v in other.overrides.items()
            ):
                run.deps.append(other.run_id)
        for nb_name in run.needs:
            if not any(prof_run(runs, d).notebook == nb_name for d in run.deps):
                ours = {k: run.parameters.get(k) for o in runs if o.notebook == nb_name for k in o.overrides}
                raise ProfileError(
                    f"{path}: run {run.run_id} needs {nb_name}, but no run of {nb_name} has its "
                    f"parameters {ours}; add such a run to notebooks.{nb_name}.runs"
                )
    return Profile(path.stem, path, str(raw.get("description") or ""), requires, shared, runs)


# ----------------------------------------------------------------------------- runner


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_hash() -> str:
    """Hash of the package code the notebooks call: every module of ``mocoxr`` (this one, which
    holds the notebook helpers, included) and its data files; not the profiles."""
    return keys.code_digest()


def run_key(run: Run, injected: dict[str, Any], dep_keys: Sequence[str], code: str) -> str:
    """What a run's result depends on: notebook source, parameters, code, upstream runs."""
    payload = {
        "notebook": _sha(run.source.read_bytes()),
        "parameters": injected,
        "code": code,
        "upstream": sorted(dep_keys),
    }
    return _sha(json.dumps(payload, sort_keys=True, default=str).encode())


def run_keys(prof: Profile, rd: RunPaths) -> dict[str, str]:
    """The key of every run of a profile (see :func:`run_key`), in profile order. Data folders
    enter by content fingerprint, the run folder not at all; a run sees an upstream data-only
    step through the datasets it declares itself (:func:`mocoxr.keys.data_step_view`)."""
    code, out, memo = code_hash(), {}, {}
    fingerprint = lambda p: memo.setdefault(p, keys.folder_fingerprint(p))  # noqa: E731
    as_key = lambda params: keys.key_parameters(params, fingerprint, RUNNER_PARAMETERS)  # noqa: E731
    for run in prof.runs:
        ups = []
        for d in run.deps:
            dep = prof.run(d)
            view = keys.data_step_view(dep.parameters, run.parameters, RUNNER_PARAMETERS)
            ups.append(out[d] if view is None else
                       run_key(dep, as_key(view), [out[x] for x in dep.deps], code))
        params = as_key(run.parameters)
        if run.notebook == STABILITY_NOTEBOOK:  # its input: the pooled tables it will read
            params["pooled_tables"] = _pooled_digest(rd.root, run.parameters)
        if isinstance(run.parameters.get("recorded"), str):  # a recorded table a page shows
            params["recorded_content"] = _recorded_digest(run.parameters["recorded"])
        out[run.run_id] = run_key(run, params, ups, code)
    return out


def _recorded_digest(recorded: str) -> str:
    """Content hash of a recorded table (project-relative path) and its .json sidecar."""
    path = project_root() / recorded
    files = [path, path.with_suffix(".json")]
    return keys.sha({p.name: keys.file_sha1(p) for p in files if p.is_file()})


def _pooled_digest(run_dir: Path, parameters: dict[str, Any]) -> str:
    """Content hash of the pooled seeds tables the stability page would read ('' if none)."""
    from mocoxr import seeds

    try:
        folder, _ = seeds.find_pooled(run_dir, project_root() / parameters.get("recorded_seeds", ""))
    except FileNotFoundError:
        return ""
    return keys.sha({p.name: keys.file_sha1(p) for p in sorted(folder.glob("*")) if p.is_file()})


def notebook_errors(path: Path) -> list[str]:
    """``ename: evalue`` of every error output in an executed notebook."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells if c.cell_type == "code"
        for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]


def is_up_to_date(rd: RunPaths, run_id: str, key: str) -> bool:
    """Stamp holds ``key`` and the executed notebook exists without an error output."""
    stamp, nb = rd.stamp(run_id), rd.executed_nb(run_id)
    if not (stamp.is_file() and nb.is_file()):
        return False
    try:
        if json.loads(stamp.read_text()).get("key") != key:
            return False
        return not notebook_errors(nb)
    except (ValueError, OSError):
        return False


def tag_for_site(nb, suffix: str | None = None) -> None:
    """Prepare an executed notebook for the site: the injected-parameters cell collapsed
    (``hide-input``), the overridden defaults cell removed, the title marks a variant run."""
    tags_of = lambda c: c.setdefault("metadata", {}).setdefault("tags", [])  # noqa: E731
    injected = any("injected-parameters" in tags_of(c) for c in nb.cells)
    for c in nb.cells:
        tags = tags_of(c)
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
        if injected and "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    if suffix:
        for c in nb.cells:
            if c.cell_type == "markdown" and c.source.lstrip().startswith("# "):
                head, _, rest = c.source.lstrip().partition("\n")
                c.source = f"{head} ({suffix})\n{rest}"
                break


@dataclass
class Outcome:
    run_id: str
    status: str  # "ran", "up to date", "failed", "skipped"
    seconds: float = 0.0
    detail: str = ""


def execute_run(
    run: Run, injected: dict[str, Any], rd: RunPaths, cwd: Path, progress: bool, log_output: bool
) -> None:
    """Execute one run with papermill into ``rd.executed`` (on failure: into ``rd.failed``)."""
    import nbformat
    import papermill as pm

    work = rd.root / ".work"
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"{run.run_id}.input.ipynb"
    out = work / f"{run.run_id}.ipynb"
    nb_in = read_notebook(run.source)
    nb_in.metadata.setdefault("kernelspec", {"name": KERNEL, "display_name": "Python 3", "language": "python"})
    nbformat.write(nb_in, str(src))
    env_defaults = {"TQDM_MININTERVAL": "10", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    saved = {k: os.environ.get(k) for k in env_defaults}
    for k, v in env_defaults.items():
        os.environ.setdefault(k, v)
    try:
        pm.execute_notebook(
            str(src), str(out), parameters=injected, kernel_name=KERNEL, language="python", cwd=str(cwd),
            progress_bar=progress, log_output=log_output, report_mode=False,
        )
    except BaseException:
        if out.exists():
            rd.failed.mkdir(parents=True, exist_ok=True)
            os.replace(out, rd.failed_nb(run.run_id))
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
        src.unlink(missing_ok=True)
    nb = nbformat.read(str(out), as_version=4)
    suffix = run.run_id[len(run.notebook) + 1:] or None
    tag_for_site(nb, suffix)
    nb.metadata["mocoxr"] = {"run_id": run.run_id, "notebook": run.notebook, "parameters": injected}
    nbformat.write(nb, str(out))
    rd.executed.mkdir(parents=True, exist_ok=True)
    os.replace(out, rd.executed_nb(run.run_id))


def run_profile(
    profile: str | Path | Profile,
    run_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    root: Path | None = None,
    force: bool = False,
    progress: bool = True,
    log_output: bool = False,
    echo=print,
    select: Callable[[Run], bool] | None = None,
) -> list[Outcome]:
    """Execute a profile's runs in order; returns one :class:`Outcome` per run.

    Up-to-date runs are skipped; a failure stops only the runs that depend on it. The run folder
    is locked for the whole run (a second run of it exits naming this one's pid), its recorded
    data source must match (see :mod:`mocoxr.sources`), and what the profile needs (weight
    files, data folders, device) is checked before the first step. ``profile`` may be a loaded
    :class:`Profile` (then ``overrides`` were applied when it was loaded), so that a batch can
    run one profile into several folders, each locked on its own. ``select`` keeps only the
    runs it returns True for (their needs must be among them).
    """
    root = Path(root) if root else project_root()
    if isinstance(profile, Profile):
        if overrides:
            raise ValueError("overrides apply when a profile is loaded: pass them to load_profile")
        prof = profile
    else:
        prof = load_profile(profile, root / "notebooks", overrides)
    if select is not None:
        prof = dataclasses.replace(prof, runs=[r for r in prof.runs if select(r)])
    missing = sources.preflight(prof.runs)
    if missing:
        raise ProfileError(f"{prof.path}: this machine lacks what the profile needs:\n  "
                           + "\n  ".join(missing))
    with store.writing(run_dir or default_run_dir(prof.name, root)):
        rd = run_paths(run_dir or default_run_dir(prof.name, root))
    with store.run_lock(rd.root):
        sources.check_and_record(rd.root, prof.parameters)
        return _run_all(prof, rd, force, progress, log_output, echo)


def _failure_line(exc: BaseException) -> str:
    """``Name: first line of the message`` of a failed step (papermill's error carries the
    notebook's exception); storage failures read as one line naming the path and the cause."""
    name, text = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if name is None:
        name, text = type(exc).__name__, str(exc)
    err = store.storage_error(exc, "") if not hasattr(exc, "ename") else None
    if err is not None:
        return f"StorageError: {err}"
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return f"{name}: {lines[0] if lines else ''}"


def _run_all(prof: Profile, rd: RunPaths, force: bool, progress: bool, log_output: bool,
             echo) -> list[Outcome]:
    keys = run_keys(prof, rd)
    outcomes: dict[str, Outcome] = {}
    echo(f"profile {prof.name} ({prof.path}) -> {rd.root}")
    for i, run in enumerate(prof.runs, 1):
        head = f"[{i}/{len(prof.runs)}] {run.run_id}"
        bad = [d for d in run.deps if outcomes[d].status in ("failed", "skipped")]
        if bad:
            outcomes[run.run_id] = Outcome(run.run_id, "skipped", detail=f"needs {', '.join(bad)}")
            echo(f"{head}: skipped (needs {', '.join(bad)}, which did not finish)")
            continue
        injected = {"run_dir": str(rd.root), **run.parameters}
        key = keys[run.run_id]
        if not force and is_up_to_date(rd, run.run_id, key):
            outcomes[run.run_id] = Outcome(run.run_id, "up to date")
            echo(f"{head}: up to date ({rd.executed_nb(run.run_id)})")
            continue
        echo(f"{head}: running {run.source}")
        t0 = time.time()
        try:
            with store.writing(rd.root):
                rd.stamp(run.run_id).unlink(missing_ok=True)
                execute_run(run, injected, rd, run.source.parent, progress, log_output)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - report and go on with independent runs
            dt = time.time() - t0
            where = rd.failed_nb(run.run_id)
            detail = f"{run.source}: {_failure_line(exc)}"
            if where.exists():
                detail += f"; partial notebook: {where}"
            outcomes[run.run_id] = Outcome(run.run_id, "failed", dt, detail)
            echo(f"{head}: FAILED after {dt:.0f} s: {detail}")
            if not where.exists() and not isinstance(exc, store.StorageError):
                echo(traceback.format_exc())
            continue
        dt = time.time() - t0
        stamp = {
            "key": key, "run_id": run.run_id, "notebook": str(run.source), "parameters": injected,
            "seconds": round(dt, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        store.atomic_write_text(rd.stamp(run.run_id), json.dumps(stamp, indent=1, default=str))
        rd.failed_nb(run.run_id).unlink(missing_ok=True)
        outcomes[run.run_id] = Outcome(run.run_id, "ran", dt)
        echo(f"{head}: done in {dt:.0f} s -> {rd.executed_nb(run.run_id)}")
    result = [outcomes[r.run_id] for r in prof.runs]
    echo(summary(result))
    return result


def summary(outcomes: Sequence[Outcome]) -> str:
    lines = ["", f"{'run':36s} {'status':11s} {'seconds':>8s}  detail"]
    for o in outcomes:
        lines.append(f"{o.run_id:36s} {o.status:11s} {o.seconds:8.0f}  {o.detail}")
    failed = [o for o in outcomes if o.status in ("failed", "skipped")]
    lines.append(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished"
                 + (f"; {len(failed)} failed or skipped" if failed else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- site


def open_run(profile: str | Path, root: Path, run_dir: Path | None = None,
             overrides: dict[str, Any] | None = None) -> tuple[Profile, RunPaths]:
    """The profile and its run folder, with the data folders the folder recorded (see
    :mod:`mocoxr.sources`) for every data flag not given: ``status`` and ``build`` of a
    real-data run need no flags."""
    rd = run_paths(run_dir or default_run_dir(profile_path(profile).stem, root))
    given = {**sources.recorded_overrides(rd.root), **(overrides or {})}
    return load_profile(profile, root / "notebooks", given), rd


def stale_runs(prof: Profile, rd: RunPaths) -> list[str]:
    """Runs whose executed notebook exists but is not up to date (what ``status`` lists)."""
    keys = run_keys(prof, rd)
    return [r.run_id for r in prof.runs
            if rd.executed_nb(r.run_id).is_file() and not is_up_to_date(rd, r.run_id, keys[r.run_id])]


STALE_NOTE = (":::{{warning}}\nThis page is **stale**: its notebook, parameters, package code or an "
              "upstream step changed after it ran. Rerun `python -m mocoxr.book run --profile {name}` "
              "to update it.\n:::")


def _mark_stale(nb_path: Path, name: str) -> None:
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(STALE_NOTE.format(name=name)))
    nbformat.write(nb, str(nb_path))


def stage_site(prof: Profile, rd: RunPaths, root: Path, echo=print,
               stale: Sequence[str] = ()) -> Path:
    """Assemble the book's source (config, prose, the profile's executed notebooks, the CSVs)
    in ``<run_dir>/site`` and return it. Files keep their times so Sphinx rebuilds only changes.
    Notebooks go through ``site.stage_notebook`` (paths relative to the run folder, parameters
    within 90 columns); ``book/time.md`` is generated (``site.time_page``)."""
    site = rd.root / "site"
    (site / "book").mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, site / name)
    wanted = {p.name for p in (root / "book").glob("*.md")}
    for p in (site / "book").glob("*.md"):
        if p.name not in wanted:
            p.unlink()
    for name in wanted:
        shutil.copy2(root / "book" / name, site / "book" / name)
    if (root / "book" / "recorded").is_dir():  # recorded tables the prose pages include
        shutil.copytree(root / "book" / "recorded", site / "book" / "recorded", dirs_exist_ok=True)
    executed = site / "book" / "executed"
    if executed.exists():
        shutil.rmtree(executed)
    executed.mkdir()
    found = []
    from mocoxr import site as site_pages

    for run in prof.runs:
        nb = rd.executed_nb(run.run_id)
        if nb.is_file():
            pairs = site_pages.path_replacements(rd.root, root, run.parameters)
            site_pages.stage_notebook(nb, executed / nb.name, pairs)
            if run.run_id in stale:
                _mark_stale(executed / nb.name, prof.name)
            found.append(nb)
        else:
            echo(f"warning: {run.run_id} has no executed notebook ({nb}); its page is left out")
    if not found:
        raise FileNotFoundError(
            f"no executed notebooks in {rd.executed}: run `python -m mocoxr.book run --profile {prof.name}` first"
        )
    for name in SITE_CSVS:
        if (rd.root / name).is_file():
            shutil.copy2(rd.root / name, site / name)
    site_pages.copy_extras(root / "book", site)
    site_pages.write_time_page(site / "book", found, prof.name)
    return site


def build_site(
    profile: str | Path,
    run_dir: Path | None = None,
    output: Path | None = None,
    root: Path | None = None,
    echo=print,
    quiet: bool = False,
    overrides: dict[str, Any] | None = None,
    allow_stale: bool = False,
) -> Path:
    """Build the HTML site of a profile's executed notebooks; returns ``_build/html/index.html``.

    Refuses notebooks that ``status`` lists as stale, unless ``allow_stale`` (then their pages
    carry a warning). The data folders default to those the run recorded. The build's output
    is kept in ``<run_dir>/site/build.log`` (and echoed unless ``quiet``)."""
    root = Path(root) if root else project_root()
    prof, rd = open_run(profile, root, run_dir, overrides)
    stale = stale_runs(prof, rd)
    if stale and not allow_stale:
        raise RuntimeError(
            f"{len(stale)} executed notebook(s) in {rd.executed} are stale ({', '.join(stale)}): "
            f"run `python -m mocoxr.book run --profile {prof.name}` first, or build with "
            f"--allow-stale to publish them marked as stale"
        )
    site = stage_site(prof, rd, root, echo, stale)
    output = Path(output or root).resolve()
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", str(site), "--path-output", str(output)]
    echo("$ jupyter-book build " + " ".join(cmd[4:]))
    proc = subprocess.run(cmd, cwd=site, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (site / "build.log").write_text(proc.stdout)
    if not quiet:
        echo(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build of {site} failed (exit {proc.returncode}); "
                           f"log: {site / 'build.log'}\n{proc.stdout[-4000:]}")
    html = output / "_build" / "html"
    for name in SITE_CSVS:
        if (rd.root / name).is_file():
            shutil.copy2(rd.root / name, html / name)
    index = html / "index.html"
    echo(f"site: {index}")
    return index


# ----------------------------------------------------------------------------- notebook helpers
#
# The notebooks share one run folder; these helpers fix its layout so that every notebook finds
# what the one before it left, and so that a reader who opens any notebook first still gets a
# working pipeline (each step reuses what exists and builds what is missing).


def chexpert_folder(
    run_dir: str | Path, data_dir: str | Path | None = None, phantom: dict | None = None, seed: int = 0
) -> Path:
    """The CheXpert-format folder to read: ``data_dir`` as given, or (None) the embedded synthetic
    data, generated under ``<run_dir>/data/chexpert`` by ``phantom.generate_chexpert_tree`` with
    the ``phantom`` options (the generator skips the work when the tree exists with the same ones)."""
    if data_dir is not None:
        p = Path(data_dir).expanduser().resolve()
        if not p.exists():
            raise FileNotFoundError(f"CheXpert data folder {p} (data_dir) does not exist")
        return p
    from mocoxr import phantom as ph

    cdir = ph.generate_chexpert_tree(run_paths(run_dir).data / "chexpert", seed=seed, **(phantom or {}))
    return Path(cdir).parent


def shenzhen_folder(
    run_dir: str | Path, shenzhen_dir: str | Path | None = None, phantom_shenzhen: dict | None = None,
    seed: int = 0,
) -> Path:
    """The Shenzhen-format folder to read: ``shenzhen_dir`` as given, or (None) the embedded
    synthetic set generated under ``<run_dir>/data/shenzhen`` (``phantom.generate_shenzhen_tree``)."""
    if shenzhen_dir is not None:
        p = Path(shenzhen_dir).expanduser().resolve()
        if not p.exists():
            raise FileNotFoundError(f"Shenzhen data folder {p} (shenzhen_dir) does not exist")
        return p
    from mocoxr import phantom as ph

    return Path(ph.generate_shenzhen_tree(run_paths(run_dir).data / "shenzhen", seed=seed,
                                          **(phantom_shenzhen or {})))


@dataclass
class Dataset:
    """A prepared manifest with its decoded images and normalisation."""

    prepared: Any  # mocoxr.data.PreparedDataset
    images: Any  # (N, size, size) uint8 memmap, row i = manifest row i
    mean: float
    std: float
    fingerprint: str  # content hash of the decoded images (and the dataset's name and size)

    @property
    def manifest(self):
        return self.prepared.manifest


def load_dataset(
    run_dir: str | Path,
    name: str,
    folder: str | Path,
    image_size: int,
    options: dict | None = None,
    seed: int = 0,
) -> Dataset:
    """Prepare ``chexpert`` or ``shenzhen`` (manifests reused when unchanged), decode its images
    once into ``<run_dir>/cache/<name>_<size>px.npy`` and compute mean/std on the train split.
    ``options``: keyword arguments of ``data.prepare_chexpert``/``prepare_shenzhen``."""
    from mocoxr import cache, data

    paths = run_paths(run_dir)
    prepare = {"chexpert": data.prepare_chexpert, "shenzhen": data.prepare_shenzhen}
    if name not in prepare:
        raise ValueError(f"dataset name must be 'chexpert' or 'shenzhen', got {name!r}")
    prepared = prepare[name](folder, paths.manifests, seed=seed, **(options or {}))
    images = cache.load_image_cache(
        prepared.manifest["path"].tolist(), image_size, paths.cache / f"{name}_{image_size}px.npy"
    )
    mean, std = cache.image_stats(images, prepared.rows("train"))
    fingerprint = keys.sha([keys.array_digest(images), name, int(image_size)])[:16]
    return Dataset(prepared, images, mean, std, fingerprint)


SPEED_FIELDS = ("device", "amp", "channels_last", "compile", "monitor_every", "checkpoint_every_steps")


def pretrain_dir(run_dir: str | Path, cfg: Any, ds: Dataset) -> Path:
    """``<run_dir>/checkpoints/moco_<backbone>_<hash>``: one folder per pretraining recipe and
    dataset (speed-only settings excluded), so a changed profile never resumes a checkpoint it
    did not write, and going back to an earlier recipe finds its finished run."""
    from mocoxr import train

    conf = {k: v for k, v in train.config_dict(cfg).items() if k not in SPEED_FIELDS}
    key = _sha(json.dumps([conf, ds.fingerprint, keys.code_digest(keys.TRAINING_CODE)],
                          sort_keys=True).encode())[:10]
    return run_paths(run_dir).checkpoints / f"moco_{cfg.backbone}_{key}"


def record_pretrained(run_dir: str | Path, backbone: str, folder: Path) -> Path:
    """Point ``<run_dir>/checkpoints/moco_<backbone>.json`` at a finished pretraining folder:
    the later notebooks use that backbone. Returns the exported backbone file."""
    exported = Path(folder) / "backbone.pt"
    if not exported.is_file():
        raise FileNotFoundError(f"{exported} does not exist: pretraining has not finished")
    pointer = run_paths(run_dir).checkpoints / f"moco_{backbone}.json"
    rel = lambda p: os.path.relpath(Path(p).resolve(), pointer.parent.resolve())  # noqa: E731
    store.atomic_write_text(pointer, json.dumps({"folder": rel(folder), "backbone": rel(exported)}))
    return exported


def knn_monitor(ds: Dataset, image_size: int, k: int = 20, max_train: int = 1000,
                max_eval: int = 500, seed: int = 0):
    """``train.make_knn_monitor`` on a seeded sample of labelled train rows (the memory bank)
    and validation rows (scored), both capped so the monitor stays cheap."""
    import numpy as np

    from mocoxr import train

    rng = np.random.default_rng(seed)
    pick = lambda rows, n: np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))  # noqa: E731
    tr, ev = pick(ds.prepared.rows("train"), max_train), pick(ds.prepared.rows("val"), max_eval)
    return train.make_knn_monitor(ds.images, tr, ds.prepared.labels(tr), ev, ds.prepared.labels(ev),
                                  ds.mean, ds.std, image_size, k=k)


def uncertain_policy_counts(
    folder: str | Path, target: str = "Pleural Effusion", frontal_only: bool = True
) -> tuple[Any, Any]:
    """How the uncertain-label policy changes the training labels of a CheXpert folder.

    Returns ``(raw, by_policy)``: the counts of raw labels (positive 1, negative 0, uncertain -1,
    blank) in ``train.csv``, and per policy (``ones``, ``zeros``, ``ignore``) the resulting
    positives, negatives and dropped images. Labels only; images are not opened.
    """
    import numpy as np
    import pandas as pd

    from mocoxr import data

    cdir = data.find_chexpert_dir(folder)
    csv = next((cdir / n for n in ("train.csv", "train.csv.gz") if (cdir / n).is_file()), None)
    if csv is None:
        raise FileNotFoundError(f"{cdir}: no train.csv or train.csv.gz")
    df = data.read_chexpert_csv(csv, target=target, uncertain_policy="ones",
                                frontal_only=frontal_only, check_images=False, image_root=cdir)
    raw = df["raw_label"]
    raw_counts = pd.DataFrame({
        "raw label": ["1 (positive)", "0 (negative)", "-1 (uncertain)", "blank"],
        "images": [int((raw == 1).sum()), int((raw == 0).sum()), int((raw == -1).sum()),
                   int(raw.isna().sum())],
    })
    rows = []
    for policy in data.UNCERTAIN_POLICIES:
        label, keep = data.apply_uncertain_policy(raw, policy)
        rows.append({"policy": policy, "positive": int(label[keep].sum()),
                     "negative": int((label[keep] == 0).sum()), "dropped": int((~keep).sum()),
                     "prevalence": float(np.mean(label[keep])) if keep.any() else float("nan")})
    return raw_counts, pd.DataFrame(rows)


def glue(name: str, value: Any, display: bool = False) -> None:
    """``myst_nb.glue`` with numpy scalars turned into Python numbers, so that the stored
    ``text/plain`` reads back as a number (and ``{glue:text}`key:.3f``` formats it)."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    _glue(name, value, display=display)


# ----------------------------------------------------------------------------- glue values


def glued_values(nb_path: Path) -> dict[str, Any]:
    """Values a notebook stored with ``myst_nb.glue``, parsed from their ``text/plain`` form
    (numbers and strings come back as Python values; anything else as its repr string)."""
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    out: dict[str, Any] = {}
    for c in nb.cells:
        for o in c.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            prefix = meta.get("mime_prefix", "")
            text = o.get("data", {}).get(prefix + "text/plain")
            try:
                out[meta["name"]] = ast.literal_eval(text) if text is not None else None
            except (ValueError, SyntaxError):
                out[meta["name"]] = text
    return out


# ----------------------------------------------------------------------------- pairing


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (c.cell_type, c.source.strip(), tuple(sorted(c.get("metadata", {}).get("tags", []))))
        for c in nb.cells
    ]


def pairing_problems(notebooks_dir: Path) -> list[str]:
    """Each ``notebooks/*.py`` must have a paired ``.ipynb`` with the same cells (type, source,
    tags). Returns one message per problem; empty when every pair is in sync."""
    problems = []
    for py in sorted(Path(notebooks_dir).glob("*.py")):
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.is_file():
            problems.append(f"{py} has no paired {ipynb.name}: run `jupytext --sync {py}`")
            continue
        a, b = _cells(read_notebook(py)), _cells(read_notebook(ipynb))
        if a != b:
            diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(
                f"{py} and {ipynb.name} differ (first at cell {diff}; {len(a)} vs {len(b)} cells): "
                f"edit the .py and run `jupytext --sync {py}`"
            )
    for ipynb in sorted(Path(notebooks_dir).glob("*.ipynb")):
        if not ipynb.with_suffix(".py").is_file():
            problems.append(f"{ipynb} has no .py source: run `jupytext --set-formats ipynb,py:percent {ipynb}`")
    return problems


# ----------------------------------------------------------------------------- CLI


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("data_dir", "shenzhen_dir"):
        v = getattr(args, name, None)
        if v is not None:
            p = Path(v).expanduser().resolve()
            if not p.exists():
                raise FileNotFoundError(f"--{name.replace('_', '-')} {v}: no such folder")
            out[name] = str(p)
    return out


def _run_seed_batch(args: argparse.Namespace) -> int:
    """``run --seeds ...``: the profile once per seed, then the pooled deltas (mocoxr.seeds)."""
    from mocoxr import seeds as seedbatch

    overrides = _overrides(args)
    root = project_root()
    prof = load_profile(args.profile, root / "notebooks", overrides)
    base = Path(args.run_dir or default_run_dir(prof.name, root))

    def run_one(seed: int, folder: Path) -> bool:
        outcomes = run_profile(args.profile, folder, {**overrides, "seed": seed},
                               force=args.force, log_output=args.log_output,
                               select=lambda r: r.notebook != STABILITY_NOTEBOOK)
        return all(o.status in ("ran", "up to date") for o in outcomes)

    real_chexpert, real_shenzhen = "data_dir" in overrides, "shenzhen_dir" in overrides
    shared = {"linear": real_chexpert, "finetune": real_chexpert,
              "shenzhen_linear": real_shenzhen, "shenzhen_finetune": real_shenzhen}
    command = f"python -m mocoxr.book run --profile {prof.name} --seeds " + " ".join(
        str(s) for s in args.seeds)
    paths = seedbatch.run_seeds(run_one, base, args.seeds, shared, command)
    if paths is None:
        return 1
    # the page that reads the pooled tables, in the base folder (its input just changed)
    outcomes = run_profile(args.profile, base, overrides, force=True, log_output=args.log_output,
                           select=lambda r: r.notebook == STABILITY_NOTEBOOK)
    return 0 if all(o.status == "ran" for o in outcomes) else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mocoxr.book", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, helptext in [("run", "execute a profile's notebooks with papermill"),
                           ("build", "build the Jupyter Book site from a profile's executed notebooks"),
                           ("status", "list a profile's runs and whether they are up to date"),
                           ("check", "check that every notebooks/*.py has an in-sync .ipynb")]:
        p = sub.add_parser(name, help=helptext)
        if name == "check":
            continue
        p.add_argument("--profile", default="quick", help="packaged profile name or a YAML file (default: quick)")
        p.add_argument("--run-dir", type=Path, help="run folder (default: runs/<profile>)")
        if name in ("run", "status", "build"):
            p.add_argument("--data-dir", help="folder holding CheXpert-v1.0-small/ (default: generate the embedded data)")
            p.add_argument("--shenzhen-dir", help="folder holding the Shenzhen CXR_png/ (default: generate)")
        if name == "run":
            p.add_argument("--force", action="store_true", help="rerun every notebook even if up to date")
            p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                           help="a batch: the whole profile once per seed, in <run-dir>/seed-<n>/, "
                                "then the deltas pooled over seeds into <run-dir>/seeds/")
            p.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
        if name == "build":
            p.add_argument("--output", type=Path, help="folder that receives _build/ (default: project root)")
            p.add_argument("--allow-stale", action="store_true",
                           help="publish stale notebooks, marked as stale on their pages")
    args = ap.parse_args(argv)
    try:
        if args.command == "run" and args.seeds:
            return _run_seed_batch(args)
        if args.command == "run":
            outcomes = run_profile(args.profile, args.run_dir, _overrides(args),
                                   force=args.force, log_output=args.log_output)
            return 0 if all(o.status in ("ran", "up to date") for o in outcomes) else 1
        if args.command == "build":
            build_site(args.profile, args.run_dir, args.output, overrides=_overrides(args),
                       allow_stale=args.allow_stale)
            return 0
        if args.command == "check":
            problems = pairing_problems(project_root() / "notebooks")
            print("\n".join(problems) or "all notebook pairs in sync")
            return 1 if problems else 0
        prof, rd = open_run(args.profile, project_root(), args.run_dir, _overrides(args))
        stale = False
        for run_id, key in run_keys(prof, rd).items():
            ok = is_up_to_date(rd, run_id, key)
            stale |= not ok
            print(f"{run_id:36s} {'up to date' if ok else 'to run':11s} needs {prof.run(run_id).deps}")
        return 1 if stale else 0
    except (ProfileError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
