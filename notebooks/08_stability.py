# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How stable is the effect?
#
# Every confidence interval on the earlier pages resamples the *test images* of one run. It
# says nothing about the run itself: pretrain again with another seed (another data order,
# other augmentations, other initial weights and, on the embedded data, other phantoms) and
# the MoCo advantage moves. A claim about MoCo pretraining is a claim about training runs, so
# this page pools several of them.
#
# A **seeds batch** runs the whole pipeline once per seed, each in its own run folder, and
# pools the paired differences (MoCo minus baseline) over the seeds:
#
# ```bash
# python -m mocoxr.book run --profile quick --seeds 0 1 2 3 4
# ```
#
# On the embedded data each seed is a whole new replicate of the study: new phantom patients,
# new label draws, new test images, new pretraining and fine-tuning runs. The pooled
# difference is the mean over seeds. Its 95% CI adds the seed-to-seed spread to the test-set
# sampling (each seed's bootstrap standard error), and uses Student's t with one degree of
# freedom fewer than the number of seeds: with five seeds the interval is 2.78 standard errors
# wide on each side (4.30 with three). The [methods page](../methods.md) gives the formula and
# says why the seeds do not share one test set.
#
# Each cell then gets one verdict against the paper's effect there: **reproduced** when the
# CI lies above zero, **smaller than the paper's** when it lies below the paper's effect,
# **inconclusive** when neither (where the paper found no gain, as with all labels
# fine-tuned: **consistent with no gain** when the CI holds zero). Beside it stands the
# minimum detectable effect (MDE): the smallest true difference this design would find with
# 80% power. An inconclusive cell whose MDE exceeds the paper's effect could not have
# decided.

# %% tags=["parameters"]
run_dir = "../runs/interactive"  # run folder shared by all notebooks (the runner sets it)
backbone = "resnet18"
baseline = "random"  # the init MoCo was compared with
recorded_seeds = "book/recorded/seeds-quick"  # pooled tables shipped with the book

# %%
import matplotlib.pyplot as plt
from IPython.display import HTML, display

from mocoxr import notebook, plots, seeds, tables

folder, kind = seeds.find_pooled(run_dir, notebook.project_root() / recorded_seeds)
pooled = seeds.read_pooled(folder)
deltas, per_seed, results = pooled["deltas"], pooled["per_seed"], pooled["results"]
deltas = deltas[deltas["backbone"] == backbone]
n_seeds = int(per_seed["seed"].nunique())
source = pooled["source"]
notebook.glue("n_seeds", n_seeds)
notebook.glue("seed_list", ", ".join(str(s) for s in sorted(per_seed["seed"].unique())))
finished, commit = source.get("finished", "?"), source.get("git_commit") or "?"
notebook.glue("pooled_source", "this run folder's seeds batch" if kind == "this run" else
              "the recorded batch shipped with the book (the command above, "
              f"finished {finished}, code version {commit})")
print(f"{n_seeds} seeds ({kind})")

# %% [markdown]
# These numbers come from {glue:text}`pooled_source`: {glue:text}`n_seeds` seeds
# ({glue:text}`seed_list`).
#
# ## Every seed, and their mean
#
# Grey: each seed's own difference with its test-set CI. Coloured: the mean over seeds with the
# pooled CI.

# %%
experiments_shown = ["linear", "finetune", "shenzhen_linear", "shenzhen_finetune"]
fig = plots.seed_effects(per_seed, deltas, experiments_shown[:2], backbone)
plt.show()
fig = plots.seed_effects(per_seed, deltas, experiments_shown[2:], backbone)
plt.show()

# %% [markdown]
# ## The pooled table

# %%
table = seeds.pooled_table(deltas, tables.EXPERIMENT_TITLES, tables.paper_results())
display(HTML(table.to_html(index=False, border=0)))

# %% tags=["hide-input"]
# numbers for the text below
decided = ~table["verdict"].isin([tables.INCONCLUSIVE])
notebook.glue("n_cells", int(len(table)))
notebook.glue("n_decided", int(decided.sum()))
notebook.glue("n_reproduced", int((table["verdict"] == tables.REPRODUCED).sum()))
notebook.glue("undecided_cells", ", ".join(
    f"{e.lower()} at {l}" for e, l in zip(table.loc[~decided, "experiment"],
                                          table.loc[~decided, "labels"])) or "none")
lin = deltas[deltas["experiment"] == "linear"].sort_values("label_fraction")
small = lin[lin["label_fraction"] < 1.0]
notebook.glue("n_lin_small_above", int((small["ci_low"] > 0).sum()))
notebook.glue("n_lin_small", int(len(small)))
notebook.glue("lin_small_fracs",
              ", ".join(tables.pct(f) for f in small["label_fraction"]))
shown = [("lin_min", "linear", float(lin["label_fraction"].min())),
         ("ft_full", "finetune", 1.0), ("szl_min", "shenzhen_linear", 0.0625)]
for tag, exp, f in shown:
    r = seeds.pooled_row(deltas, exp, f)
    notebook.glue(f"{tag}_frac", tables.pct(f))
    notebook.glue(tag, "not run" if r is None else
                  tables.fmt_ci(r["delta"], r["ci_low"], r["ci_high"], signed=True))
    effect = tables.paper_effect(tables.paper_results(), exp, backbone, f)
    notebook.glue(f"{tag}_verdict", "not run" if r is None else
                  tables.cell_verdict(r["ci_low"], r["ci_high"], effect))
for init, tag in (("moco", "moco"), (baseline, "base")):
    notebook.glue(f"sz_ft_{tag}",
                  seeds.auc_range(results, "shenzhen_finetune", backbone, init, 1.0))
notebook.glue("baseline", baseline)

# %% [markdown]
# ## What holds across seeds
#
# {glue:text}`n_decided` of the {glue:text}`n_cells` cells are decided
# ({glue:text}`n_reproduced` reproduced); undecided: {glue:text}`undecided_cells`.
#
# - **Linear probe.** The pooled CI of MoCo minus {glue:text}`baseline` lies above zero at
#   {glue:text}`n_lin_small_above` of the {glue:text}`n_lin_small` label fractions below 100%
#   ({glue:text}`lin_small_fracs`). At {glue:text}`lin_min_frac` of the labels the pooled
#   difference is {glue:text}`lin_min` ({glue:text}`lin_min_verdict`).
# - **Fine-tuning with all the labels.** MoCo minus {glue:text}`baseline` is
#   {glue:text}`ft_full` ({glue:text}`ft_full_verdict`); the paper found no difference there
#   (0.000 for ResNet18).
# - **Transfer to Shenzhen.** Fine-tuned on all Shenzhen training images, the MoCo encoder
#   reaches a mean AUC of {glue:text}`sz_ft_moco` and the {glue:text}`baseline` one
#   {glue:text}`sz_ft_base`. The linear probe on {glue:text}`szl_min_frac` of the Shenzhen
#   labels gains {glue:text}`szl_min` ({glue:text}`szl_min_verdict`).
#
# ## Summary
#
# - A single run's CI is about its test images; this page's CIs are about training runs too.
#   Where a verdict above reads "inconclusive", the runs establish neither the paper's effect
#   nor a smaller one, whatever a single run's CI said; its MDE says how large an effect the
#   batch could have seen.
# - Pooling more seeds narrows the interval: add seeds to the command above (each reuses the
#   folders already computed), then rebuild the site.
