#!/usr/bin/env python
"""Where the time of a MoCo pretraining step goes: ``torch.profiler`` over a few steady-state
steps of ``mocoxr.pretrain.pretrain`` (the fast path as the notebooks run it).

    python benchmarks/profile_step.py                                  # CPU, 64 px, batch 32
    python benchmarks/profile_step.py --device cuda --size 320 --batch 256 --out $OUT

The loop marks its phases with named ranges (``mocoxr.wait_batch``, ``mocoxr.augment``,
``mocoxr.forward`` (both encoders, momentum update, enqueue), ``mocoxr.backward``,
``mocoxr.optimizer``). The profiler starts after ``--warmup`` steps and stops after ``--steps``
more (``bench_pretrain.run_fast_path`` switches it from the loop's monitor hook, as the
benchmark reads its clock). Printed, and written to
``--out``: the phases' share of the step, and the top operators by self time on the device.
Made for the device check (``gpu_check.sh``), so that one call gives the throughput and the
reason for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_pretrain  # noqa: E402

from mocoxr import runtime  # noqa: E402

PHASES = ("mocoxr.wait_batch", "mocoxr.augment", "mocoxr.forward", "mocoxr.backward",
          "mocoxr.optimizer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4, help="steps before the profiler starts")
    p.add_argument("--steps", type=int, default=4, help="profiled steps")
    p.add_argument("--patients", type=int, default=40)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--workers", type=int, default=2, help="phantom and cache decoding workers")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rows", type=int, default=25, help="operators listed")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--out", help="folder for profile_<backbone>.txt and .json")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.batch < 2:
        p.error("--warmup and --steps must be >= 1 and --batch >= 2")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} exists and is not a folder")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = runtime.resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    work = Path(args.work)
    d = bench_pretrain.make_data(work, args.size, args.patients, args.workers)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    span = {}

    def switch(step: int) -> None:
        if step == args.warmup:
            prof.start()
            span["t0"] = time.perf_counter()
        elif step == args.warmup + args.steps:
            prof.stop()
            span["t1"] = time.perf_counter()

    bench_pretrain.run_fast_path(d, args.backbone, args.batch, args.size, args.queue,
                                 args.warmup, args.steps, device,
                                 work / f"profile_{args.backbone}", switch, args.compile)
    wall = span["t1"] - span["t0"]  # includes the profiler's own overhead
    events = prof.key_averages()
    on_device = device.type == "cuda"

    phases = {}
    for e in events:
        if e.key in PHASES:
            phases[e.key] = {"count": int(e.count), "cpu_ms": e.cpu_time_total / 1e3,
                             "device_ms": e.device_time_total / 1e3 if on_device else None}
    sort_by = "self_device_time_total" if on_device else "self_cpu_time_total"
    table = events.table(sort_by=sort_by, row_limit=args.rows)
    report = {"device": bench_pretrain.device_name(device), "backbone": args.backbone,
              "size": args.size, "batch": args.batch, "profiled_steps": args.steps,
              "profiled_wall_s": wall, "images_per_s_profiled": args.steps * args.batch / wall,
              "phases": phases}
    lines = [f"# {report['device']}  {args.backbone}  {args.size} px  batch {args.batch}  "
             f"{args.steps} profiled steps after {args.warmup}: {wall:.3f} s "
             f"({report['images_per_s_profiled']:,.1f} img/s under the profiler)",
             "# phase              calls   CPU ms/step" + ("   device ms/step" if on_device else "")]
    for name in PHASES:
        if name in phases:
            ph = phases[name]
            lines.append(f"  {name:18s} {ph['count']:5d}   {ph['cpu_ms'] / args.steps:11.2f}"
                         + (f"   {ph['device_ms'] / args.steps:15.2f}" if on_device else ""))
    text = "\n".join(lines) + "\n\n" + table
    print(text, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"profile_{args.backbone}.txt").write_text(text)
        (out / f"profile_{args.backbone}.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
