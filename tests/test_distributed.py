"""Distributed MoCo pretraining (DDP + shuffle-BN + gathered keys) on 2 CPU processes (gloo),
the torchrun CLI (``mocoxr.torchrun_pretrain``), resume on another world size, and a real
SIGKILL mid-epoch.

What the 2-process vs 1-process comparison asserts, and why. With shuffle-BN the BatchNorm
statistics are *per rank*: rank r's queries are normalised with the statistics of its own
slice of the global batch, and the keys with the statistics of the slice of the *shuffled*
global batch that rank r received. A single process that pushes the whole global batch
through BatchNorm therefore computes a different function (asserted below: its loss differs).
The maths says the 2-process step must equal a single-process reference that evaluates the
query encoder on each rank's slice separately and the key encoder on each slice of the
shuffled batch (the permutation rank 0 draws, reproduced from the same seed), then takes the
InfoNCE mean over the *global* batch. Equal there: the keys (= rows of the queue), the global
mean loss, the gradients after DDP's all-reduce (with ``distributed.distributed_loss``' scaling, also
for unequal shares 4 + 3) and the parameters after an SGD step. BatchNorm running statistics are
not compared with the reference: they are per rank by design (only rank 0's are saved).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mocoxr import checkpoint, distributed, moco
from mocoxr import torchrun_pretrain as cli
from mocoxr.distributed import batch_shuffle, batch_unshuffle, concat_all_gather
from mocoxr.pretrain import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = 0.5, 0.25
SHUFFLE_SEED = 1234
LR = 0.5




def tiny_images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 160, (n, size, size), dtype=np.uint8)
    img[::2, size // 2:, : size // 2] = 250
    return img


def small_moco() -> moco.MoCo:
    return moco.MoCo("resnet18", "random", dim=16, queue_size=32, momentum=0.9,
                     temperature=0.2, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(target, world: int, *args, timeout: float = 180.0) -> None:
    """Run ``target(rank, world, port, *args)`` in ``world`` forked processes (gloo)."""
    ctx = torch.multiprocessing.get_context("fork")  # fork: no re-import of torch in the children
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)


# ----------------------------------------------------------------------------- pure helpers


def test_rank_slices_cover_the_global_batch_in_order():
    for n, world in ((8, 2), (7, 2), (10, 3), (5, 5)):
        parts = [np.arange(n)[distributed.rank_slice(n, r, world)] for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank"):
        distributed.rank_slice(8, 2, 2)


def test_single_process_helpers_are_identities():
    m = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(m, torch.device("cpu")) is m
    loss = torch.tensor(2.0, requires_grad=True)
    bw, mean = distributed.distributed_loss(loss, 3, 8)
    assert bw is loss and float(mean) == 2.0 and not mean.requires_grad
    assert distributed.dist_info() == (0, 1)


# ----------------------------------------------------------------------------- shuffle-BN, gather


def test_distributed_helpers_are_identities_in_one_process():
    x = torch.randn(5, 3)
    y, idx = batch_shuffle(x)
    assert y is x and idx is None
    assert batch_unshuffle(y, idx) is x
    assert concat_all_gather(x) is x
    assert not distributed.is_distributed()


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        sizes = [3, 2]  # unequal per-rank batches (short last batch on rank 1)
        start = sum(sizes[:rank])
        x = torch.arange(start, start + sizes[rank], dtype=torch.float32)[:, None].repeat(1, 2)
        gathered = concat_all_gather(x)
        torch.manual_seed(100 + rank)  # different RNGs: only rank 0's permutation may count
        y, idx = batch_shuffle(x)
        back = batch_unshuffle(y * 10, idx)
        queue = torch.zeros(4, 2)
        moco.enqueue(queue, 3, concat_all_gather(x))
        torch.save({"gathered": gathered, "y": y, "back": back, "queue": queue}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_shuffle_unshuffle_and_gather_on_two_gloo_processes(tmp_path):
    mp = torch.multiprocessing.get_context("fork")  # fork: no re-import of torch in the children
    port = _free_port()
    procs = [mp.Process(target=_gather_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.exitcode is None:
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    full = torch.arange(5, dtype=torch.float32)[:, None].repeat(1, 2)
    for r in (0, 1):
        assert torch.equal(res[r]["gathered"], full)  # rank order, unequal sizes
    # each rank got a slice of one global permutation, same size as its input
    y0, y1 = res[0]["y"], res[1]["y"]
    assert y0.shape == (3, 2) and y1.shape == (2, 2)
    assert sorted(torch.cat([y0, y1])[:, 0].tolist()) == list(range(5))
    # unshuffle returns each rank its own samples, in order
    assert torch.equal(res[0]["back"], full[:3] * 10) and torch.equal(res[1]["back"], full[3:] * 10)
    # the queue is identical on both ranks and holds every rank's keys
    assert torch.equal(res[0]["queue"], res[1]["queue"])
    assert res[0]["queue"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_global_batch_too_small_for_the_world_size(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "dist_info", lambda: (0, 2))
    cfg = PretrainConfig(backbone="resnet18", init="random", image_size=32, batch_size=3,
                         queue_size=8, device="cpu")
    with pytest.raises(ValueError, match="global batch: split over 2 processes"):
        pretrain(tiny_images(8), np.arange(8), cfg, tmp_path, MEAN, STD, progress=False)


def test_cli_config_parsing(tmp_path):
    (tmp_path / "c.json").write_text('{"backbone": "resnet18", "lr_drops": [0.5]}')
    cfg = cli.make_config(tmp_path / "c.json", ["max_steps=3", "init=random",
                                                 'augment={"scale": [1, 1]}'])
    assert cfg.max_steps == 3 and cfg.init == "random" and cfg.lr_drops == (0.5,)
    assert cfg.augment == {"scale": [1, 1]}
    with pytest.raises(ValueError, match="unknown PretrainConfig field"):
        cli.make_config(None, ["batchsize=3"])
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        cli.make_config(None, ["max_steps"])
    df = pd.DataFrame({"split": ["train", "val", "train"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    np.testing.assert_array_equal(cli.load_rows(3, manifest=tmp_path / "m.csv", split="train"), [0, 2])
    with pytest.raises(ValueError, match="has 3 rows but the image cache has 4"):
        cli.load_rows(4, manifest=tmp_path / "m.csv", split="train")


# ----------------------------------------------------------------------------- one DDP step


def _step_worker(rank: int, world: int, port: int, out_dir: str, im_q, im_k) -> None:
    _init(rank, world, port)
    try:
        model = small_moco().train()
        net = distributed.wrap_ddp(model, torch.device("cpu"))
        assert isinstance(net, DistributedDataParallel)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
        sl = distributed.rank_slice(len(im_q), rank, world)
        torch.manual_seed(SHUFFLE_SEED)  # rank 0's draw is the shuffle-BN permutation
        loss, _ = net(im_q[sl], im_k[sl])
        loss_bw, mean = distributed.distributed_loss(loss, sl.stop - sl.start, len(im_q))
        opt.zero_grad()
        loss_bw.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
        torch.save({"mean_loss": mean, "grads": grads, "state": model.state_dict()},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def reference_step(im_q, im_k, world: int, per_rank_bn: bool = True, shuffle: bool = True):
    """Single process: the same step with BatchNorm over each rank's (shuffled) slice."""
    model = small_moco().train()
    b = len(im_q)
    slices = [distributed.rank_slice(b, r, world) for r in range(world)] if per_rank_bn else [slice(0, b)]

    def embed(enc, head, x):
        return torch.cat([F.normalize(head(enc(x[s])), dim=1) for s in slices])

    q = embed(model.encoder_q, model.head_q, im_q)
    with torch.no_grad():
        model.momentum_update()
        torch.manual_seed(SHUFFLE_SEED)
        perm = torch.randperm(b) if shuffle else torch.arange(b)
        k = embed(model.encoder_k, model.head_k, im_k[perm])[torch.argsort(perm)]
    loss = moco.moco_loss(q, k, model.queue.clone(), model.temperature)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, k


