"""Where things are: the project root, the packaged profiles, and the layout of a run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # mocoxr/
PROFILES_DIR = PACKAGE_DIR / "profiles"


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``_toc.yml`` and ``notebooks/``: the source checkout of this package,
    else the first such folder at or above ``start`` (default: the working directory)."""
    candidates = [PACKAGE_DIR.parent]
    here = Path(start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    for c in candidates:
        if (c / "_toc.yml").is_file() and (c / "notebooks").is_dir():
            return c
    raise FileNotFoundError(
        f"no project root (a folder with _toc.yml and notebooks/) at or above {here} "
        f"or at {PACKAGE_DIR.parent}"
    )


def profile_path(profile: str | Path) -> Path:
    """A packaged profile name (``quick``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"profile file {p} does not exist")
        return p.resolve()
    packaged = PROFILES_DIR / f"{profile}.yaml"
    if not packaged.is_file():
        names = sorted(q.stem for q in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile named {profile!r}; packaged profiles: {names}")
    return packaged


def profile_flag(path: Path) -> str:
    """How to name a profile on the command line: its name when packaged, else its path."""
    path = Path(path)
    return path.stem if path.parent.resolve() == PROFILES_DIR.resolve() else str(path)


def default_run_dir(profile_name: str, root: Path | None = None) -> Path:
    """``<project root>/runs/<profile>``."""
    return (root or project_root()) / "runs" / profile_name


def _below_root(name: str, doc: str) -> property:
    return property(lambda self: self.root / name, doc=doc)


@dataclass(frozen=True)
class RunPaths:
    """Layout of a run folder (see book/usage.md)."""

    root: Path

    executed = _below_root("executed", "the executed notebooks, one per run")
    stamps = _below_root("stamps", "one JSON stamp (key, parameters, seconds) per finished run")
    failed = _below_root("failed", "the partial notebook of each failed run")
    data = _below_root("data", "the generated embedded data (phantom trees)")
    manifests = _below_root("manifests", "prepared manifests, splits and label-fraction subsets")
    cache = _below_root("cache", "decoded image caches and feature caches")
    checkpoints = _below_root("checkpoints", "pretraining folders and their pointers")
    predictions = _below_root("predictions", "per-image test scores of every model")
    results = _below_root("results.csv", "the AUC table of every experiment")
    deltas = _below_root("deltas.csv", "the paired MoCo-minus-baseline differences")

    def executed_nb(self, run_id: str) -> Path:
        return self.executed / f"{run_id}.ipynb"

    def stamp(self, run_id: str) -> Path:
        return self.stamps / f"{run_id}.json"

    def failed_nb(self, run_id: str) -> Path:
        return self.failed / f"{run_id}.ipynb"

    def moco_backbone(self, backbone: str) -> Path:
        """The exported (plain torchvision) MoCo-pretrained backbone that 02_pretrain recorded
        last for ``backbone`` (see ``notebook.record_pretrained``); error if there is none."""
        pointer = self.checkpoints / f"moco_{backbone}.json"
        p = self.checkpoints / json.loads(pointer.read_text())["backbone"] if pointer.is_file() else None
        if p is None or not p.is_file():
            raise FileNotFoundError(
                f"no pretrained {backbone} recorded in {pointer}: run notebooks/02_pretrain with "
                f"backbone={backbone!r} and run_dir={str(self.root)!r} first"
            )
        return p


def run_paths(run_dir: str | Path) -> RunPaths:
    """The run folder's layout; creates the folder."""
    root = Path(run_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return RunPaths(root)
