"""Tests for mocoxr.book.runner: skip, resume, failure isolation, the run folder's lock and
recorded data source, run keys (which survive moving folders, see the package code, and leave
the CheXpert steps alone when only Shenzhen changes), checks before the first step.

Runner tests use stand-in notebooks (tests/book_project.py, a few seconds of kernel start-up
each); the key tests read the real notebooks' parameters without executing them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from book_project import PROFILE, abcd_project, run, run_folder_project, write_nb, write_profile

from mocoxr import sources, store
from mocoxr.book import __main__ as cli
from mocoxr.book import paths, runner
from mocoxr.book.ipynb import notebook_errors
from mocoxr.book.profile import ProfileError, load_profile

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """The a/b/c/d stand-in project, with the package code's part of the keys pinned so that
    edits elsewhere do not rerun steps."""
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v1")
    return abcd_project(tmp_path)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return run_folder_project(tmp_path)


# ----------------------------------------------------------------------------- skip and resume


def test_failure_is_isolated_and_rerun_resumes(project: Path):
    runs = project / "runs" / "p"
    path = write_profile(project, PROFILE % "true")
    assert run(project, path) == {"a": "ran", "b": "failed", "c": "ran", "d": "skipped"}
    assert (runs / "a.txt").read_text() == "3 {'x': 1, 'y': 5}"
    assert (runs / "c.txt").exists() and not (runs / "d-r18.txt").exists()
    assert (runs / "failed" / "b.ipynb").exists()  # partial notebook kept for reading
    assert not (runs / "executed" / "b.ipynb").exists()
    assert notebook_errors(runs / "failed" / "b.ipynb")

    # rerun without changes: finished runs are skipped, the failed one is tried again
    assert run(project, path) == {"a": "up to date", "b": "failed", "c": "up to date", "d": "skipped"}

    # fix the cause: b and d run, nothing else
    path = write_profile(project, PROFILE % "false")
    assert run(project, path) == {"a": "up to date", "b": "ran", "c": "up to date", "d": "ran"}
    assert not (runs / "failed" / "b.ipynb").exists()
    assert run(project, path) == dict.fromkeys("abcd", "up to date")

    # editing a notebook reruns it and everything downstream of it
    nb = project / "notebooks" / "b.py"
    nb.write_text(nb.read_text() + "\n# %%\nprint('edited')\n")
    assert run(project, path) == {"a": "up to date", "b": "ran", "c": "up to date", "d": "ran"}
    # a changed shared parameter reruns the notebooks that declare it, and their dependents
    path = write_profile(project, (PROFILE % "false").replace("size: 3", "size: 4"))
    assert run(project, path) == dict.fromkeys("abcd", "ran")


def test_changed_package_code_or_force_reruns_everything(project: Path, monkeypatch):
    path = write_profile(project, "notebooks: {a: {}, c: {}}\n")
    assert run(project, path) == dict.fromkeys("ac", "ran")
    assert run(project, path) == dict.fromkeys("ac", "up to date")
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v2")
    assert run(project, path) == dict.fromkeys("ac", "ran")
    assert run(project, path, force=True) == dict.fromkeys("ac", "ran")


def test_missing_or_broken_output_is_not_up_to_date(project: Path):
    path = write_profile(project, PROFILE % "false")
    run(project, path)
    runs = project / "runs" / "p"
    (runs / "executed" / "c.ipynb").unlink()
    stamp = json.loads((runs / "stamps" / "a.json").read_text())
    assert stamp["parameters"]["size"] == 3 and stamp["run_id"] == "a"
    nb = nbformat.read(runs / "executed" / "d.ipynb", as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("error", ename="X", evalue="boom", traceback=[])]
    nbformat.write(nb, runs / "executed" / "d.ipynb")
    assert run(project, path) == {"a": "up to date", "b": "up to date", "c": "ran", "d": "ran"}


def test_executed_notebook_is_tagged_for_the_site(project: Path):
    path = write_profile(project, """
        notebooks:
          b:
            runs: [{}, {backbone: d121}]
    """)
    assert run(project, path) == {"b": "ran", "b-d121": "ran"}
    nb = nbformat.read(project / "runs" / "p" / "executed" / "b-d121.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert any("injected-parameters" in t and "hide-input" in t for t in tags)
    assert any("parameters" in t and "remove-cell" in t for t in tags)
    assert nb.cells[0].source.startswith("# Stand-in (d121)")
    assert nb.metadata["mocoxr"]["parameters"]["backbone"] == "d121"
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'backbone = "d121"' in injected.source and "run_dir = " in injected.source


def test_failure_summary_shows_the_first_line(proj: Path, tmp_path: Path):
    lines: list[str] = []
    profile = write_profile(proj, "notebooks: {bad: {}}\n")
    out = runner.run_profile(profile, tmp_path / "run", root=proj, progress=False, echo=lines.append)
    assert out[0].status == "failed"
    assert "ValueError: first line names the cause" in out[0].detail
    assert "second line" not in out[0].detail
    assert "0 of 1 runs finished; 1 failed or skipped" in lines[-1]


# ----------------------------------------------------------------------------- the run folder


RUNNER = """
import sys
from pathlib import Path
from mocoxr.book import runner
try:
    out = runner.run_profile(sys.argv[1], Path(sys.argv[2]), root=Path(sys.argv[3]), progress=False,
                             echo=lambda *a: None)
    print("statuses", [o.status for o in out])
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_two_runs_of_one_folder_one_waits_out(proj: Path, tmp_path: Path):
    profile = write_profile(proj, "parameters: {seconds: 4}\nnotebooks: {slow: {}}\n")
    rd = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, str(profile), str(rd), str(proj)],
                              env=ENV, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    busy = [o for o in outs if o.startswith("RunFolderBusy")]
    assert len(busy) == 1 and "statuses ['ran']" in outs, outs
    other = procs[outs.index("statuses ['ran']")].pid
    assert f"pid {other}" in busy[0] and str(rd) in busy[0]
    assert (rd / "slow.txt").read_text() == "ran\n"  # executed once, not twice
    assert run(proj, profile, rd) == {"slow": "up to date"}


