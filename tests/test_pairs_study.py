"""Tests for mocoxr.pairs_study (the comparison of positive-pair rules, notebook 07)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mocoxr import notebook, pairs, pairs_study
from mocoxr.book import paths
from mocoxr.pretrain import PretrainConfig

PRETRAIN = {"init": "random", "batch_size": 8, "epochs": 1, "max_steps": 2, "lr": 1e-4,
            "lr_drops": [], "queue_size": 16, "dim": 16, "bn_splits": 2, "channels_last": "off"}


def recipe(**kw) -> pairs_study.Recipe:
    base = dict(backbone="resnet18", image_size=32, seed=0, device="cpu", pretrain=PRETRAIN,
                linear={"fractions": [1.0], "batch_size": 32}, n_boot=20)
    return pairs_study.Recipe(**{**base, **kw})


def toy_sampler(n_pat: int = 6, per: int = 3, size: int = 32) -> pairs.PairSampler:
    """``n_pat`` patients x ``per`` frontal images (two studies each), random images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n_pat * per, size, size), dtype=np.uint8)
    m = pd.DataFrame({"patient": np.repeat([f"p{i}" for i in range(n_pat)], per)})
    m["study"] = m["patient"] + "/s" + (np.arange(len(m)) % per == 0).astype(int).astype(str)
    m["view"] = "frontal"
    table = pairs.candidate_table(m, np.arange(len(m)), "same_patient")
    return pairs.PairSampler("same_patient", False, table, images)


def fake_dataset(images: np.ndarray) -> notebook.Dataset:
    return notebook.Dataset(None, images, 0.5, 0.25, "fingerprint", int(images.shape[1]))


# ----------------------------------------------------------------------------- the rules


def test_pairing_specs_need_the_image_baseline_first_and_two_rules():
    specs = pairs_study.pairing_specs(["image", "same_study+laterals", "same_patient"])
    assert specs == {"image": ("image", False), "same_study+laterals": ("same_study", True),
                     "same_patient": ("same_patient", False)}
    for bad in (["same_study", "image", "same_patient"], ["image", "same_study"], []):
        with pytest.raises(ValueError, match="must start with 'image'"):
            pairs_study.pairing_specs(bad)
    with pytest.raises(ValueError, match="pairing 'image\\+laterals'"):
        pairs_study.pairing_specs(["image", "same_study", "image+laterals"])


def test_pairing_config_sets_only_the_rule_on_the_shared_recipe():
    r = recipe()
    cfg = pairs_study.pairing_config("same_study+laterals", r)
    assert (cfg.positive_pairs, cfg.pair_laterals) == ("same_study", True)
    assert (cfg.backbone, cfg.image_size, cfg.max_steps, cfg.queue_size) == ("resnet18", 32, 2, 16)
    image = pairs_study.pairing_config("image", r)
    assert image == PretrainConfig(backbone="resnet18", image_size=32, seed=0, device="cpu",
                                   **PRETRAIN)  # what 02_pretrain builds from the same dict


def test_checkpoint_folder_names_are_kept(tmp_path):
    """Image pairs: 02_pretrain's folder; a rule: that folder's name + _pairs<table sha1[:8]>
    (the names of existing runs: a change here would retrain every rule)."""
    s = toy_sampler()
    ds = fake_dataset(s.images)
    image_cfg = pairs_study.pairing_config("image", recipe())
    base = notebook.pretrain_dir(tmp_path, image_cfg, ds)
    assert pairs_study.checkpoint_dir(tmp_path, image_cfg, ds, None) == base
    cfg = pairs_study.pairing_config("same_patient", recipe())
    rule = pairs_study.checkpoint_dir(tmp_path, cfg, ds, s)
    own = notebook.pretrain_dir(tmp_path, cfg, ds).name
    assert rule == tmp_path / "checkpoints" / f"{own}_pairs{s.sha1[:8]}" and own != base.name
    assert s.sha1 == pairs.table_sha1(s.table) and len(rule.name.rsplit("_pairs")[1]) == 8


def test_summary_and_rule_values():
    s = toy_sampler()
    stats = pairs_study.summary_table({"image": None, "same_patient": s, "other": s})
    assert list(stats.index) == ["same_patient", "other"]
    assert stats.loc["same_patient", "share_paired"] == 1.0
    v = pairs_study.rule_values(stats, ["image", "same_patient", "other"])
    assert list(v) == ["p1_name", "p1_share", "p1_cands", "p2_name", "p2_share", "p2_cands",
                       "n_lateral_keys"]
    assert (v["p1_name"], v["p1_share"], v["n_lateral_keys"]) == ("same_patient", 100.0, 0)
    assert v["p1_cands"] == pytest.approx(2.0)  # 3 images per patient: the other 2


