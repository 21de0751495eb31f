# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # End-to-end fine-tuning: does the head start last?
#
# In practice one fine-tunes the whole network, not just a linear layer: the labels can then
# reshape the encoder itself. The question becomes whether starting from MoCo weights still
# helps once every weight is trainable. The paper found a smaller but still clear gain at 0.1%
# of the labels (about 0.04 AUC for ResNet18) that vanishes with all labels.
#
# Recipe, as in the paper: Adam at 1e-4, the same augmentations as pretraining, a one-logit
# head, and `int(5 * 4 ** log8(1/f))` epochs for label fraction `f` (5 epochs with all labels,
# 500 with 0.1%), here capped by `max_epochs` for the CPU; the epoch with the best validation
# AUC is kept.

# %% tags=["parameters"]
run_dir = "../runs/interactive"  # run folder shared by all notebooks (the runner sets it)
data_dir = None  # folder holding CheXpert-v1.0-small/; None: the embedded data
phantom = {"n_patients": 600, "n_valid_patients": 300, "image_size": 128, "workers": 0}  # mocoxr.phantom.generate_chexpert_tree options
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
baseline = "random"  # the init MoCo is compared with: "random" or "imagenet" (the paper)
finetune = {  # mocoxr.experiments.run_finetune_experiment options
    "fractions": None,  # None: every fraction prepared in 01_data
    "max_draws": 1,  # draws per fraction (the paper: all)
    "max_epochs": 3,  # cap on the paper's epoch rule (None: the rule)
    "batch_size": 32,
    "lr": 1e-3,  # Adam learning rate (the paper: 1e-4; 3 epochs from random init need 1e-3)
    "head_warmup_epochs": 0,  # first epochs train the new head alone (LP-FT)
    "encoder_lr_scale": 1.0,  # encoder lr = lr x this
    "augment": {},  # mocoxr.augment.AugmentConfig overrides
    "overwrite": False,  # retrain even when saved predictions match
}
n_boot = 1000

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from mocoxr import evaluate, experiments, notebook, plots, tables

paths = notebook.run_paths(run_dir)
notebook.glue("backbone_name", backbone)
folder = notebook.chexpert_folder(run_dir, data_dir, phantom, seed=seed)
ds = notebook.load_dataset(run_dir, "chexpert", folder, image_size, chexpert, seed=seed)
backbones = {"moco": str(paths.moco_backbone(backbone)), baseline: baseline}
fractions = finetune["fractions"] or chexpert["fractions"]
keep = (min(fractions), max(fractions))  # models kept for Grad-CAM and calibration

# %% [markdown]
# ## Fine-tune every (init, label fraction, draw)
#
# Each model's test scores are saved with a key of its inputs; a rerun with the same inputs
# loads them instead of training again.

# %%
res = experiments.run_finetune_experiment(
    ds.prepared, ds.images, backbones, backbone, mean=ds.mean, std=ds.std,
    image_size=image_size, out_dir=paths.root, experiment="finetune", n_boot=n_boot,
    seed=seed, device=device, keep_models=keep, **finetune,
)
dl = experiments.compute_deltas(paths.root, "finetune", backbone, ("moco", baseline),
                                n_boot=n_boot, seed=seed)
dl = dl[dl["label_fraction"].isin(res["label_fraction"].unique())]
summary = tables.mean_rows(res, "finetune", backbone)
display(summary.pivot(index="label_fraction", columns="init", values="auc")
        .style.format("{:.3f}"))

# %% [markdown]
# ## AUC against label fraction

# %%
fig = plots.auc_vs_fraction(res, "finetune", backbone, title=f"Fine-tuning {backbone}")
plt.show()

# %% [markdown]
# ## The paired difference, beside the linear probe's
#
# The paper's second finding: the MoCo advantage is smaller after fine-tuning than for the
# linear probe, because the labels can repair a poor starting point.

# %%
all_deltas = pd.read_csv(paths.deltas)
lin = all_deltas[(all_deltas["experiment"] == "linear")
                 & (all_deltas["backbone"] == backbone)
                 & all_deltas["label_fraction"].isin(res["label_fraction"].unique())]
fig = plots.delta_plot(pd.concat([dl, lin]), ["linear", "finetune"], backbone)
plt.show()
signed = {"delta": "{:+.3f}", "ci_low": "{:+.3f}", "ci_high": "{:+.3f}"}
display(dl.style.format(signed).hide(axis="index"))

