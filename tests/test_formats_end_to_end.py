"""The tiny profile on a phantom folder of every new format, through the runner that
``python -m mocoxr.book run --profile tiny --data-dir D --transfer-dir T`` calls: NIH (nested
images, official lists) with Montgomery through data, pretraining, linear probe and transfer;
labels CSVs (DICOM MONOCHROME1 + MONOCHROME2, PNG) and NIH (flat) with a JPEG labels CSV
(the DICOM one through pretraining too; the later notebooks read only the manifest and the
image cache, so these stop there to keep the suite short).
CheXpert and Shenzhen run in tests/test_notebooks.py. And the command line's detection."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mocoxr import notebook, phantom
from mocoxr.book import __main__ as book_cli
from mocoxr.book import runner
from mocoxr.book.ipynb import notebook_errors

pytestmark = pytest.mark.slow
SMALL = {"image_size": 32}


def _run(tmp_path: Path, data: Path, transfer: Path, notebooks: set[str]) -> Path:
    run_dir, log = tmp_path / "run", []
    outcomes = runner.run_profile(
        "tiny", run_dir, {"data_dir": str(data), "shenzhen_dir": str(transfer)}, progress=False,
        echo=log.append, select=lambda r: r.notebook in notebooks)
    assert {o.run_id for o in outcomes} == notebooks and {o.status for o in outcomes} == {"ran"}, \
        "\n".join(log)
    for o in outcomes:
        assert notebook_errors(run_dir / "executed" / f"{o.run_id}.ipynb") == []
    return run_dir


def _manifest(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / "manifests" / f"{name}.csv", dtype={"patient": str})


def test_nih_and_montgomery_through_pretraining_probe_and_transfer(tmp_path: Path):
    nih = phantom.generate_nih_tree(tmp_path / "nih", n_patients=40, seed=2, **SMALL)
    mc = phantom.generate_montgomery_tree(tmp_path / "mc", n_images=40, **SMALL)
    run_dir = _run(tmp_path, nih, mc, {"01_data", "02_pretrain", "03_linear_probe", "05_shenzhen"})
    m = _manifest(run_dir, "chexpert")
    test_names = set((nih / "test_list.txt").read_text().split())
    assert set(m.loc[m.split == "test", "path"].map(lambda p: Path(p).name)) == test_names
    assert _manifest(run_dir, "shenzhen")["path"].str.contains("MCUCXR_").all()
    g = notebook.glued_values(run_dir / "executed" / "01_data.ipynb")
    assert g["n_uncertain"] == 0 and g["sz_n"] == 40
    results = pd.read_csv(run_dir / "results.csv")
    assert {"linear", "shenzhen_linear"} <= set(results["experiment"])




@pytest.mark.parametrize("data,transfer,notebooks", [
    ({"kind": "labels", "image_format": "dicom", "photometric": "mixed"},
     {"kind": "labels", "image_format": "png", "with_patient": False},
     {"01_data", "02_pretrain"}),
    ({"kind": "nih", "nested": False, "official_lists": False},
     {"kind": "labels", "image_format": "jpeg"}, {"01_data"}),
])
def test_labels_csvs_and_flat_nih(tmp_path: Path, data: dict, transfer: dict, notebooks: set):
    def make(spec: dict, name: str, seed: int) -> Path:
        opts = {k: v for k, v in spec.items() if k != "kind"}
        if spec["kind"] == "nih":
            return phantom.generate_nih_tree(tmp_path / name, n_patients=40, seed=seed, **SMALL, **opts)
        return phantom.generate_labels_tree(tmp_path / name, n_patients=40, seed=seed, **SMALL, **opts)

    run_dir = _run(tmp_path, make(data, "d", 3), make(transfer, "t", 4), notebooks)
    for name in ("chexpert", "shenzhen"):
        m = _manifest(run_dir, name)
        assert set(m["split"]) == {"train", "val", "test"}
        assert (m.groupby("patient")["split"].nunique() == 1).all()
    suffix = ".dcm" if data.get("image_format") == "dicom" else ".png"
    assert _manifest(run_dir, "chexpert")["path"].str.endswith(suffix).all()


def test_command_line_detects_formats_and_lists_what_it_looked_for(tmp_path: Path, capsys):
    args = book_cli.parser().parse_args(["status", "--profile", "tiny", "--shenzhen-dir", "x"])
    assert args.shenzhen_dir == "x"
    args = book_cli.parser().parse_args(["run", "--profile", "tiny", "--transfer-dir", "y"])
    assert args.shenzhen_dir == "y"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert book_cli.main(["status", "--profile", "tiny", "--run-dir", str(tmp_path / "r"),
                          "--transfer-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "--transfer-dir" in err and "CHNCXR_NNNN_L.png" in err and "MCUCXR_NNNN_L.png" in err
    assert "Traceback" not in err
    lab = phantom.generate_labels_tree(tmp_path / "lab", n_patients=4, **SMALL)
    assert book_cli._overrides(book_cli.parser().parse_args(
        ["status", "--data-dir", str(lab)])) == {"data_dir": str(lab.resolve())}
