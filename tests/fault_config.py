"""Fault-injection cases about configuration and stopping (run by tests/fault_injection.py and,
one by one, by tests/test_fault_config.py), each on a stand-in project:

- mixed rows: a profile changed three ways (retrain the backbone, drop a label fraction, change
  the data folder's content) must leave results.csv, deltas.csv, the published tables and the
  results page holding rows of the current configuration only, equal to a fresh run's;
- changed data: a file added to a data folder the run folder used is refused with what changed,
  and accepted with ``--accept-data-change``;
- build of a read-only run folder (where a read-only tmpfs can be mounted): no Traceback;
- SIGINT and SIGTERM mid-run: one line, rc 130 / 143, no Traceback, and a rerun resumes;
- profile path escapes: ``..``, an absolute path and a symbolic link out of ``book/recorded/``
  in ``record.csv`` are refused when the profile is loaded.

Each case returns a list of problems (empty: it held).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

NOTEBOOKS = {
    "probe": ('run_dir = "."\nmax_steps = 3\ndata_dir = None\nfractions = [0.1, 1.0]',
              'import hashlib, os\nfrom pathlib import Path\nfrom mocoxr import evaluate\n'
              'rd = Path(run_dir)\n'
              'weights = f"{max_steps} steps, {len(os.listdir(data_dir)) if data_dir else 0} files"  # the backbone\n'
              'def auc(f, init):\n'
              '    return int(hashlib.sha1(f"{weights}{f}{init}".encode()).hexdigest()[:4], 16) / 65536\n'
              'for f in fractions:\n'
              '    for init in ("moco", "random"):\n'
              '        row = {"experiment": "linear", "backbone": "r18", "init": init, "label_fraction": f,\n'
              '               "draw": -1, "auc": auc(f, init), "ci_low": 0.0, "ci_high": 1.0, "n_train": 1, "n_test": 1}\n'
              '        evaluate.upsert_rows(rd / "results.csv", [row], evaluate.RESULTS_COLUMNS, evaluate.RESULTS_KEY)\n'
              '    d = {"experiment": "linear", "backbone": "r18", "label_fraction": f, "comparison": "moco - random",\n'
              '         "delta": auc(f, "moco") - auc(f, "random"), "ci_low": -1.0, "ci_high": 1.0}\n'
              '    evaluate.upsert_rows(rd / "deltas.csv", [d], evaluate.DELTAS_COLUMNS, evaluate.DELTAS_KEY)'),
    "report": ('run_dir = "."',
               'import pandas as pd\nfrom pathlib import Path\n'
               'for name in ("results.csv", "deltas.csv"):\n'
               '    t = pd.read_csv(Path(run_dir) / name).sort_values(list(pd.read_csv(Path(run_dir) / name).columns[:5]))\n'
               '    print(name, len(t), "rows")\n'
               '    print(t.drop(columns=["run", "run_key"], errors="ignore").to_csv(index=False))'),
    "pre": ('run_dir = "."', 'print("ready")'),
    "slow": ('run_dir = "."\ngate = ""\nseconds = 60',
             'import time\nfrom pathlib import Path\nt0 = time.time()\n'
             'while not Path(gate).exists() and time.time() - t0 < seconds:\n    time.sleep(0.1)\n'
             '(Path(run_dir) / "slow.txt").write_text("done")'),
    "pp": ('run_dir = "."\nrecord = {"csv": None, "command": None}', 'print(record)'),
}
PROFILE = """
parameters: {{max_steps: {steps}, fractions: {fractions}}}
notebooks:
  probe: {{}}
  report: {{needs: [probe]}}
