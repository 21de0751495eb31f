"""The run folder keeps nothing stale and loses nothing: one run at a time, its data source
recorded, keys that survive moving it, refusal of unmatched upstream runs and of stale pages,
profile values checked at load, missing requirements found before the first step.

Runner tests use stand-in notebooks (a few seconds of kernel start-up each); the key tests read
the real notebooks' parameters without executing them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mocoxr import book, sources, store
from test_book import empty_project, write_nb, write_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = empty_project(tmp_path)
    nbs = root / "notebooks"
    write_nb(nbs / "prep.py", 'run_dir = "."\ndata_dir = None\nshenzhen_dir = None\nsize = 1',
             'from pathlib import Path\n(Path(run_dir) / "prep.txt").write_text(f"{shenzhen_dir} {size}")')
    write_nb(nbs / "slow.py", 'run_dir = "."\nseconds = 0',
             'import time\nfrom pathlib import Path\ntime.sleep(seconds)\n'
             'with open(Path(run_dir) / "slow.txt", "a") as fh:\n    fh.write("ran\\n")')
    write_nb(nbs / "bad.py", 'run_dir = "."',
             'raise ValueError("first line names the cause\\nsecond line: details")')
    return root


def run(root: Path, profile: Path, run_dir: Path, **kw) -> dict[str, str]:
    outcomes = book.run_profile(profile, run_dir, root=root, progress=False, echo=lambda *a: None, **kw)
    return {o.run_id: o.status for o in outcomes}


RUNNER = """
import sys
from pathlib import Path
from mocoxr import book
try:
    out = book.run_profile(sys.argv[1], Path(sys.argv[2]), root=Path(sys.argv[3]), progress=False,
                           echo=lambda *a: None)
    print("statuses", [o.status for o in out])
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_two_runs_of_one_folder_one_waits_out(proj: Path, tmp_path: Path):
    profile = write_profile(proj, "parameters: {seconds: 4}\nnotebooks: {slow: {}}\n")
    rd = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, str(profile), str(rd), str(proj)],
                              env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
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
    monkeypatch.setattr(book, "project_root", lambda start=None: proj)
    assert book.main(["status", "--profile", str(profile), "--run-dir", str(rd)]) == 0
    assert "up to date" in capsys.readouterr().out
    # the data folder moved (same content): accepted, and nothing is stale
    moved = tmp_path / "elsewhere" / "ChinaSet"
    shutil.copytree(real, moved)
    assert run(proj, profile, rd, overrides={"shenzhen_dir": str(moved)}) == {"prep": "up to date"}
    # the run folder moved: still up to date
    new_rd = tmp_path / "moved_runs" / "p"
    shutil.move(rd, new_rd)
    assert run(proj, profile, new_rd, overrides={"shenzhen_dir": str(moved)}) == {"prep": "up to date"}


def test_needed_run_without_matching_upstream_is_refused(proj: Path):
    nbs = proj / "notebooks"
    write_nb(nbs / "pre.py", 'run_dir = "."\nbackbone = "r18"', 'pass')
    write_nb(nbs / "probe.py", 'run_dir = "."\nbackbone = "r18"', 'pass')
    profile = write_profile(proj, """
        notebooks:
          pre: {runs: [{backbone: r19}]}
          probe: {needs: [pre]}
    """)
    with pytest.raises(book.ProfileError) as err:
        book.load_profile(profile, nbs)
    assert "probe needs pre" in str(err.value) and "'backbone': 'r18'" in str(err.value)


def test_build_refuses_stale_pages_or_marks_them(proj: Path, tmp_path: Path):
    rd = tmp_path / "run"
    profile = write_profile(proj, "parameters: {size: 2}\nnotebooks: {prep: {}}\n")
    assert run(proj, profile, rd) == {"prep": "ran"}
    profile = write_profile(proj, "parameters: {size: 3}\nnotebooks: {prep: {}}\n")
    with pytest.raises(RuntimeError, match=r"stale \(prep\)"):
        book.build_site(profile, rd, output=tmp_path / "out", root=proj, echo=lambda *a: None)
    prof, paths = book.open_run(profile, proj, rd)
    assert book.stale_runs(prof, paths) == ["prep"]
    site = book.stage_site(prof, paths, proj, echo=lambda *a: None, stale=["prep"])
    staged = (site / "book" / "executed" / "prep.ipynb").read_text()
    assert "This page is **stale**" in staged


