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
# Recipe, as in the paper: Adam, the same augmentations as pretraining, a one-logit head, and
# `int(5 * 4 ** log8(1/f))` epochs for label fraction `f` (5 epochs with all labels, 500 with
# 0.1%). We keep the paper's number of *image passes* (epochs times labelled images) and train
# them in at least `min_steps` optimizer steps: 2 labelled images for 500 epochs become 100
# steps of 10 (each image augmented five times in a batch) rather than 500 steps of 2, which
# costs a fifth of the time for the same images seen. Validation runs at `n_evals` evenly
# spaced steps, and the best point is kept. Every label draw the linear probe used is
# fine-tuned too.

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
baseline = "random"  # the init MoCo is compared with: "random" or "imagenet" (the paper)
finetune = {  # mocoxr.experiments.run_finetune_experiment options
    "fractions": None,  # None: every fraction prepared in 01_data
    "max_draws": None,  # None: every draw, as the linear probe (the paper: all)
    "max_epochs": None,  # cap on the paper's epoch rule (None: the rule)
    "batch_size": 32,  # made smaller at small fractions so the passes fill min_steps
    "lr": 1e-3,  # Adam learning rate (the paper: 1e-4; see the methods page)
    "head_warmup_epochs": 0,  # first epochs train the new head alone (LP-FT)
    "encoder_lr_scale": 1.0,  # encoder lr = lr x this
    "min_steps": 100,  # fewest optimizer steps at any label fraction
    "n_evals": 5,  # validation points, evenly spaced over the steps
    "amp": "auto",  # bf16 autocast where the device has bf16 units; "off": fp32
    "augment": {},  # mocoxr.augment.AugmentConfig overrides
    "overwrite": False,  # retrain even when saved predictions match
}
n_boot = 1000
saliency_options = {  # mocoxr.notebook.saliency_section options: images mapped (Grad-CAM,
    "max_images": 64,  # counterfactual), occluded, randomised; occlusion patches per side
    "occlusion_images": 32, "sanity_images": 6, "occlusion_grid": 8,
}

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
# models kept for the saliency section (1% and 100%, where present) and calibration (ends)
keep = tuple(sorted({min(fractions), max(fractions)}
                    | {f for f in fractions if np.isclose(f, 0.01)}))

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
per_draw = res[res["draw"] != evaluate.MEAN_DRAW]
steps = per_draw.groupby("label_fraction").agg(draws=("draw", "nunique"),
                                               labelled=("n_train", "mean"),
                                               fewest_steps=("n_steps", "min"))
steps.index = steps.index.map(tables.pct).rename("labels")
display(steps.style.format({"labelled": "{:.0f}"}))

# %% [markdown]
# ## Does it train? The curve at the smallest fraction
#
# Training loss and validation AUC of the first draw with {glue:text}`curve_frac` of the
# labels ({glue:text}`curve_n` images, {glue:text}`curve_steps` steps of
# {glue:text}`curve_batch`). Every fine-tuned model on this page took at least
# {glue:text}`min_steps_all` optimizer steps (the table above gives the fewest per fraction).

# %%
f_min = float(res["label_fraction"].min())
curves = {init: experiments.load_history(paths.root, "finetune", backbone, init, f_min, 0)
          for init in backbones}
fig = plots.finetune_curves(curves,
                            title=f"Fine-tuning on {tables.pct(f_min)} of the labels")
plt.show()
first = next(iter(curves.values()))
notebook.glue("curve_frac", tables.pct(f_min))
at_min = np.isclose(res["label_fraction"], f_min)
notebook.glue("curve_n", int(res.loc[at_min, "n_train"].iloc[0]))
notebook.glue("curve_steps", int(first["step"].max()))
notebook.glue("curve_batch", int(first["batch_size"].iloc[0]))
notebook.glue("min_steps_all", int(steps["fewest_steps"].min()))

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
# A saliency map marks the pixels that the model's score depends on. Two kinds are computed
# here, for the models fine-tuned on {glue:text}`cam_frac` of the labels (first draw), on
# {glue:text}`cam_n` effusion-positive test images (a seeded sample; on the phantoms, of those
# whose effusion still shows at this size):
#
# - **Grad-CAM** {cite}`selvaraju2017gradcam` weighs a block's activations by the gradient
#   of the effusion logit. Its map has one cell per position of that block's output, so the
#   block must be fine enough to tell a lung base from the rest of the chest. The rule used
#   here: the deepest block whose output has at least 8 × 8 cells at the input size. Here
#   that is {glue:text}`cam_layer`, with {glue:text}`cam_grid` cells. The usual choice, the
#   last block, has 10 × 10 cells at the paper's 320 px but only 2 × 2 at 64 px: there its
#   peak could only fall near four points.
# - **Occlusion** {cite}`zeiler2014visualizing` hides one square of {glue:text}`occ_patch`
#   × {glue:text}`occ_patch` pixels at a time (set to the mean gray) and records how much the
#   logit drops. It needs no access to the model's inside.
#
# On the phantoms the effusion region of every image is known. The generator renders the
# image again without its effusion, and the region is where the two differ (outlined below).

# %%
from mocoxr import counterfactual

sal = notebook.saliency_section(
    ds, paths.root, backbone, list(backbones), keep, seed=seed, n_boot=n_boot,
    chexpert_folder=folder if data_dir is None else None, **saliency_options,
)
display(sal.maps)

