#!/usr/bin/env python
"""Do the book's conclusions change under bf16? One seed of the quick profile's chapters 01-05
runs with fp32 pretraining and fine-tuning, and its paired differences are compared cell by
cell with the same seed's bf16 run (``amp: auto`` on a machine with bf16 units).

    make book        # the bf16 run of seed 0: runs/quick
    python benchmarks/precision_check.py --bf16-run runs/quick \
        --record book/recorded/precision_check.csv

The fp32 chapters run into ``--fp32-run`` (default ``runs/precision-fp32``) like any profile run:
resumable, and reused while nothing they depend on changed. The table (``tables.compare_runs``)
gives each cell's difference [95% CI] and single-run verdict in both precisions, the gap,
whether each lies inside the other's CI and whether the verdicts agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mocoxr import tables  # noqa: E402
from mocoxr.book import runner  # noqa: E402

RECORDED = ["experiment", "labels", "bf16", "fp32", "gap", "each inside the other's CI",
            "verdict bf16", "verdict fp32", "same verdict", "seed", "command"]
FP32 = {"pretrain": {"amp": "off"}, "finetune": {"amp": "off"},
        "transfer_finetune": {"amp": "off"}}


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bf16-run", default="runs/quick", dest="bf16_run",
                   help="finished run folder of the quick profile in bf16 (make book)")
    p.add_argument("--fp32-run", default="runs/precision-fp32", dest="fp32_run")
    p.add_argument("--seed", type=int, default=0, help="the bf16 run's seed")
    p.add_argument("--profile", default="quick")
    p.add_argument("--record", help="write the table as CSV here (with the command)")
    args = p.parse_args(argv)
    bf16_run, fp32_run = Path(args.bf16_run), Path(args.fp32_run)
    for nb in runner.BATCH_NOTEBOOKS[1:]:
        if not (bf16_run / "stamps" / f"{nb}.json").is_file():
            raise SystemExit(f"{bf16_run} has no finished {nb}: run the quick profile first "
                             "(make book)")
    t = time.perf_counter()
    outcomes = runner.run_profile(args.profile, fp32_run,
                                  {**runner.BATCH_OVERRIDES, **FP32, "seed": args.seed},
                                  select=lambda r: r.notebook in runner.BATCH_NOTEBOOKS)
    if any(o.status in ("failed", "skipped") for o in outcomes):
        raise SystemExit(f"the fp32 run stopped; rerun to resume ({fp32_run})")
    seconds = time.perf_counter() - t
    table = tables.compare_runs(pd.read_csv(bf16_run / "deltas.csv"),
                                pd.read_csv(fp32_run / "deltas.csv"), ("bf16", "fp32"),
                                tables.paper_results())
    print(table.to_string(index=False))
    print(f"# fp32 chapters 01-05: {seconds:.0f} s; same verdict in "
          f"{int(table['same verdict'].sum())} of {len(table)} cells")
    if args.record:
        command = " ".join(["python benchmarks/precision_check.py",
                            *(sys.argv[1:] if argv is None else argv)])
        command = command.replace(f" --record {args.record}", "")
        table.assign(seed=args.seed, command=command)[RECORDED].to_csv(args.record, index=False)
    return table


if __name__ == "__main__":
    main()
