# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Beyond the paper: patient-aware positive pairs
#
# MoCo-CXR builds both views of a positive pair from **one image**: two random augmentations of
# the same X-ray. Its authors' follow-up, MedAug (Vu et al., *MedAug: Contrastive learning
# leveraging patient metadata improves representations for chest X-ray interpretation*,
# MLHC 2021), uses what every chest X-ray archive records anyway, the patient and the study:
# the key of a query is drawn from **another image of the same patient**. Two images of one
# patient differ in everything an augmentation cannot fake (positioning, exposure, inspiration,
# projection, a frontal against a lateral view) while, within one study (one visit), the
# pathology is the same. A representation that has to match them must keep the pathology and may
# drop the rest.
#
# MedAug compared several rules for choosing the key. Its best one, *same patient, same study,
# all lateralities* (a study's frontal and lateral views become positives), improved the mean
# AUC of a linear probe for pleural effusion trained on 1% of the labels by 14.4% over the
# ImageNet baseline. What mattered: positives from *different images with the same underlying
# pathology* (pairs across studies, where the disease may have changed, helped less), and as
# many different images as possible. Hard negatives chosen from metadata did not help and are
# not tried here.
#
# This chapter implements the rule as an option of the pretraining loop
# (`mocoxr.pretrain.PretrainConfig.positive_pairs`: `image`, `same_study` or `same_patient`, and
# `pair_laterals`) and measures it the same way as the rest of the book: pretrain one encoder
# per rule with the recipe of [the pretraining chapter](02_pretrain.ipynb), freeze it, fit a
# linear probe at every label fraction, and compare AUCs with the paired bootstrap against
# image-level MoCo. The queue, the augmentations, the optimiser and every other setting stay
# the same; only where the key image comes from changes.

# %% tags=["parameters"]
run_dir = "../runs/interactive"  # run folder shared by all notebooks (the runner sets it)
data_dir = None  # folder holding CheXpert-v1.0-small/; None: the embedded data
phantom = {"n_patients": 600, "n_valid_patients": 600, "image_size": 128, "workers": 0}  # mocoxr.phantom.generate_chexpert_tree options
chexpert = {  # mocoxr.data.prepare_chexpert options (as in 01_data)
    "target": "Pleural Effusion",
    "uncertain_policy": "ones",
    "frontal_only": True,
    "val_fraction": 0.1,
    "test_csv": None,
    "fractions": [0.001, 0.01, 0.1, 1.0],
    "draws": [5, 5, 5, 1],
}
image_size = 64
seed = 0
device = "cpu"
backbone = "resnet18"
pretrain = {  # mocoxr.pretrain.PretrainConfig fields, as in 02_pretrain (the pairing is set below)
    "init": "random",
    "batch_size": 32,
    "epochs": 100,
    "max_steps": 500,
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "lr_drops": [0.6, 0.9],
    "queue_size": 512,
    "momentum": 0.99,
    "temperature": 0.2,
    "dim": 128,
    "mlp": True,
    "bn_splits": 4,
    "augment": {},
    "monitor_every": 100,  # not used here (no monitor); kept so the recipe matches 02_pretrain's
    "checkpoint_every_steps": None,
    "amp": "auto",
    "channels_last": "auto",
    "compile": False,
}
pairings = ["image", "same_study+laterals", "same_patient+laterals"]  # first: the baseline; "+laterals": pair_laterals
linear = {  # mocoxr.experiments.run_linear_experiment options (as in 03_linear_probe)
    "method": "logreg",
    "fractions": None,
    "max_draws": None,
    "batch_size": 64,
    "probe_kwargs": {},
    "standardize_on": "train_split",
}
n_boot = 1000
recorded = "book/recorded/positive_pairs.csv"  # (project-relative) recorded comparison to show,
# training nothing; None: pretrain every pairing here (three MoCo runs, ~15 min on 2 cores)
record = {"csv": None, "command": None}  # also write the comparison here, with the command that ran it

# %%
import matplotlib.pyplot as plt
from IPython.display import display

from mocoxr import notebook, pairs_study, plots

notebook.glue("backbone_name", backbone)
folder = notebook.chexpert_folder(run_dir, data_dir, phantom, seed=seed)
ds = notebook.load_dataset(run_dir, "chexpert", folder, image_size, chexpert, seed=seed)
if recorded is not None:
    table, meta = pairs_study.read_recorded(notebook.project_root() / recorded)
    pairings = list(dict.fromkeys(table["pairing"]))
specs = pairs_study.pairing_specs(pairings)
print(specs)

# %% [markdown]
# ## Which images become positives
#
# For every training image the **candidate table** lists the images its key may come from:
# the other training images of the same study (`same_study`) or of the same patient
# (`same_patient`), of the same view unless `+laterals` allows lateral views as keys. The
# dataset keeps frontal views only (like the paper); the lateral views of training patients
# are decoded into a separate cache that serves as keys and nothing else. An image without any
# candidate (a patient with one image, a study with one view) is paired with itself, exactly as
# in MoCo-CXR. No image outside the training split is ever a candidate. At each step the key is
# drawn uniformly from the candidates by a generator seeded with (seed, step), so a resumed run
# draws the same pairs; the table is saved beside the checkpoint (`pairs.csv`).

