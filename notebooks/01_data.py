# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The data: CheXpert format, pleural effusion, label fractions
#
# The paper asks one question: *when labels are scarce, does MoCo pretraining on unlabelled
# chest X-rays give a better starting point than the usual one?* Everything it measures is an
# AUC for **pleural effusion** on the CheXpert test set, after training a classifier on
# 0.1%, 1%, 10% or 100% of the training labels.
#
# This notebook gets the data into that shape:
#
# 1. find the images, or generate the **embedded synthetic data** (a *phantom*: radiograph-looking
#    images written in exactly the CheXpert and Shenzhen on-disk formats, so the same readers serve
#    real and synthetic data);
# 2. read the labels, decide what an *uncertain* label means, and split patients into
#    train / validation / test;
# 3. draw the label-fraction subsets, and decode every image once into a cache the later
#    notebooks share.

# %% tags=["parameters"]
run_dir = "../runs/interactive"  # run folder shared by all notebooks (the runner sets it)
data_dir = None  # CheXpert, NIH ChestX-ray14 or labels-CSV folder (format detected); None: generate the embedded data
shenzhen_dir = None  # transfer data: Shenzhen, Montgomery or labels-CSV folder; None: generate the embedded data
phantom = {"n_patients": 600, "n_valid_patients": 600, "image_size": 128, "workers": 0}  # mocoxr.phantom.generate_chexpert_tree options
phantom_shenzhen = {"n_images": 662, "image_size": 128, "workers": 0}  # mocoxr.phantom.generate_shenzhen_tree options
chexpert = {  # mocoxr.data.prepare_chexpert options
    "target": "Pleural Effusion",
    "uncertain_policy": "ones",  # the paper maps uncertain (-1) to positive
    "frontal_only": True,
    "val_fraction": 0.1,
    "test_csv": None,
    "fractions": [0.001, 0.01, 0.1, 1.0],
    "draws": [5, 5, 5, 1],
}
shenzhen = {"fractions": [0.0625, 0.25, 1.0], "draws": [8, 4, 1]}  # mocoxr.data.prepare_shenzhen options
image_size = 64  # pixels the images are decoded to (the paper: 320)
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from mocoxr import notebook, plots, tables

paths = notebook.run_paths(run_dir)
chexpert_folder = notebook.chexpert_folder(run_dir, data_dir, phantom, seed=seed)
shenzhen_folder = notebook.shenzhen_folder(run_dir, shenzhen_dir, phantom_shenzhen,
                                           seed=seed)
print("CheXpert-format data:", chexpert_folder,
      "(embedded, generated)" if data_dir is None else "")
print("Shenzhen-format data:", shenzhen_folder,
      "(embedded, generated)" if shenzhen_dir is None else "")

# %% [markdown]
# ## What is on disk
#
# CheXpert ships a `train.csv` and a `valid.csv` beside the image folders; each row is one image,
# with a `Path`, the view (`Frontal/Lateral`) and 14 observations coded `1` (positive),
# `0` (negative), `-1` (uncertain) or blank (not mentioned). The first rows of `train.csv`
# (other formats, NIH ChestX-ray14 or a labels CSV, show their own label file: see
# [Your own data](09_own_data.ipynb)):

# %%
from mocoxr import data

display(data.formats.label_file_head(chexpert_folder))  # train.csv, or NIH / labels CSV

# %% [markdown]
# ## Uncertain labels
#
# The radiology-report labeller behind CheXpert marks an observation *uncertain* when the report
# hedges ("possible small effusion"). A classifier needs 0 or 1, so a policy decides:
# `ones` counts uncertain as positive (the paper's choice), `zeros` as negative, `ignore`
# drops those images. Blank means "not mentioned" and counts as negative.

# %%
raw_counts, policy_counts = notebook.uncertain_policy_counts(
    chexpert_folder, chexpert["target"], chexpert["frontal_only"]
)
display(raw_counts)
display(policy_counts.style.format({"prevalence": "{:.1%}"}).hide(axis="index"))
fig = plots.count_bars(policy_counts, "policy", ["positive", "negative", "dropped"],
                       title=f"{chexpert['target']} in train.csv, "
                             "by uncertain-label policy", legend_title="label")
plt.show()
chosen = policy_counts.set_index("policy").loc[chexpert["uncertain_policy"]]
notebook.glue("policy", chexpert["uncertain_policy"])
notebook.glue("n_uncertain", int(raw_counts["images"].iloc[2]))
notebook.glue("prevalence_chosen", float(chosen["prevalence"]))
by_policy = policy_counts.set_index("policy")
notebook.glue("prevalence_ones", float(by_policy.loc["ones", "prevalence"]))
notebook.glue("prevalence_zeros", float(by_policy.loc["zeros", "prevalence"]))

# %% [markdown]
# The training labels hold {glue:text}`n_uncertain` uncertain images. Under the policy used here
# ({glue:text}`policy`) the share of positives is {glue:text}`prevalence_chosen:.1%`; counting
# uncertain as positive gives {glue:text}`prevalence_ones:.1%`, as negative
# {glue:text}`prevalence_zeros:.1%`. The choice moves the prevalence, and with it what "positive"
# means to every model downstream.
#
# ## Manifest and splits
#
# The manifest has one row per image (frontal views only, by default). Patients of `train.csv` are split into train and
# validation (no patient on both sides); `valid.csv`, labelled by radiologists rather than by the
# report labeller, is the test set, as in the paper.

# %%
ds = notebook.load_dataset(run_dir, "chexpert", chexpert_folder, image_size, chexpert,
                           seed=seed)
