"""The seeds batch: per-seed folders, pooled deltas whose CI holds seed spread and test sampling."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mocoxr import evaluate, seeds, tables
from mocoxr.book import __main__ as cli
from mocoxr.book import paths, runner
from mocoxr.book.profile import load_profile

Z = stats.norm.ppf(0.975)


def test_one_seed_gives_back_its_own_interval():
    assert seeds.pooled_interval([0.05], [0.01], [0.09], shared_test_set=False)[:3] == (0.05, 0.01, 0.09)


def test_independent_test_sets_use_the_seed_spread_with_a_t_quantile():
    d, lo, hi = [0.02, 0.06, 0.10], [0.0, 0.04, 0.08], [0.04, 0.08, 0.12]
    mean, low, high, sd = seeds.pooled_interval(d, lo, hi, shared_test_set=False)
    assert mean == pytest.approx(0.06) and sd == pytest.approx(0.04)
    half = stats.t.ppf(0.975, 2) * 0.04 / math.sqrt(3)  # the spread dominates the test noise
    assert (low, high) == pytest.approx((0.06 - half, 0.06 + half))
    assert low < 0 < high  # three seeds that disagree this much do not show an effect


def test_a_shared_test_set_adds_its_sampling_error_in_full():
    d, lo, hi = [0.05, 0.05, 0.05], [0.01, 0.01, 0.01], [0.09, 0.09, 0.09]
    mean, low, high, sd = seeds.pooled_interval(d, lo, hi, shared_test_set=True)
    se = 0.04 / Z  # no spread: what is left is the common test-set noise, not divided by n
    assert sd == pytest.approx(0, abs=1e-12) and (low, high) == pytest.approx((0.05 - stats.t.ppf(0.975, 2) * se,
                                                     0.05 + stats.t.ppf(0.975, 2) * se))
    _, low_ind, high_ind, _ = seeds.pooled_interval(d, lo, hi, shared_test_set=False)
    assert high_ind - low_ind < high - low  # independent test sets average their noise out


def test_verdict_and_where_the_pooled_tables_come_from(tmp_path):
    assert [seeds.verdict(*ci) for ci in ((0.01, 0.2), (-0.2, -0.01), (-0.01, 0.2))] == [
        "above zero", "below zero", "includes zero"]
    recorded = tmp_path / "recorded"
    with pytest.raises(FileNotFoundError, match="--seeds 0 1 2 3 4"):
        seeds.find_pooled(tmp_path / "run", recorded)
    _write_deltas(recorded, 0)
    assert seeds.find_pooled(tmp_path / "run", recorded) == (recorded, "recorded")
    _write_deltas(tmp_path / "run" / "seeds", 0)
    assert seeds.find_pooled(tmp_path / "run", recorded) == (tmp_path / "run" / "seeds", "this run")


def test_pooled_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="inside its own CI"):
        seeds.pooled_interval([0.2], [0.0], [0.1], False)
    with pytest.raises(ValueError, match="one delta"):
        seeds.pooled_interval([0.1, 0.2], [0.0], [0.3], False)


def _write_deltas(folder, shift):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(experiment=e, backbone="resnet18", label_fraction=f, comparison="moco - random",
                 delta=0.05 + shift, ci_low=0.01 + shift, ci_high=0.09 + shift)
            for e in ("linear", "shenzhen_linear") for f in (0.01, 1.0)]
    pd.DataFrame(rows, columns=evaluate.DELTAS_COLUMNS).to_csv(folder / "deltas.csv", index=False)
    res = [dict(experiment="linear", backbone="resnet18", init=i, label_fraction=1.0, draw=d,
                auc=0.8 + shift + (0.05 if i == "moco" else 0) + (0.3 if d >= 0 else 0),
                ci_low=0.7, ci_high=0.9, n_train=10, n_test=100)
           for i in ("moco", "random") for d in (-1, 0)]
    pd.DataFrame(res).to_csv(folder / "results.csv", index=False)


def test_pool_seed_folders_writes_per_seed_and_pooled_tables(tmp_path):
    for s, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        _write_deltas(seeds.seed_dir(tmp_path, s), shift)
    paths = seeds.pool_seed_folders(tmp_path, [0, 1, 2], {"linear": False, "shenzhen_linear": True})
    pooled = pd.read_csv(paths["deltas"])
    assert list(pooled.columns) == [*seeds.DELTA_VALUES, "n_seeds", "seed_sd"]
    assert len(pooled) == 4 and (pooled["n_seeds"] == 3).all()
    assert np.allclose(pooled["delta"], 0.05) and np.allclose(pooled["seed_sd"], 0.02)
    lin = pooled[pooled.experiment == "linear"].iloc[0]
    sz = pooled[pooled.experiment == "shenzhen_linear"].iloc[0]
    assert sz["ci_high"] - sz["ci_low"] > lin["ci_high"] - lin["ci_low"]  # shared test set
    assert len(pd.read_csv(paths["per_seed"])) == 12
    res = pd.read_csv(paths["results"]).set_index("init")  # the draw-averaged rows only
    assert res.loc["moco", "auc"] == pytest.approx(0.85) and res.loc["random", "auc_sd"] == pytest.approx(0.02)
    assert res.loc["random", "auc_min"] == pytest.approx(0.78) and (res["n_seeds"] == 3).all()
    with pytest.raises(FileNotFoundError, match="seed 3 has no results"):
        seeds.pool_seed_folders(tmp_path, [0, 3], False)


def test_run_seeds_runs_each_seed_in_its_folder_and_pools_only_when_all_finish(tmp_path):
    calls = []

    def run_one(seed, folder):
        calls.append((seed, folder))
        if seed == 7:
            return False
        _write_deltas(folder, 0.01 * seed)
        return True

    paths = seeds.run_seeds(run_one, tmp_path, [0, 1], False, "cmd", echo=lambda *_: None)
    assert calls == [(0, tmp_path / "seed-0"), (1, tmp_path / "seed-1")]
    source = json.loads(paths["source"].read_text())
    assert source["seeds"] == [0, 1] and source["command"] == "cmd"
    assert seeds.read_pooled(tmp_path / "seeds")["deltas"]["n_seeds"].eq(2).all()
    assert seeds.run_seeds(run_one, tmp_path / "b", [0, 7], False, echo=lambda *_: None) is None
    assert not (tmp_path / "b" / "seeds").exists()
    with pytest.raises(ValueError, match="distinct"):
        seeds.run_seeds(run_one, tmp_path, [1, 1], False)


def test_cli_seeds_batch_passes_each_seed_and_its_folder(tmp_path, monkeypatch):
    seen = []
    prof = load_profile("quick")

    def fake_run_profile(profile, run_dir, overrides=None, select=None, **kw):
        kept = [r.notebook for r in prof.runs if select(r)]
        seen.append((run_dir, overrides, kept, kw.get("force")))
        if run_dir != tmp_path:
            _write_deltas(run_dir, 0.0)
        return [runner.Outcome(r, "ran") for r in kept]

    monkeypatch.setattr(runner, "run_profile", fake_run_profile)
    assert cli.main(["run", "--profile", "quick", "--run-dir", str(tmp_path), "--seeds", "3", "4"]) == 0
    pipeline = ["01_data", "02_pretrain", "03_linear_probe", "04_finetune", "05_shenzhen"]
    fig = runner.BATCH_OVERRIDES
    assert seen == [(tmp_path / "seed-3", {**fig, "seed": 3}, pipeline, False),
                    (tmp_path / "seed-4", {**fig, "seed": 4}, pipeline, False),
                    (tmp_path, {}, ["08_stability"], True)]  # the pooled page, in the base folder
    assert (tmp_path / "seeds" / "deltas.csv").is_file()


def test_the_recorded_batch_is_what_its_per_seed_table_pools_to():
    """book/recorded/seeds-quick ships with the book: its pooled table must follow from its
    per-seed table by the code above (nobody edits numbers by hand)."""
    folder = paths.project_root() / "book" / "recorded" / "seeds-quick"
    rec = seeds.read_pooled(folder)
    shared = rec["source"]["shared_test_set"]
    again = seeds.pool_deltas(rec["per_seed"], shared)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), rec["deltas"].reset_index(drop=True),
                                  check_dtype=False)
    assert rec["source"]["command"].startswith("python -m mocoxr.book run --profile quick --seeds")
    assert sorted(rec["per_seed"]["seed"].unique()) == rec["source"]["seeds"]


def test_pooled_table_rows_and_auc_range():
    pooled = pd.DataFrame([dict(experiment="linear", backbone="resnet18", label_fraction=0.01,
                                comparison="moco - random", delta=0.05, ci_low=0.01, ci_high=0.09,
                                n_seeds=3, seed_sd=0.02)])
    t = seeds.pooled_table(pooled, {"linear": "Linear probe"}, tables.paper_results())
    mde = tables.min_detectable_effect(0.01, 0.09, 3)
    assert t.iloc[0].to_dict() == {"experiment": "Linear probe", "labels": "1%",
                                   "difference": "+0.050 [+0.010, +0.090]", "seed_sd": "0.020",
                                   "n_seeds": 3, "paper": "+0.072", "MDE (80%)": f"{mde:.3f}",
                                   "verdict": "reproduced"}
    assert seeds.pooled_table(pooled)["paper"].iloc[0] == ""  # no paper given
    assert seeds.pooled_row(pooled, "linear", 0.01)["delta"] == 0.05
    two = pd.concat([pooled.assign(experiment="finetune"), pooled.assign(label_fraction=0.001),
                     pooled])
    order = seeds.pooled_table(two, {"linear": "L", "finetune": "F"})
    assert list(zip(order["experiment"], order["labels"])) == [("L", "0.1%"), ("L", "1%"), ("F", "1%")]
    assert seeds.pooled_row(pooled, "linear", 1.0) is None
    res = pd.DataFrame([dict(experiment="x", backbone="b", init="moco", label_fraction=1.0,
                             auc=0.8, auc_min=0.75, auc_max=0.86)])
    assert seeds.auc_range(res, "x", "b", "moco", 1.0) == "0.800 (seeds 0.750 to 0.860)"
    assert seeds.auc_range(res, "x", "b", "random", 1.0) == "not run"


def test_pool_results_counts_draws_steps_and_labelled_images():
    rows = []
    for seed in (0, 1):
        for d, steps in ((0, 120), (1, 100), (-1, 100)):
            rows.append(dict(experiment="finetune", backbone="b", init="moco", label_fraction=0.01,
                             draw=d, auc=0.7 + 0.1 * seed, n_train=12, n_steps=steps, seed=seed))
    out = seeds.pool_results(pd.DataFrame(rows)).iloc[0]
    assert out["n_draws"] == 2 and out["n_steps"] == 100 and out["n_train"] == 12
    assert out["auc"] == pytest.approx(0.75) and out["n_seeds"] == 2


def test_the_recorded_batch_fine_tunes_every_draw_for_at_least_100_steps():
    """The recorded seeds batch: every fine-tuning cell took >= 100 optimizer steps in every
    draw, on as many draws as the linear probe, pooled over at least 5 seeds."""
    rec = seeds.read_pooled(paths.project_root() / "book" / "recorded" / "seeds-quick")
    res = rec["results"]
    assert rec["per_seed"]["seed"].nunique() >= 5
    for tuned, probed in (("finetune", "linear"), ("shenzhen_finetune", "shenzhen_linear")):
        ft = res[res["experiment"] == tuned].set_index(["init", "label_fraction"])
        lp = res[res["experiment"] == probed].set_index(["init", "label_fraction"])
        assert len(ft) and (ft["n_steps"] >= 100).all(), ft["n_steps"]
        assert ft["n_draws"].to_dict() == lp["n_draws"].to_dict()
    assert "seconds" in rec["source"] and rec["source"]["seconds"] > 0


def test_the_stability_page_reruns_when_its_pooled_tables_change(tmp_path):
    prof = load_profile("quick")
    rd = paths.run_paths(tmp_path)
    before = runner.run_keys(prof, rd)
    _write_deltas(tmp_path / "seeds", 0.0)  # a seeds batch of this folder: read instead
    for name in ("per_seed.csv", "results.csv"):
        (tmp_path / "seeds" / name).write_text((tmp_path / "seeds" / "deltas.csv").read_text())
    after = runner.run_keys(prof, rd)
    assert after["08_stability"] != before["08_stability"]
    assert all(after[r] == before[r] for r in before if r != "08_stability")


def test_a_page_showing_a_recorded_table_reruns_when_the_table_changes(monkeypatch, tmp_path):
    (tmp_path / "rec.csv").write_text("a\n1\n")
    monkeypatch.setattr(paths, "project_root", lambda *a: tmp_path)
    first = runner._recorded_digest("rec.csv")
    (tmp_path / "rec.json").write_text("{}")
    second = runner._recorded_digest("rec.csv")
    (tmp_path / "rec.csv").write_text("a\n2\n")
    assert len({first, second, runner._recorded_digest("rec.csv")}) == 3


def test_recorded_precision_check_supports_the_methods_text():
    """book/recorded/precision_check.csv (fp32 against bf16 over four seeds) holds what the
    methods page says of it: every cell, the command, no paired gap away from zero, the linear
    probe close, differing verdicts with close point estimates, the largest gap where named."""
    import re

    root = Path(__file__).resolve().parents[1]
    table = pd.read_csv(root / "book" / "recorded" / "precision_check.csv")
    assert len(table) == 14
    assert table["command"].str.startswith("python benchmarks/precision_check.py --seeds 0 1 2 3").all()
    nums = table["gap 95% CI over seeds"].map(
        lambda v: [float(x) for x in re.findall(r"[+-]\d\.\d+", v)])
    gap = nums.map(lambda v: v[0])
    assert all(lo <= 0 <= hi for _, lo, hi in nums)
    assert gap[table["experiment"] == "linear"].abs().max() <= 0.02
    assert gap[table["verdict bf16"] != table["verdict fp32"]].abs().max() <= 0.01
    top = table.loc[gap.abs().idxmax()]
    assert (top["experiment"], top["labels"]) == ("shenzhen_finetune", "100%")
    assert "recorded/precision_check.csv" in (root / "book" / "methods.md").read_text()


def test_the_methods_page_states_the_recorded_batch_time():
    """The batch time the methods page gives is the one source.json recorded."""
    root = Path(__file__).resolve().parents[1]
    source = json.loads((root / "book" / "recorded" / "seeds-quick" / "source.json").read_text())
    minutes, seconds = divmod(round(source["seconds"]), 60)
    assert len(source["seeds"]) == 5
    assert f"five-seed batch took {minutes} min {seconds} s" in " ".join(
        (root / "book" / "methods.md").read_text().split())