def test_data_source_is_recorded_refused_when_changed_and_read_by_status(
        proj: Path, tmp_path: Path, monkeypatch, capsys):
    real = tmp_path / "real" / "ChinaSet"
    (real / "CXR_png").mkdir(parents=True)
    (real / "CXR_png" / "CHNCXR_0001_0.png").write_bytes(b"png" * 10)
    profile = write_profile(proj, "notebooks: {prep: {}}\n")
    rd = tmp_path / "runs" / "p"
    assert run(proj, profile, rd, overrides={"shenzhen_dir": str(real)}) == {"prep": "ran"}
    assert json.loads((rd / "source.json").read_text())["shenzhen_dir"]["path"] == str(real)
    with pytest.raises(sources.SourceMismatch) as err:  # rerun without the flag: phantoms
        run(proj, profile, rd)
    msg = str(err.value)
    assert str(real) in msg and "embedded synthetic Shenzhen" in msg and str(rd) in msg
    assert (rd / "prep.txt").read_text() == f"{real} 1"  # the real-data output is kept
    # status without the flag reads the recorded source: nothing to rerun
    monkeypatch.setattr(paths, "project_root", lambda start=None: proj)
    assert cli.main(["status", "--profile", str(profile), "--run-dir", str(rd)]) == 0
    assert "up to date" in capsys.readouterr().out
    # the data folder moved (same content): accepted, and nothing is stale
    moved = tmp_path / "elsewhere" / "ChinaSet"
    shutil.copytree(real, moved)
    assert run(proj, profile, rd, overrides={"shenzhen_dir": str(moved)}) == {"prep": "up to date"}
    # the run folder moved: still up to date
    new_rd = tmp_path / "moved_runs" / "p"
    shutil.move(rd, new_rd)
    assert run(proj, profile, new_rd, overrides={"shenzhen_dir": str(moved)}) == {"prep": "up to date"}


def test_storage_error_on_a_read_only_run_folder_is_one_line(proj: Path, tmp_path: Path, monkeypatch):
    import errno

    profile = write_profile(proj, "notebooks: {prep: {}}\n")
    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", ro_open)
    with pytest.raises(store.StorageError) as err:
        run(proj, profile, tmp_path / "ro")
    assert str(err.value) == f"cannot write {tmp_path / 'ro' / '.lock'}: the file system is read-only"


