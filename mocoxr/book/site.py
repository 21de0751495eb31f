"""The site: staging a profile's executed notebooks with the prose into ``<output>/_build/source/`` and
running ``jupyter-book build`` on it (notebooks are not re-executed).

:func:`stage_site` copies each executed notebook through :func:`stage_notebook`, which

- shows paths relative to the run folder: ``<run folder>/x`` becomes ``x``, the run folder
  itself its path relative to the project (``runs/quick``) or ``<run_dir>`` when it lies
  elsewhere, the project root disappears from paths under it, other absolute folders given as
  parameters (``data_dir``...) become ``<data_dir>``, the home folder ``~``;
- rewrites the injected-parameters cell within :data:`CODE_WIDTH` columns;
- drops progress-bar widget outputs and the widget state (the site would load the widget
  JavaScript from a CDN), and keeps an explorer's static figure without its widget view;

and marks the pages of stale runs (``build --allow-stale``). :func:`time_page` writes the
"where the time went" page from the executed notebooks' papermill metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
import pprint
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from mocoxr import store
from mocoxr.book import paths, rows
from mocoxr.book.paths import RunPaths
from mocoxr.book.profile import Profile
from mocoxr.book.runner import open_run, run_keys, stale_runs

CODE_WIDTH = 90
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
TIME_PAGE = "time"
BOOK_FILES = ("_config.yml", "_toc.yml")
SITE_CSVS = ("results.csv", "deltas.csv")
STALE_NOTE = (":::{{warning}}\nThis page is **stale**: its notebook, parameters, package code or an "
              "upstream step changed after it ran. Rerun `python -m mocoxr.book run --profile {name}` "
              "to update it.\n:::")


def path_replacements(run_dir: Path, root: Path,
                      parameters: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Ordered (absolute text, shown text) pairs: longest paths first."""
    run_dir, root = Path(run_dir).resolve(), Path(root).resolve()
    try:
        shown_run = str(run_dir.relative_to(root))
    except ValueError:
        shown_run = "<run_dir>"
    pairs = {str(run_dir): ("", shown_run)}  # absolute -> (prefix below it, itself)
    for name, value in (parameters or {}).items():
        if name != "run_dir" and isinstance(value, str) and os.path.isabs(value):
            pairs.setdefault(str(Path(value).resolve()), (f"<{name}>/", f"<{name}>"))
    pairs.setdefault(str(root), ("", "."))
    home = str(Path.home())
    if home not in ("/", ""):
        pairs.setdefault(home, ("~/", "~"))
    out: list[tuple[str, str]] = []
    for abs_path in sorted(pairs, key=len, reverse=True):
        below, itself = pairs[abs_path]
        out += [(abs_path + "/", below), (abs_path, itself)]
    return out