# %% tags=["hide-input"]
# numbers for the text below (frac_, delta_, auc_moco_, auc_base_ at small and large)
fracs = notebook.glue_effect(dl, summary, baseline)
f_small, f_large = fracs.values()
for tag, f in fracs.items():
    lin_f = lin[np.isclose(lin["label_fraction"], f)]
    notebook.glue(f"linear_delta_{tag}",
                  float(lin_f["delta"].iloc[0]) if len(lin_f) else float("nan"))
full = np.isclose(summary["label_fraction"], f_large)
notebook.glue("auc_best_full", float(summary.loc[full, "auc"].max()))

# %% [markdown]
# With {glue:text}`frac_small` of the labels, fine-tuning from MoCo reaches AUC
# {glue:text}`auc_moco_small:.3f` against {glue:text}`auc_base_small:.3f` from the
# {glue:text}`baseline` init: {glue:text}`delta_small:+.3f` (95% CI
# {glue:text}`delta_small_lo:+.3f` to {glue:text}`delta_small_hi:+.3f`; the linear probe's
# difference was {glue:text}`linear_delta_small:+.3f`). With {glue:text}`frac_large` of the
# labels: {glue:text}`delta_large:+.3f` ({glue:text}`delta_large_lo:+.3f` to
# {glue:text}`delta_large_hi:+.3f`).
#
# ## ROC curves at the smallest and the largest label fraction

# %%
curves = {}
for f in (f_small, f_large):
    curves[f"{tables.pct(f)} of labels"] = {
        init: evaluate.load_predictions(paths.predictions, "finetune", backbone, init,
                                        f, 0)[1:]
        for init in backbones
    }
fig = plots.roc_panels(curves)
plt.show()

# %% [markdown]
# **Explore every fine-tuned model.** Pick an init, a label fraction and a draw: its ROC curve
# with its AUC and 95% CI, and for a test image (effusion-positive ones first) the Grad-CAM
# of the models the run kept beside the phantom's true effusion region. In a live kernel the
# controls redraw; here the first selection is shown.

# %% tags=["explorer"]
from mocoxr import explore

explore.models(ds, run_dir, "finetune", backbone, folder if data_dir is None else None)

# %% [markdown]
# ## Where the fine-tuned models look
#
# Grad-CAM {cite}`selvaraju2017gradcam` weighs the last convolutional block's activations by
# the gradient of the effusion logit: bright where the model finds its evidence. On the
# phantoms the true effusion region of every image is known (the generator renders the image
# again without its effusion; the difference is the region, outlined below), so each map can
# be scored: does its peak fall inside the region (the pointing game), and what share of its
# mass lies there? Models fine-tuned on {glue:text}`cam_frac` of the labels, first draw.

# %%
from mocoxr import saliency

test_rows = ds.prepared.rows("test")
tuned = {init: experiments.load_finetuned(paths.root, "finetune", backbone, init, f_large)
         for init in backbones}
pos = test_rows[ds.prepared.labels(test_rows) == 1]
masks = None
if data_dir is None:  # phantoms: the true effusion region is known
    masks = saliency.phantom_masks(folder, ds.manifest["path"].iloc[pos], image_size)
    pos, masks = pos[masks.any(axis=(1, 2))], masks[masks.any(axis=(1, 2))]
cams = {init: saliency.grad_cam_rows(m, ds.images, pos, ds.mean, ds.std, image_size)
        for init, m in tuned.items()}
rng = np.random.default_rng(seed)
show = np.sort(rng.choice(len(pos), min(4, len(pos)), replace=False))
fig = saliency.plot_cams(ds.images[pos[show]], {k: c[show] for k, c in cams.items()},
                         None if masks is None else masks[show])
plt.show()

# %% tags=["hide-input"]
# numbers for the text below
notebook.glue("cam_frac", tables.pct(f_large))
notebook.glue("cam_n", int(len(pos)))
if masks is not None:
    loc = saliency.localisation_table(cams, masks).set_index("init")
    display(loc.style.format("{:.3f}", subset=["pointing_hit_rate", "share_inside",
                                               "region_area"]))
for init in backbones:
    tag = "moco" if init == "moco" else "base"
    for col, name in (("pointing_hit_rate", "hit"), ("share_inside", "share")):
        notebook.glue(f"cam_{name}_{tag}", float(loc.loc[init, col]) if masks is not None
                  else float("nan"))
notebook.glue("cam_area", float(masks.mean()) if masks is not None else float("nan"))