def test_two_process_step_matches_the_per_rank_bn_reference(tmp_path):
    g = torch.Generator().manual_seed(0)
    b = 7  # unequal shares: 4 + 3
    im_q, im_k = torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)
    run_processes(_step_worker, 2, str(tmp_path), im_q, im_k)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # the same on every rank: the queue (all ranks' keys), the pointer, every parameter
    s0, s1 = r0["state"], r1["state"]
    assert torch.equal(s0["queue"], s1["queue"]) and int(s0["queue_ptr"]) == b
    params = [k for k in s0 if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(s0[k], s1[k]) for k in params), [k for k in params if not torch.equal(s0[k], s1[k])]
    assert all(torch.equal(r0["grads"][k], r1["grads"][k]) for k in r0["grads"])
    assert float(r0["mean_loss"]) == float(r1["mean_loss"])
    # BatchNorm running statistics are per rank (by design; rank 0's are saved)
    assert not torch.equal(s0["encoder_q.bn1.running_mean"], s1["encoder_q.bn1.running_mean"])

    # ... and equal to the single-process step with per-rank (shuffled) BatchNorm
    loss, grads, k = reference_step(im_q, im_k, world=2)
    torch.testing.assert_close(s0["queue"][:b], k, rtol=1e-4, atol=1e-5)  # gathered keys, in order
    assert float(r0["mean_loss"]) == pytest.approx(float(loss), abs=1e-5)
    for name, gr in grads.items():
        torch.testing.assert_close(r0["grads"][name], gr, rtol=1e-3, atol=1e-5, msg=name)
    ref = small_moco()
    for name, p in ref.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(s0[name], p.detach() - LR * grads[name], rtol=1e-4,
                                       atol=1e-5, msg=name)
    # teeth: whole-batch BatchNorm, or per-rank BatchNorm without the shuffle, is another function
    full_bn, _, _ = reference_step(im_q, im_k, world=2, per_rank_bn=False)
    no_shuffle, _, _ = reference_step(im_q, im_k, world=2, shuffle=False)
    assert abs(float(full_bn) - float(loss)) > 1e-3
    assert abs(float(no_shuffle) - float(loss)) > 1e-4