# %% [markdown]
# ### Do the maps point at the effusion?
#
# Two scores per map. The **pointing game** asks whether the map's peak falls inside the
# region. The **share inside** is the part of the map's mass that lies in the region. A map
# spread evenly would score the region's share of the image (the `uniform_share` column).

# %% tags=["hide-input"]
if sal.localisation is not None:
    display(sal.localisation.style.format(
        "{:.3f}", subset=["pointing_hit_rate", "share_inside", "uniform_share"]
    ).hide(axis="index"))

# %% [markdown]
# Grad-CAM's peak lies inside the effusion for {glue:text}`cam_hit_moco:.0%` of the images
# from MoCo and {glue:text}`cam_hit_base:.0%` from the {glue:text}`baseline` init. Its share
# inside is {glue:text}`cam_share_moco:.2f` and {glue:text}`cam_share_base:.2f`, against
# {glue:text}`cam_area:.2f` for a uniform map. Occlusion's peak lies inside for
# {glue:text}`occ_hit_moco:.0%` and {glue:text}`occ_hit_base:.0%`, with shares
# {glue:text}`occ_share_moco:.2f` and {glue:text}`occ_share_base:.2f` (uniform:
# {glue:text}`occ_area:.2f`; occlusion costs a forward pass per square, so it maps the first
# {glue:text}`occ_n` of the images).
#
# What these numbers cannot show: a map is an explanation method's view of the model, not the
# model's reasoning. A low score may mean the model reads something else, or that the method
# blurs or misplaces what the model reads. On real data, with no region to compare with, the
# page shows the maps only, and these numbers read "nan".
#
# ### The counterfactual: the same image without its effusion
#
# Phantoms allow a direct test that no real-data method can give. Each test image is rendered
# again with every finding but its effusion: same patient, exposure and noise. Both versions
# are scored. The drop in the effusion probability measures how much the decision rests on
# the effusion itself. A third version puts back the effusion region alone: the image without
# effusion, with the pixels inside the region taken from the original. Its drop measures what
# the model reads outside the region (about 0 when the region holds all the evidence it uses).
# Every kept model is tested, at each label fraction; the CIs are bootstrap intervals over
# the images.

# %% tags=["hide-input"]
if sal.drops is not None:
    display(counterfactual.drop_display(sal.drops).style.hide(axis="index"))

# %% [markdown]
# With {glue:text}`cam_frac` of the labels, removing the effusion lowers the MoCo model's
# probability by {glue:text}`cf_drop_moco_large:.3f` on average (95% CI
# {glue:text}`cf_drop_moco_large_lo:.3f` to {glue:text}`cf_drop_moco_large_hi:.3f`), and the
# {glue:text}`baseline` model's by {glue:text}`cf_drop_base_large:.3f`
# ({glue:text}`cf_drop_base_large_lo:.3f` to {glue:text}`cf_drop_base_large_hi:.3f`). With
# {glue:text}`cf_frac_small` of the labels: {glue:text}`cf_drop_moco_small:.3f`
# ({glue:text}`cf_drop_moco_small_lo:.3f` to {glue:text}`cf_drop_moco_small_hi:.3f`) and
# {glue:text}`cf_drop_base_small:.3f` ({glue:text}`cf_drop_base_small_lo:.3f` to
# {glue:text}`cf_drop_base_small_hi:.3f`). With the region alone restored, the MoCo model's
# drop is {glue:text}`cf_restored_moco_large:.3f` ({glue:text}`cf_restored_moco_large_lo:.3f`
# to {glue:text}`cf_restored_moco_large_hi:.3f`).
#
# A large drop says the model's score follows the effusion in these images. It cannot say
# that the model would find an effusion drawn differently, or read a real radiograph the same
# way. The phantom's image processing also responds slightly to the effusion outside the
# region (a few gray levels), which the restored version leaves out. On real data there is no
# such counterfactual: the table is left out and these numbers read "nan".
#
# ### Sanity check: do the maps depend on the weights?
#
# A saliency method can draw edges whatever the model has learnt. The cascading randomisation
# test {cite}`adebayo2018sanity` re-initialises the fine-tuned MoCo model's blocks from the top
# down, one more at each step, and compares the maps with the original ones by rank (Spearman)
# correlation, on {glue:text}`san_images` images. A method that explains the model must give
# different maps once the weights are random.

# %%
display(sal.sanity_plot)

# %% [markdown]
# With only the head re-initialised, Grad-CAM's mean rank correlation with its original maps
# is {glue:text}`san_cam_top:.2f` and occlusion's {glue:text}`san_occ_top:.2f`. With every
# block random, they are {glue:text}`san_cam_all:.2f` and {glue:text}`san_occ_all:.2f`. A
# correlation that stays near 1 would mean the maps show the image more than the model.

# %% [markdown]
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
# - Its Grad-CAM peak ({glue:text}`cam_grid` cells) falls inside the phantom's effusion for
#   {glue:text}`cam_hit_moco:.0%` (MoCo) and {glue:text}`cam_hit_base:.0%`
#   ({glue:text}`baseline`) of the positive test images; removing the effusion lowers the
#   MoCo model's probability by {glue:text}`cf_drop_moco_large:.3f`; test ECE {glue:text}`ece_before_moco:.3f` → {glue:text}`ece_after_moco:.3f` (MoCo)
#   and {glue:text}`ece_before_base:.3f` → {glue:text}`ece_after_base:.3f` after temperature
#   scaling.
# - Next: [transfer to Shenzhen](05_shenzhen.ipynb), a different disease and source.
