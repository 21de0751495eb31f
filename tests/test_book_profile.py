"""Tests for mocoxr.book.profile: merging, dependencies, and errors that name the file and key
(stand-in notebooks, and the real notebooks' parameters read without executing them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from book_project import abcd_project, write_nb, write_profile

from mocoxr.book import paths
from mocoxr.book.ipynb import notebook_parameters
from mocoxr.book.profile import ProfileError, deep_merge, load_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return abcd_project(tmp_path)


def test_load_profile_merges_defaults_shared_and_run(project: Path):
    path = write_profile(project, """
        parameters: {size: 3, opts: {y: 5}, backbone: r50}
        notebooks:
          a: {}
          b:
            runs: [{}, {backbone: d121}, {backbone: vit, name: big one}]
          d:
            needs: [b]
            runs: [{backbone: d121}, {backbone: r50}]
    """)
    prof = load_profile(path, project / "notebooks")
    ids = [r.run_id for r in prof.runs]
    assert ids == ["a", "b", "b-d121", "b-big_one", "d", "d-r50"]
    a = prof.run("a")
    assert a.parameters == {"size": 3, "opts": {"x": 1, "y": 5}}  # dict merged key by key
    assert prof.run("b-d121").parameters == {"fail": False, "backbone": "d121"}
    assert prof.run("b").needs == ["a"]  # default: every notebook listed above
    assert prof.run("b").deps == ["a"]
    # d (backbone d121) depends only on the b runs whose own parameters agree with it
    assert prof.run("d").deps == ["b", "b-d121"]
    assert prof.run("d-r50").deps == ["b"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("notebooks: {a: {}}\nparamters: {size: 1}\n", ["'paramters'"]),
        ("notebooks: {zz: {}}\n", ["notebooks.zz", "zz.py"]),
        ("notebooks: {a: {runs: [{sise: 2}]}}\n", ["notebooks.a.runs[0]", "'sise'"]),
        ("parameters: {colour: red}\nnotebooks: {a: {}}\n", ["parameters.colour"]),
        ("parameters: {opts: {z: 1}}\nnotebooks: {a: {}}\n", ["parameters.opts.z"]),
        ("notebooks: {a: {runs: [{opts: {z: 1}}]}}\n", ["notebooks.a.runs[0].opts.z"]),
        ("notebooks: {a: {needs: [b]}, b: {}}\n", ["notebooks.a.needs", "'b'"]),
        ("notebooks: {a: {runs: {size: 2}}}\n", ["notebooks.a.runs"]),
        ("notebooks: {a: {rusn: []}}\n", ["'rusn'"]),
        ("parameters: {run_dir: x}\nnotebooks: {a: {}}\n", ["parameters.run_dir"]),
        ("notebooks: {a: {runs: [{run_dir: x}]}}\n", ["notebooks.a.runs[0]", "'run_dir'"]),
        ("requires: [size]\nparameters: {size: null}\nnotebooks: {a: {}}\n", ["requires", "'size'"]),
        ("notebooks: {b: {runs: [{}, {fail: true}, {fail: true}]}}\n", ["repeats run"]),
        ("notebooks: {b: {runs: [{}, {}]}}\n", ["notebooks.b.runs[1]", "`name`"]),
        ("notebooks: [a, b]\n", ["'notebooks'"]),
        ("notebooks: {a: {}\n", ["not valid YAML"]),
    ],
)
def test_bad_profile_names_file_and_key(project: Path, text: str, words: list[str]):
    path = write_profile(project, text, "bad.yaml")
    with pytest.raises(ProfileError) as exc:
        load_profile(path, project / "notebooks")
    msg = str(exc.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg


def test_needed_run_without_matching_upstream_is_refused(project: Path):
    nbs = project / "notebooks"
    write_nb(nbs / "pre.py", 'run_dir = "."\nbackbone = "r18"', 'pass')
    write_nb(nbs / "probe.py", 'run_dir = "."\nbackbone = "r18"', 'pass')
    profile = write_profile(project, """
        notebooks:
          pre: {runs: [{backbone: r19}]}
          probe: {needs: [pre]}
    """)
    with pytest.raises(ProfileError) as err:
        load_profile(profile, nbs)
    assert "probe needs pre" in str(err.value) and "'backbone': 'r18'" in str(err.value)


def test_unknown_profile_name_lists_packaged_ones():
    with pytest.raises(FileNotFoundError, match="quick"):
        paths.profile_path("no-such-profile")


def test_deep_merge_does_not_alias():
    base = {"a": {"b": [1]}, "c": 1}
    out = deep_merge(base, {"a": {"d": 2}})
    out["a"]["b"].append(2)
    assert base == {"a": {"b": [1]}, "c": 1} and out == {"a": {"b": [1, 2], "d": 2}, "c": 1}


# ----------------------------------------------------------------------------- packaged profiles


@pytest.mark.parametrize("name", ["tiny", "quick", "paper"])
def test_packaged_profiles_match_the_notebooks(name: str, tmp_path: Path):
    overrides = {"data_dir": str(tmp_path), "shenzhen_dir": str(tmp_path)} if name == "paper" else None
    prof = load_profile(name, ROOT / "notebooks", overrides)
    notebooks = [r.notebook for r in prof.runs]
    assert notebooks[0] == "01_data" and "06_results" in notebooks
    every = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))
    if name == "paper":  # the stability page needs a seeds batch (run --seeds) first
        every.remove("08_stability")
    assert sorted(set(notebooks)) == every
    results = [r for r in prof.runs if r.notebook == "06_results"]
    assert len(results) == 1 and set(results[0].deps) >= {
        r.run_id for r in prof.runs if r.notebook in ("03_linear_probe", "04_finetune", "05_shenzhen")
    }


def test_quick_profile_is_the_notebooks_own_defaults():
    """A reader who runs the notebooks by hand gets the numbers of `make book` (seed 0)."""
    prof = load_profile("quick", ROOT / "notebooks")
    for run in prof.runs:
        defaults = notebook_parameters(run.source)
        defaults.pop("run_dir")
        assert run.parameters == defaults, run.run_id
    assert load_profile("quick").parameters == {}


def test_a_run_may_not_change_the_shared_data_settings(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: {}\nnotebooks:\n  01_data: {}\n  03_linear_probe:\n"
                   "    runs: [{phantom: {n_patients: 10}}]\n")
    with pytest.raises(ProfileError, match="phantom.*every notebook"):
        load_profile(bad, ROOT / "notebooks")


def test_paper_profile_requires_data_folders():
    with pytest.raises(ProfileError, match="requires parameter 'data_dir'.*--data-dir"):
        load_profile("paper", ROOT / "notebooks")


def test_paper_profile_runs_both_backbones(tmp_path: Path):
    prof = load_profile("paper", ROOT / "notebooks",
                        {"data_dir": str(tmp_path), "shenzhen_dir": str(tmp_path)})
    ids = [r.run_id for r in prof.runs]
    assert "03_linear_probe-densenet121" in ids and "02_pretrain-densenet121" in ids
    assert prof.run("03_linear_probe-densenet121").deps == ["02_pretrain-densenet121"]
    assert prof.parameters["image_size"] == 320


@pytest.mark.parametrize("name", ["tiny", "quick", "paper", "pairs"])
def test_a_shenzhen_error_stops_only_the_shenzhen_chapters(tmp_path: Path, name: str):
    """No CheXpert step (it prepares its own data) needs, even through others, a step that reads
    the Shenzhen data: a bad Shenzhen folder in 01_data stops 05_shenzhen (and the results page
    that shows it), not the pretraining, probes, fine-tuning or positive pairs."""
    from mocoxr import keys

    prof = load_profile(name, ROOT / "notebooks",
                        {"data_dir": str(tmp_path), "shenzhen_dir": str(tmp_path)})
    reads_shenzhen = {r.run_id for r in prof.runs if set(keys.DATASETS["shenzhen"]) & set(r.parameters)}

    def upstream(run_id: str) -> set[str]:
        deps = set(prof.run(run_id).deps)
        return deps.union(*(upstream(d) for d in deps)) if deps else set()

    chexpert_steps = [r.run_id for r in prof.runs if "chexpert" in r.parameters and r.run_id not in reads_shenzhen]
    assert chexpert_steps
    for run_id in chexpert_steps:
        assert not upstream(run_id) & reads_shenzhen, (run_id, upstream(run_id) & reads_shenzhen)


# ----------------------------------------------------------------------------- profile values


@pytest.mark.parametrize("setting,key,expected", [
    ("image_size: abc", "parameters.image_size = 'abc'", "an integer >= 8"),
    ("chexpert: {uncertain_policy: maybe}", "parameters.chexpert.uncertain_policy = 'maybe'",
     "one of ['ones', 'zeros', 'ignore']"),
    ("chexpert: {val_fraction: 0}", "parameters.chexpert.val_fraction = 0", "a number > 0 and < 1"),
    ("chexpert: {fractions: '0.1'}", "parameters.chexpert.fractions = '0.1'", "a list"),
    ("chexpert: {fractions: [0.5, 1.0], draws: [1]}", "parameters.chexpert.draws = [1]",
     "as many entries as chexpert.fractions (2)"),
    ("device: gpu", "parameters.device = 'gpu'", "'cpu', 'cuda'"),
    ("pretrain: {momentum: 1.5}", "parameters.pretrain.momentum = 1.5", "< 1"),
    ("backbone: resnet19", "parameters.backbone = 'resnet19'", "one of ['resnet18'"),
])
def test_profile_values_are_checked_at_load(tmp_path: Path, setting: str, key: str, expected: str):
    path = tmp_path / "bad.yaml"
    path.write_text(f"parameters:\n  {setting}\nnotebooks: {{01_data: {{}}, 02_pretrain: {{}}}}\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path, ROOT / "notebooks")
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: expected") and expected in msg, msg


def test_a_run_override_is_named_where_it_was_set(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("notebooks:\n  02_pretrain: {runs: [{}, {backbone: resnet19}]}\n")
    with pytest.raises(ProfileError, match=r"notebooks\.02_pretrain\.runs\[1\]\.backbone = 'resnet19'"):
        load_profile(path, ROOT / "notebooks")