def test_failure_summary_shows_the_first_line(proj: Path, tmp_path: Path):
    lines: list[str] = []
    profile = write_profile(proj, "notebooks: {bad: {}}\n")
    out = book.run_profile(profile, tmp_path / "run", root=proj, progress=False, echo=lines.append)
    assert out[0].status == "failed"
    assert "ValueError: first line names the cause" in out[0].detail
    assert "second line" not in out[0].detail


def test_missing_imagenet_weights_are_found_before_the_first_step(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    profile = tmp_path / "p.yaml"
    profile.write_text((ROOT / "mocoxr" / "profiles" / "tiny.yaml").read_text()
                       .replace("baseline: random", "baseline: imagenet"))
    with pytest.raises(book.ProfileError) as err:
        book.run_profile(profile, tmp_path / "run", progress=False, echo=lambda *a: None)
    assert "resnet18-f37072fd.pth" in str(err.value) and str(tmp_path / "torch_home") in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing ran


def test_cuda_device_without_cuda_is_found_before_the_first_step(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    prof = book.load_profile("tiny", ROOT / "notebooks", {"device": "cuda"})
    assert any("no CUDA device" in p for p in sources.preflight(prof.runs))


# ----------------------------------------------------------------------------- keys of the real notebooks


def _keys(tmp_path: Path, overrides: dict | None = None) -> dict[str, str]:
    prof = book.load_profile("tiny", ROOT / "notebooks", overrides)
    return book.run_keys(prof, book.run_paths(tmp_path / "run"))


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
    assert [s for s in base if base[s] == new[s]] == ["08_stability"]


def test_run_keys_hold_no_run_folder_or_data_folder_path(tmp_path: Path):
    data = tmp_path / "a" / "chexpert"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("Path\n")
    prof = book.load_profile("tiny", ROOT / "notebooks", {"data_dir": str(data)})
    one = book.run_keys(prof, book.run_paths(tmp_path / "run1"))
    moved = tmp_path / "b" / "chexpert"
    shutil.copytree(data, moved)
    prof = book.load_profile("tiny", ROOT / "notebooks", {"data_dir": str(moved)})
    assert book.run_keys(prof, book.run_paths(tmp_path / "elsewhere" / "run2")) == one
    (moved / "train.csv").write_text("Path\nx\n")
    assert book.run_keys(prof, book.run_paths(tmp_path / "run1"))["02_pretrain"] != one["02_pretrain"]


# ----------------------------------------------------------------------------- profile values


@pytest.mark.parametrize("setting,key,expected", [
    ("image_size: abc", "parameters.image_size = 'abc'", "an integer >= 8"),
    ("chexpert: {uncertain_policy: maybe}", "parameters.chexpert.uncertain_policy = 'maybe'",
     "one of ['ones', 'zeros', 'ignore']"),
    ("chexpert: {val_fraction: 0}", "parameters.chexpert.val_fraction = 0", "a number > 0 and < 1"),
    ("chexpert: {fractions: '0.1'}", "parameters.chexpert.fractions = '0.1'", "a list"),
    ("chexpert: {fractions: [0.5, 1.0], draws: [1]}", "parameters.chexpert.draws = [1]",
     "as many entries as chexpert.fractions (2)"),
    ("device: gpu", "parameters.device = 'gpu'", "'cpu', 'cuda'"),
    ("pretrain: {momentum: 1.5}", "parameters.pretrain.momentum = 1.5", "< 1"),
    ("backbone: resnet19", "parameters.backbone = 'resnet19'", "one of ['resnet18'"),
])
def test_profile_values_are_checked_at_load(tmp_path: Path, setting: str, key: str, expected: str):
    path = tmp_path / "bad.yaml"
    path.write_text(f"parameters:\n  {setting}\nnotebooks: {{01_data: {{}}, 02_pretrain: {{}}}}\n")
    with pytest.raises(book.ProfileError) as err:
        book.load_profile(path, ROOT / "notebooks")
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: expected") and expected in msg, msg


def test_a_run_override_is_named_where_it_was_set(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("notebooks:\n  02_pretrain: {runs: [{}, {backbone: resnet19}]}\n")
    with pytest.raises(book.ProfileError, match=r"notebooks\.02_pretrain\.runs\[1\]\.backbone = 'resnet19'"):
        book.load_profile(path, ROOT / "notebooks")


# ----------------------------------------------------------------------------- documented commands


def test_build_and_status_of_paper_read_the_recorded_data_folders(tmp_path: Path, capsys):
    """`python -m mocoxr.book build --profile paper` (README, usage page) after a run that was
    given --data-dir and --shenzhen-dir: no flags needed, no `requires` error."""
    rd = tmp_path / "runs" / "paper"
    cx, sz = tmp_path / "chexpert", tmp_path / "ChinaSet"
    cx.mkdir()
    sz.mkdir()
    sources.check_and_record(book.run_paths(rd).root, {"data_dir": str(cx), "shenzhen_dir": str(sz)})
    assert book.main(["status", "--profile", "paper", "--run-dir", str(rd)]) == 1
    out = capsys.readouterr()
    assert "02_pretrain-densenet121" in out.out and "requires" not in out.err
    assert book.main(["build", "--profile", "paper", "--run-dir", str(rd)]) == 2
    err = capsys.readouterr().err
    assert "requires" not in err and "no executed notebooks" in err
    assert book.main(["build", "--profile", "paper", "--run-dir", str(tmp_path / "fresh")]) == 2
    assert "--data-dir" in capsys.readouterr().err  # nothing recorded: the flag is named


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


@pytest.mark.slow
def test_documented_real_data_commands_at_toy_size(tmp_path: Path):
    """README / usage page: `run --profile paper --data-dir D --shenzhen-dir S`, then `status`
    and `build --profile paper` without the flags, through `python -m mocoxr.book`, on a toy
    copy of the paper profile (its `requires`, the data notebook, 32 px) and toy data folders."""
    import yaml

    from mocoxr import phantom

    cx, sz = tmp_path / "chexpert", tmp_path / "ChinaSet_AllFiles"
    phantom.generate_chexpert_tree(cx, n_patients=30, n_valid_patients=20, image_size=48)
    phantom.generate_shenzhen_tree(sz, n_images=30, image_size=48)
    paper = yaml.safe_load((ROOT / "mocoxr" / "profiles" / "paper.yaml").read_text())
    toy = {"description": "paper, toy size", "requires": paper["requires"],
           "parameters": {"data_dir": None, "shenzhen_dir": None, "image_size": 32,
                          "chexpert": {"fractions": [0.5, 1.0], "draws": [1, 1], "val_fraction": 0.2},
                          "shenzhen": {"fractions": [0.5, 1.0], "draws": [1, 1]}},
           "notebooks": {"01_data": {}}}
    profile = tmp_path / "paper.yaml"
    profile.write_text(yaml.safe_dump(toy))
    rd = tmp_path / "runs" / "paper"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mocoxr.book", *args, "--profile", str(profile),
                               "--run-dir", str(rd)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=600)

    done = cli("run", "--data-dir", str(cx), "--shenzhen-dir", str(sz))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = cli("status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    built = cli("build", "--output", str(tmp_path / "site"))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert (tmp_path / "site" / "_build" / "html" / "index.html").is_file()
    again = cli("run")  # `run` itself needs the flags the profile requires
    assert again.returncode == 2 and "--data-dir" in again.stderr


def test_moving_a_run_folder_keeps_dataset_fingerprint_pretraining_folder_and_pointer(tmp_path: Path):
    from mocoxr.pretrain import PretrainConfig

    first = tmp_path / "first" / "run"
    folder = book.shenzhen_folder(first, None, {"n_images": 16, "image_size": 32})
    ds = book.load_dataset(first, "shenzhen", folder, 16, {"fractions": [1.0], "draws": [1]})
    cfg = PretrainConfig(backbone="resnet18", init="random", image_size=16)
    out = book.pretrain_dir(first, cfg, ds)
    out.mkdir(parents=True)
    (out / "backbone.pt").write_bytes(b"weights")
    book.record_pretrained(first, "resnet18", out)

    moved = tmp_path / "second" / "run"
    shutil.move(first, moved)
    folder2 = book.shenzhen_folder(moved, None, {"n_images": 16, "image_size": 32})
    ds2 = book.load_dataset(moved, "shenzhen", folder2, 16, {"fractions": [1.0], "draws": [1]})
    assert ds2.fingerprint == ds.fingerprint  # content, not paths or times
    assert book.pretrain_dir(moved, cfg, ds2).name == out.name  # the finished pretraining is found
    assert book.run_paths(moved).moco_backbone("resnet18").read_bytes() == b"weights"
    other = book.load_dataset(moved, "shenzhen", folder2, 24, {"fractions": [1.0], "draws": [1]})
    assert other.fingerprint != ds.fingerprint
