"""Fault injection: kill -9 a tiny run at random points, rerun it, and compare with an
uninterrupted run; fill the disk while results and checkpoints are written.

    python tests/fault_injection.py [--seed N] [--kills K]

Cases:
- runner: a two-step stand-in profile (each step upserts rows into results.csv one at a time
  and writes a file, the second reads the first's table) is killed (SIGKILL to the runner and
  its kernels) at a random moment, then rerun; results.csv, the outputs and the stamps must
  equal those of an uninterrupted run, and a third run must find everything up to date;
- pretraining: ``pretrain.pretrain`` on a few 32-pixel images is killed at a random moment and
  resumed; the exported backbone must equal the uninterrupted run's bit for bit;
- read-only: a run into a folder on a read-only tmpfs (where one can be mounted) must fail
  with one StorageError line naming the folder;
- configuration and stopping (``tests/fault_config.py``): a profile changed three ways, a changed
  data folder, build of a read-only run folder, SIGINT and SIGTERM mid-run, profile path escapes;
- disk full: on a small tmpfs (mounted when this machine allows it, otherwise simulated with
  ENOSPC), an upsert into results.csv and a checkpoint save must fail with one StorageError
  line naming the file, and leave the previous results.csv / checkpoint intact.

Prints how many cases it tried and exits 1 if any lost or changed something. About a minute on
one CPU thread (plus a few minutes of configuration cases); ``tests/test_fault_injection.py`` runs it under ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import fault_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

STEP = '''
import time
from pathlib import Path
from mocoxr import evaluate
prev = Path(run_dir) / "results.csv"
base = float(sum(1 for _ in open(prev)) - 1) if "{name}" == "b" else 0.0
for i in range(n_rows):
    row = {{"experiment": "{name}", "backbone": "r", "init": "i", "label_fraction": 1.0, "draw": i,
           "auc": base + i / 100, "ci_low": 0.0, "ci_high": 1.0, "n_train": i, "n_test": 1}}
    evaluate.upsert_rows(prev, [row], evaluate.RESULTS_COLUMNS, evaluate.RESULTS_KEY)
    time.sleep(0.01)
(Path(run_dir) / "{name}.txt").write_text(f"{{n_rows}} {{base}}")
'''


def make_project(where: Path) -> Path:
    """A stand-in project: step a, then step b that reads a's table."""
    for sub in ("notebooks", "book"):
        (where / sub).mkdir(parents=True, exist_ok=True)
    (where / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (where / "_config.yml").write_text("title: t\n")
    for name in ("a", "b"):
        (where / "notebooks" / f"{name}.py").write_text(
            f"# %% [markdown]\n# # {name}\n\n# %% tags=[\"parameters\"]\nrun_dir = \".\"\nn_rows = 30\n\n"
            f"# %%\n{textwrap.dedent(STEP.format(name=name)).strip()}\n")
    (where / "p.yaml").write_text("notebooks: {a: {}, b: {needs: [a]}}\n")
    return where


RUN = ("import sys; from pathlib import Path; from mocoxr.book import runner; "
       "out = runner.run_profile(sys.argv[1], Path(sys.argv[2]), root=Path(sys.argv[3]), progress=False, "
       "echo=lambda *a: None); print(' '.join(o.status for o in out))")


def runner(project: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(project / "p.yaml"), str(run_dir),
                             str(project)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=300)
    if p.returncode:
        raise RuntimeError(f"runner failed: {err[-2000:]}")
    return out.strip()


def snapshot(run_dir: Path) -> dict:
    import pandas as pd

    table = pd.read_csv(run_dir / "results.csv").sort_values(["experiment", "draw"]).reset_index(drop=True)
    return {"results": table.to_csv(index=False),
            "files": {n: (run_dir / f"{n}.txt").read_text() for n in ("a", "b")},
            "stamps": sorted(p.name for p in (run_dir / "stamps").glob("*.json"))}


def runner_cases(work: Path, rng: random.Random, kills: int, log) -> tuple[int, list[str]]:
    project = make_project(work / "project")
    t0 = time.time()
    assert finish(runner(project, work / "reference")) == "ran ran"
    duration = time.time() - t0
    want, problems = snapshot(work / "reference"), []
    for k in range(kills):
        rd = work / f"killed{k}"
        at = rng.uniform(0.2, duration * 0.95)
        p = runner(project, rd)
        time.sleep(at)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        status = finish(runner(project, rd))
        again = finish(runner(project, rd))
        got = snapshot(rd)
        ok = got == want and again == "up to date up to date"
        log(f"  runner killed at {at:.1f} s of {duration:.1f} s: rerun '{status}', "
            f"then '{again}': {'same as uninterrupted' if ok else 'DIFFERS'}")
        if not ok:
            problems.append(f"runner kill at {at:.1f} s: {got} != {want} or {again!r}")
    return kills, problems


PRETRAIN = '''
import sys
import numpy as np
import torch
from mocoxr.pretrain import PretrainConfig, pretrain
torch.manual_seed(0)
images = np.random.default_rng(0).integers(0, 255, (24, 40, 40), dtype=np.uint8)
cfg = PretrainConfig(backbone="resnet18", init="random", image_size=32, batch_size=8,
                     epochs=2, queue_size=16, device="cpu", checkpoint_every_steps=1,
                     channels_last="off")
pretrain(images, np.arange(24), cfg, sys.argv[1], 0.5, 0.25, progress=False)
'''


def pretrain_cases(work: Path, rng: random.Random, kills: int, log) -> tuple[int, list[str]]:
    import torch

    from mocoxr import probe

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", PRETRAIN, str(out)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def weights(out: Path) -> str:
        sd = torch.load(out / "backbone.pt", map_location="cpu", weights_only=True)
        return probe.state_dict_sha1(torch.nn.Module()) if not sd else \
            __import__("hashlib").sha1(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()

    t0 = time.time()
    ref = start(work / "pre_ref")
    if ref.wait(timeout=300):
        raise RuntimeError(f"pretraining failed: {ref.stderr.read()[-2000:]}")
    duration, want, problems = time.time() - t0, weights(work / "pre_ref"), []
    for k in range(kills):
        out = work / f"pre_killed{k}"
        at = rng.uniform(duration * 0.4, duration * 0.95)  # after the imports: inside the loop
        p = start(out)
        time.sleep(at)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        resumed = start(out)
        if resumed.wait(timeout=300):
            problems.append(f"pretraining resume after kill at {at:.1f} s failed: {resumed.stderr.read()[-500:]}")
            continue
        ok = weights(out) == want
        log(f"  pretraining killed at {at:.1f} s of {duration:.1f} s, resumed: "
            f"{'bit-identical backbone' if ok else 'DIFFERENT backbone'}")
        if not ok:
            problems.append(f"pretraining kill at {at:.1f} s: resumed backbone differs")
    return kills, problems


@contextlib.contextmanager
def small_disk(work: Path, size_kb: int = 64):
    """A tmpfs of ``size_kb`` when this machine lets us mount one (root, Linux), else None."""
    mnt = work / "tmpfs"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
        capture_output=True).returncode == 0
    try:
        yield mnt if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)