"""


def make_project(where: Path) -> Path:
    """A stand-in project root with the notebooks above."""
    for sub in ("notebooks", "book/recorded"):
        (where / sub).mkdir(parents=True, exist_ok=True)
    (where / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (where / "_config.yml").write_text("title: t\nexecute:\n  execute_notebooks: 'off'\n")
    (where / "book" / "intro.md").write_text("# Intro\n")
    for name, (params, body) in NOTEBOOKS.items():
        (where / "notebooks" / f"{name}.py").write_text(
            f"# %% [markdown]\n# # {name}\n\n# %% tags=[\"parameters\"]\n{params}\n\n# %%\n{body}\n")
    return where


def write_profile(project: Path, steps: int = 3, fractions: str = "[0.1, 1.0]") -> Path:
    path = project / "p.yaml"
    path.write_text(PROFILE.format(steps=steps, fractions=fractions))
    return path


def _run(project: Path, run_dir: Path, data: Path, **kw) -> list[str]:
    from mocoxr.book import runner

    out = runner.run_profile(write_profile(project, **kw.pop("profile", {})), run_dir,
                             {"data_dir": str(data)}, root=project, progress=False,
                             echo=lambda *a: None, **kw)
    return [o.status for o in out]


def _tables(project: Path, run_dir: Path) -> dict[str, str]:
    """results.csv and deltas.csv (sorted), the published copies, and the results page's text."""
    import nbformat
    import pandas as pd

    from mocoxr.book import runner, site

    out, tables = {}, ("results.csv", "deltas.csv")
    for name in tables:
        t = pd.read_csv(run_dir / name)
        out[name] = t.sort_values(list(t.columns[:5])).to_csv(index=False)
    prof, rd = runner.open_run(project / "p.yaml", project, run_dir)
    pub = run_dir.parent / f"published-{run_dir.name}"
    pub.mkdir(exist_ok=True)
    if hasattr(site, "publish_tables"):  # what `build` puts beside the site
        site.publish_tables(rd, pub, runner.run_keys(prof, rd))
    else:  # before it existed, `build` copied the tables
        for name in tables:
            shutil.copy2(run_dir / name, pub / name)
    for name in tables:
        t = pd.read_csv(pub / name)
        out[f"published {name}"] = t.sort_values(list(t.columns[:5])).to_csv(index=False)
    nb = nbformat.read(str(run_dir / "executed" / "report.ipynb"), as_version=4)
    out["page"] = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return out


def mixed_rows_case(work: Path, log) -> list[str]:
    """Change the profile three ways; after each run every table and the page must equal those
    of a fresh run of the changed profile (nothing of the earlier configuration left)."""
    project = make_project(work / "project")
    data = work / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"a")
    rd, problems = work / "runs" / "changed", []
    _run(project, rd, data)
    changes = [("retrain (max_steps 3 -> 4)", {"profile": {"steps": 4}}),
               ("drop a fraction (0.1)", {"profile": {"steps": 4, "fractions": "[1.0]"}}),
               ("change the data (one file added)", {"profile": {"steps": 4, "fractions": "[1.0]"},
                                                    "accept_data_change": True})]
    for i, (what, kw) in enumerate(changes):
        if "accept_data_change" in kw:
            (data / "b.png").write_bytes(b"b")
        _run(project, rd, data, **dict(kw))
        fresh = work / "runs" / f"fresh{i}"
        _run(project, fresh, data, **{k: v for k, v in kw.items() if k == "profile"})
        got, want = _tables(project, rd), _tables(project, fresh)
        bad = [k for k in want if got[k] != want[k]]
        log(f"  profile changed, {what}: " + ("tables and page as a fresh run's" if not bad
                                              else f"DIFFER: {bad}"))
        if bad:
            return [f"after '{what}': {bad} differ from a fresh run's:\n{got[bad[0]]}\n!=\n{want[bad[0]]}"]
    return problems


def changed_data_case(work: Path, log) -> list[str]:
    """A file added to the data folder: refused with what changed and the flag; then accepted."""
    from mocoxr import sources

    project = make_project(work / "project")
    data = work / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"a")
    rd = work / "runs" / "data"
    _run(project, rd, data)
    (data / "new.png").write_bytes(b"n")
    try:
        _run(project, rd, data)
        return ["changed data: the run was not refused"]
    except sources.SourceMismatch as exc:
        msg = str(exc)
    log(f"  data folder changed: {msg}")
    problems = []
    if not ("1 added (new.png)" in msg and "0 removed" in msg and "--accept-data-change" in msg):
        return [f"changed data: the message does not say what changed or the flag: {msg}"]
    statuses = _run(project, rd, data, accept_data_change=True)
    if statuses != ["ran", "ran"]:
        problems.append(f"changed data accepted: expected every step to rerun, got {statuses}")
    return problems