def scrub(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """``text`` with every absolute path of ``pairs`` replaced (see :func:`path_replacements`)."""
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def _scrub_obj(obj: Any, pairs: Sequence[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        return scrub(obj, pairs)
    if isinstance(obj, list):
        return [_scrub_obj(x, pairs) for x in obj]
    if isinstance(obj, dict):
        return {k: v if k.startswith("image/") else _scrub_obj(v, pairs) for k, v in obj.items()}
    return obj


def format_parameters(parameters: dict[str, Any], width: int = CODE_WIDTH - 2) -> str:
    """``name = value`` lines, each value pretty-printed to fit ``width`` columns."""
    lines = ["# Parameters of this run"]
    for name, value in parameters.items():
        head = f"{name} = "
        body = pprint.pformat(value, width=max(20, width - len(head)), sort_dicts=False)
        lines.append(head + body.replace("\n", "\n" + " " * len(head)))
    return "\n".join(lines)


def _visible(outputs: Iterable[dict]) -> list[dict]:
    """Outputs without their widget view: a widget's output is dropped, unless its bundle
    also holds something to show without a kernel (an explorer's figure, ``image/png``)."""
    out = []
    for o in outputs:
        data = o.get("data", {})
        if WIDGET_MIME not in data:
            out.append(o)
        elif set(data) - {WIDGET_MIME, "text/plain"}:
            out.append({**o, "data": {k: v for k, v in data.items() if k != WIDGET_MIME}})
    return out


def stage_notebook(src: Path, dest: Path, pairs: Sequence[tuple[str, str]]) -> None:
    """Copy an executed notebook to the site folder as the module docstring says; the copy
    keeps the source's times, so Sphinx rebuilds only pages whose notebook changed."""
    nb = json.loads(Path(src).read_text())
    nb.get("metadata", {}).pop("widgets", None)
    params = nb.get("metadata", {}).get("mocoxr", {}).get("parameters")
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and isinstance(params, dict):
            cell["source"] = format_parameters(params)
        if "outputs" in cell:
            cell["outputs"] = _visible(cell["outputs"])
    nb = _scrub_obj(nb, pairs)  # the .ipynb is downloadable from the site: metadata too
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    shutil.copystat(src, dest)


def long_code_lines(nb: dict, width: int = CODE_WIDTH, skip_tags: Sequence[str] = ()) -> list[str]:
    """``cell i: line`` for every code line wider than ``width`` (cells with a tag in
    ``skip_tags`` or ``remove-cell``/``remove-input`` are not shown on the site, so skipped)."""
    hidden = {"remove-cell", "remove-input", *skip_tags}
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code" or hidden & set(cell.get("metadata", {}).get("tags", [])):
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        out += [f"cell {i}: {line}" for line in src.splitlines() if len(line) > width]
    return out


def _cell_seconds(nb: dict) -> list[tuple[float, str]]:
    out = []
    for cell in nb.get("cells", []):
        d = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.get("cell_type") == "code" and isinstance(d, (int, float)):
            lines = [ln.strip() for ln in cell["source"].splitlines()]
            code = [ln for ln in lines if ln and not ln.startswith(("#", "import ", "from "))]
            out.append((float(d), (code or lines or [""])[0][:48]))
    return out


def time_rows(executed: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per executed notebook: run id, seconds (papermill), start, slowest cell."""
    import nbformat

    rows = []
    for path in executed:
        nb = nbformat.read(str(path), as_version=4)  # sources as one string each
        pm = nb.get("metadata", {}).get("papermill", {})
        cells = _cell_seconds(nb)
        slow = max(cells, default=(0.0, ""))
        total = pm.get("duration")
        rows.append({"run": Path(path).stem,
                     "seconds": float(total) if total is not None else sum(c[0] for c in cells),
                     "started": str(pm.get("start_time") or "")[:19].replace("T", " "),
                     "slowest_seconds": slow[0], "slowest_cell": slow[1]})
    return rows


def time_page(executed: Sequence[Path], profile: str) -> str:
    """Markdown of the "where the time went" page (see :func:`time_rows`)."""
    rows = time_rows(executed)
    total = sum(r["seconds"] for r in rows)
    starts = sorted(r["started"] for r in rows if r["started"])
    lines = [
        "# Where the time went", "",
        f"How long each notebook of the `{profile}` run took to execute (papermill's own timing,",
        "recorded in each executed notebook), and its slowest cell"
        + (f"; the first one started {starts[0]} UTC." if starts else "."),
        "A notebook that was up to date was not executed again: its time is that of the run",
        "that produced it.", "",
        "| notebook | seconds | share | slowest cell | its seconds |",
        "|---|---:|---:|---|---:|",
    ]
    for r in rows:
        share = r["seconds"] / total if total else 0.0
        cell = r["slowest_cell"].replace("|", "\\|").replace("`", "")
        lines.append(f"| [{r['run']}](executed/{r['run']}.ipynb) | {r['seconds']:.1f} | "
                     f"{share:.0%} | `{cell}` | {r['slowest_seconds']:.1f} |")
    lines += [f"| **all notebooks** | **{total:.1f}** | 100% | | |", ""]
    return "\n".join(lines)


def copy_extras(book_dir: Path, site: Path) -> None:
    """The bibliography (``book/*.bib`` -> ``<site>/book/``) and the style sheet
    (``book/_static/*`` -> ``<site>/_static/``, which Jupyter Book includes)."""
    for bib in Path(book_dir).glob("*.bib"):
        shutil.copy2(bib, Path(site) / "book" / bib.name)
    static = Path(book_dir) / "_static"
    if static.is_dir():
        shutil.copytree(static, Path(site) / "_static", dirs_exist_ok=True)


def write_time_page(site_book: Path, executed: Sequence[Path], profile: str) -> Path:
    """Write ``<site>/book/time.md`` (only when its text changed, to keep Sphinx's cache)."""
    path = Path(site_book) / f"{TIME_PAGE}.md"
    text = time_page(executed, profile)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


# ----------------------------------------------------------------------------- staging and build


def mark_stale(nb_path: Path, name: str) -> None:
    """Insert the "this page is stale" warning below a staged notebook's title."""
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(STALE_NOTE.format(name=name)))
    nbformat.write(nb, str(nb_path))


def _copy_prose(root: Path, site: Path) -> None:
    """``_config.yml``, ``_toc.yml``, ``book/*.md`` (stale copies removed) and the recorded
    tables the prose pages include."""
    (site / "book").mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, site / name)
    wanted = {p.name for p in (root / "book").glob("*.md")}
    for p in (site / "book").glob("*.md"):
        if p.name not in wanted:
            p.unlink()
    for name in wanted:
        shutil.copy2(root / "book" / name, site / "book" / name)
    if (root / "book" / "recorded").is_dir():
        shutil.copytree(root / "book" / "recorded", site / "book" / "recorded", dirs_exist_ok=True)


def stage_site(prof: Profile, rd: RunPaths, root: Path, echo=print,
               stale: Sequence[str] = (), site: Path | None = None,
               key_of: dict[str, str] | None = None) -> Path:
    """Assemble the book's source (config, prose, the profile's executed notebooks, the CSVs:
    only their rows of the current configuration, see :mod:`mocoxr.book.rows`) in ``site``
    (default ``<run_dir>/site``) and return it. Files keep their times so Sphinx rebuilds only
    changes. Notebooks go through :func:`stage_notebook`; those in ``stale`` get the stale
    warning; ``book/time.md`` is generated (:func:`write_time_page`)."""
    site = Path(site or rd.root / "site")
    _copy_prose(root, site)
    executed = site / "book" / "executed"
    if executed.exists():
        shutil.rmtree(executed)
    executed.mkdir()
    found = []
    for run in prof.runs:
        nb = rd.executed_nb(run.run_id)
        if not nb.is_file():
            echo(f"warning: {run.run_id} has no executed notebook ({nb}); its page is left out")
            continue
        stage_notebook(nb, executed / nb.name, path_replacements(rd.root, root, run.parameters))
        if run.run_id in stale:
            mark_stale(executed / nb.name, prof.name)
        found.append(nb)
    if not found:
        raise FileNotFoundError(
            f"no executed notebooks in {rd.executed}: run `python -m mocoxr.book run "
            f"--profile {paths.profile_flag(prof.path)}` first"
        )
    publish_tables(rd, site, key_of if key_of is not None else run_keys(prof, rd))
    copy_extras(root / "book", site)
    write_time_page(site / "book", found, prof.name)
    return site


def publish_tables(rd: RunPaths, into: Path, key_of: dict[str, str]) -> None:
    """Write the rows of ``results.csv`` / ``deltas.csv`` of the current configuration into
    ``into`` (a table of another configuration is never published)."""
    for name in SITE_CSVS:
        if (rd.root / name).is_file():
            rows.write_current(rd.root / name, Path(into) / name, key_of)


def _jupyter_book(site: Path, output: Path, echo, quiet: bool) -> Path:
    """``jupyter-book build`` of the staged site into ``output/_build``; its log is kept in
    ``<site>/build.log``. Returns ``output/_build/html``."""
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", str(site), "--path-output", str(output)]
    echo("$ jupyter-book build " + " ".join(cmd[4:]))
    proc = subprocess.run(cmd, cwd=site, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (site / "build.log").write_text(proc.stdout)
    if not quiet:
        echo(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build of {site} failed (exit {proc.returncode}); "
                           f"log: {site / 'build.log'}\n{proc.stdout[-4000:]}")
    return output / "_build" / "html"


def build_site(
    profile: str | Path,
    run_dir: Path | None = None,
    output: Path | None = None,
    root: Path | None = None,
    echo=print,
    quiet: bool = False,
    overrides: dict[str, Any] | None = None,
    allow_stale: bool = False,
) -> Path:
    """Build the HTML site of a profile's executed notebooks; returns ``_build/html/index.html``.

    Refuses notebooks that ``status`` lists as stale, unless ``allow_stale`` (then their pages
    carry a warning). The data folders default to those the run recorded. The site is staged
    in ``<output>/_build/source`` (nothing is written into the run folder, which may be
    read-only; a writable one is locked against a concurrent run); the build's log is kept
    there as ``build.log`` (and echoed unless ``quiet``). The rows of ``results.csv`` and
    ``deltas.csv`` of the current configuration are published beside the site."""
    root = Path(root) if root else paths.project_root()
    prof, rd = open_run(profile, root, run_dir, overrides)
    if not rd.root.is_dir():
        raise FileNotFoundError(f"run folder {rd.root} does not exist: run `python -m mocoxr.book "
                                f"run --profile {paths.profile_flag(prof.path)}` first")
    out = Path(output or root).resolve()
    writable = os.access(rd.root, os.W_OK)
    with store.run_lock(rd.root, "build") if writable else contextlib.nullcontext():
        key_of = run_keys(prof, rd)
        stale = stale_runs(prof, rd, key_of)
        if stale and not allow_stale:
            raise RuntimeError(
                f"{len(stale)} executed notebook(s) in {rd.executed} are stale ({', '.join(stale)}): "
                f"run `python -m mocoxr.book run --profile {paths.profile_flag(prof.path)}` first, "
                f"or build with --allow-stale to publish them marked as stale"
            )
        with store.writing(out):
            site = stage_site(prof, rd, root, echo, stale, out / "_build" / "source", key_of)
            html = _jupyter_book(site, out, echo, quiet)
            publish_tables(rd, html, key_of)
    index = html / "index.html"
    echo(f"site: {index}")
    return index