# %%
samplers = pairs_study.samplers(run_dir, ds, folder, pairings, chexpert)
stats = pairs_study.summary_table(samplers)
display(stats.style.format({"share_paired": "{:.1%}", "mean_candidates": "{:.2f}"}))

# %%
show = pairings[1]  # MedAug's best rule first in the packaged profiles
shown, titles = pairs_study.example_pairs(samplers[show], seed)
if shown:
    fig = plots.image_grid(shown, titles, ncols=4, size=2.0)
    plt.show()
else:
    print(f"no training image has a key from another image under {show}")

# %% tags=["hide-input"]
notebook.glue("pair_example", show)
for name, value in pairs_study.rule_values(stats, pairings).items():
    notebook.glue(name, value)

# %% [markdown]
# With {glue:text}`p1_name`, {glue:text}`p1_share:.1f`% of the training images get a key from
# another image ({glue:text}`p1_cands:.2f` candidates on average for those that do); with
# {glue:text}`p2_name`, {glue:text}`p2_share:.1f`% ({glue:text}`p2_cands:.2f` candidates).
# The figure shows queries and the keys drawn for them by {glue:text}`pair_example`.
#
# ## Pretrain one encoder per rule, then probe it
#
# Each rule gets its own pretraining folder (the pairing is part of the configuration that
# names it); image-level pairs with the recipe of the pretraining chapter reuse that chapter's
# finished run. The linear probes, their bootstrap CIs and the paired differences are computed
# by the same functions as in [the linear-probe chapter](03_linear_probe.ipynb), written to a
# separate results folder.

# %%
recipe = pairs_study.Recipe(backbone, image_size, seed, device, pretrain, linear, n_boot)
if recorded is None:
    table, meta = pairs_study.run_study(run_dir, ds, samplers, recipe, data_dir=data_dir,
                                        phantom=phantom, record=record)
display(table[pairs_study.SHOWN_COLUMNS].style.format(
    {c: "{:.3f}" for c in ("auc", "ci_low", "ci_high")}
    | {c: "{:+.3f}" for c in ("delta", "delta_low", "delta_high")}).hide(axis="index"))

# %% tags=["hide-input"]
notebook.glue("source_note", pairs_study.source_note(recorded, meta, seed))

# %% [markdown]
# These numbers are {glue:text}`source_note`. One pretraining seed per rule: the CIs below
# cover the choice of test images and label subsets, not the spread between pretraining runs.
#
# ## AUC against label fraction, and the difference to image-level pairs
#
# Left: the draw-averaged test AUC of each rule with its 95% CI. Right: the paired-bootstrap
# difference to image-level MoCo (same test images resampled for both), with its 95% CI. A CI
# that excludes zero is a difference the test set can resolve.

# %%
fig, axes = plots.panels(2)
plots.auc_vs_fraction(pairs_study.as_results(table), "linear", backbone, ax=axes[0],
                      title="Linear probe, by positive-pair rule")
plots.delta_plot(pairs_study.delta_rows(table), sorted(pairings), backbone, ax=axes[1],
                 title="Rule minus image-level pairs")  # sorted: the left panel's colours
plt.show()

# %% tags=["hide-input"]
# numbers for the conclusion
for name, value in pairs_study.conclusion_values(table, pairings).items():
    notebook.glue(name, value)

# %% [markdown]
# ## Conclusion
#
# What was measured ({glue:text}`source_note`), for a linear probe on frozen
# {glue:text}`backbone_name` features at {glue:text}`n_fractions` label fractions, against
# image-level MoCo (AUC {glue:text}`auc_image_small:.3f` with {glue:text}`frac_small` of the
# labels, {glue:text}`auc_image_large:.3f` with {glue:text}`frac_large`):
#
# - {glue:text}`p1_name`: {glue:text}`p1_delta_small:+.3f` AUC at {glue:text}`frac_small`
#   (95% CI {glue:text}`p1_delta_small_lo:+.3f` to {glue:text}`p1_delta_small_hi:+.3f`),
#   {glue:text}`p1_delta_large:+.3f` at {glue:text}`frac_large`
#   ({glue:text}`p1_delta_large_lo:+.3f` to {glue:text}`p1_delta_large_hi:+.3f`);
#   {glue:text}`p1_verdict`.
# - {glue:text}`p2_name`: {glue:text}`p2_delta_small:+.3f` AUC at {glue:text}`frac_small`
#   ({glue:text}`p2_delta_small_lo:+.3f` to {glue:text}`p2_delta_small_hi:+.3f`),
#   {glue:text}`p2_delta_large:+.3f` at {glue:text}`frac_large`
#   ({glue:text}`p2_delta_large_lo:+.3f` to {glue:text}`p2_delta_large_hi:+.3f`);
#   {glue:text}`p2_verdict`.
#
# This is one pretraining seed on the embedded synthetic data with the short CPU recipe, where
# MoCo itself is only starting to learn (see [the pretraining chapter](02_pretrain.ipynb)); it
# is not a test of MedAug's claim on CheXpert. On the phantoms a study's views share their
# findings and a patient's studies share anatomy but not always findings, so the rules differ
# in what they ask the encoder to ignore. The `paper` profile runs this chapter on real
# CheXpert at the paper's recipe (also with frontal-only `same_study` pairs), where MedAug
# reports its gain.
