"""The pretraining benchmark runs end to end at minimal sizes (so it cannot rot); the GPU check
script at least parses. Figures are not asserted: benchmarks are not timed tests."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]




def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_pretrain_smoke(tmp_path, capsys):
    bench = _load("bench_pretrain")
    res = bench.main(["--preset", "smoke", "--work", str(tmp_path / "work"),
                      "--json", str(tmp_path / "r.json")])
    r = res["backbones"]["resnet18"]
    assert r["batch"] == 4 and r["fast"]["timed_steps"] == 1 and r["reference"]["timed_steps"] == 1
    # the printed ratios are the side-by-side figures they claim to be
    assert r["ratio"] == pytest.approx(r["fast"]["images_per_s"] / r["reference"]["images_per_s"])
    assert r["features"]["dim"] == 512 and r["features"]["images"] == 16
    assert r["features"]["default_over_nchw"] == pytest.approx(
        r["features"]["images_per_s"] / r["features"]["images_per_s_nchw"])
    assert set(r["loaders"]) >= {"fast_images_per_s", "reference_images_per_s"}
    assert r["probe_sweep"]["probes"] == 16 and r["probe_sweep"]["fractions"] == [0.001, 0.01, 0.1, 1.0]
    assert json.loads((tmp_path / "r.json").read_text())["device"] == res["device"]
    out = capsys.readouterr().out
    assert "| resnet18 | 4 |" in out and "reference img/s" in out and "loaders img/s" in out


def test_feature_diagnostic_reads_truth_aligned_with_the_feature_rows(tmp_path):
    """The truth table follows the manifest's row order (the order of the cached features), and
    features that carry the effusion severity read out well while pure noise does not."""
    import numpy as np

    from mocoxr import data, phantom

    folder = phantom.generate_chexpert_tree(tmp_path / "data", n_patients=40, image_size=64,
                                            n_valid_patients=6, seed=0)
    prep = data.prepare_chexpert(folder, tmp_path / "manifests", fractions=(1.0,), draws=(1,))
    diag = _load("feature_diagnostic")
    truth = diag.truth_table(tmp_path / "manifests")
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(truth), 8))
    planted = noise.copy()
    planted[:, 0] = truth["effusion"].to_numpy() + 0.05 * rng.normal(size=len(truth))
    (tmp_path / "run" / "features").mkdir(parents=True)
    np.save(tmp_path / "run" / "features" / "chexpert__resnet18__planted__64px.npy", planted)
    np.save(tmp_path / "run" / "features" / "chexpert__resnet18__noise__64px.npy", noise)
    report = diag.main([str(tmp_path / "run"), str(tmp_path / "manifests")])
    assert list(truth["path"]) == list(prep.manifest["path"])
    assert truth["effusion"].between(0, 1).all() and truth["effusion"].gt(0).any()
    assert report["planted"]["R2 effusion"] > 0.8
    assert report["noise"]["R2 effusion"] < 0.2


def test_bench_reference_transform_is_the_moco_cxr_pipeline():
    bench = _load("bench_pretrain")
    names = [type(t).__name__ for t in bench.reference_transform(32, 0.5, 0.25).transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "RandomRotation", "RandomCrop",
                     "ToTensor", "Normalize"]
    args = bench.parse_args(["--preset", "h100"])
    assert args.batch_for == {"resnet18": 256, "densenet121": 128} and args.size == 320
    assert bench.parse_args(["--preset", "h100", "--batch", "64"]).batch_for["densenet121"] == 64


def test_profile_step_reports_every_phase_of_the_profiled_steps(tmp_path, capsys):
    prof = _load("profile_step")
    report = prof.main(["--size", "32", "--batch", "4", "--warmup", "1", "--steps", "2",
                        "--patients", "30", "--queue", "64", "--workers", "1",
                        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert set(report["phases"]) == set(prof.PHASES)
    assert all(p["count"] == 2 and p["cpu_ms"] > 0 for p in report["phases"].values())
    text = (tmp_path / "out" / "profile_resnet18.txt").read_text()
    assert "mocoxr.backward" in text and "aten::convolution_backward" in text
    assert json.loads((tmp_path / "out" / "profile_resnet18.json").read_text())["batch"] == 4
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        prof.parse_args(["--out", str(tmp_path / "file")])
    assert "not a folder" in capsys.readouterr().err


def test_bench_counts_the_matrix_flops_of_a_moco_step():
    """ResNet18 at 32 px: 3 forward passes' worth (query forward + backward, key forward) of
    the 7x7/3x3 convolutions; a larger image costs in proportion to its pixels."""
    bench = _load("bench_pretrain")
    small, large = (bench.step_flops_per_image("resnet18", s, 64) for s in (32, 64))
    assert 0.2e9 < small < 0.4e9  # 2 * 0.0372 GMAC (ResNet18 fwd at 32 px) * ~3.9
    assert large / small == pytest.approx(4.0, rel=0.02)


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


def test_recorded_ablations_name_their_commands_and_no_machine_paths():
    import sys

    import pandas as pd

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from effect_study import portable_command

    assert portable_command("python x.py --tag a --workdir /tmp/w --record=/r.csv --seed 1") == \
        "python x.py --tag a --seed 1"
    table = pd.read_csv(ROOT / "book" / "recorded" / "ablations.csv", dtype=str)
    assert table["tag"].is_unique and len(table) >= 2
    for cmd in table["command"]:
        assert cmd.startswith("python benchmarks/effect_study.py --tag ")
        assert not any(w.startswith(("/", "~")) for w in cmd.split()), cmd
    assert {"linear 0.1%", "linear 1%", "linear 10%", "linear 100%", "fine-tune 100%"} <= set(table)


def test_bench_precision_smoke(tmp_path, capsys):
    """bf16 against fp32, side by side: every printed speed-up is fp32 time over bf16 time."""
    bench = _load("bench_precision")
    rows = bench.main(["--size", "32", "--threads", "1", "--reps", "1", "--steps", "1",
                       "--pretrain-batch", "8", "--finetune-batches", "4", "--predict-batch", "4",
                       "--record", str(tmp_path / "p.csv")])
    assert [r["workload"] for r in rows] == ["pretrain_step batch 8", "finetune_step batch 4",
                                             "predict 4 images"]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["fp32_ms"] / r["bf16_ms"])
    import pandas as pd
    rec = pd.read_csv(tmp_path / "p.csv")
    assert list(rec.columns) == bench.COLUMNS and len(rec) == 3
    assert "--record" not in rec["command"].iloc[0]
    assert "| 1 | finetune_step batch 4 |" in capsys.readouterr().out


def test_bench_optimizer_smoke(capsys):
    """DenseAdam against torch.optim.Adam, side by side: each speed-up is plain over dense."""
    bench = _load("bench_optimizer")
    rows = bench.main(["--size", "32", "--threads", "1", "--reps", "1", "--steps", "1",
                       "--finetune-batches", "4", "--pretrain-batch", "8", "--amp", "off"])
    assert [r["workload"] for r in rows] == ["finetune_step batch 4", "pretrain_step batch 8"]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["plain_ms"] / r["dense_ms"])
    out = capsys.readouterr().out
    assert "fp32" in out and "| finetune_step batch 4 |" in out


def test_precision_check_runs_fp32_chapters_and_records_the_comparison(tmp_path, monkeypatch):
    """Each fp32 seed gets amp off for pretraining and both fine-tunings, only chapters 01-05, in
    its own folder; one seed is compared with a bf16 run folder, several are pooled over the same
    seeds of a per-seed table first; the record names its command."""
    import pandas as pd
    from mocoxr import seeds
    from mocoxr.book import runner
    bench = _load("precision_check")
    bf16 = tmp_path / "bf16"
    (bf16 / "stamps").mkdir(parents=True)
    for nb in runner.BATCH_NOTEBOOKS:
        (bf16 / "stamps" / f"{nb}.json").write_text("{}")

    def deltas(d, seed=None):
        row = {"experiment": "linear", "backbone": "resnet18", "label_fraction": 0.01,
               "comparison": "moco - random", "delta": d, "ci_low": d - 0.03, "ci_high": d + 0.03}
        return pd.DataFrame([row if seed is None else {**row, "seed": seed}])
    deltas(0.05).to_csv(bf16 / "deltas.csv", index=False)
    seen = []

    def fake_run_profile(profile, run_dir, overrides, select):
        seen.append(dict(overrides=overrides, run_dir=run_dir,
                         chapters=[nb for nb in ("01_data", "04_finetune", "06_results")
                                   if select(type("R", (), {"notebook": nb}))]))
        run_dir.mkdir(parents=True, exist_ok=True)
        deltas(0.04 + 0.01 * overrides["seed"]).to_csv(run_dir / "deltas.csv", index=False)
        return [runner.Outcome("04_finetune", "ran")]
    monkeypatch.setattr(runner, "run_profile", fake_run_profile)
    rec, root = tmp_path / "check.csv", tmp_path / "fp32"
    bench.main(["--bf16", str(bf16), "--fp32-root", str(root), "--record", str(rec)])
    assert seen[0]["chapters"] == ["01_data", "04_finetune"]
    assert seen[0]["run_dir"] == root / "seed-0" and seen[0]["overrides"]["seed"] == 0
    for name in ("pretrain", "finetune", "transfer_finetune"):
        assert seen[0]["overrides"][name] == {"amp": "off"}
    table = pd.read_csv(rec)
    assert list(table.columns) == bench.RECORDED and len(table) == 1
    assert table["verdict bf16"].iloc[0] == table["verdict fp32"].iloc[0]
    assert float(table["gap 95% CI over seeds"].iloc[0]) == pytest.approx(-0.01)  # one seed: no interval
    assert table["command"].iloc[0].startswith("python benchmarks/precision_check.py --bf16")
    assert "--record" not in table["command"].iloc[0]

    per_seed = pd.concat([deltas(0.05, 0), deltas(0.07, 1), deltas(0.5, 9)])
    per_seed.to_csv(tmp_path / "per_seed.csv", index=False)
    pooled = bench.main(["--bf16", str(tmp_path / "per_seed.csv"), "--fp32-root", str(root),
                         "--seeds", "0", "1"])
    assert [s["run_dir"].name for s in seen[1:]] == ["seed-0", "seed-1"]
    fp32 = seeds.pool_deltas(pd.concat([deltas(0.04, 0), deltas(0.05, 1)]), False).iloc[0]
    assert pooled["gap"].iloc[0] == pytest.approx(0.045 - 0.06)  # seed 9 left out
    assert pooled["fp32"].iloc[0] == tables_fmt(fp32)
    # paired by seed: gaps -0.01 and -0.02, mean -0.015, t(1) interval
    half = 12.706 * (0.01 / 2 ** 0.5) / 2 ** 0.5
    lo, hi = (float(v) for v in pooled["gap 95% CI over seeds"].iloc[0]
              .split("[")[1].rstrip("]").split(","))
    assert pooled["gap 95% CI over seeds"].iloc[0].startswith("-0.015")
    assert (lo, hi) == (pytest.approx(-0.015 - half, abs=1e-3), pytest.approx(-0.015 + half, abs=1e-3))
    with pytest.raises(SystemExit, match="no rows of seed"):
        bench.main(["--bf16", str(tmp_path / "per_seed.csv"), "--seeds", "5"])
    with pytest.raises(SystemExit, match="one run folder"):
        bench.main(["--bf16", str(bf16), "--seeds", "0", "1"])
    with pytest.raises(SystemExit, match="no finished"):
        bench.main(["--bf16", str(tmp_path), "--fp32-root", str(root)])


def tables_fmt(row) -> str:
    from mocoxr import tables
    return tables.fmt_ci(row["delta"], row["ci_low"], row["ci_high"], signed=True)