# %% [markdown]
# Over the {glue:text}`cam_n` effusion-positive test images whose effusion shows at this
# size, the map's peak lies inside the effusion for {glue:text}`cam_hit_moco:.0%` of them
# from MoCo and {glue:text}`cam_hit_base:.0%` from the {glue:text}`baseline` init; the share
# of the map inside the region is {glue:text}`cam_share_moco:.2f` and
# {glue:text}`cam_share_base:.2f`, against {glue:text}`cam_area:.2f` for a map spread evenly
# (the region's mean share of the image). (On real data, with no region to compare with,
# these read "nan".)
#
# ## Calibration
#
# AUC only ranks the images; a score used as a probability must also be *calibrated*: among
# images scored 0.7, about 70% should be positive. The reliability diagram bins the test
# scores and plots the positive rate per bin; the expected calibration error (ECE) is its
# count-weighted gap to the diagonal. Temperature scaling {cite}`guo2017calibration` divides
# the logit by one number fitted on the validation split: the AUC stays the same.

# %%
from mocoxr import calibration
from mocoxr import finetune as finetuning  # `finetune` is the parameters' dict

val_rows = ds.prepared.rows("val")
y_val, cal_inputs = ds.prepared.labels(val_rows), {}
for f in (f_small, f_large):
    for init in backbones:
        model = experiments.load_finetuned(paths.root, "finetune", backbone, init, f)
        p_val = finetuning.predict(model, ds.images, val_rows, ds.mean, ds.std,
                                   image_size)
        _, y_test, p_test = evaluate.load_predictions(paths.predictions, "finetune",
                                                      backbone, init, f, 0)
        cal_inputs[init, f] = (y_val, p_val, y_test, p_test)
cal = calibration.calibration_table(cal_inputs)
cal["model"] = [f"{init}, {tables.pct(f)} of labels" for init, f in cal_inputs]
display(cal.style.format({"temperature": "{:.2f}", "ece_before": "{:.3f}",
                          "ece_after": "{:.3f}"}).hide(axis="index"))
curves = {}
for init in backbones:
    y_v, p_v, y_t, p_t = cal_inputs[init, f_large]
    t = calibration.fit_temperature(y_v, p_v)
    curves[f"{init}, before"] = (y_t, p_t)
    curves[f"{init}, after (T = {t:.2f})"] = (y_t, calibration.apply_temperature(p_t, t))
fig = calibration.plot_reliability(curves,
                                   title=f"Test set, {tables.pct(f_large)} of labels")
plt.show()

# %% tags=["hide-input"]
# numbers for the text below
for i, (init, f) in enumerate(cal_inputs):
    if f == f_large:
        tag = "moco" if init == "moco" else "base"
        for col in ("ece_before", "ece_after", "temperature"):
            notebook.glue(f"{col}_{tag}", float(cal[col].iloc[i]))

# %% [markdown]
# With {glue:text}`cam_frac` of the labels the MoCo-initialised model's test ECE is
# {glue:text}`ece_before_moco:.3f`, {glue:text}`ece_after_moco:.3f` after temperature
# scaling (T = {glue:text}`temperature_moco:.2f`); from the {glue:text}`baseline` init
# {glue:text}`ece_before_base:.3f` and {glue:text}`ece_after_base:.3f`
# (T = {glue:text}`temperature_base:.2f`). A temperature above 1 means the model was
# over-confident, below 1 under-confident.

# %% [markdown]
# ## Summary
#
# - Fine-tuning {glue:text}`backbone_name`: MoCo minus {glue:text}`baseline` is
#   {glue:text}`delta_small:+.3f` AUC at {glue:text}`frac_small` of the labels and
#   {glue:text}`delta_large:+.3f` at {glue:text}`frac_large`; the best model with all labels
#   reaches AUC {glue:text}`auc_best_full:.3f`.
# - Its Grad-CAM peak falls inside the phantom's effusion for {glue:text}`cam_hit_moco:.0%`
#   (MoCo) and {glue:text}`cam_hit_base:.0%` ({glue:text}`baseline`) of the positive test
#   images; test ECE {glue:text}`ece_before_moco:.3f` → {glue:text}`ece_after_moco:.3f` (MoCo)
#   and {glue:text}`ece_before_base:.3f` → {glue:text}`ece_after_base:.3f` after temperature
#   scaling.
# - Next: [transfer to Shenzhen](05_shenzhen.ipynb), a different disease and source.