# ----------------------------------------------------------------------------- pretrain on 2 ranks

IMAGES = tiny_images(32)
ROWS = np.arange(32)


def pcfg(**kw) -> PretrainConfig:
    base = dict(backbone="resnet18", init="random", image_size=32, batch_size=8, epochs=1,
                queue_size=24, device="cpu", lr_drops=())
    return PretrainConfig(**{**base, **kw})


def _pretrain_worker(rank: int, world: int, port: int, run_dir: str, record: str, kw: dict) -> None:
    _init(rank, world, port)
    try:
        calls: list = []
        save = checkpoint.save_checkpoint

        def recording_save(path, state):
            calls.append(("checkpoint", state["step"]))
            save(path, state)
            if state["step"] == 2:  # keep the mid-epoch checkpoint, as a crash would leave it
                snap = Path(record) / "snapshot"
                snap.mkdir(exist_ok=True)
                shutil.copy(path, snap / "checkpoint.pt")

        checkpoint.save_checkpoint = recording_save
        built: list = []

        class Recording(moco.MoCo):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                built.append(self)

            def export_backbone(self, path):
                calls.append(("backbone", -1))
                return super().export_backbone(path)

        moco.MoCo = Recording  # forked child: the parent's module is untouched
        res = pretrain(IMAGES, ROWS, pcfg(**kw), run_dir, MEAN, STD, progress=False)
        torch.save({"calls": calls, "state": built[-1].state_dict(), "step": res["step"],
                    "loss": [float(v) for v in res["log"]["loss"]]}, f"{record}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _records(path: Path) -> list[dict]:
    return [torch.load(path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_pretrain_on_two_ranks_rank0_writes_and_resume_on_any_world_size(tmp_path):
    rec_a, rec_b = tmp_path / "rec_a", tmp_path / "rec_b"
    rec_a.mkdir(), rec_b.mkdir()
    # A: 4 steps (one epoch) on 2 ranks, checkpoints at steps 2 and 4
    run_processes(_pretrain_worker, 2, str(tmp_path / "a"), str(rec_a), {"checkpoint_every_steps": 2})
    a0, a1 = _records(rec_a)
    assert a0["step"] == a1["step"] == 4
    assert a0["calls"] == [("checkpoint", 2), ("checkpoint", 4), ("backbone", -1)]
    assert a1["calls"] == []  # rank 1 never writes
    params = [k for k in a0["state"] if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(a0["state"][k], a1["state"][k]) for k in params)  # in sync after 4 steps
    assert a0["loss"] == a1["loss"] and len(a0["loss"]) == 4  # the global mean, on every rank
    ck_a = checkpoint.load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert ck_a["world_size"] == 2 and ck_a["step"] == 4 and ck_a["done"]
    assert int(ck_a["model"]["queue_ptr"]) == (4 * 8) % 24
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "backbone.card.json", "backbone.pt", "checkpoint.pt", "loss_log.csv"]

    # the mid-epoch checkpoint of step 2 (+ the log, whose later rows a resume drops), twice
    snap = rec_a / "snapshot"
    shutil.copy(tmp_path / "a" / "loss_log.csv", snap / "loss_log.csv")
    shutil.copytree(snap, tmp_path / "b")
    shutil.copytree(snap, tmp_path / "c")

    # B: resumed on 2 ranks -> exactly A (same world size: deterministic)
    run_processes(_pretrain_worker, 2, str(tmp_path / "b"), str(rec_b), {"checkpoint_every_steps": 2})
    b0, _ = _records(rec_b)
    assert b0["calls"] == [("checkpoint", 4), ("backbone", -1)]  # resumed at step 2
    ck_b = checkpoint.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(ck_a["model"][k], ck_b["model"][k]) for k in ck_a["model"])
    assert b0["loss"] == a0["loss"]

    # C: the same checkpoint resumed by ONE process: the global batch of 8 is split anew
    res = pretrain(IMAGES, ROWS, pcfg(checkpoint_every_steps=2), tmp_path / "c", MEAN, STD,
                   progress=False)
    assert res["step"] == 4 and list(res["log"]["step"]) == [1, 2, 3, 4]
    np.testing.assert_array_equal(res["log"]["loss"][:2], a0["loss"][:2])  # kept from the 2-rank run
    assert np.isfinite(res["log"]["loss"]).all()
    ck_c = checkpoint.load_checkpoint(tmp_path / "c" / "checkpoint.pt")
    assert ck_c["world_size"] == 1 and ck_c["done"] and int(ck_c["model"]["queue_ptr"]) == 8
    assert not torch.equal(ck_c["model"]["encoder_q.conv1.weight"], ck_a["model"]["encoder_q.conv1.weight"])


# ----------------------------------------------------------------------------- the CLI, torchrun


def _cli_files(tmp_path: Path, n: int = 16) -> tuple[Path, Path]:
    images = tmp_path / "images.npy"
    np.save(images, tiny_images(n))
    config = tmp_path / "cfg.json"
    config.write_text('{"backbone": "resnet18", "init": "random", "image_size": 32, '
                      '"batch_size": 8, "epochs": 2, "queue_size": 24, "device": "cpu", '
                      '"lr_drops": []}')
    return images, config


def _cli_args(images: Path, config: Path, out: Path, *extra: str) -> list[str]:
    return ["--images", str(images), "--out", str(out), "--config", str(config), "--mean",
            str(MEAN), "--std", str(STD), "--threads", "1", "--no-progress", *extra]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _cli_worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    """What torchrun does for each worker: set the rendezvous environment, run the module."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    cli.main(argv)
    assert not dist.is_initialized()  # the CLI leaves the process group it joined


def _check_one_then_two(out: Path, first: pd.DataFrame, stdout: str) -> None:
    assert "resuming from step 2" in stdout and "on 2 process(es)" in stdout
    assert stdout.count("done: step 4") == 1  # rank 0 alone reports
    ck = checkpoint.load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 4 and ck["done"] and ck["world_size"] == 2
    log = pd.read_csv(out / "loss_log.csv")
    assert list(log["step"]) == [1, 2, 3, 4]
    np.testing.assert_array_equal(log["loss"][:2], first["loss"])
    assert sorted(p.name for p in out.iterdir()) == ["backbone.card.json", "backbone.pt",
                                                      "checkpoint.pt", "loss_log.csv",
                                                      "pretrain_cli.json"]


def test_cli_resumes_a_one_process_run_on_two_processes(tmp_path, capfd):
    """``python -m mocoxr.torchrun_pretrain`` for 2 steps, then the same command on 2 processes with
    torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...; env:// rendezvous, gloo)."""
    images, config = _cli_files(tmp_path)
    out = tmp_path / "run"
    cli.main(_cli_args(images, config, out, "--set", "max_steps=2"))
    assert "on 1 process(es)" in capfd.readouterr().out
    first = pd.read_csv(out / "loss_log.csv")
    run_processes(_cli_worker, 2, _cli_args(images, config, out))
    _check_one_then_two(out, first, capfd.readouterr().out)


@pytest.mark.skipif(os.environ.get("MOCOXR_TORCHRUN_TEST") != "1",
                    reason="real torchrun launch (3 fresh interpreters, ~30-60 s on 2 shared "
                           "cores): set MOCOXR_TORCHRUN_TEST=1 (benchmarks/gpu_check.sh does)")
def test_real_torchrun_resumes_a_one_process_run_on_two_processes(tmp_path, capfd):
    images, config = _cli_files(tmp_path)
    out = tmp_path / "run"
    cli.main(_cli_args(images, config, out, "--set", "max_steps=2"))
    capfd.readouterr()
    first = pd.read_csv(out / "loss_log.csv")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "mocoxr.torchrun_pretrain",
                          *_cli_args(images, config, out)],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    _check_one_then_two(out, first, two.stdout)