def test_missing_imagenet_weights_are_found_before_the_first_step(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    profile = tmp_path / "p.yaml"
    profile.write_text((ROOT / "mocoxr" / "profiles" / "tiny.yaml").read_text()
                       .replace("baseline: random", "baseline: imagenet"))
    with pytest.raises(ProfileError) as err:
        runner.run_profile(profile, tmp_path / "run", progress=False, echo=lambda *a: None)
    assert "resnet18-f37072fd.pth" in str(err.value) and str(tmp_path / "torch_home") in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing ran


def test_cuda_device_without_cuda_is_found_before_the_first_step(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    prof = load_profile("tiny", ROOT / "notebooks", {"device": "cuda"})
    assert any("no CUDA device" in p for p in sources.preflight(prof.runs))


# ----------------------------------------------------------------------------- keys of the real notebooks


def _keys(tmp_path: Path, overrides: dict | None = None) -> dict[str, str]:
    prof = load_profile("tiny", ROOT / "notebooks", overrides)
    return runner.run_keys(prof, paths.run_paths(tmp_path / "run"))


def test_shenzhen_settings_do_not_restale_the_chexpert_steps(tmp_path: Path):
    base = _keys(tmp_path)
    chexpert_steps = ("02_pretrain", "03_linear_probe", "04_finetune")
    sz_folder = tmp_path / "sz"
    (sz_folder / "CXR_png").mkdir(parents=True)
    for overrides in ({"shenzhen": {"fractions": [0.5, 1.0]}}, {"shenzhen_dir": str(sz_folder)}):
        new = _keys(tmp_path, overrides)
        assert [s for s in base if base[s] != new[s]] == ["01_data", "05_shenzhen", "06_results"]
        assert all(base[s] == new[s] for s in chexpert_steps)
    new = _keys(tmp_path, {"chexpert": {"uncertain_policy": "zeros"}})
    # 05 needs the pretrained backbone; the stability page reads only the pooled seeds tables
    assert [s for s in base if base[s] == new[s]] == ["08_stability", "09_own_data"]  # 09 writes its own examples


def test_run_keys_hold_no_run_folder_or_data_folder_path(tmp_path: Path):
    data = tmp_path / "a" / "chexpert"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("Path\n")
    one = _keys(tmp_path / "1", {"data_dir": str(data)})
    moved = tmp_path / "b" / "chexpert"
    shutil.copytree(data, moved)
    assert _keys(tmp_path / "elsewhere", {"data_dir": str(moved)}) == one
    (moved / "train.csv").write_text("Path\nx\n")
    assert _keys(tmp_path / "1", {"data_dir": str(moved)})["02_pretrain"] != one["02_pretrain"]


KEYS_AFTER_EDITS = """
import json, sys
from pathlib import Path
from mocoxr.book import paths, profile, runner

def keys():
    prof = profile.load_profile("tiny", paths.project_root() / "notebooks")
    return runner.run_keys(prof, paths.run_paths(sys.argv[1]))

pkg, before, changed = paths.PACKAGE_DIR, keys(), {}
line = '    mean, std = data.image_stats(images, prepared.rows("train"))\\n'
targets = [pkg / "notebook.py", *sorted((pkg / "book").glob("*.py"))]
for f in targets:
    text = f.read_text()
    if f.name == "notebook.py":  # a real change of what the notebooks compute
        assert line in text
        f.write_text(text.replace(line, line + "    std = 2 * std  # another normalisation\\n"))
    else:
        f.write_text(text + "# an edit\\n")
    after = keys()
    f.write_text(text)
    changed[f.relative_to(pkg).as_posix()] = [k for k in before if before[k] != after[k]]
print(json.dumps({"runs": list(before), "changed": changed, "again": keys() == before}))
"""


def test_editing_any_package_file_makes_every_run_stale(tmp_path: Path):
    """Without monkeypatching: in a copy of the project, an edit of notebook.py (what the
    notebooks call) or of any file of mocoxr/book/ gives other keys to every run of the tiny
    profile (and undoing it gives the old ones back)."""
    copy = tmp_path / "proj"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "_build", "__pycache__", "*.ipynb_checkpoints"))
    out = subprocess.run([sys.executable, "-c", KEYS_AFTER_EDITS, str(tmp_path / "run")],
                         env={**ENV, "PYTHONPATH": str(copy)}, cwd=copy, capture_output=True,
                         text=True, check=True).stdout
    found = json.loads(out)
    assert {"notebook.py", "book/runner.py", "book/profile.py", "book/site.py",
            "book/__main__.py"} <= set(found["changed"])
    for name, changed in found["changed"].items():
        assert changed == found["runs"], name
    assert found["again"]
