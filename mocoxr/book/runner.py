"""The runner: run keys, stamps, and the papermill execution of a profile's runs.

A run is skipped when its stamp (``<run_dir>/stamps/<run>.json``) holds the same key: a hash of
the notebook source, the parameters, the package code (every file of ``mocoxr``: this package
and ``mocoxr/notebook.py`` included) and the keys of the runs it depends on, and its executed
notebook exists without an error. A failed run leaves its partial notebook in
``<run_dir>/failed/`` and the runs that need it are skipped; independent runs go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mocoxr import keys, sources, store
from mocoxr.book import paths, rows
from mocoxr.book.ipynb import notebook_errors, read_notebook, tag_for_site
from mocoxr.book.paths import RunPaths, default_run_dir, profile_path, run_paths
from mocoxr.book.profile import RUNNER_PARAMETERS, Profile, ProfileError, Run, load_profile

KERNEL = "python3"
STABILITY_NOTEBOOK = "08_stability"  # reads <run_dir>/seeds/ (or the recorded copy)
# what a seeds batch runs per seed: the chapters that write the pooled results, and theirs needs
BATCH_NOTEBOOKS = ("01_data", "02_pretrain", "03_linear_probe", "04_finetune", "05_shenzhen")
BATCH_OVERRIDES = {"embedding": "pca"}  # the per-seed pages are not published: no UMAP fit
KERNEL_LOG_LEVEL = "--IPKernelApp.log_level=CRITICAL"


# ----------------------------------------------------------------------------- keys


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_hash() -> str:
    """Hash of the package code the notebooks call: every file of ``mocoxr`` (``notebook.py``
    and this package included) and its data files; not the profiles."""
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
    for name in keys.DATA_FOLDERS:  # errors name the flag
        if prof.parameters.get(name):
            memo[str(prof.parameters[name])] = sources.fingerprint(name, prof.parameters[name])
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
    path = paths.project_root() / recorded
    files = [path, path.with_suffix(".json")]
    return keys.sha({p.name: keys.file_sha1(p) for p in files if p.is_file()})


def _pooled_digest(run_dir: Path, parameters: dict[str, Any]) -> str:
    """Content hash of the pooled seeds tables the stability page would read ('' if none)."""
    from mocoxr import seeds

    try:
        folder, _ = seeds.find_pooled(run_dir, paths.project_root() / parameters.get("recorded_seeds", ""))
    except FileNotFoundError:
        return ""
    return keys.sha({p.name: keys.file_sha1(p) for p in sorted(folder.glob("*")) if p.is_file()})


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


def open_run(profile: str | Path, root: Path, run_dir: Path | None = None,
             overrides: dict[str, Any] | None = None) -> tuple[Profile, RunPaths]:
    """The profile and its run folder, with the data folders the folder recorded (see
    :mod:`mocoxr.sources`) for every data flag not given: ``status`` and ``build`` of a
    real-data run need no flags. The folder is not created."""
    folder = Path(run_dir or default_run_dir(profile_path(profile).stem, root)).expanduser()
    rd = RunPaths(folder.resolve())  # read, not created
    given = {**sources.recorded_overrides(rd.root), **(overrides or {})}
    return load_profile(profile, root / "notebooks", given), rd


def stale_runs(prof: Profile, rd: RunPaths, key_of: dict[str, str] | None = None) -> list[str]:
    """Runs whose executed notebook exists but is not up to date (what ``status`` lists)."""
    key_of = key_of if key_of is not None else run_keys(prof, rd)
    return [r.run_id for r in prof.runs
            if rd.executed_nb(r.run_id).is_file() and not is_up_to_date(rd, r.run_id, key_of[r.run_id])]


# ----------------------------------------------------------------------------- execution


@dataclass
class Outcome:
    """What became of one run."""

    run_id: str
    status: str  # "ran", "up to date", "failed", "skipped"
    seconds: float = 0.0
    detail: str = ""


def _papermill(src: Path, out: Path, injected: dict[str, Any], cwd: Path, progress: bool,
               log_output: bool, env: dict[str, str] | None = None) -> None:
    """``papermill.execute_notebook`` with quiet progress bars, no deprecation warnings (unless
    the environment sets them) and ``env`` set for the kernel (the run's row tags, see
    :mod:`mocoxr.book.rows`); the environment is restored afterwards. The kernel logs only
    critical messages (not its TCP notice, nor the socket errors of a stopped run)."""
    import papermill as pm

    env_defaults = {"TQDM_MININTERVAL": "10", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    saved = {k: os.environ.get(k) for k in [*env_defaults, *(env or {})]}
    for k, v in env_defaults.items():
        os.environ.setdefault(k, v)
    os.environ.update(env or {})
    try:
        pm.execute_notebook(
            str(src), str(out), parameters=injected, kernel_name=KERNEL, language="python", cwd=str(cwd),
            progress_bar=progress, log_output=log_output, report_mode=False,
            extra_arguments=[KERNEL_LOG_LEVEL],
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_run(
    run: Run, injected: dict[str, Any], rd: RunPaths, cwd: Path, progress: bool, log_output: bool,
    env: dict[str, str] | None = None,
) -> None:
    """Execute one run with papermill into ``rd.executed`` (on failure: into ``rd.failed``);
    ``env``: environment variables for its kernel."""
    import nbformat

    work = rd.root / ".work"
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"{run.run_id}.input.ipynb"
    out = work / f"{run.run_id}.ipynb"
    nb_in = read_notebook(run.source)
    nb_in.metadata.setdefault("kernelspec", {"name": KERNEL, "display_name": "Python 3", "language": "python"})
    nbformat.write(nb_in, str(src))
    try:
        _papermill(src, out, injected, cwd, progress, log_output, env)
    except BaseException:
        if out.exists():
            rd.failed.mkdir(parents=True, exist_ok=True)
            os.replace(out, rd.failed_nb(run.run_id))
        raise
    finally:
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
    accept_data_change: bool = False,
) -> list[Outcome]:
    """Execute a profile's runs in order; returns one :class:`Outcome` per run.

    Up-to-date runs are skipped; a failure stops only the runs that depend on it. The run folder
    is locked for the whole run (a second run of it exits naming this one's pid), its recorded
    data source must match (see :mod:`mocoxr.sources`), and what the profile needs (weight
    files, data folders, device) is checked before the first step. ``profile`` may be a loaded
    :class:`Profile` (then ``overrides`` were applied when it was loaded), so that a batch can
    run one profile into several folders, each locked on its own. ``select`` keeps only the
    runs it returns True for (their needs must be among them). Rows of ``results.csv`` and
    ``deltas.csv`` from another configuration are archived before the first step
    (:mod:`mocoxr.book.rows`); ``accept_data_change`` accepts new content in a recorded data
    folder (:func:`mocoxr.sources.check_and_record`).
    """
    root = Path(root) if root else paths.project_root()
    if isinstance(profile, Profile):
        if overrides:
            raise ValueError("overrides apply when a profile is loaded: pass them to load_profile")
        prof = profile
    else:
        prof = load_profile(profile, root / "notebooks", overrides)
    every = prof
    if select is not None:
        prof = dataclasses.replace(prof, runs=[r for r in prof.runs if select(r)])
    missing = sources.preflight(prof.runs)
    if missing:
        raise ProfileError(f"{prof.path}: this machine lacks what the profile needs:\n  "
                           + "\n  ".join(missing))
    with store.writing(run_dir or default_run_dir(prof.name, root)):
        rd = run_paths(run_dir or default_run_dir(prof.name, root))
    with store.run_lock(rd.root):
        sources.check_and_record(rd.root, prof.parameters, accept_data_change)
        key_of = run_keys(every, rd)  # of every run: rows of unselected runs stay
        with store.writing(rd.root):
            rows.archive_foreign(rd.root, key_of, echo)
        return _run_all(prof, rd, key_of, force, progress, log_output, echo)


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


def _execute_and_stamp(run: Run, rd: RunPaths, key: str, progress: bool, log_output: bool,
                       echo, head: str) -> Outcome:
    """Execute one run; on success write its stamp, on failure report it (and go on)."""
    injected = {"run_dir": str(rd.root), **run.parameters}
    echo(f"{head}: running {run.source}")
    t0 = time.time()
    try:
        with store.writing(rd.root):
            rd.stamp(run.run_id).unlink(missing_ok=True)
            execute_run(run, injected, rd, run.source.parent, progress, log_output,
                        rows.run_environment(run.run_id, key))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - report and go on with independent runs
        dt = time.time() - t0
        where = rd.failed_nb(run.run_id)
        detail = f"{run.source}: {_failure_line(exc)}"
        if where.exists():
            detail += f"; partial notebook: {where}"
        echo(f"{head}: FAILED after {dt:.0f} s: {detail}")
        if not where.exists() and not isinstance(exc, store.StorageError):
            echo(traceback.format_exc())
        return Outcome(run.run_id, "failed", dt, detail)
    dt = time.time() - t0
    stamp = {
        "key": key, "run_id": run.run_id, "notebook": str(run.source), "parameters": injected,
        "seconds": round(dt, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    store.atomic_write_text(rd.stamp(run.run_id), json.dumps(stamp, indent=1, default=str))
    rd.failed_nb(run.run_id).unlink(missing_ok=True)
    echo(f"{head}: done in {dt:.0f} s -> {rd.executed_nb(run.run_id)}")
    return Outcome(run.run_id, "ran", dt)


def _run_all(prof: Profile, rd: RunPaths, key_of: dict[str, str], force: bool, progress: bool,
             log_output: bool, echo) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    echo(f"profile {prof.name} ({prof.path}) -> {rd.root}")
    for i, run in enumerate(prof.runs, 1):
        head = f"[{i}/{len(prof.runs)}] {run.run_id}"
        bad = [d for d in run.deps if outcomes[d].status in ("failed", "skipped")]
        if bad:
            outcomes[run.run_id] = Outcome(run.run_id, "skipped", detail=f"needs {', '.join(bad)}")
            echo(f"{head}: skipped (needs {', '.join(bad)}, which did not finish)")
        elif not force and is_up_to_date(rd, run.run_id, key_of[run.run_id]):
            outcomes[run.run_id] = Outcome(run.run_id, "up to date")
            echo(f"{head}: up to date ({rd.executed_nb(run.run_id)})")
        else:
            outcomes[run.run_id] = _execute_and_stamp(run, rd, key_of[run.run_id], progress,
                                                      log_output, echo, head)
    result = [outcomes[r.run_id] for r in prof.runs]
    echo(summary(result))
    return result


def summary(outcomes: Sequence[Outcome]) -> str:
    """The table printed at the end of a run: one line per run, then the count finished."""
    lines = ["", f"{'run':36s} {'status':11s} {'seconds':>8s}  detail"]
    for o in outcomes:
        lines.append(f"{o.run_id:36s} {o.status:11s} {o.seconds:8.0f}  {o.detail}")
    failed = [o for o in outcomes if o.status in ("failed", "skipped")]
    lines.append(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished"
                 + (f"; {len(failed)} failed or skipped" if failed else ""))
    return "\n".join(lines)


def finished(outcomes: Sequence[Outcome]) -> bool:
    """Every run ran or was up to date."""
    return all(o.status in ("ran", "up to date") for o in outcomes)


def run_seeds(profile: str | Path, run_dir: Path | None, seed_list: Sequence[int],
              overrides: dict[str, Any], force: bool = False, log_output: bool = False,
              accept_data_change: bool = False) -> int:
    """``run --seeds ...``: the profile's ``BATCH_NOTEBOOKS`` once per seed in
    ``<run_dir>/seed-<n>/`` (with ``BATCH_OVERRIDES``: settings of figures only), the deltas
    pooled over seeds (:mod:`mocoxr.seeds`), then the stability page in ``run_dir``. Returns the
    command's exit status."""
    from mocoxr import seeds as seedbatch

    root = paths.project_root()
    prof = load_profile(profile, root / "notebooks", overrides)
    base = Path(run_dir or default_run_dir(prof.name, root))

    def run_one(seed: int, folder: Path) -> bool:
        return finished(run_profile(profile, folder,
                                    {**BATCH_OVERRIDES, **overrides, "seed": seed}, force=force,
                                    log_output=log_output, accept_data_change=accept_data_change,
                                    select=lambda r: r.notebook in BATCH_NOTEBOOKS))

    real_chexpert, real_shenzhen = "data_dir" in overrides, "shenzhen_dir" in overrides
    shared = {"linear": real_chexpert, "finetune": real_chexpert,
              "shenzhen_linear": real_shenzhen, "shenzhen_finetune": real_shenzhen}
    command = f"python -m mocoxr.book run --profile {prof.name} --seeds " + " ".join(
        str(s) for s in seed_list)
    if seedbatch.run_seeds(run_one, base, seed_list, shared, command) is None:
        return 1
    # the page that reads the pooled tables, in the base folder (its input just changed)
    outcomes = run_profile(profile, base, overrides, force=True, log_output=log_output,
                           accept_data_change=accept_data_change,
                           select=lambda r: r.notebook == STABILITY_NOTEBOOK)
    return 0 if all(o.status == "ran" for o in outcomes) else 1