# ----------------------------------------------------------------------------- a real kill


def test_sigkill_mid_epoch_then_restart_ends_with_the_uninterrupted_weights(tmp_path, capsys):
    """A real ``python -m mocoxr.torchrun_pretrain`` process killed with SIGKILL right after its first
    checkpoint (mid epoch, often while it writes the next one), then the same command again
    (here in-process: a restart reads nothing but the files): it resumes from the last complete
    checkpoint and ends bit-identical to a run that never stopped."""
    images, config = _cli_files(tmp_path, n=32)  # 32 rows, batch 8, 1 epoch: 4 steps
    out, log = tmp_path / "run", tmp_path / "run" / "loss_log.csv"
    argv = _cli_args(images, config, out, "--set", "epochs=1", "--set", "checkpoint_every_steps=1")
    child = subprocess.Popen([sys.executable, "-m", "mocoxr.torchrun_pretrain", *argv], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the uninterrupted reference (one checkpoint, at the end) while the child starts
        ref = pretrain(np.load(images, mmap_mode="r"), np.arange(32),
                       cli.make_config(config, ["epochs=1"]), tmp_path / "ref", MEAN, STD,
                       progress=False)
        assert ref["step"] == 4
        deadline = time.monotonic() + 300
        while not (log.exists() and len(pd.read_csv(log)) >= 1):  # step 1 is checkpointed
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    ck = checkpoint.load_checkpoint(out / "checkpoint.pt")  # it loads: never half-written
    assert ck["step"] in (1, 2, 3) and not ck["done"] and ck["step_in_epoch"] == ck["step"]
    capsys.readouterr()
    cli.main(argv)
    assert f"resuming from step {ck['step']}" in capsys.readouterr().out
    a = checkpoint.load_checkpoint(tmp_path / "ref" / "checkpoint.pt")["model"]
    b = checkpoint.load_checkpoint(out / "checkpoint.pt")["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ba, bb = (torch.load(p / "backbone.pt", weights_only=True) for p in (tmp_path / "ref", out))
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "ref" / "loss_log.csv")["loss"],
                                  pd.read_csv(log)["loss"])
    assert [p.name for p in out.iterdir() if "tmp" in p.name] == []  # stale temporaries removed
