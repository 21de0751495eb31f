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
    assert r["fast"]["images_per_s"] > 0 and r["reference"]["images_per_s"] > 0 and r["ratio"] > 0
    assert r["features"]["dim"] == 512 and r["features"]["images"] == 16
    assert r["probe_sweep"]["probes"] == 16 and r["probe_sweep"]["fractions"] == [0.001, 0.01, 0.1, 1.0]
    assert json.loads((tmp_path / "r.json").read_text())["device"] == res["device"]
    out = capsys.readouterr().out
    assert "| resnet18 | 4 |" in out and "reference img/s" in out


def test_bench_reference_transform_is_the_moco_cxr_pipeline():
    bench = _load("bench_pretrain")
    names = [type(t).__name__ for t in bench.reference_transform(32, 0.5, 0.25).transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "RandomRotation", "RandomCrop",
                     "ToTensor", "Normalize"]
    args = bench.parse_args(["--preset", "h100"])
    assert args.batch_for == {"resnet18": 256, "densenet121": 128} and args.size == 320
    assert bench.parse_args(["--preset", "h100", "--batch", "64"]).batch_for["densenet121"] == 64


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
