"""Tests for mocoxr.pairs (MedAug positive pairs) and its hook in pretrain.pretrain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mocoxr import augment, notebook, pairs
from mocoxr.book import paths
from mocoxr.book.ipynb import notebook_parameters
from mocoxr.book.profile import load_profile
from mocoxr.pretrain import PretrainConfig, epoch_order, pretrain

MEAN, STD = 0.5, 0.25


def toy_manifest() -> tuple[pd.DataFrame, np.ndarray]:
    """patient p0: studies s0 (3 frontal) and s1 (1 frontal); p1: one study, 2 frontal + 1
    lateral; p2: a single image; p3: 2 images but in the val split. Returns (manifest, train rows)."""
    recs = [("p0", "p0/s0", "frontal", "train"), ("p0", "p0/s0", "frontal", "train"),
            ("p0", "p0/s0", "frontal", "train"), ("p0", "p0/s1", "frontal", "train"),
            ("p1", "p1/s0", "frontal", "train"), ("p1", "p1/s0", "frontal", "train"),
            ("p1", "p1/s0", "lateral", "train"), ("p2", "p2/s0", "frontal", "train"),
            ("p3", "p3/s0", "frontal", "val"), ("p3", "p3/s0", "frontal", "val")]
    m = pd.DataFrame(recs, columns=["patient", "study", "view", "split"])
    m["path"] = [f"/x/{i}.jpg" for i in range(len(m))]
    return m, np.flatnonzero(m["split"] == "train")


def candidates(table: pd.DataFrame, row: int) -> set[tuple[str, int]]:
    t = table[table["row"] == row]
    return set(zip(t["source"], t["key_row"]))


def test_same_patient_and_same_study_candidates_follow_the_rules():
    m, rows = toy_manifest()
    pat = pairs.candidate_table(m, rows, "same_patient")
    assert candidates(pat, 0) == {("manifest", 1), ("manifest", 2), ("manifest", 3)}
    assert candidates(pat, 4) == {("manifest", 5)}          # the lateral is not a key ...
    assert candidates(pat, 6) == {("manifest", 6)}          # ... nor a frontal one for it
    stu = pairs.candidate_table(m, rows, "same_study")
    assert candidates(stu, 0) == {("manifest", 1), ("manifest", 2)}
    assert candidates(stu, 3) == {("manifest", 3)}          # alone in its study: itself
    lat = pairs.candidate_table(m, rows, "same_study", pair_laterals=True)
    assert candidates(lat, 4) == {("manifest", 5), ("manifest", 6)}
    for t in (pat, stu, lat):
        keys = t[t["source"] == "manifest"]["key_row"].to_numpy()
        assert set(t["row"]) == set(rows)                    # every training row, no other
        assert np.isin(keys, rows).all()                      # never a val row (p3) as key
        assert (m["patient"].to_numpy()[keys] == t["patient"].to_numpy()[t["source"] == "manifest"]).all()
    assert (stu["study"].to_numpy() == m["study"].to_numpy()[stu["key_row"]]).all()
    assert (stu["key_study"] == stu["study"]).all()
    assert (pat["key_study"].to_numpy() == m["study"].to_numpy()[pat["key_row"]]).all()
    assert (lat.loc[lat["key_row"] == 6, "key_view"] == "lateral").all()
    assert candidates(pat, 7) == {("manifest", 7)}          # one-image patient falls back


def test_image_pairs_are_the_image_itself_and_modes_are_checked():
    m, rows = toy_manifest()
    t = pairs.candidate_table(m, rows, "image")
    assert (t["key_row"] == t["row"]).all() and len(t) == len(rows)
    with pytest.raises(ValueError, match="positive_pairs must be one of"):
        pairs.candidate_table(m, rows, "same_day")
    with pytest.raises(ValueError, match="pair_laterals"):
        pairs.parse_pairing("image+laterals")
    assert pairs.parse_pairing("same_study+laterals") == ("same_study", True)
    assert pairs.pairing_name("same_patient", False) == "same_patient"
    with pytest.raises(ValueError, match="patient pairing needs"):
        pairs.candidate_table(m.drop(columns="study"), rows, "same_study")


def test_extra_laterals_only_from_training_patients():
    m, rows = toy_manifest()
    lat = pd.DataFrame({"patient": ["p0", "p3", "p9"], "study": ["p0/s1", "p3/s0", "p9/s0"],
                        "view": "lateral"})
    t = pairs.candidate_table(m, rows, "same_study", pair_laterals=True, laterals=lat)
    assert candidates(t, 3) == {("lateral", 0)}             # p0/s1 now has its lateral
    assert set(t.loc[t["source"] == "lateral", "key_row"]) == {0}   # p3 (val), p9 (unknown): never
    no_lat = pairs.candidate_table(m, rows, "same_study", pair_laterals=False, laterals=lat)
    assert (no_lat["source"] == "manifest").all()


def sampler(mode="same_patient", laterals=False, size=8):
    m, rows = toy_manifest()
    images = np.stack([np.full((size, size), 10 * i, np.uint8) for i in range(len(m))])
    lat = pd.DataFrame({"patient": ["p0"], "study": ["p0/s1"], "view": "lateral"})
    lat_images = np.full((1, size, size), 255, np.uint8)
    t = pairs.candidate_table(m, rows, mode, laterals, lat if laterals else None)
    return pairs.PairSampler(mode, laterals, t, images, lat_images if laterals else None), rows


def test_keys_are_seeded_pure_functions_of_seed_step_and_row():
    s, rows = sampler()
    a = s.keys(rows, seed=0, step=5)
    assert np.array_equal(a, s.keys(rows, seed=0, step=5))
    assert np.array_equal(a[[0, 3]], s.keys(rows[[0, 3]], seed=0, step=5))  # batch-independent
    draws = np.stack([s.keys(rows, seed=0, step=k) for k in range(200)])
    assert not (draws == draws[0]).all()                    # steps differ
    assert set(draws[:, 0]) == {1, 2, 3}                    # every candidate gets drawn
    assert (draws[:, list(rows).index(7)] == 7).all()        # fallback
    other = np.stack([s.keys(rows, seed=1, step=k) for k in range(200)])
    assert not np.array_equal(draws, other)
    with pytest.raises(ValueError, match="outside the candidate table"):
        s.keys(np.array([8]), 0, 0)                          # a val row


def test_key_batch_is_aligned_with_the_sorted_query_batch_and_reads_laterals():
    s, _ = sampler("same_study", laterals=True)
    q = np.array([4, 3, 0])
    xk = s.key_batch(q, seed=0, step=0)
    keys = s.keys(np.sort(q), 0, 0)
    assert xk.dtype == torch.uint8 and xk.shape == (3, 8, 8)
    assert keys[1] == 10  # row 3's only candidate: lateral row 0, after the 10 manifest rows
    assert int(xk[1, 0, 0]) == 255 and int(xk[0, 0, 0]) == 10 * keys[0]


# ----------------------------------------------------------------------------- in pretrain


def pretrain_setup(n_pat: int = 8, per: int = 3, size: int = 32):
    """``n_pat`` patients x ``per`` images (two studies each), random images; all train."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n_pat * per, size, size), dtype=np.uint8)
    m = pd.DataFrame({"patient": np.repeat([f"p{i}" for i in range(n_pat)], per)})
    m["study"] = m["patient"] + "/s" + (np.arange(len(m)) % per == 0).astype(int).astype(str)
    m["view"] = "frontal"
    return images, m, np.arange(len(m))


