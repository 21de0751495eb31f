# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Transfer: tuberculosis on the Shenzhen set
#
# A representation is only worth pretraining if it travels. The paper takes the encoder
# pretrained with MoCo on CheXpert, without any further pretraining, and trains tuberculosis
# classifiers on the small Shenzhen set (a different hospital, country and disease), with
# 6.25%, 25% and 100% of its training labels. MoCo-CheXpert initialisation beat ImageNet
# initialisation there too.
#
# Same two protocols as before: a linear probe on frozen features and end-to-end fine-tuning,
# each against the baseline init, with paired bootstrap CIs on the Shenzhen test split.
# Images are normalised with Shenzhen's own mean and standard deviation.

# %% tags=["parameters"]
run_dir = "../runs/interactive"  # run folder shared by all notebooks (the runner sets it)
shenzhen_dir = None  # folder holding CXR_png/; None: the embedded data
phantom_shenzhen = {"n_images": 662, "image_size": 128, "workers": 0}  # mocoxr.phantom.generate_shenzhen_tree options
shenzhen = {"fractions": [0.0625, 0.25, 1.0], "draws": [8, 4, 1]}  # mocoxr.data.prepare_shenzhen options
image_size = 64
seed = 0
device = "cpu"
backbone = "resnet18"
baseline = "random"  # "random" or "imagenet" (the paper)
transfer_linear = {"method": "logreg", "fractions": None, "max_draws": None, "batch_size": 64, "probe_kwargs": {},
                   "standardize_on": "train_split"}
transfer_finetune = {
    "fractions": None,
    "max_draws": None,  # every draw, as the linear probe
    "max_epochs": None,  # the paper's epoch rule
    "batch_size": 32,  # made smaller at small fractions so the passes fill min_steps
    "lr": 1e-3,
    "head_warmup_epochs": 0,
    "encoder_lr_scale": 1.0,
    "min_steps": 100,
    "n_evals": 5,
    "amp": "auto",
    "augment": {},
    "overwrite": False,
}
n_boot = 1000

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from mocoxr import evaluate, experiments, notebook, plots, tables

paths = notebook.run_paths(run_dir)
notebook.glue("backbone_name", backbone)
folder = notebook.shenzhen_folder(run_dir, shenzhen_dir, phantom_shenzhen, seed=seed)
sz = notebook.load_dataset(run_dir, "shenzhen", folder, image_size, shenzhen, seed=seed)
backbones = {"moco": str(paths.moco_backbone(backbone)), baseline: baseline}
m = sz.manifest
display(m.groupby("split").agg(images=("label", "size"), tb=("label", "sum"))
        .reindex(["train", "val", "test"]))

# %% [markdown]
# ## Linear probe and fine-tuning

# %%
common = dict(mean=sz.mean, std=sz.std, image_size=image_size, out_dir=paths.root,
              n_boot=n_boot, seed=seed, device=device)
res_lin = experiments.run_linear_experiment(sz.prepared, sz.images, backbones, backbone,
                                            experiment="shenzhen_linear", **common,
                                            **transfer_linear)
res_ft = experiments.run_finetune_experiment(sz.prepared, sz.images, backbones, backbone,
                                             experiment="shenzhen_finetune", **common,
                                             **transfer_finetune)
res = pd.concat([res_lin, res_ft], ignore_index=True)
dl = pd.concat([
    experiments.compute_deltas(paths.root, exp, backbone, ("moco", baseline),
                               n_boot=n_boot, seed=seed)
    for exp in ("shenzhen_linear", "shenzhen_finetune")
], ignore_index=True)
dl = dl[dl["label_fraction"].isin(res["label_fraction"].unique())]

# %%
fig, axes = plots.panels(2)
plots.auc_vs_fraction(res, "shenzhen_linear", backbone, ax=axes[0])
plots.auc_vs_fraction(res, "shenzhen_finetune", backbone, ax=axes[1])
plt.show()
fig = plots.delta_plot(dl, ["shenzhen_linear", "shenzhen_finetune"], backbone)
plt.show()
signed = {"delta": "{:+.3f}", "ci_low": "{:+.3f}", "ci_high": "{:+.3f}"}
display(dl.style.format(signed).hide(axis="index"))

# %% tags=["hide-input"]
# numbers for the text below (lin_ and ft_ delta_small, auc_moco_small, auc_base_small)
prefixes = {"shenzhen_linear": "lin_", "shenzhen_finetune": "ft_"}
summary = pd.concat([tables.mean_rows(res, exp, backbone) for exp in prefixes])
(f_small,) = notebook.glue_effect(dl, summary, baseline, prefixes, ["small"]).values()
notebook.glue("n_test", int(len(sz.prepared.rows("test"))))

# %% [markdown]
# With {glue:text}`frac_small` of the Shenzhen training labels, the linear probe on
# CheXpert-MoCo features reaches AUC {glue:text}`lin_auc_moco_small:.3f` against
# {glue:text}`lin_auc_base_small:.3f` for the {glue:text}`baseline` encoder (difference
# {glue:text}`lin_delta_small:+.3f`, 95% CI {glue:text}`lin_delta_small_lo:+.3f` to
# {glue:text}`lin_delta_small_hi:+.3f`); fine-tuning gives {glue:text}`ft_auc_moco_small:.3f`
# against {glue:text}`ft_auc_base_small:.3f` ({glue:text}`ft_delta_small:+.3f`,
# {glue:text}`ft_delta_small_lo:+.3f` to {glue:text}`ft_delta_small_hi:+.3f`). The test split
# has only {glue:text}`n_test` images, so these intervals are wide.
#
# ## ROC curves with the fewest labels

# %%
curves = {}
for exp in ("shenzhen_linear", "shenzhen_finetune"):
    curves[f"{tables.EXPERIMENT_TITLES[exp]}, {tables.pct(f_small)}"] = {
        init: evaluate.load_predictions(paths.predictions, exp, backbone, init,
                                        f_small, 0)[1:]
        for init in backbones
    }
fig = plots.roc_panels(curves)
plt.show()

# %% [markdown]
# ## Summary
#
# - CheXpert-MoCo {glue:text}`backbone_name` transferred to tuberculosis: at
#   {glue:text}`frac_small` of the labels MoCo minus {glue:text}`baseline` is
#   {glue:text}`lin_delta_small:+.3f` AUC for the linear probe and {glue:text}`ft_delta_small:+.3f`
#   for fine-tuning.
# - Next: [all results beside the paper's](06_results.ipynb).
