"""The book: profiles, the papermill runner and the Jupyter Book site build.

A *profile* is a small YAML file (``mocoxr/profiles/<name>.yaml``, or any path) that says which
notebooks to execute and with which parameters::

    description: what this profile is for            # optional, free text
    requires: [data_dir]                             # optional: parameters that must not be null
    parameters:                                      # shared: given to every notebook declaring them
      image_size: 64
      pretrain: {epochs: 2}                          # dicts are merged key by key into the default
    notebooks:                                       # executed in this order
      01_data: {}                                    # one run with the shared parameters
      02_pretrain:
        needs: [01_data]                             # default: every notebook listed above it
        runs:                                        # default: [{}]
          - {backbone: resnet18}
          - {backbone: densenet121, name: densenet121}   # `name`: suffix of the executed copy

Each run of notebook ``NN_x`` is written to ``<run_dir>/executed/NN_x.ipynb`` (first run) or
``NN_x-<name>.ipynb`` (the others; the name defaults to the run's own parameter values). A run
depends on the runs of the notebooks it ``needs`` whose per-run parameters agree with its own
(``03_linear_probe`` for densenet121 needs ``02_pretrain`` for densenet121, not for resnet18).

A run is skipped when its stamp holds the same key (notebook source, parameters, package code,
upstream keys: see :mod:`mocoxr.book.runner`), so a rerun after a failure resumes where it
stopped, and editing a notebook reruns it and everything downstream. ``build`` stages the prose
(``book/*.md``), ``_config.yml``, ``_toc.yml`` and the executed notebooks of a profile into
``<run_dir>/site/`` and runs ``jupyter-book build`` on it (:mod:`mocoxr.book.site`).

Modules: :mod:`~mocoxr.book.paths` (project root, run folder layout),
:mod:`~mocoxr.book.ipynb` (notebook files), :mod:`~mocoxr.book.profile`,
:mod:`~mocoxr.book.runner`, :mod:`~mocoxr.book.site`, :mod:`~mocoxr.book.sitecheck` (the
built site in headless Chromium) and ``__main__`` (``python -m mocoxr.book run|build|status|check``).
What the notebooks call lives in :mod:`mocoxr.notebook`.
"""

from mocoxr.book.paths import RunPaths, project_root, run_paths
from mocoxr.book.profile import Profile, ProfileError, Run, load_profile
from mocoxr.book.runner import Outcome, run_keys, run_profile
from mocoxr.book.site import build_site

__all__ = ["Outcome", "Profile", "ProfileError", "Run", "RunPaths", "build_site", "load_profile",
           "project_root", "run_keys", "run_paths", "run_profile"]