def cfg(**kw) -> PretrainConfig:
    base = dict(backbone="resnet18", init="random", image_size=32, batch_size=8, epochs=2,
                queue_size=32, device="cpu", lr_drops=(), channels_last="off")
    return PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize("mode", ["image", "same_study", "same_patient"])
def test_pretrain_with_each_pairing_runs_and_resumes_identically(mode, tmp_path):
    images, m, rows = pretrain_setup()
    s = pairs.PairSampler(mode, False, pairs.candidate_table(m, rows, mode), images)
    c = cfg(positive_pairs=mode)
    full = pretrain(images, rows, c, tmp_path / "full", MEAN, STD, progress=False, pairs=s)
    assert full["step"] == 6
    part = tmp_path / "part"
    pretrain(images, rows, cfg(positive_pairs=mode, max_steps=4), part, MEAN, STD,
             progress=False, pairs=s)
    res = pretrain(images, rows, c, part, MEAN, STD, progress=False, pairs=s)
    assert res["step"] == 6 and not res["cached"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["config"]["positive_pairs"] == mode
    if mode == "image":  # the image's own views: no table, nothing changed in the checkpoint
        assert a["pairs_sha1"] is None and not (part / "pairs.csv").exists()
        return
    saved = pd.read_csv(part / "pairs.csv")
    assert len(saved) == len(s.table) and (saved["key_row"] == s.table["key_row"]).all()
    assert a["pairs_sha1"] == s.sha1 == pairs.table_sha1(saved)


def test_pretrain_feeds_the_drawn_key_images_to_the_key_encoder(tmp_path, monkeypatch):
    images, m, rows = pretrain_setup()
    s = pairs.PairSampler("same_patient", False, pairs.candidate_table(m, rows, "same_patient"),
                          images)
    seen: list[torch.Tensor] = []
    real = augment.augment_batch
    monkeypatch.setattr(augment, "augment_batch",
                        lambda x, c, g: (seen.append(x.clone()), real(x, c, g))[1])
    pretrain(images, rows, cfg(positive_pairs="same_patient", max_steps=1), tmp_path,
             MEAN, STD, progress=False, pairs=s)
    q = np.sort(rows[epoch_order(len(rows), 0, 0)[:8]])
    assert torch.equal(seen[0], torch.from_numpy(images[q]))
    assert torch.equal(seen[1], torch.from_numpy(images[s.keys(q, 0, 0)]))
    assert (m["patient"].to_numpy()[s.keys(q, 0, 0)] == m["patient"].to_numpy()[q]).all()
    assert not torch.equal(seen[0], seen[1])


def test_pretrain_checks_the_sampler_against_config_and_checkpoint(tmp_path):
    images, m, rows = pretrain_setup()
    stu = pairs.PairSampler("same_study", False, pairs.candidate_table(m, rows, "same_study"),
                            images)
    with pytest.raises(ValueError, match="needs pairs="):
        pretrain(images, rows, cfg(positive_pairs="same_study"), tmp_path, MEAN, STD,
                 progress=False)
    with pytest.raises(ValueError, match="config asks for"):
        pretrain(images, rows, cfg(positive_pairs="same_patient"), tmp_path, MEAN, STD,
                 progress=False, pairs=stu)
    with pytest.raises(ValueError, match="cover exactly the training rows"):
        pretrain(images, rows[:16], cfg(positive_pairs="same_study"), tmp_path, MEAN, STD,
                 progress=False, pairs=stu)
    pretrain(images, rows, cfg(positive_pairs="same_study", max_steps=1), tmp_path, MEAN,
             STD, progress=False, pairs=stu)
    other = pairs.PairSampler("same_study", False,
                              pairs.candidate_table(m.assign(study=m["patient"]), rows, "same_study"),
                              images)
    with pytest.raises(ValueError, match="other positive pairs"):
        pretrain(images, rows, cfg(positive_pairs="same_study"), tmp_path, MEAN, STD,
                 progress=False, pairs=other)
    assert pairs.table_sha1(pd.read_csv(tmp_path / "pairs.csv")) == stu.sha1  # the run's own


# ----------------------------------------------------------------------------- on the phantoms


def test_sampler_for_a_phantom_dataset_adds_training_laterals_only(tmp_path):
    run_dir = tmp_path / "run"
    folder = notebook.chexpert_folder(run_dir, None, {"n_patients": 30, "n_valid_patients": 5,
                                                      "image_size": 48})
    ds = notebook.load_dataset(run_dir, "chexpert", folder, 32, {"fractions": [1.0], "draws": [1],
                                                                 "val_fraction": 0.2})
    assert pairs.sampler_for_dataset(run_dir, ds, folder, "image") is None
    s = pairs.sampler_for_dataset(run_dir, ds, folder, "same_study", True)
    train_rows, m = ds.prepared.rows("train"), ds.manifest
    assert np.array_equal(s.queries, train_rows) and (m["view"].iloc[train_rows] == "frontal").all()
    lat = pd.read_csv(run_dir / "manifests" / "chexpert_laterals.csv")
    assert len(lat) > 0 and (lat["view"] == "lateral").all()
    assert set(lat["patient"]) <= set(m["patient"].iloc[train_rows])
    assert not set(lat["patient"]) & set(m.loc[m["split"] != "train", "patient"])
    assert s.lateral_images.shape == (len(lat), 32, 32)
    t = s.table
    assert (t["source"] == "lateral").any()
    keys = t[t["source"] == "manifest"]["key_row"]
    assert (m["split"].to_numpy()[keys] == "train").all()
    on_lat = t[t["source"] == "lateral"]
    assert (on_lat["key_study"] == on_lat["study"]).all() and (on_lat["key_view"] == "lateral").all()
    assert (on_lat["key_study"].to_numpy() == lat["study"].to_numpy()[on_lat["key_row"]]).all()
    summary = pairs.table_summary(t)
    assert summary["n_rows"] == len(train_rows) and 0 < summary["share_paired"] <= 1


# ----------------------------------------------------------------------------- profiles


def test_pairs_profile_reuses_the_quick_settings():
    """The quick values are the notebooks' defaults; pairs overrides only what makes it compute
    and record the comparison."""
    prof = yaml.safe_load(paths.profile_path("pairs").read_text())
    assert list(prof["notebooks"]) == ["01_data", "07_positive_pairs"]
    own = prof["parameters"]
    assert set(own) == {"recorded", "pairings", "record"} and own["recorded"] is None
    assert own["record"]["csv"] == "book/recorded/positive_pairs.csv"
    assert "--profile pairs" in own["record"]["command"]
    quick_07 = load_profile("quick").run("07_positive_pairs")
    assert quick_07.parameters["recorded"] == own["record"]["csv"] and quick_07.deps == []


def test_command_line_pretraining_takes_positive_pairs_from_the_manifest(tmp_path):
    from mocoxr import torchrun_pretrain

    images, m, rows = pretrain_setup()
    np.save(tmp_path / "images.npy", images)
    m.assign(split="train").to_csv(tmp_path / "m.csv", index=False)
    args = ["--images", str(tmp_path / "images.npy"), "--out", str(tmp_path / "out"),
            "--no-progress", "--set", "positive_pairs=same_patient", "--set", "max_steps=1",
            "--set", "batch_size=8", "--set", "queue_size=32", "--set", "image_size=32",
            "--set", "init=random", "--set", "device=cpu"]
    with pytest.raises(ValueError, match="needs --manifest"):
        torchrun_pretrain.main(args)
    res = torchrun_pretrain.main(args + ["--manifest", str(tmp_path / "m.csv"), "--split", "train"])
    assert res["step"] == 1
    saved = pd.read_csv(tmp_path / "out" / "pairs.csv")
    assert (saved["patient"].to_numpy() == m["patient"].to_numpy()[saved["key_row"]]).all()


def test_chapter_pretrains_with_the_recipe_of_the_pretraining_chapter():
    """07 builds its PretrainConfig like 02 (same default dict): image-level pairs then land in
    02's finished folder, and a recipe change in 02 cannot silently leave 07 behind."""
    nb = paths.project_root() / "notebooks"
    p02 = notebook_parameters(nb / "02_pretrain.py")["pretrain"]
    p07 = notebook_parameters(nb / "07_positive_pairs.py")["pretrain"]
    assert p07 == p02
    assert not {"positive_pairs", "pair_laterals"} & set(p07)  # set per rule by the chapter
