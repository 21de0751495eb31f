"""The explorers in a live kernel, on the tiny run (the session fixture ``tiny``): a small
notebook calls each explorer as the chapters do, then sets one of its controls from the same
kernel; the figure must change, and the change must reach the client (nbclient) through the
widget's state, as it reaches JupyterLab."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

SETUP = """
import hashlib, json
from mocoxr import explore, notebook
import nbformat
p = nbformat.read({nb!r}, as_version=4).metadata["mocoxr"]["parameters"]
run_dir, image_size, seed = p["run_dir"], p["image_size"], p["seed"]
folder = notebook.chexpert_folder(run_dir, None, p["phantom"], seed=seed)
ds = notebook.load_dataset(run_dir, "chexpert", folder, image_size, p["chexpert"], seed=seed)
from mocoxr.pretrain import PretrainConfig
cfg = PretrainConfig(backbone=p["backbone"], image_size=image_size, seed=seed, **p["pretrain"])

def digest(e):
    out = e.output.outputs[0]
    assert out["output_type"] == "display_data", out
    return hashlib.sha1(out["data"]["image/png"].encode()).hexdigest()
"""

# (explorer call, the control set, its new value)
EXPLORERS = {
    "images": ("explore.images(ds)", "split", '"test"'),
    "augmentations": ("explore.augmentations(ds, cfg)", "rotation", "30.0"),
    "linear": ('explore.models(ds, run_dir, "linear", p["backbone"])', "init", '"random"'),
    "finetune": ('explore.models(ds, run_dir, "finetune", p["backbone"], folder)', "image", "1"),
}


def explorer_notebook(executed_02: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    cells = [SETUP.format(nb=str(executed_02))]
    for name, (call, control, value) in EXPLORERS.items():
        cells += [f"ex_{name} = {call}\nex_{name}",
                  f"print(json.dumps({{'name': {name!r}, 'before': digest(ex_{name}), "
                  f"'model': ex_{name}.output.model_id}}))",
                  f"ex_{name}.controls[{control!r}].value = {value}\n"
                  f"print(json.dumps({{'name': {name!r}, 'after': digest(ex_{name})}}))"]
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    return nb


def printed(nb: nbformat.NotebookNode) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o["name"] == "stdout":
                for line in o["text"].splitlines():
                    d = json.loads(line)
                    out.setdefault(d.pop("name"), {}).update(d)
    return out


def synced_png(nb: nbformat.NotebookNode, model_id: str) -> str:
    """The figure the client holds for an Output widget (from the widget state it received)."""
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    (out,) = state[model_id]["state"]["outputs"]
    return hashlib.sha1(out["data"]["image/png"].encode()).hexdigest()


def check_live(run_dir: Path) -> None:
    """Run the explorer notebook on a finished tiny run folder and check each explorer."""
    nb = explorer_notebook(run_dir / "executed" / "02_pretrain.ipynb")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(run_dir)}}).execute()
    seen = printed(nb)
    assert set(seen) == set(EXPLORERS), seen
    for i, name in enumerate(EXPLORERS):
        shown = nb.cells[1 + 3 * i].outputs
        assert len(shown) == 1, (name, shown)
        bundle = shown[0]["data"]
        assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
        before, after = seen[name]["before"], seen[name]["after"]
        assert before != after, f"{name}: the figure did not change"
        assert hashlib.sha1(bundle["image/png"].encode()).hexdigest() == before  # static copy
        assert synced_png(nb, seen[name]["model"]) == after, name  # the client got the change


def test_each_explorer_responds_to_its_controls_in_a_kernel(tiny):
    run_dir, outcomes, _, log = tiny
    assert {o.status for o in outcomes.values()} == {"ran"}, log
    check_live(run_dir)