def read_only_build_case(work: Path, log) -> list[str]:
    """``build`` of a run folder on a read-only file system: a site, no Traceback."""
    mnt = work / "ro_build"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        log("  build of a read-only run folder: skipped (cannot mount a tmpfs here)")
        return []
    try:
        project = make_project(work / "project")
        (work / "data").mkdir(exist_ok=True)
        _run(project, mnt / "run", work / "data")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        done = cli(project, "build", "--profile", str(project / "p.yaml"), "--run-dir", str(mnt / "run"),
                   "--output", str(work / "site"))
        ok = done.returncode == 0 and "Traceback" not in done.stderr and \
            (work / "site" / "_build" / "html" / "results.csv").is_file()
        log(f"  build of a read-only run folder: rc {done.returncode}"
            + ("" if ok else f"\n{done.stderr[-1500:]}"))
        return [] if ok else [f"build read-only: rc {done.returncode}: {done.stderr[-1500:]}"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


DRIVER = ("import sys; from pathlib import Path; from mocoxr.book import paths, __main__ as m; "
          "paths.project_root = lambda start=None: Path(sys.argv[1]); sys.exit(m.main(sys.argv[2:]))")


def cli(project: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m mocoxr.book ARGS`` with the stand-in project as the project root."""
    return subprocess.run([sys.executable, "-c", DRIVER, str(project), *args], env=ENV,
                          capture_output=True, text=True, timeout=600, **kw)


def stop_case(work: Path, sig: int, log) -> list[str]:
    """SIGINT / SIGTERM while a step runs: one line, rc 130 / 143, no Traceback; a rerun
    resumes (the finished step up to date, the stopped one runs) and a third run does nothing."""
    project = make_project(work / f"project-{sig}")
    gate = work / f"gate-{sig}"
    (project / "s.yaml").write_text(f"notebooks:\n  pre: {{}}\n  slow: {{runs: [{{gate: {str(gate)!r}}}]}}\n")
    args = ["run", "--profile", str(project / "s.yaml"), "--run-dir", str(work / f"stop-{sig}")]
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(project), *args], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if "slow: running" in line:
            break
    time.sleep(3)  # inside the step
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    want = 130 if sig == signal.SIGINT else 143
    name = signal.Signals(sig).name
    lines = [ln for ln in err.splitlines() if ln.strip() and "Executing" not in ln]
    problems = []
    if p.returncode != want or "Traceback" in err or lines != [f"python -m mocoxr.book run: interrupted; rerun to resume"]:
        problems.append(f"{name}: rc {p.returncode} (expected {want}), stderr:\n{err[-3000:]}")
    gate.write_text("open")
    again = cli(project, *args)
    third = cli(project, *args)
    if again.returncode or "pre: up to date" not in again.stdout or "slow: done" not in again.stdout:
        problems.append(f"{name}: the rerun did not resume: {again.stdout[-1500:]} {again.stderr[-1500:]}")
    if third.returncode or "2 of 2 runs finished" not in third.stdout or "running" in third.stdout:
        problems.append(f"{name}: a third run was not all up to date: {third.stdout[-1500:]}")
    log(f"  {name} mid-run: rc {p.returncode}, {len(lines)} line(s); rerun resumed: "
        + ("yes" if not problems else "NO"))
    return problems


def path_escape_case(work: Path, log) -> list[str]:
    """``record.csv`` with ``..``, an absolute path, or through a symbolic link out of
    book/recorded/: refused when the profile loads; a file under book/recorded/ is accepted."""
    from mocoxr.book.profile import ProfileError, load_profile

    project = make_project(work / "project-paths")
    outside = work / "outside"
    outside.mkdir()
    (project / "book" / "recorded" / "link").symlink_to(outside)
    problems = []
    for value, ok in [("../escape_test/pp.csv", False), (str(outside / "pp.csv"), False),
                      ("book/recorded/link/pp.csv", False), ("book/recorded/../../pp.csv", False),
                      ("book/recorded/pp.csv", True)]:
        path = project / "pp.yaml"
        path.write_text(textwrap.dedent(f"""
            notebooks:
              pp: {{runs: [{{record: {{csv: {value!r}}}}}]}}
        """))
        try:
            load_profile(path, project / "notebooks")
            refused = None
        except ProfileError as exc:
            refused = str(exc)
        log(f"  record.csv = {value}: " + (f"refused: {refused}" if refused else "accepted"))
        if ok == (refused is not None) or (refused and "record.csv" not in refused):
            problems.append(f"record.csv = {value!r}: {'refused' if refused else 'accepted'} ({refused})")
    return problems


def all_cases(work: Path, log) -> tuple[int, list[str]]:
    """Every case above; returns (cases tried, problems)."""
    problems: list[str] = []
    cases = [lambda w: mixed_rows_case(w, log), lambda w: changed_data_case(w, log),
             lambda w: read_only_build_case(w, log),
             lambda w: stop_case(w, signal.SIGINT, log), lambda w: stop_case(w, signal.SIGTERM, log),
             lambda w: path_escape_case(w, log)]
    for i, case in enumerate(cases):
        folder = work / f"config{i}"
        folder.mkdir()
        problems += case(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return len(cases), problems
