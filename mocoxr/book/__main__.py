"""The book: profiles, the papermill runner and the Jupyter Book site build.

Command line::

    python -m mocoxr.book run    --profile quick [--data-dir D] [--transfer-dir D] [--run-dir D]
                                 [--force] [--seeds N ...] [--log-output] [--accept-data-change]
    python -m mocoxr.book build  --profile quick [--run-dir D] [--output D] [--allow-stale]
    python -m mocoxr.book status --profile quick
    python -m mocoxr.book check
    python -m mocoxr.book publish --profile quick [--site D] [--remote origin] [--branch gh-pages]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from mocoxr.book import paths, publish, rows, runner, site
from mocoxr.book.ipynb import pairing_problems
from mocoxr.book.profile import ProfileError

COMMANDS = [("run", "execute a profile's notebooks with papermill"),
            ("build", "build the Jupyter Book site from a profile's executed notebooks"),
            ("status", "list a profile's runs and whether they are up to date"),
            ("check", "check that every notebooks/*.py has an in-sync .ipynb"),
            ("publish", "push the built site to the gh-pages branch of a git remote (ghp-import)")]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data folders given on the command line (each must exist and hold a format it reads:
    :func:`mocoxr.data.detect_format`)."""
    from mocoxr.data.formats import OPTIONS, detect_format

    out: dict[str, Any] = {}
    for name, flag in (("data_dir", "--data-dir"), ("shenzhen_dir", "--transfer-dir")):
        v = getattr(args, name, None)
        if v is not None:
            p = Path(v).expanduser().resolve()
            if not p.exists():
                raise FileNotFoundError(f"{flag} {v}: no such folder")
            try:
                detect_format(p, OPTIONS[name])
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{flag} {exc}") from None
            out[name] = str(p)
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the runner is (so it stops as on Ctrl-C)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def parser(prog: str = "python -m mocoxr.book") -> argparse.ArgumentParser:
    """The command line of ``python -m mocoxr.book`` (``prog``: how it was called)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, helptext in COMMANDS:
        p = sub.add_parser(name, help=helptext)
        if name == "check":
            continue
        p.add_argument("--profile", default="quick", help="packaged profile name or a YAML file (default: quick)")
        p.add_argument("--run-dir", type=Path, help="run folder (default: runs/<profile>)")
        p.add_argument("--data-dir", help="pretraining/target data: CheXpert (CheXpert-v1.0-small/), NIH "
                       "ChestX-ray14 (Data_Entry_2017*.csv) or a labels CSV folder, detected from "
                       "the files (default: generate the embedded data)")
        p.add_argument("--transfer-dir", "--shenzhen-dir", dest="shenzhen_dir",
                       help="transfer data: Shenzhen (CXR_png/), Montgomery (MCUCXR_*.png) or a "
                            "labels CSV folder (default: generate); --shenzhen-dir is an alias")
        if name == "run":
            p.add_argument("--force", action="store_true", help="rerun every notebook even if up to date")
            p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                           help="a batch: the whole profile once per seed, in <run-dir>/seed-<n>/, "
                                "then the deltas pooled over seeds into <run-dir>/seeds/")
            p.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
            p.add_argument("--accept-data-change", action="store_true",
                           help="accept new content in a data folder this run folder used before "
                                "(the steps that read it rerun)")
        if name == "build":
            p.add_argument("--output", type=Path, help="folder that receives _build/ (default: project root)")
            p.add_argument("--allow-stale", action="store_true",
                           help="publish stale notebooks, marked as stale on their pages")
        if name == "publish":
            p.add_argument("--site", type=Path, help="the built site (default: _build/html)")
            p.add_argument("--remote", default="origin", help="git remote to push to (default: origin)")
            p.add_argument("--branch", default="gh-pages", help="branch to write (default: gh-pages)")
    return ap


def _status(args: argparse.Namespace) -> int:
    """Print every run (up to date, stale, not run yet) and the rows of another configuration
    in the results tables; 1 if anything is not up to date."""
    prof, rd = runner.open_run(args.profile, paths.project_root(), args.run_dir, _overrides(args))
    key_of = runner.run_keys(prof, rd)
    stale = False
    for run_id, key in key_of.items():
        ok = runner.is_up_to_date(rd, run_id, key)
        state = "up to date" if ok else "stale" if rd.executed_nb(run_id).is_file() else "not run yet"
        stale |= not ok
        print(f"{run_id:36s} {state:11s} needs {prof.run(run_id).deps}")
    for name, (count, runs) in rows.foreign_rows(rd.root, key_of).items():
        print(rows.describe(name, count, runs) + "; the next run archives them")
        stale = True
    return 1 if stale else 0


def _command(args: argparse.Namespace) -> int:
    if args.command == "run" and args.seeds:
        return runner.run_seeds(args.profile, args.run_dir, args.seeds, _overrides(args),
                                force=args.force, log_output=args.log_output,
                                accept_data_change=args.accept_data_change)
    if args.command == "run":
        outcomes = runner.run_profile(args.profile, args.run_dir, _overrides(args),
                                      force=args.force, log_output=args.log_output,
                                      accept_data_change=args.accept_data_change)
        return 0 if runner.finished(outcomes) else 1
    if args.command == "build":
        site.build_site(args.profile, args.run_dir, args.output, overrides=_overrides(args),
                        allow_stale=args.allow_stale)
        return 0
    if args.command == "publish":
        publish.publish(args.profile, args.run_dir, args.site, args.remote, args.branch,
                        overrides=_overrides(args))
        return 0
    if args.command == "check":
        problems = pairing_problems(paths.project_root() / "notebooks")
        print("\n".join(problems) or "all notebook pairs in sync")
        return 1 if problems else 0
    return _status(args)


def main(argv: Sequence[str] | None = None, prog: str = "python -m mocoxr.book") -> int:
    """``python -m mocoxr.book COMMAND ...``: 0 on success, 1 when a run failed or is not up to
    date, 2 on a bad profile, a missing folder, a refused build or publication; 130 on Ctrl-C and 143 on
    SIGTERM (one line: a rerun resumes)."""
    args = parser(prog).parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _command(args)
    except (ProfileError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"\n{prog} {args.command}: interrupted; rerun to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
