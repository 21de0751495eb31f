#!/usr/bin/env python
"""Do the book's conclusions change under bf16? Seeds of the quick profile's chapters 01-05 run
with fp32 pretraining and fine-tuning, and their paired differences are compared cell by cell
with the same seeds' bf16 runs (``amp: auto`` on a machine with bf16 units).

    make book        # the bf16 run of seed 0: runs/quick
    python benchmarks/precision_check.py --bf16 runs/quick          # seed 0 against that run
    python benchmarks/precision_check.py --seeds 0 1 2 \
        --bf16 book/recorded/seeds-quick/per_seed.csv --record book/recorded/precision_check.csv

Each fp32 seed runs into ``<fp32-root>/seed-<n>`` (default ``runs/precision-fp32``) like any
profile run: resumable, and reused while nothing it depends on changed. ``--bf16`` is a finished
run folder (one seed) or a per-seed table with a ``seed`` column (a seeds batch's
``per_seed.csv``). With several seeds both precisions are pooled over the same seeds
(``seeds.pool_deltas``) before the comparison (``tables.compare_runs``): each cell's difference
[95% CI] and verdict in both precisions, the gap, whether each lies inside the other's CI and
whether the verdicts agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mocoxr import seeds, tables  # noqa: E402
from mocoxr.book import runner  # noqa: E402

RECORDED = ["experiment", "labels", "bf16", "fp32", "gap 95% CI over seeds", "verdict bf16",
            "verdict fp32", "command"]  # the seeds are in the command
FP32 = {"pretrain": {"amp": "off"}, "finetune": {"amp": "off"},
        "transfer_finetune": {"amp": "off"}}


def bf16_per_seed(source: Path, seeds: list[int]) -> pd.DataFrame:
    """The bf16 per-seed differences of ``seeds`` from a run folder (one seed) or a table."""
    if source.is_dir():
        if len(seeds) != 1:
            raise SystemExit(f"{source} is one run folder: compare one seed with it, or pass a "
                             "per-seed table (per_seed.csv) for several")
        for nb in runner.BATCH_NOTEBOOKS[1:]:
            if not (source / "stamps" / f"{nb}.json").is_file():
                raise SystemExit(f"{source} has no finished {nb}: run the quick profile first "
                                 "(make book)")
        return pd.read_csv(source / "deltas.csv").assign(seed=seeds[0])
    if not source.is_file():
        raise SystemExit(f"--bf16 {source}: no such run folder or per-seed table")
    table = pd.read_csv(source)
    missing = sorted(set(seeds) - set(table.get("seed", pd.Series(dtype=int))))
    if missing:
        raise SystemExit(f"{source} has no rows of seed(s) {missing}")
    return table[table["seed"].isin(seeds)]


def paired_gaps(bf16: pd.DataFrame, fp32: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the fp32 minus bf16 difference paired by seed: its mean and 95% t interval
    over the seeds (a precision effect would show as an interval away from zero)."""
    on = ["experiment", "label_fraction", "seed"]
    both = bf16[on + ["delta"]].merge(fp32[on + ["delta"]], on=on, suffixes=("_bf16", "_fp32"))
    both["gap"] = both["delta_fp32"] - both["delta_bf16"]
    rows = []
    for (exp, f), g in both.groupby(["experiment", "label_fraction"]):
        n, mean, sd = len(g), g["gap"].mean(), g["gap"].std(ddof=1)
        half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) if n > 1 else np.nan
        rows.append({"experiment": exp, "labels": tables.pct(f),
                     "gap 95% CI over seeds": tables.fmt_ci(mean, mean - half, mean + half,
                                                            signed=True)})
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bf16", default="runs/quick",
                   help="bf16 run folder (one seed) or per-seed table with a seed column")
    p.add_argument("--fp32-root", default="runs/precision-fp32", dest="fp32_root")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--record", help="write the table as CSV here (with the command)")
    args = p.parse_args(argv)
    bf16 = bf16_per_seed(Path(args.bf16), args.seeds)
    frames, t = [], time.perf_counter()
    for seed in args.seeds:
        run_dir = Path(args.fp32_root) / f"seed-{seed}"
        outcomes = runner.run_profile(args.profile, run_dir,
                                      {**runner.BATCH_OVERRIDES, **FP32, "seed": seed},
                                      select=lambda r: r.notebook in runner.BATCH_NOTEBOOKS)
        if any(o.status in ("failed", "skipped") for o in outcomes):
            raise SystemExit(f"the fp32 run of seed {seed} stopped; rerun to resume ({run_dir})")
        frames.append(pd.read_csv(run_dir / "deltas.csv").assign(seed=seed))
    fp32 = pd.concat(frames, ignore_index=True)
    gaps = paired_gaps(bf16, fp32)
    if len(args.seeds) > 1:
        bf16, fp32 = (seeds.pool_deltas(d[seeds.PER_SEED_COLUMNS], False) for d in (bf16, fp32))
    table = tables.compare_runs(bf16, fp32, ("bf16", "fp32"), tables.paper_results())
    table = table.merge(gaps, on=["experiment", "labels"], how="left")
    print(table.to_string(index=False))
    print(f"# fp32 chapters 01-05 of seed(s) {args.seeds}: {time.perf_counter() - t:.0f} s; "
          f"same verdict in {int(table['same verdict'].sum())} of {len(table)} cells")
    if args.record:
        command = " ".join(["python benchmarks/precision_check.py",
                            *(sys.argv[1:] if argv is None else argv)])
        command = command.replace(f" --record {args.record}", "")
        table.assign(command=command)[RECORDED].to_csv(args.record, index=False)
    return table


if __name__ == "__main__":
    main()