m = ds.manifest
split_table = (
    m.groupby("split")
    .agg(images=("label", "size"), patients=("patient", "nunique"),
         positives=("label", "sum"))
    .reindex(["train", "val", "test"])
)
split_table["prevalence"] = split_table["positives"] / split_table["images"]
display(split_table.style.format({"prevalence": "{:.1%}"}))
train_patients = set(m.loc[m.split == "train", "patient"])
assert not train_patients & set(m.loc[m.split != "train", "patient"])
for s in ("train", "val", "test"):
    notebook.glue(f"n_{s}", int(split_table.loc[s, "images"]))
    notebook.glue(f"patients_{s}", int(split_table.loc[s, "patients"]))
notebook.glue("prevalence_test", float(split_table.loc["test", "prevalence"]))
print(f"decoded image cache: {ds.images.shape} uint8, "
      f"mean {ds.mean:.3f}, std {ds.std:.3f}")

# %% [markdown]
# ## What the images look like
#
# Six images with effusion and six without, from the training split, decoded at
# {glue:text}`image_size` pixels as the models see them (shorter side resized, centre crop). The
# title gives the label used for training and, in brackets, the raw label in `train.csv`.

# %%
notebook.glue("image_size", int(image_size))
rng = np.random.default_rng(seed)
train_rows = ds.prepared.rows("train")
train_y = ds.prepared.labels(train_rows)
pick = np.concatenate([
    rng.choice(train_rows[train_y == c], size=min(6, int((train_y == c).sum())),
               replace=False)
    for c in (1, 0)
])
raw_name = {1.0: "1", 0.0: "0", -1.0: "-1"}
titles = [
    f"{'effusion' if m.label.iloc[r] else 'no effusion'} "
    f"[{raw_name.get(m.raw_label.iloc[r], 'blank')}]"
    for r in pick
]
fig = plots.image_grid([ds.images[r] for r in pick], titles, ncols=6,
                       title_colours=["C3" if m.label.iloc[r] else "black" for r in pick])
plt.show()

# %% [markdown]
# **Browse the images.** Pick a split, a label and a view, and move the slider: the image
# beside its manifest row (patient, study, view, the raw label in the CSV and the label after
# the uncertain policy). In a live kernel the controls redraw it; here the first training
# image is shown.

# %% tags=["explorer"]
from mocoxr import explore

explore.images(ds)

# %% [markdown]
# ## Label fractions
#
# The paper trains on 0.1%, 1%, 10% and 100% of the training labels, with several random draws
# of the small subsets (5, 5, 5, 1) so that one lucky draw cannot decide a comparison. Each
# subset holds at least one positive and one negative. The subsets are drawn once, saved beside
# the manifest, and reused by every experiment.

# %%
subsets = ds.prepared.subsets
subsets = subsets.assign(label=m["label"].to_numpy()[subsets["row"]])
fraction_table = (
    subsets.groupby(["label_fraction", "draw"])
    .agg(images=("row", "size"), positives=("label", "sum"))
    .groupby("label_fraction")
    .agg(draws=("images", "size"), images=("images", "mean"),
         positives_min=("positives", "min"), positives_max=("positives", "max"))
)
fraction_table.index = [tables.pct(f) for f in fraction_table.index]
display(fraction_table)
notebook.glue("smallest_fraction", tables.pct(min(chexpert["fractions"])))
notebook.glue("smallest_subset",
              int(subsets.groupby(["label_fraction", "draw"]).size().min()))

# %% [markdown]
# The smallest subset ({glue:text}`smallest_fraction` of the labels) holds
# {glue:text}`smallest_subset` images: this is the regime where a good representation should
# matter most.
#
# ## Shenzhen: the transfer dataset
#
# The paper also asks whether the representation transfers to a different task and hospital:
# tuberculosis on the Shenzhen set (662 images, about half with TB). Its file names carry the
# label (`CHNCXR_0001_0.png`: normal, `_1`: TB). It is split 65/15/20 into train, validation and
# test, stratified by label, and trained on 6.25%, 25% and 100% of its training labels.

# %%
sz = notebook.load_dataset(run_dir, "shenzhen", shenzhen_folder, image_size, shenzhen,
                           seed=seed)
sm = sz.manifest
sz_table = sm.groupby("split").agg(images=("label", "size"), tb=("label", "sum")).reindex(
    ["train", "val", "test"])
display(sz_table)
notebook.glue("sz_n", int(len(sm)))
notebook.glue("sz_tb", int(sm["label"].sum()))
pick = np.concatenate([
    rng.choice(idx, size=min(3, len(idx)), replace=False)
    for idx in (np.flatnonzero(sm["label"].to_numpy() == c) for c in (1, 0))
])
titles = [("TB" if sm.label.iloc[r] else "normal") + f"\n{sm.patient.iloc[r]}"
          for r in pick]
colours = ["C3" if sm.label.iloc[r] else "black" for r in pick]
fig = plots.image_grid([sz.images[r] for r in pick], titles, ncols=6,
                       title_colours=colours)
plt.show()

# %% [markdown]
# ## Summary
#
# - Training labels: {glue:text}`n_train` frontal images of {glue:text}`patients_train` patients
#   (validation {glue:text}`n_val`, test {glue:text}`n_test` with {glue:text}`prevalence_test:.1%`
#   effusion); uncertain labels handled by the {glue:text}`policy` policy.
# - Shenzhen: {glue:text}`sz_n` images, {glue:text}`sz_tb` with tuberculosis.
# - Everything is saved in the run folder (`manifests/`, `cache/`): the next notebooks read it
#   back instead of recomputing it. Next: [MoCo pretraining](02_pretrain.ipynb) on the training
#   images, without their labels.