def disk_full_cases(work: Path, log) -> tuple[int, list[str]]:
    import pandas as pd
    import torch

    from mocoxr import checkpoint, evaluate, store

    problems: list[str] = []
    row = lambda i: {"experiment": "x" * 200, "backbone": "r", "init": "i", "label_fraction": 1.0,  # noqa: E731
                     "draw": i, "auc": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_train": 1, "n_test": 1}
    with small_disk(work) as disk:
        where = disk or work / "simulated"
        where.mkdir(exist_ok=True)
        how = "a 64 KiB tmpfs" if disk else "simulated ENOSPC"
        csv, ckpt = where / "results.csv", where / "checkpoint.pt"
        evaluate.upsert_rows(csv, [row(0)], evaluate.RESULTS_COLUMNS, evaluate.RESULTS_KEY)
        checkpoint.save_checkpoint(ckpt, {"w": torch.zeros(10)})
        before = csv.read_bytes()
        real_write = store.atomic_write
        if disk is None:  # simulate: every write fails as on a full disk
            def full(path, write, mode="wb"):
                return real_write(path, lambda fh: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")), mode)
            store.atomic_write = full
        cases = 0
        try:
            for name, action in [
                ("results.csv upsert", lambda: evaluate.upsert_rows(
                    csv, [row(i) for i in range(1, 2000)], evaluate.RESULTS_COLUMNS, evaluate.RESULTS_KEY)),
                ("checkpoint save", lambda: checkpoint.save_checkpoint(ckpt, {"w": torch.zeros(200_000)})),
            ]:
                cases += 1
                try:
                    action()
                    problems.append(f"disk full ({how}): {name} did not fail")
                except store.StorageError as exc:
                    msg = str(exc)
                    ok = "\n" not in msg and str(where) in msg
                    log(f"  disk full ({how}), {name}: {msg}")
                    if not ok:
                        problems.append(f"disk full ({how}), {name}: unclear message {msg!r}")
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"disk full ({how}), {name}: {type(exc).__name__}: {exc}")
        finally:
            store.atomic_write = real_write
        if csv.read_bytes() != before or len(pd.read_csv(csv)) != 1:
            problems.append(f"disk full ({how}): results.csv changed after a failed write")
        if torch.load(ckpt, weights_only=True)["w"].shape != (10,):
            problems.append(f"disk full ({how}): the previous checkpoint was damaged")
    return cases, problems


def read_only_cases(work: Path, log) -> tuple[int, list[str]]:
    """A run into a folder on a read-only file system: one StorageError line naming the path
    (only where this machine lets us mount a read-only tmpfs)."""
    from mocoxr import store
    from mocoxr.book import runner

    mnt = work / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        log("  read-only run folder: skipped (cannot mount a read-only tmpfs here)")
        return 0, []
    try:
        project = work / "project"
        runner.run_profile(project / "p.yaml", mnt / "run", root=project, progress=False,
                         echo=lambda *a: None)
        return 1, ["read-only run folder: the run did not fail"]
    except store.StorageError as exc:
        msg = str(exc)
        log(f"  read-only run folder: {msg}")
        ok = "\n" not in msg and str(mnt / "run") in msg and "read-only" in msg
        return 1, [] if ok else [f"read-only run folder: unclear message {msg!r}"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    ap.add_argument("--kills", type=int, default=2, help="kill -9 cases per kind (default 2)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    print(f"fault injection, seed {args.seed}")
    work = Path(tempfile.mkdtemp(prefix="mocoxr-faults-"))
    try:
        n1, p1 = runner_cases(work, rng, args.kills, print)
        n2, p2 = pretrain_cases(work, rng, args.kills, print)
        n3, p3 = disk_full_cases(work, print)
        n4, p4 = read_only_cases(work, print)
        n5, p5 = fault_config.all_cases(work, print)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    problems = p1 + p2 + p3 + p4 + p5
    total = n1 + n2 + n3 + n4 + n5
    print(f"{total} cases tried ({n1} runner kills, {n2} pretraining kills, {n3} disk-full writes, "
          f"{n4} read-only run folder, {n5} configuration and stopping cases): "
          + ("nothing lost" if not problems else f"{len(problems)} LOST OR CHANGED:\n  " + "\n  ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
