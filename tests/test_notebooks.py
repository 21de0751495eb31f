"""Every notebook executed under papermill with the `tiny` profile, through the same runner as
`make book`, then the site built from that run. The assertions read what the notebooks recorded:
the glue values in the executed notebooks, results.csv / deltas.csv, and the built HTML.

The session fixture ``tiny`` (tests/conftest.py) runs the profile and builds the site once (a few
minutes on 2 cores); tests/test_site_browser.py opens the same site in Chromium.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mocoxr import evaluate, notebook, tables
from mocoxr.book import paths, runner
from mocoxr.book.ipynb import notebook_errors
from mocoxr.book.profile import load_profile

pytestmark = pytest.mark.slow

EXPERIMENTS = {"linear", "finetune", "shenzhen_linear", "shenzhen_finetune"}


def glued(run_dir: Path, run_id: str) -> dict:
    return notebook.glued_values(run_dir / "executed" / f"{run_id}.ipynb")


def test_every_notebook_ran_without_error(tiny):
    run_dir, outcomes, _, log = tiny
    prof = load_profile("tiny")
    assert [r.run_id for r in prof.runs] == list(outcomes)
    assert {o.status for o in outcomes.values()} == {"ran"}, log
    for run_id in outcomes:
        nb = run_dir / "executed" / f"{run_id}.ipynb"
        assert nb.is_file() and notebook_errors(nb) == []
        assert (run_dir / "stamps" / f"{run_id}.json").is_file()


def test_rerun_skips_everything(tiny, monkeypatch):
    run_dir = tiny[0]
    monkeypatch.setattr(runner, "code_hash", lambda: "pinned")  # as when the fixture ran
    outcomes = runner.run_profile("tiny", run_dir, progress=False, echo=lambda *a: None)
    assert {o.status for o in outcomes} == {"up to date"}


def test_data_notebook_records_splits_and_policy(tiny):
    run_dir = tiny[0]
    g = glued(run_dir, "01_data")
    assert g["policy"] == "ones"
    for split in ("train", "val", "test"):
        assert g[f"n_{split}"] > 0 and g[f"patients_{split}"] > 0
    assert 0 < g["prevalence_test"] < 1
    # the ones policy turns uncertain labels positive, zeros negative
    assert g["n_uncertain"] == 0 or g["prevalence_ones"] > g["prevalence_zeros"]
    assert g["prevalence_chosen"] == pytest.approx(g["prevalence_ones"])
    manifest = pd.read_csv(run_dir / "manifests" / "chexpert.csv")
    assert (manifest["split"] == "test").sum() == g["n_test"]
    assert g["sz_n"] == len(pd.read_csv(run_dir / "manifests" / "shenzhen.csv"))


def test_pretrain_notebook_records_loss_and_exports_torchvision_weights(tiny):
    import torch
    import torchvision

    run_dir = tiny[0]
    g = glued(run_dir, "02_pretrain")
    assert g["steps"] == 3  # tiny: max_steps 3
    assert np.isfinite(g["loss_first"]) and np.isfinite(g["loss_last"]) and g["loss_first"] > 0
    exported = paths.run_paths(run_dir).moco_backbone("resnet18")
    torchvision.models.resnet18().load_state_dict(torch.load(exported, weights_only=True))
    log = pd.read_csv(exported.parent / "loss_log.csv")
    assert log["step"].max() == 3 and {"knn_auc", "linear_auc"} <= set(log)
    for name in ("knn", "linear"):  # the prose's monitor figures are the log's first and last
        curve = log[f"{name}_auc"].dropna()
        assert len(curve) >= 2, log
        assert g[f"{name}_first"] == pytest.approx(curve.iloc[0])
        assert g[f"{name}_last"] == pytest.approx(curve.iloc[-1])


def test_results_table(tiny):
    run_dir = tiny[0]
    res = pd.read_csv(run_dir / "results.csv")
    assert list(res.columns) == evaluate.RESULTS_COLUMNS
    assert set(res["experiment"]) == EXPERIMENTS
    assert set(res["init"]) == {"moco", "random"} and set(res["backbone"]) == {"resnet18"}
    # tiny: CheXpert fractions 0.1 (2 draws) and 1.0; linear uses both draws, fine-tuning one;
    # each (experiment, init, fraction) also has its draw-averaged row (draw -1)
    per_init = {"linear": 3 + 2, "finetune": 2 + 2, "shenzhen_linear": 3 + 2, "shenzhen_finetune": 2 + 2}
    counts = res.groupby(["experiment", "init"]).size()
    for exp, n in per_init.items():
        assert counts[exp, "moco"] == counts[exp, "random"] == n, counts
    assert (res["ci_low"] <= res["ci_high"]).all()
    inside = (res["ci_low"] - 1e-9 <= res["auc"]) & (res["auc"] <= res["ci_high"] + 1e-9)
    assert inside.mean() >= 0.9, res[~inside]  # a percentile CI can miss its point on ~20 images
    assert not res.duplicated(evaluate.RESULTS_KEY).any()
    chex_test = int(glued(run_dir, "01_data")["n_test"])
    assert (res.loc[~res["experiment"].str.startswith("shenzhen"), "n_test"] == chex_test).all()
    full = res[(res["label_fraction"] == 1.0) & (res["experiment"] == "linear")]
    small = res[(res["label_fraction"] == 0.1) & (res["experiment"] == "linear")]
    assert full["n_train"].min() > small["n_train"].max()


def test_deltas_table_and_the_prose_numbers_come_from_it(tiny):
    run_dir = tiny[0]
    d = pd.read_csv(run_dir / "deltas.csv")
    assert list(d.columns) == evaluate.DELTAS_COLUMNS
    assert len(d) == 8 and set(d["experiment"]) == EXPERIMENTS
    assert set(d["comparison"]) == {"moco - random"}
    assert ((d["ci_low"] <= d["delta"] + 1e-9) & (d["delta"] <= d["ci_high"] + 1e-9)).mean() >= 0.9
    for run_id, exp in (("03_linear_probe", "linear"), ("04_finetune", "finetune")):
        g = glued(run_dir, run_id)
        row = d[(d["experiment"] == exp) & np.isclose(d["label_fraction"], 0.1)].iloc[0]
        assert g["frac_small"] == "10%" and g["frac_large"] == "100%"
        assert g["delta_small"] == pytest.approx(row["delta"])
        assert g["delta_small_lo"] == pytest.approx(row["ci_low"])
        res = pd.read_csv(run_dir / "results.csv")
        mean = res[(res["experiment"] == exp) & (res["draw"] == -1) & (res["init"] == "moco")
                   & np.isclose(res["label_fraction"], 0.1)]
        assert g["auc_moco_small"] == pytest.approx(mean["auc"].iloc[0])
    sz = glued(run_dir, "05_shenzhen")
    row = d[(d["experiment"] == "shenzhen_linear") & np.isclose(d["label_fraction"], 0.25)].iloc[0]
    assert sz["lin_delta_small"] == pytest.approx(row["delta"])


def test_finetune_notebook_runs_the_saliency_section(tiny):
    run_dir, _, index, _ = tiny
    g = glued(run_dir, "04_finetune")
    assert g["cam_layer"] == "layer1" and g["cam_grid"] == "8 × 8"  # 32 px: layer4 is 1 x 1
    assert g["cam_frac"] == "100%" and g["cf_frac_small"] == "10%" and g["occ_patch"] == 4
    assert g["cam_n"] >= 1 and 0 < g["cam_area"] < 1
    for name in ("cam_hit", "cam_share", "occ_hit", "occ_share"):
        for tag in ("moco", "base"):
            assert 0 <= g[f"{name}_{tag}"] <= 1, name
    for name in ("drop", "logit", "restored"):
        for tag in ("moco_small", "moco_large", "base_small", "base_large"):
            v, lo, hi = (g[f"cf_{name}_{tag}{s}"] for s in ("", "_lo", "_hi"))
            assert lo - 1e-9 <= v <= hi + 1e-9, (name, tag)
    assert -1 <= g["cf_drop_moco_large"] <= 1 and g["san_images"] >= 1
    for name in ("san_cam_top", "san_cam_all", "san_occ_top", "san_occ_all"):
        assert -1 <= g[name] <= 1, name
    page = (index.parent / "book" / "executed" / "04_finetune.html").read_text()
    parser = _Tables()
    parser.feed(page)
    assert any("drop in P [95% CI]" in t["headers"] for t in parser.tables)
    assert any("uniform_share" in t["headers"] for t in parser.tables)
    assert "Sanity check" in page  # AUC, differences, ROC, maps, sanity check, reliability:
    assert len([src for src in parser.images if src.endswith(".png")]) >= 6


def test_results_notebook_compares_with_the_paper(tiny):
    run_dir = tiny[0]
    g = glued(run_dir, "06_results")
    verdicts = tables.findings(pd.read_csv(run_dir / "deltas.csv"), tables.paper_results())
    assert g["n_findings"] == len(verdicts) == 3
    assert g["n_findings_reproduced"] == (verdicts["holds"] == "yes").sum()
    assert g["paper_lin_small"] == pytest.approx(0.776 - 0.683)  # packaged paper figures, ResNet18
    assert "not CheXpert" in g["data_source"]


class _Tables(HTMLParser):
    """Collect tables (class, header cells, row count) and images of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "headers": [], "rows": 0})
        elif tag == "th" and self.tables:
            self._cell = []
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"] += 1
        elif tag == "img":
            self.images.append(a.get("src", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "th" and self._cell is not None:
            self.tables[-1]["headers"].append("".join(self._cell).strip())
            self._cell = None


def test_site_builds_with_results_page_table_and_figures(tiny):
    run_dir, _, index, _ = tiny
    html_dir = index.parent
    assert index.is_file()
    for name in ("results.csv", "deltas.csv"):  # the tables beside the site
        assert (html_dir / name).read_bytes() == (run_dir / name).read_bytes()
    log = (html_dir.parent / "source" / "build.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)

    page = html_dir / "book" / "executed" / "06_results.html"
    text = page.read_text()
    parser = _Tables()
    parser.feed(text)
    comparison = [t for t in parser.tables if "comparison-table" in t["class"]]
    assert len(comparison) == 1
    assert {"ours: MoCo", "ours: random", "ours: difference", "paper: MoCo", "paper: ImageNet"} <= set(
        comparison[0]["headers"])
    assert comparison[0]["rows"] == 1 + 4  # header + (linear, finetune) x (10%, 100%)
    figures = [src for src in parser.images if src.endswith(".png")]
    assert len(figures) >= 2  # AUC against label fraction, and the differences
    for src in figures:
        assert (page.parent / src).resolve().is_file()
    assert "not CheXpert" in text
    # glue pasted the computed numbers into the prose; the defaults cell is gone, the injected one hidden
    assert 'class="pasted-text"' in text
    assert "../runs/interactive" not in text
    shown = html.unescape(re.sub(r"<[^>]+>", "", text))
    assert "tag_hide-input" in text and "run_dir = '<run_dir>'" in shown  # relative, not absolute
    assert str(run_dir) not in text
    for nb in ("01_data", "02_pretrain", "03_linear_probe", "04_finetune", "05_shenzhen"):
        p = html_dir / "book" / "executed" / f"{nb}.html"
        assert p.is_file() and "<img" in p.read_text(), nb
    assert (html_dir / "book" / "methods.html").is_file() and (html_dir / "book" / "usage.html").is_file()


def test_stability_page_reads_the_pooled_seeds(tiny):
    run_dir = tiny[0]
    g = glued(run_dir, "08_stability")
    recorded = paths.project_root() / "book" / "recorded" / "seeds-quick"
    per_seed = pd.read_csv(recorded / "per_seed.csv")
    assert g["n_seeds"] == per_seed["seed"].nunique() >= 2
    assert g["pooled_source"].startswith("the recorded batch")  # no seeds batch in the tiny run
    assert 0 <= g["n_lin_small_above"] <= g["n_lin_small"]


def test_positive_pairs_notebook_pretrains_each_rule_and_glues_the_comparison(tiny):
    import torch

    from mocoxr import pairs, pairs_study

    run_dir, _, index, _ = tiny
    g = glued(run_dir, "07_positive_pairs")
    table = pd.read_csv(run_dir / "positive_pairs" / "comparison.csv")
    assert list(dict.fromkeys(table["pairing"])) == ["image", "same_study+laterals", "same_patient"]
    assert (g["p1_name"], g["p2_name"]) == ("same_study+laterals", "same_patient")
    assert g["frac_small"] == "10%" and g["frac_large"] == "100%"
    assert "computed by this run" in g["source_note"]
    for i, name in ((1, "same_study+laterals"), (2, "same_patient")):
        row = table[(table["pairing"] == name) & np.isclose(table["label_fraction"], 0.1)].iloc[0]
        assert g[f"p{i}_delta_small"] == pytest.approx(row["delta"])
        assert g[f"p{i}_delta_small_lo"] == pytest.approx(row["delta_low"])
        assert g[f"p{i}_delta_small_lo"] <= g[f"p{i}_delta_small"] + 1e-9 <= g[f"p{i}_delta_small_hi"] + 2e-9
        assert g[f"p{i}_verdict"] == pairs_study.verdict(table, name)
        assert 0 < g[f"p{i}_share"] <= 100
    assert g["n_lateral_keys"] > 0
    image = table[(table["pairing"] == "image") & np.isclose(table["label_fraction"], 1.0)]
    assert g["auc_image_large"] == pytest.approx(image["auc"].iloc[0])
    # each patient-aware rule was really pretrained (tiny: 3 steps) with its saved pair table
    folders = [p for p in (run_dir / "checkpoints").glob("moco_resnet18_*") if (p / "pairs.csv").is_file()]
    modes = set()
    for p in folders:
        ckpt = torch.load(p / "checkpoint.pt", weights_only=True)
        assert ckpt["step"] == 3 and ckpt["pairs_sha1"] == pairs.table_sha1(pd.read_csv(p / "pairs.csv"))
        modes.add((ckpt["config"]["positive_pairs"], ckpt["config"]["pair_laterals"]))
    assert modes == {("same_study", True), ("same_patient", False)}
    page = index.parent / "book" / "executed" / "07_positive_pairs.html"
    assert "<img" in page.read_text() and "patient-aware positive pairs" in page.read_text()