def test_example_pairs_show_each_query_with_its_drawn_key():
    s = toy_sampler()
    shown, titles = pairs_study.example_pairs(s, seed=3, n=3)
    assert len(shown) == len(titles) == 6
    pick = np.sort(np.random.default_rng(3).choice(len(s.images), size=3, replace=False))
    assert all(np.array_equal(shown[2 * i], s.images[q]) for i, q in enumerate(pick))
    assert np.array_equal(shown[1], s.key_batch(np.array([pick[0]]), 3, 0)[0].numpy())
    assert not np.array_equal(shown[0], shown[1])  # another image of the patient
    assert titles[0].startswith("query p") and titles[1].startswith("key s")
    assert titles[1].endswith("(frontal)")
    alone = pairs.PairSampler("same_study", False, s.table.iloc[:0], s.images)
    assert pairs_study.example_pairs(alone, seed=0) == ([], [])


# ----------------------------------------------------------------------------- the record


def test_study_meta_keys_and_values(monkeypatch):
    monkeypatch.setattr(pairs_study, "code_version",
                        lambda: {"git_commit": "abc-dirty", "code_hash": "h"})
    s = toy_sampler()
    r = recipe()
    meta = pairs_study.study_meta(r, {"image": None, "same_patient": s}, 1.234,
                                  phantom={"n_patients": 6})
    assert list(meta) == ["command", "git_commit", "code_hash", "finished_utc", "minutes", "seed",
                          "backbone", "image_size", "pretrain", "linear", "n_boot", "data",
                          "phantom", "pairings"]
    assert meta["command"] == pairs_study.BY_HAND == "notebooks/07_positive_pairs (by hand)"
    assert (meta["minutes"], meta["data"], meta["pretrain"]) == (1.2, "embedded phantoms", PRETRAIN)
    assert list(meta["pairings"]) == ["same_patient"]
    assert meta["pairings"]["same_patient"] == pairs.table_summary(s.table)
    other = pairs_study.study_meta(r, {}, 0, command="make it", data_dir="/data")
    assert (other["command"], other["data"]) == ("make it", "data_dir")


def test_the_recorded_sidecar_keeps_the_committed_keys():
    meta = json.loads((paths.project_root() / "book/recorded/positive_pairs.json").read_text())
    fresh = pairs_study.study_meta(recipe(), {}, 0)
    assert list(meta) == list(fresh)


def test_code_version_names_the_commit_and_code_hash(tmp_path):
    v = pairs_study.code_version()
    assert set(v) == {"git_commit", "code_hash"} and len(v["git_commit"].split("-")[0]) == 40
    assert pairs_study.code_version(tmp_path)["git_commit"] == "unknown (not a git checkout)"


def test_source_note_names_this_run_or_the_recorded_one():
    assert pairs_study.source_note(None, None, 4) == "computed by this run (seed 4)"
    meta = {"command": "make it", "git_commit": "0123456789abcdef", "finished_utc": "2026-01-01",
            "seed": 0, "minutes": 9.5}
    note = pairs_study.source_note("book/recorded/x.csv", meta, 4)
    assert note == ("read from the recorded run `book/recorded/x.csv`, written by `make it` at "
                    "code version 0123456789ab (2026-01-01 UTC, seed 0, 9.5 min); this build "
                    "did not retrain them")
    assert "(? UTC, seed ?, ? min)" in pairs_study.source_note("x", {"command": "c",
                                                                     "git_commit": "g"}, 0)


# ----------------------------------------------------------------------------- the comparison


def comparison_inputs():
    res = []
    for init, base in (("image", 0.6), ("same_study", 0.65)):
        for f in (0.1, 1.0):
            for d in (0, 1, -1):
                res.append({"experiment": "linear", "backbone": "resnet18", "init": init,
                            "label_fraction": f, "draw": d, "auc": base + f / 10 + 0.01 * d,
                            "ci_low": 0.5, "ci_high": 0.9, "n_train": 10, "n_test": 50})
    deltas = pd.DataFrame([{"experiment": "linear", "backbone": "resnet18", "label_fraction": f,
                            "comparison": "same_study - image", "delta": 0.05, "ci_low": -0.01,
                            "ci_high": 0.1} for f in (0.1, 1.0)])
    return pd.DataFrame(res), deltas


