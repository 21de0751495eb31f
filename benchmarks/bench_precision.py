#!/usr/bin/env python
"""bf16 autocast against fp32 on this machine, side by side: one MoCo ``pretrain_step``, one
fine-tuning step at the batch sizes the book's schedule uses, and scoring, at 1 and 2 threads.

    python benchmarks/bench_precision.py                       # 64 px, ResNet18, threads 1 and 2
    python benchmarks/bench_precision.py --record book/recorded/precision.csv

Each workload alternates fp32 and bf16 blocks (``--reps`` of each, ``--steps`` steps per block)
so that a machine whose speed drifts slows both alike; the figure is the median block. The
speed-up is fp32 time over bf16 time from the same run. ``amp="auto"`` in ``mocoxr`` turns bf16
on only where the device has bf16 matrix units (CUDA, or a CPU with AMX tiles:
``runtime.has_bf16_units``); the table says whether this CPU has them. On a CPU without them
bf16 is emulated and the speed-up falls below 1.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mocoxr import augment, finetune, models, pretrain, runtime  # noqa: E402

MEAN, STD = 0.45, 0.25
COLUMNS = ["threads", "workload", "fp32_ms", "bf16_ms", "speedup", "bf16_units", "cpu", "torch",
           "date", "command"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pretrain_workload(size: int, batch: int, amp: str) -> Callable[[int], None]:
    """One MoCo v2 step (ResNet18, shuffle-BN in 4 groups, queue 512) per call."""
    cfg = pretrain.PretrainConfig(backbone="resnet18", init="random", image_size=size,
                                  batch_size=batch, queue_size=512, bn_splits=4, device="cpu",
                                  amp=amp, max_steps=10**6)
    net, opt = pretrain.make_model(cfg, torch.device("cpu"))
    x = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    return lambda step: pretrain.pretrain_step(net, opt, cfg, step, cfg.lr, x, x, MEAN, STD)


def finetune_workload(size: int, batch: int, amp: str) -> Callable[[int], None]:
    """One fine-tuning step (ResNet18, one-logit head, Adam) per call."""
    cfg = finetune.FinetuneConfig(image_size=size, batch_size=batch, device="cpu", amp=amp)
    model = finetune.replace_head(models.create_backbone("resnet18"), 0)
    model = model.to(memory_format=torch.channels_last).train()
    opt = finetune.finetune_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    y = (torch.arange(batch) % 2).float()
    return lambda step: finetune.finetune_step(model, opt, cfg, 0, step, x, y, MEAN, STD)


def predict_workload(size: int, batch: int, amp: str) -> Callable[[int], None]:
    """Scoring ``batch`` images with a one-logit model (eval mode) per call."""
    model = finetune.replace_head(models.create_backbone("resnet18"), 0)
    model = model.to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size), dtype=np.uint8)
    rows = np.arange(batch)
    return lambda step: finetune.predict(model, images, rows, MEAN, STD, size, batch,
                                         use_amp=amp == "bf16")


def time_pair(make: Callable[[str], Callable[[int], None]], reps: int, steps: int) -> dict:
    """Median ms per call of fp32 and bf16 blocks, alternated."""
    fns = {amp: make(amp) for amp in ("off", "bf16")}
    for fn in fns.values():  # warm-up (oneDNN picks its kernels)
        fn(0)
        fn(1)
    blocks: dict[str, list[float]] = {"off": [], "bf16": []}
    for r in range(reps):
        for amp, fn in fns.items():
            t = time.perf_counter()
            for s in range(steps):
                fn(2 + r * steps + s)
            blocks[amp].append((time.perf_counter() - t) / steps * 1000)
    fp32, bf16 = statistics.median(blocks["off"]), statistics.median(blocks["bf16"])
    return {"fp32_ms": fp32, "bf16_ms": bf16, "speedup": fp32 / bf16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--reps", type=int, default=5, help="blocks of each precision")
    p.add_argument("--steps", type=int, default=4, help="calls per block")
    p.add_argument("--pretrain-batch", type=int, default=32, dest="pretrain_batch")
    p.add_argument("--finetune-batches", default="10,32", dest="finetune_batches",
                   help="fine-tuning batch sizes (the schedule uses 10 at 0.1%% and 32 at 100%%)")
    p.add_argument("--predict-batch", type=int, default=64, dest="predict_batch")
    p.add_argument("--record", help="write the table as CSV here (with the command)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    command = " ".join(["python benchmarks/bench_precision.py",
                        *(sys.argv[1:] if argv is None else argv)])
    units = runtime.has_bf16_units(torch.device("cpu"))
    common = {"bf16_units": "AMX" if units else "none", "cpu": cpu_name(),
              "torch": torch.__version__, "date": _dt.date.today().isoformat(),
              "command": command.replace(f" --record {args.record}", "") if args.record else command}
    work = [(f"pretrain_step batch {args.pretrain_batch}",
             lambda amp: pretrain_workload(args.size, args.pretrain_batch, amp))]
    work += [(f"finetune_step batch {b}", lambda amp, b=b: finetune_workload(args.size, b, amp))
             for b in (int(v) for v in args.finetune_batches.split(","))]
    work.append((f"predict {args.predict_batch} images",
                 lambda amp: predict_workload(args.size, args.predict_batch, amp)))
    before, rows = torch.get_num_threads(), []
    print(f"# {common['cpu']}; bf16 matrix units: {common['bf16_units']}; torch {torch.__version__}"
          f"; {args.size} px ResNet18\n| threads | workload | fp32 ms | bf16 ms | speed-up |\n"
          "|---|---|---|---|---|", flush=True)
    try:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for name, make in work:
                r = {"threads": threads, "workload": name, **time_pair(make, args.reps, args.steps),
                     **common}
                rows.append(r)
                print(f"| {threads} | {name} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | "
                      f"{r['speedup']:.2f}x |", flush=True)
    finally:
        torch.set_num_threads(before)
    if args.record:
        with open(args.record, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{r[k]:.3f}" if isinstance(r[k], float) else r[k])
                            for k in COLUMNS})
    return rows


if __name__ == "__main__":
    main()
