#!/usr/bin/env python
"""``optim.DenseAdam`` against ``torch.optim.Adam`` (both fused), side by side: whole training
steps of a channels-last ResNet18 (fine-tuning at the schedule's batch sizes, one MoCo step).

    python benchmarks/bench_optimizer.py               # 64 px, 2 threads, amp "auto"

The two optimizers alternate in blocks (``--reps`` of each, ``--steps`` steps per block) so a
machine whose speed drifts slows both alike; the figure is the median block and the speed-up
is plain over dense from the same run. Both give the same parameters bit for bit
(``tests/test_optim.py``); only the copies of channels-last weights are saved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mocoxr import finetune, models, optim, pretrain, runtime  # noqa: E402

MEAN, STD = 0.45, 0.25
OPTIMIZERS = {"torch.optim.Adam": torch.optim.Adam, "DenseAdam": optim.DenseAdam}


def finetune_workload(size: int, batch: int, amp: str, opt_cls: type) -> Callable[[int], None]:
    """One fine-tuning step (ResNet18 channels-last, one-logit head) per call."""
    cfg = finetune.FinetuneConfig(image_size=size, batch_size=batch, device="cpu", amp=amp)
    model = finetune.replace_head(models.create_backbone("resnet18"), 0)
    model = model.to(memory_format=torch.channels_last).train()
    opt = opt_cls(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    y = (torch.arange(batch) % 2).float()
    return lambda step: finetune.finetune_step(model, opt, cfg, 0, step, x, y, MEAN, STD)


def pretrain_workload(size: int, batch: int, amp: str, opt_cls: type) -> Callable[[int], None]:
    """One MoCo v2 step (ResNet18, shuffle-BN in 4 groups, queue 512) per call."""
    cfg = pretrain.PretrainConfig(backbone="resnet18", init="random", image_size=size,
                                  batch_size=batch, queue_size=512, bn_splits=4, device="cpu",
                                  amp=amp, max_steps=10**6)
    net, _ = pretrain.make_model(cfg, torch.device("cpu"))
    opt = opt_cls([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, fused=True)
    x = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    return lambda step: pretrain.pretrain_step(net, opt, cfg, step, cfg.lr, x, x, MEAN, STD)


def time_pair(make: Callable[[type], Callable[[int], None]], reps: int, steps: int) -> dict:
    """Median ms per call of each optimizer's blocks, alternated."""
    fns = {name: make(cls) for name, cls in OPTIMIZERS.items()}
    for fn in fns.values():  # warm-up (oneDNN picks its kernels)
        fn(0)
        fn(1)
    blocks: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            for s in range(steps):
                fn(2 + r * steps + s)
            blocks[name].append((time.perf_counter() - t) / steps * 1000)
    plain, dense = (statistics.median(blocks[n]) for n in OPTIMIZERS)
    return {"plain_ms": plain, "dense_ms": dense, "speedup": plain / dense}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--amp", default="auto", help="amp setting of the steps (auto/bf16/off)")
    p.add_argument("--reps", type=int, default=5, help="blocks of each optimizer")
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--finetune-batches", default="10,32", dest="finetune_batches")
    p.add_argument("--pretrain-batch", type=int, default=32, dest="pretrain_batch")
    args = p.parse_args(argv)
    precision = runtime.precision(args.amp, torch.device("cpu"))
    work = [(f"finetune_step batch {b}", lambda cls, b=b: finetune_workload(args.size, b,
                                                                            args.amp, cls))
            for b in (int(v) for v in args.finetune_batches.split(","))]
    work.append((f"pretrain_step batch {args.pretrain_batch}",
                 lambda cls: pretrain_workload(args.size, args.pretrain_batch, args.amp, cls)))
    before, rows = torch.get_num_threads(), []
    torch.set_num_threads(args.threads)
    print(f"# {args.size} px ResNet18, {args.threads} thread(s), {precision}; torch "
          f"{torch.__version__}\n| workload | torch.optim.Adam ms | DenseAdam ms | speed-up |\n"
          "|---|---|---|---|", flush=True)
    try:
        for name, make in work:
            r = {"workload": name, **time_pair(make, args.reps, args.steps)}
            rows.append(r)
            print(f"| {name} | {r['plain_ms']:.1f} | {r['dense_ms']:.1f} | {r['speedup']:.2f}x |",
                  flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


if __name__ == "__main__":
    main()
