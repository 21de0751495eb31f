"""Rows of one configuration: what keeps ``results.csv`` and ``deltas.csv`` from mixing runs.

Every row carries the run that wrote it and that run's key (``evaluate.PROVENANCE_COLUMNS``;
the runner gives the kernel both through the environment, see :func:`run_environment`). A row
is *current* when its run is in the profile and its key is that run's key now; any other row
(a run the profile no longer has, a retrained backbone, other data, other code, a row written
outside the runner) is from another configuration. ``run`` moves those rows to
``<run_dir>/archived/<table>`` before the first step, saying so; ``status`` counts them;
``build`` publishes only current rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from mocoxr import evaluate, store

TABLES = ("results.csv", "deltas.csv")
ARCHIVE = "archived"


def run_environment(run_id: str, key: str) -> dict[str, str]:
    """The environment variables that tag the rows a run writes (``evaluate.provenance``)."""
    return {evaluate.PROVENANCE_ENV["run"]: run_id, evaluate.PROVENANCE_ENV["run_key"]: key}


def current_mask(table, key_of: Mapping[str, str]):
    """Boolean Series: which rows of ``table`` were written by a run of ``key_of`` with its
    current key (all False when the table has no provenance columns)."""
    import pandas as pd

    if not set(evaluate.PROVENANCE_COLUMNS) <= set(table.columns):
        return pd.Series(False, index=table.index)
    run = table["run"].fillna("").astype(str)
    key = table["run_key"].fillna("").astype(str)
    return pd.Series([key_of.get(r) == k for r, k in zip(run, key)], index=table.index, dtype=bool)


def _read(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def foreign_rows(run_dir: Path, key_of: Mapping[str, str]) -> dict[str, tuple[int, list[str]]]:
    """``{table: (rows of another configuration, the runs that wrote them)}`` for each table of
    ``run_dir`` that has such rows."""
    out = {}
    for name in TABLES:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        table = _read(path)
        old = table[~current_mask(table, key_of)]
        if len(old):
            runs = (sorted({str(r) if isinstance(r, str) and r else "outside the runner"
                            for r in old["run"]}) if "run" in old else ["an older version"])
            out[name] = (len(old), runs)
    return out


def describe(name: str, count: int, runs: list[str]) -> str:
    """One line about the rows of another configuration in table ``name``."""
    return (f"{name}: {count} row(s) of another configuration (written by {', '.join(runs)}: "
            "a run no longer in the profile, or its parameters, data, code or upstream changed)")


def archive_foreign(run_dir: Path, key_of: Mapping[str, str], echo=print) -> int:
    """Move the rows of another configuration of each table to ``<run_dir>/archived/<table>``
    (appended), printing one line per table; returns how many rows moved."""
    import pandas as pd

    moved = 0
    for name, (count, runs) in foreign_rows(run_dir, key_of).items():
        path = Path(run_dir) / name
        with store.file_lock(path):
            table = _read(path)
            keep = current_mask(table, key_of)
            archive = Path(run_dir) / ARCHIVE / name
            old = _read(archive) if archive.is_file() else pd.DataFrame()
            both = pd.concat([old, table[~keep]], ignore_index=True)
            store.atomic_write(archive, lambda fh: both.to_csv(fh, index=False), mode="w")
            kept = table[keep].reindex(columns=_columns(name, table))
            store.atomic_write(path, lambda fh: kept.to_csv(fh, index=False), mode="w")
        echo(describe(name, count, runs) + f"; moved to {ARCHIVE}/{name}")
        moved += count
    return moved


def _columns(name: str, table) -> list[str]:
    """The columns a table keeps: the current ones for the known tables."""
    known = {"results.csv": evaluate.RESULTS_COLUMNS, "deltas.csv": evaluate.DELTAS_COLUMNS}
    return list(known.get(name, table.columns))


def write_current(src: Path, dest: Path, key_of: Mapping[str, str]) -> None:
    """Write the current rows of the table at ``src`` to ``dest`` (byte for byte when every
    row is current)."""
    import shutil

    table = _read(src)
    keep = current_mask(table, key_of)
    if len(table) and keep.all():
        shutil.copy2(src, dest)
        return
    kept = table[keep].reindex(columns=_columns(Path(src).name, table))
    store.atomic_write(dest, lambda fh: kept.to_csv(fh, index=False), mode="w")
