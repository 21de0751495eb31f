"""Tests for mocoxr.notebook, what the notebooks call: datasets and pretraining folders that
survive moving the run folder, and the numbers glued into the prose."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mocoxr import notebook


def test_moving_a_run_folder_keeps_dataset_fingerprint_pretraining_folder_and_pointer(tmp_path: Path):
    from mocoxr.pretrain import PretrainConfig

    first = tmp_path / "first" / "run"
    folder = notebook.shenzhen_folder(first, None, {"n_images": 16, "image_size": 32})
    ds = notebook.load_dataset(first, "shenzhen", folder, 16, {"fractions": [1.0], "draws": [1]})
    assert ds.image_size == 16 and ds.images.shape[1:] == (16, 16)
    cfg = PretrainConfig(backbone="resnet18", init="random", image_size=16)
    out = notebook.pretrain_dir(first, cfg, ds)
    out.mkdir(parents=True)
    (out / "backbone.pt").write_bytes(b"weights")
    notebook.record_pretrained(first, "resnet18", out)

    moved = tmp_path / "second" / "run"
    shutil.move(first, moved)
    folder2 = notebook.shenzhen_folder(moved, None, {"n_images": 16, "image_size": 32})
    ds2 = notebook.load_dataset(moved, "shenzhen", folder2, 16, {"fractions": [1.0], "draws": [1]})
    assert ds2.fingerprint == ds.fingerprint  # content, not paths or times
    assert notebook.pretrain_dir(moved, cfg, ds2).name == out.name  # the finished pretraining is found
    assert notebook.run_paths(moved).moco_backbone("resnet18").read_bytes() == b"weights"
    other = notebook.load_dataset(moved, "shenzhen", folder2, 24, {"fractions": [1.0], "draws": [1]})
    assert other.fingerprint != ds.fingerprint


def test_missing_data_folder_and_unfinished_pretraining_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"CheXpert data folder .*nowhere \(data_dir\)"):
        notebook.chexpert_folder(tmp_path / "run", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"\(shenzhen_dir\)"):
        notebook.shenzhen_folder(tmp_path / "run", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="pretraining has not finished"):
        notebook.record_pretrained(tmp_path / "run", "resnet18", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="run notebooks/02_pretrain"):
        notebook.run_paths(tmp_path / "run").moco_backbone("resnet18")


# ----------------------------------------------------------------------------- glue


def _effect_tables(experiments: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deltas and mean AUC rows at two label fractions; ``experiments``: name -> offset."""
    deltas, summary = [], []
    for exp, off in experiments.items():
        for f, d in ((0.01, 0.1), (1.0, 0.02)):
            deltas.append(dict(experiment=exp, label_fraction=f, delta=d + off,
                               ci_low=d + off - 0.05, ci_high=d + off + 0.05))
            summary += [dict(experiment=exp, init="moco", label_fraction=f, auc=0.7 + d + off),
                        dict(experiment=exp, init="random", label_fraction=f, auc=0.7 + off)]
    return pd.DataFrame(deltas), pd.DataFrame(summary).sort_values(["init", "label_fraction"])


def test_glue_effect_glues_each_fraction_once(monkeypatch):
    glued: dict[str, object] = {}

    def fake_glue(name, value, display=False):
        assert name not in glued, f"{name} glued twice"
        glued[name] = value

    monkeypatch.setattr(notebook, "glue", fake_glue)
    deltas, summary = _effect_tables({"linear": 0.0})
    assert notebook.glue_effect(deltas, summary, "random") == {"small": 0.01, "large": 1.0}
    assert glued == pytest.approx({
        "frac_small": "1%", "delta_small": 0.1, "delta_small_lo": 0.05, "delta_small_hi": 0.15,
        "auc_moco_small": 0.8, "auc_base_small": 0.7,
        "frac_large": "100%", "delta_large": 0.02, "delta_large_lo": -0.03, "delta_large_hi": 0.07,
        "auc_moco_large": 0.72, "auc_base_large": 0.7, "baseline": "random"})

    glued.clear()
    deltas, summary = _effect_tables({"shenzhen_linear": 0.0, "shenzhen_finetune": 0.1})
    with pytest.raises(ValueError, match="name a prefix"):
        notebook.glue_effect(deltas, summary, "random")
    prefixes = {"shenzhen_linear": "lin_", "shenzhen_finetune": "ft_"}
    assert notebook.glue_effect(deltas, summary, "random", prefixes, ["small"]) == {"small": 0.01}
    assert set(glued) == {"frac_small", "baseline"} | {
        f"{p}{n}" for p in ("lin_", "ft_") for n in
        ("delta_small", "delta_small_lo", "delta_small_hi", "auc_moco_small", "auc_base_small")}
    assert glued["ft_delta_small"] == pytest.approx(0.2) and glued["lin_auc_base_small"] == 0.7


def test_glued_values_read_back_numbers_and_strings(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    for name, text in (("n", "3"), ("x", "0.25"), ("s", "'resnet18'"), ("odd", "<Figure>")):
        cell.outputs.append(nbformat.v4.new_output(
            "display_data", data={"application/papermill.record/text/plain": text},
            metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}}))
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert notebook.glued_values(tmp_path / "x.ipynb") == {"n": 3, "x": 0.25, "s": "resnet18",
                                                           "odd": "<Figure>"}