def test_comparison_table_and_recorded_round_trip(tmp_path):
    res, deltas = comparison_inputs()
    t = pairs_study.comparison_table(res, deltas, "resnet18")
    assert list(t.columns) == pairs_study.COMPARISON_COLUMNS
    assert list(t["pairing"]) == ["image", "image", "same_study", "same_study"]
    assert t["n_draws"].tolist() == [2, 2, 2, 2]
    assert t["auc"].tolist() == pytest.approx([0.6 + 0.01 - 0.01, 0.7 - 0.01, 0.65, 0.74])
    assert t.loc[t["pairing"] == "image", "delta"].isna().all()
    assert t.loc[t["pairing"] == "same_study", "delta"].tolist() == [0.05, 0.05]
    path = pairs_study.write_recorded(t, tmp_path / "rec" / "pp.csv", {"command": "make it"})
    back, meta = pairs_study.read_recorded(path)
    assert meta["command"] == "make it"
    pd.testing.assert_frame_equal(back, t, check_dtype=False)
    r = pairs_study.as_results(back)
    assert set(r["init"]) == {"image", "same_study"} and (r["draw"] == -1).all()
    (tmp_path / "rec" / "pp.json").unlink()
    with pytest.raises(FileNotFoundError, match="profile pairs"):
        pairs_study.read_recorded(path)


def test_recorded_comparison_is_committed_with_its_command():
    table, meta = pairs_study.read_recorded(paths.project_root() / "book/recorded/positive_pairs.csv")
    assert "--profile pairs" in meta["command"] and meta["git_commit"] and meta["code_hash"]
    assert set(table["pairing"]) >= {"image"} and len(set(table["pairing"])) == 3
    other = table[table["pairing"] != "image"]
    assert other["delta"].notna().all() and (other["delta_low"] <= other["delta_high"]).all()


def test_chapter_values_from_a_comparison_table():
    res, deltas = comparison_inputs()
    t = pairs_study.comparison_table(res, deltas, "resnet18")
    d = pairs_study.delta_rows(t)
    assert set(d["experiment"]) == {"same_study"} and (d["comparison"] == "minus image").all()
    assert d["ci_low"].tolist() == [-0.01, -0.01] and d["auc_lo"].tolist() == [0.5, 0.5]
    v = pairs_study.conclusion_values(t, ["image", "same_study"])
    assert (v["frac_small"], v["frac_large"], v["n_fractions"]) == ("10%", "100%", 2)
    assert (v["p1_delta_small"], v["p1_delta_large_lo"], v["p1_delta_large_hi"]) == (0.05, -0.01, 0.1)
    assert (v["p1_n_up"], v["p1_n_down"]) == (0, 0)
    assert v["p1_verdict"] == pairs_study.verdict(t, "same_study")
    assert v["auc_image_small"] == pytest.approx(0.6) and v["auc_image_large"] == pytest.approx(0.69)


# ----------------------------------------------------------------------------- end to end


def test_a_tiny_study_pretrains_each_rule_probes_and_records(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pairs_study, "code_version", lambda: {"git_commit": "c", "code_hash": "h"})
    run_dir = tmp_path / "run"
    folder = notebook.chexpert_folder(run_dir, None, {"n_patients": 24, "n_valid_patients": 6,
                                                      "image_size": 40})
    ds = notebook.load_dataset(run_dir, "chexpert", folder, 32,
                               {"fractions": [1.0], "draws": [1], "val_fraction": 0.2})
    names = ["image", "same_study+laterals", "same_patient"]
    samplers = pairs_study.samplers(run_dir, ds, folder, names)
    assert samplers["image"] is None and samplers["same_patient"].positive_pairs == "same_patient"
    csv = tmp_path / "rec" / "pp.csv"
    table, meta = pairs_study.run_study(run_dir, ds, samplers, recipe(), phantom={"x": 1},
                                        record={"csv": str(csv), "command": "the test"})
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if "steps" in line] == names
    assert "trained 2 steps" in out and f"recorded: {csv}" in out
    assert list(dict.fromkeys(table["pairing"])) == names
    assert table.loc[table["pairing"] != "image", "delta"].notna().all()
    on_disk = pd.read_csv(run_dir / "positive_pairs" / "comparison.csv")
    pd.testing.assert_frame_equal(on_disk, table, check_dtype=False)
    back, meta_back = pairs_study.read_recorded(csv)
    pd.testing.assert_frame_equal(back, table[pairs_study.COMPARISON_COLUMNS], check_dtype=False)
    assert meta_back["command"] == "the test" and meta_back["phantom"] == {"x": 1}
    assert set(meta_back["pairings"]) == set(names[1:])
    for name in names[1:]:
        cfg = pairs_study.pairing_config(name, recipe())
        d = pairs_study.checkpoint_dir(run_dir, cfg, ds, samplers[name])
        assert (d / "backbone.pt").is_file() and (d / "pairs.csv").is_file()
        assert d.name.endswith(f"_pairs{samplers[name].sha1[:8]}")
    again, _ = pairs_study.run_study(run_dir, ds, samplers, recipe())
    assert capsys.readouterr().out.count("loaded 2 steps") == 3
    pd.testing.assert_frame_equal(again, table)
