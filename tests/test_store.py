"""Tests for mocoxr.store (locks, atomic writes, storage errors) and mocoxr.keys (fingerprints),
including the two-process races on a shared table and on a run folder."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mocoxr import keys, store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


UPSERT = """
import sys
from mocoxr import evaluate
path, who = sys.argv[1], sys.argv[2]
for i in range(150):
    row = {"experiment": "linear", "backbone": who, "init": "moco", "label_fraction": 1.0,
           "draw": i, "auc": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_train": 1, "n_test": 1}
    evaluate.upsert_rows(path, [row], evaluate.RESULTS_COLUMNS, evaluate.RESULTS_KEY)
"""


def test_two_processes_upserting_into_results_csv_keep_every_row(tmp_path: Path):
    path = tmp_path / "results.csv"
    procs = [_python(UPSERT, str(path), who) for who in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    table = pd.read_csv(path)
    assert len(table) == 300  # 2 processes x 150 distinct rows, none lost
    assert sorted(table.groupby("backbone").size()) == [150, 150]


def test_file_lock_is_reentrant_and_excludes_other_processes(tmp_path: Path):
    target = tmp_path / "t.csv"
    with store.file_lock(target):
        with store.file_lock(target):  # nested in one process: no deadlock
            pass
        p = _python("""
            import sys
            from mocoxr import store
            try:
                with store.file_lock(sys.argv[1], timeout=0.3):
                    print("got it")
            except TimeoutError as e:
                print("timeout:", e)
        """, str(target))
        out, _ = p.communicate(timeout=60)
    assert out.startswith("timeout:") and "t.csv.lock" in out


HOLD = """
import sys, time
from mocoxr import store
with store.run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(30)
"""


def test_second_run_of_a_folder_names_the_holder_pid(tmp_path: Path):
    holder = _python(HOLD, str(tmp_path / "run"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(store.RunFolderBusy) as err:
            with store.run_lock(tmp_path / "run"):
                pytest.fail("two holders")
        assert f"pid {holder.pid}" in str(err.value) and str(tmp_path / "run") in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with store.run_lock(tmp_path / "run"):  # a killed holder leaves no stale lock
        pass


def test_storage_failures_read_as_one_line_naming_the_path(tmp_path: Path):
    target = tmp_path / "results.csv"

    def full(fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(store.StorageError) as err:
        store.atomic_write(target, full)
    msg = str(err.value)
    assert "\n" not in msg and str(target) in msg and "disk full" in msg
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    ro = store.storage_error(PermissionError(errno.EROFS, "Read-only file system", "/x/y"), "/x")
    assert str(ro) == "cannot write /x/y: the file system is read-only"
    torch_msg = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
    assert "cannot write /r/ckpt.pt" in str(store.storage_error(torch_msg, "/r/ckpt.pt"))
    assert store.storage_error(ValueError("other"), "/x") is None


def test_atomic_path_replaces_only_a_complete_file(tmp_path: Path):
    target = tmp_path / "sub" / "x.npy"
    with store.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(2, 3))[:] = 7
        assert not target.exists()  # nothing at the real name until the block ends
    assert (np.load(target) == 7).all() and os.listdir(target.parent) == ["x.npy"]
    with pytest.raises(ValueError, match="half-way"):
        with store.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("failed half-way")
    assert (np.load(target) == 7).all() and os.listdir(target.parent) == ["x.npy"]


def test_reuse_or_build_keys_on_the_sidecar_and_the_outputs(tmp_path: Path):
    out, side = tmp_path / "out.txt", tmp_path / "out.json"
    built = []

    def build(text="a"):
        built.append(text)
        store.atomic_write_text(out, text)

    load = lambda: out.read_text()  # noqa: E731
    key = {"format_version": 1, "sizes": (1, 2), "name": "x"}
    assert store.reuse_or_build(side, key, [out], load, build) == "a" and built == ["a"]
    assert side.read_text() == '{\n  "format_version": 1,\n  "sizes": [\n    1,\n    2\n  ],\n  "name": "x"\n}'
    assert store.sidecar_matches(side, {**key, "sizes": [1, 2]}, [out])  # compared as JSON
    assert store.reuse_or_build(side, key, [out], load, lambda: build("b")) == "a"  # reused
    assert store.reuse_or_build(side, {**key, "name": "y"}, [out], load, lambda: build("c")) == "c"
    out.unlink()  # a missing output rebuilds
    assert store.reuse_or_build(side, key, [out], load, lambda: build("d")) == "d"
    side.write_text("{not json")  # a corrupt sidecar rebuilds
    assert not store.sidecar_matches(side, key, [out])
    assert store.reuse_or_build(side, key, [out], load, lambda: build("e")) == "e"
    stale = lambda: None if built[-1] == "e" else out.read_text()  # noqa: E731
    assert store.reuse_or_build(side, key, [out], stale, lambda: build("f")) == "f"  # load said no
    assert built == ["a", "c", "d", "e", "f"]
    with pytest.raises(RuntimeError, match="boom"):  # a failed build leaves no sidecar
        store.reuse_or_build(side, {"other": 1}, [out], load, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not side.exists()


def test_torch_save_to_a_full_device_is_one_storage_error(tmp_path: Path):
    import torch

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(store.StorageError) as err:
        with store.writing("/dev/full"):
            torch.save({"w": torch.zeros(1000)}, "/dev/full")
    assert "/dev/full" in str(err.value) and "\n" not in str(err.value)


def test_folder_fingerprint_follows_content_not_location(tmp_path: Path):
    a = tmp_path / "a" / "data"
    (a / "imgs").mkdir(parents=True)
    (a / "train.csv").write_text("Path,x\n1,2\n")
    (a / "imgs" / "1.png").write_bytes(b"\x89PNG" + bytes(100))
    fp = keys.folder_fingerprint(a)
    b = tmp_path / "elsewhere" / "copy"
    shutil.copytree(a, b)
    os.utime(b / "train.csv", (0, 0))  # times do not count
    assert keys.folder_fingerprint(b) == fp
    (b / "train.csv").write_text("Path,x\n1,3\n")  # same size, other labels
    assert keys.folder_fingerprint(b) != fp
    (a / "imgs" / "1.png").write_bytes(b"\x89PNG" + bytes(101))
    assert keys.folder_fingerprint(a) != fp


def test_array_digest_of_a_memmap_is_its_file_and_is_memoised(tmp_path: Path):
    arr = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.uint8, shape=(3, 4))
    arr[:] = 7
    arr.flush()
    ro = np.load(tmp_path / "c.npy", mmap_mode="r")
    d = keys.array_digest(ro)
    assert d == keys.file_sha1(tmp_path / "c.npy")
    assert (tmp_path / ".c.npy.digest").is_file()
    moved = tmp_path / "m"
    moved.mkdir()
    shutil.move(tmp_path / "c.npy", moved / "c.npy")
    assert keys.array_digest(np.load(moved / "c.npy", mmap_mode="r")) == d
    assert keys.array_digest(np.full((3, 4), 8, np.uint8)) != keys.array_digest(np.full((3, 4), 7, np.uint8))


def test_data_step_view_keeps_the_datasets_a_step_declares():
    data_step = {"run_dir": ".", "seed": 0, "image_size": 32, "data_dir": None, "phantom": {"n": 1},
                 "chexpert": {"a": 1}, "shenzhen_dir": None, "phantom_shenzhen": {}, "shenzhen": {"f": 1}}
    pretrain = {"run_dir": ".", "data_dir": None, "chexpert": {"a": 1}, "pretrain": {}}
    view = keys.data_step_view(data_step, pretrain, ("run_dir",))
    assert set(view) == {"seed", "image_size", "data_dir", "phantom", "chexpert"}
    shenzhen = {"shenzhen_dir": None, "shenzhen": {}, "backbone": "resnet18"}
    assert set(keys.data_step_view(data_step, shenzhen, ("run_dir",))) == {
        "seed", "image_size", "shenzhen_dir", "phantom_shenzhen", "shenzhen"}
    assert keys.data_step_view(data_step, {"backbone": "resnet18"}, ("run_dir",)) is None
    assert keys.data_step_view({**data_step, "backbone": "x"}, pretrain, ("run_dir",)) is None
