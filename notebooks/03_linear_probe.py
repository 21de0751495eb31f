# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Linear probing: how good is the representation itself?
#
# Freeze the encoder, compute one feature vector per image, and fit only a linear classifier on
# top. Whatever the classifier gets right, the representation already knew. This is the paper's
# cleanest test, and the one where it found the largest gain: with 0.1% of the labels, MoCo
# features beat ImageNet features by about 0.1 AUC.
#
# We compare the MoCo-pretrained encoder from [the previous notebook](02_pretrain.ipynb) with a
# **baseline** encoder that has not seen chest X-rays (random weights on CPU, ImageNet weights
# in the paper), on the same label-fraction subsets and the same test images. Each AUC comes
# with a bootstrap 95% CI over test images; with several draws per fraction the CI is that of
# the mean over draws. The *paired* bootstrap resamples the same test images for both encoders,
# which gives a much tighter CI for their difference than two separate CIs would suggest.

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
linear = {  # mocoxr.experiments.run_linear_experiment options
    "method": "logreg",  # "logreg" (fast, C chosen on validation AUC) or "adam" (the paper's)
    "fractions": None,  # None: every fraction prepared in 01_data
    "max_draws": None,  # None: every draw
    "batch_size": 64,  # feature extraction batch
    "probe_kwargs": {},  # extra mocoxr.probe.linear_probe options
    "standardize_on": "train_split",  # fit the feature scaler on all training images (no labels)
}
n_boot = 1000  # bootstrap replicates for every CI
embedding = "umap"  # 2-D map of the features: "umap" or "pca"
embedding_max = 800  # test images shown in the map

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from mocoxr import evaluate, experiments, notebook, plots, tables

paths = notebook.run_paths(run_dir)
notebook.glue("backbone_name", backbone)
folder = notebook.chexpert_folder(run_dir, data_dir, phantom, seed=seed)
ds = notebook.load_dataset(run_dir, "chexpert", folder, image_size, chexpert, seed=seed)
backbones = {"moco": str(paths.moco_backbone(backbone)), baseline: baseline}
print(backbones)

# %% [markdown]
# ## Probe every (init, label fraction, draw)
#
# Features are extracted once per encoder and cached; the probe's regularisation is chosen on
# the validation split; the per-image test scores are saved so every CI below can be recomputed
# without retraining.

# %%
res = experiments.run_linear_experiment(
    ds.prepared, ds.images, backbones, backbone, mean=ds.mean, std=ds.std,
    image_size=image_size, out_dir=paths.root, experiment="linear", n_boot=n_boot,
    seed=seed, device=device, **linear,
)
dl = experiments.compute_deltas(paths.root, "linear", backbone, ("moco", baseline),
                                n_boot=n_boot, seed=seed)
dl = dl[dl["label_fraction"].isin(res["label_fraction"].unique())]
summary = tables.mean_rows(res, "linear", backbone)
display(summary.pivot(index="label_fraction", columns="init", values="auc")
        .style.format("{:.3f}"))

# %% [markdown]
# ## AUC against label fraction
#
# One line per encoder, the band is the 95% CI of the mean AUC over draws.

# %%
fig = plots.auc_vs_fraction(res, "linear", backbone,
                            title=f"Linear probe on frozen {backbone} features")
plt.show()

# %% [markdown]
# ## The paired difference, MoCo minus baseline
#
# A CI that stays above zero means the gain is larger than what the choice of test images alone
# could produce.

# %%
fig = plots.delta_plot(dl, ["linear"], backbone)
plt.show()
signed = {"delta": "{:+.3f}", "ci_low": "{:+.3f}", "ci_high": "{:+.3f}"}
display(dl.style.format(signed).hide(axis="index"))

# %% tags=["hide-input"]
# numbers for the text below (frac_, delta_, auc_moco_, auc_base_ at small and large)
f_small, f_large = notebook.glue_effect(dl, summary, baseline).values()
notebook.glue("n_ci_above_zero", int((dl["ci_low"] > 0).sum()))
notebook.glue("n_fractions", int(len(dl)))

# %% [markdown]
# With {glue:text}`frac_small` of the labels the MoCo features reach AUC
# {glue:text}`auc_moco_small:.3f` against {glue:text}`auc_base_small:.3f` for the
# {glue:text}`baseline` encoder, a difference of {glue:text}`delta_small:+.3f`
# (95% CI {glue:text}`delta_small_lo:+.3f` to {glue:text}`delta_small_hi:+.3f`). With
# {glue:text}`frac_large` of the labels the difference is {glue:text}`delta_large:+.3f`
# ({glue:text}`delta_large_lo:+.3f` to {glue:text}`delta_large_hi:+.3f`).
#
# ## What the features look like
#
# A 2-D map (UMAP by default) of the test images' features from each encoder, coloured by the
# effusion label. Nothing here was trained on labels: if positives gather in one region of the
# MoCo map, the representation separates them on its own, which is what a linear probe with very
# few labels needs.

# %%
test_rows = ds.prepared.rows("test")
rng = np.random.default_rng(seed)
shown = np.sort(rng.choice(test_rows, size=min(embedding_max, len(test_rows)),
                           replace=False))
coords = {}
for init, spec in backbones.items():
    feats = experiments.dataset_features(ds.prepared, ds.images, backbone, init, spec,
                                         ds.mean, ds.std, image_size, paths.root,
                                         device=device, seed=seed)
    coords[init] = plots.embed_2d(feats[shown], method=embedding, seed=seed)
fig = plots.embedding_panels(coords, ds.prepared.labels(shown),
                             ("no effusion", "effusion"), method=embedding.upper())
plt.show()

# %% [markdown]
# ## ROC curves at the smallest and the largest label fraction
#
# First draw of each fraction, both encoders, same test images.

# %%
curves = {}
for f in (f_small, f_large):
    curves[f"{tables.pct(f)} of labels"] = {
        init: evaluate.load_predictions(paths.predictions, "linear", backbone, init,
                                        f, 0)[1:]
        for init in backbones
    }
fig = plots.roc_panels(curves)
plt.show()

# %% [markdown]
# **Explore every probe.** Pick an init, a label fraction and a draw: its ROC curve on the
# test set, with its AUC and 95% CI from `results.csv`. Nothing is retrained: the curve comes
# from the saved test scores. In a live kernel the controls redraw; here the first selection
# is shown.

# %% tags=["explorer"]
from mocoxr import explore

explore.models(ds, run_dir, "linear", backbone)

# %% [markdown]
# ## Summary
#
# - Linear probe on frozen {glue:text}`backbone_name` features: MoCo minus
#   {glue:text}`baseline` is {glue:text}`delta_small:+.3f` AUC at {glue:text}`frac_small` of the
#   labels and {glue:text}`delta_large:+.3f` at {glue:text}`frac_large`; the paired 95% CI lies
#   above zero at {glue:text}`n_ci_above_zero` of {glue:text}`n_fractions` label fractions.
# - The paper's shape is a large gain with few labels that shrinks as labels grow; compare the
#   two numbers above, and see [the results](06_results.ipynb) for the paper's values.
# - Next: [fine-tuning](04_finetune.ipynb) lets the labels change the encoder too.
