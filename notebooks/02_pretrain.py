# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # MoCo pretraining: learning from unlabelled X-rays
#
# Labels are expensive; chest X-rays are not. MoCo (momentum contrast) learns a representation
# from images alone: it shows the network two randomly augmented *views* of the same X-ray and
# trains it to tell which of many stored views (a queue of keys from earlier batches) came from
# the same image. Whatever survives the augmentations (anatomy, and pathology such as a
# blunted costophrenic angle) is what the representation has to keep.
#
# The paper's recipe (MoCo v2 with X-ray-specific augmentations, Adam at 1e-4, batch 16,
# 20 epochs from ImageNet weights, temperature 0.2) is the default of
# `mocoxr.pretrain.PretrainConfig`; the parameters below shrink it to what a laptop CPU can do
# in a few minutes.

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
image_size = 64  # model input size in pixels (the paper: 320)
seed = 0
device = "cpu"  # "cpu", "cuda" or "auto"
backbone = "resnet18"  # resnet18, resnet50 or densenet121
pretrain = {  # mocoxr.pretrain.PretrainConfig fields (besides backbone, image_size, seed, device)
    "init": "random",  # the paper starts from "imagenet" (needs the torchvision weights offline)
    "batch_size": 32,
    "epochs": 100,  # bounded by max_steps
    "max_steps": 500,  # about 13 epochs of the embedded data; longer helps most
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "lr_drops": [0.6, 0.9],
    "queue_size": 512,  # fewer keys than training images (a larger queue hurt on ~1,230 images)
    "momentum": 0.99,
    "temperature": 0.2,
    "dim": 128,
    "mlp": True,
    "bn_splits": 4,  # shuffle-BN on one device: BatchNorm over 4 groups, keys shuffled across them
    "augment": {},  # mocoxr.augment.AugmentConfig overrides (rotation, flip, crop, ...)
    "monitor_every": 100,  # steps between k-NN monitor evaluations (0: off)
    "checkpoint_every_steps": None,
    "amp": "auto",
    "channels_last": "auto",
    "compile": False,
}
monitor = {"k": 20, "max_train": 1000, "max_eval": 500}  # k-NN monitor: neighbours, labelled bank, scored val images

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mocoxr import augment, moco, notebook, plots, runtime
from mocoxr import pretrain as pretraining  # `pretrain` is the parameters' dict

paths = notebook.run_paths(run_dir)
notebook.glue("backbone_name", backbone)
folder = notebook.chexpert_folder(run_dir, data_dir, phantom, seed=seed)
ds = notebook.load_dataset(run_dir, "chexpert", folder, image_size, chexpert, seed=seed)
train_rows = ds.prepared.rows("train")
cfg = pretraining.PretrainConfig(backbone=backbone, image_size=image_size, seed=seed,
                                 device=device, **pretrain)
print(cfg)

# %% [markdown]
# ## The two views MoCo compares
#
# Each training image is augmented twice, independently: a small rotation (up to 10 degrees),
# a horizontal flip, and a crop that keeps the lung bases (where effusion collects) inside the
# frame. No colour jitter, grayscale or blur, which suit natural images but would erase what a
# radiologist looks at. The first view goes through the *query* encoder, the second through the
# slowly moving *key* encoder; the loss rewards the query for matching its own key.

# %%
aug_cfg = augment.AugmentConfig(out_size=image_size, **pretrain["augment"])
rng = np.random.default_rng(seed)
show = np.sort(rng.choice(train_rows, size=6, replace=False))
x = torch.from_numpy(np.ascontiguousarray(ds.images[show]))
gen = torch.Generator().manual_seed(seed)
view_q = augment.augment_batch(x, aug_cfg, gen)
view_k = augment.augment_batch(x, aug_cfg, gen)
fig = plots.augmented_views(augment.resize_batch(x, image_size).numpy(), view_q.numpy(),
                            view_k.numpy())
plt.show()

# %% [markdown]
# **Try the augmentations.** Pick a training image and move the sliders for the smallest crop,
# the largest rotation and the flip probability: the two views are drawn by the training code
# itself (`augment.augment_batch`, its generator seeded by the seed and the step as in
# `pretrain_step`), so each step shows what MoCo would compare for this image. In a live
# kernel the controls redraw; here the pretraining settings at step 0 are shown.

# %% tags=["explorer"]
from mocoxr import explore

explore.augmentations(ds, cfg)

# %% [markdown]
# ## The method in three pieces
#
# Before the loop, the three ideas it repeats, each run on a small batch.
#
# **The loss.** Each query $q$ (the embedding of the first view) is compared with its own key
# $k_+$ (the embedding of the second view) and with the $K$ keys in the queue, all unit vectors.
# The logits are the dot products divided by a temperature $T$, with the positive in column 0,
# so InfoNCE is a cross-entropy whose target is always class 0: a $(1 + K)$-way classification
# in which the right answer is "my own other view". A query that matches its key gets a low
# loss; one that cannot tell its key from the queue pays about $\ln(K+1)$.

# %%
def unit(n):  # n random unit vectors of dimension D = 8 (draws from g)
    return torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)


g = torch.Generator().manual_seed(0)
q = unit(4)  # 4 queries, D = 8
queue = unit(16)  # K = 16 keys
k_random = unit(4)
logits = moco.moco_logits(q, q, queue, temperature=0.2)  # the key equal to its query
print("logits", tuple(logits.shape), "= (batch, 1 + K); column 0 = q.k+/T:",
      torch.allclose(logits[:, 0], (q * q).sum(1) / 0.2))
print(f"loss, key = query: {moco.moco_loss(q, q, queue, 0.2):.3f}; random key: "
      f"{moco.moco_loss(q, k_random, queue, 0.2):.3f}; ln(K+1) = {np.log(17):.3f}")

# %% [markdown]
# **The momentum update.** The keys come from a second encoder that receives no gradients: after
# every step it moves a fraction $1 - m$ of the way towards the query encoder,
# $\theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q$. With $m$ close to 1 it changes slowly, so the
# keys in the queue, computed over many steps, stay comparable with each other.

# %%
query_net, key_net = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
before = key_net.weight.detach().clone()
moco.update_momentum(query_net, key_net, m=cfg.momentum)
moved = key_net.weight.detach() - before
print(f"m = {cfg.momentum}: the key weights moved by (1 - m) x (query - key):",
      torch.allclose(moved, (1 - cfg.momentum) * (query_net.weight.detach() - before)))

# %% [markdown]
# **One training step** (`mocoxr.pretrain.pretrain_step`, on a batch of real training images):
# two augmented views, the query and key forward passes (the keys with shuffle-BN as
# configured), the loss against the queue, backward and an Adam step for the query encoder, the
# momentum update of the key encoder, and the new keys pushed into the queue. Every random draw
# derives from `(seed, step)`, which is what lets the loop below resume exactly. At step 0 the
# key encoder is still a copy of the query encoder and the queue holds random unit vectors, easy
# to tell from the true key: the loss starts below chance, $\ln(K+1)$, and rises as the queue
# fills with real keys (the curves below).

# %%
dev = runtime.resolve_device(cfg.device)
net, optimizer = pretraining.make_model(cfg, dev)
first_rows = np.sort(train_rows[:cfg.batch_size])
batch = torch.from_numpy(np.ascontiguousarray(ds.images[first_rows]))
first_weight = net.encoder_q.conv1.weight.detach().clone()
loss0 = pretraining.pretrain_step(net.train(), optimizer, cfg, step=0, lr=cfg.lr,
                                  x=batch.to(dev), xk=batch.to(dev),
                                  mean=ds.mean, std=ds.std)
changed = not torch.equal(first_weight, net.encoder_q.conv1.weight)
print(f"loss {float(loss0):.3f} (chance ln(K+1) = {np.log(cfg.queue_size + 1):.3f})")
print(f"queue pointer {int(net.queue_ptr)} (= batch {cfg.batch_size}); "
      f"query encoder changed: {changed}")
del net, optimizer

# %% [markdown]
# ## Pretraining
#
# Pretraining uses every image of the training split and none of its labels. The loop writes a
# checkpoint each epoch and resumes from it, so an interrupted run picks up where it stopped, and
# a finished run is simply loaded. Every `monitor_every` steps a **monitor** embeds a labelled
# sample of training images and scores validation images two ways: by the labels of their
# nearest neighbours (k-NN) and by a logistic regression fitted on the sample (linear). It is a
# cheap, label-using check that the label-free training is learning something about effusion;
# its labels never reach the encoder.
#
# One detail matters on a single device. BatchNorm normalises a batch with its own statistics,
# and the key batch holds the same images as the query batch: the encoder could find its
# positive key by those shared statistics instead of by what the image shows. MoCo's
# *shuffle-BN* prevents this across GPUs; here `bn_splits` simulates it on one device: every
# BatchNorm normalises groups of the batch separately, and the keys are shuffled across the
# groups (see the [methods](../methods.md)). Evaluation uses ordinary BatchNorm, and the exported
# weights are a plain torchvision model.

# %%
out = notebook.pretrain_dir(run_dir, cfg, ds)
mon = (notebook.knn_monitor(ds, seed=seed, **monitor)
       if pretrain["monitor_every"] else None)
t0 = time.time()
source = "embedded phantoms (not CheXpert)" if data_dir is None else Path(data_dir).name
result = pretraining.pretrain(ds.images, train_rows, cfg, out, ds.mean, ds.std,
                              monitor=mon,
                              data={"dataset": source, "fingerprint": ds.fingerprint})
minutes = (time.time() - t0) / 60
exported = notebook.record_pretrained(run_dir, backbone, out)
log = result["log"]
what = "loaded finished run" if result["cached"] else "trained"
print(f"{what}: {result['step']} steps in {minutes:.1f} min")
print(f"backbone: {exported.relative_to(paths.root)}")

# %%
fig = plots.pretraining_curves(log)
plt.show()

# %% tags=["hide-input"]
# numbers for the text below
loss = log["loss"].dropna()
notebook.glue("steps", int(result["step"]))
notebook.glue("n_pretrain_images", int(len(train_rows)))
notebook.glue("loss_first", float(loss.iloc[: max(1, len(loss) // 10)].mean()))
notebook.glue("loss_last", float(loss.iloc[-max(1, len(loss) // 10):].mean()))
notebook.glue("chance_loss", float(np.log(cfg.queue_size + 1)))
notebook.glue("queue_size", int(cfg.queue_size))
for name in ("knn", "linear"):
    col = f"{name}_auc"
    curve = log[col].dropna() if col in log else pd.Series(dtype=float)
    notebook.glue(f"{name}_first", float(curve.iloc[0]) if len(curve) else float("nan"))
    notebook.glue(f"{name}_last", float(curve.iloc[-1]) if len(curve) else float("nan"))
    notebook.glue(f"{name}_best", float(curve.max()) if len(curve) else float("nan"))

# %% [markdown]
# ## Loading the exported backbone
#
# Beside the weights the run writes a model card, and `mocoxr.load_backbone` returns the
# torchvision model in eval mode as an embedding model (the classifier replaced by the
# identity: pooled features), with the card's preprocessing attached:

# %%
import mocoxr

model = mocoxr.load_backbone(exported)
with torch.no_grad():
    emb = model(model.preprocess(ds.images[show]))  # gray uint8 images in, embeddings out
print(model.preprocess, "->", tuple(emb.shape))
print({k: model.card[k] for k in ("backbone", "input_size", "steps", "mocoxr_version")})
notebook.glue("exported_rel", str(exported.relative_to(paths.root)))
notebook.glue("hub_name", f"moco_{backbone}")
notebook.glue("tv_call", f"torchvision.models.{backbone}().load_state_dict("
          "torch.load(path, weights_only=True))")

# %% [markdown]
# Chance level for this loss is $\ln(K+1)$ = {glue:text}`chance_loss:.2f` for a queue of
# K = {glue:text}`queue_size` keys. Over {glue:text}`steps` steps the mean loss went from
# {glue:text}`loss_first:.2f` (first tenth of the steps) to {glue:text}`loss_last:.2f` (last
# tenth). Early on the queue still holds its random initial keys, which are easy to tell from
# the true key, so the loss can *rise* while the queue fills with real keys, and falls
# only once the encoder learns. The monitor's validation AUC went from
# {glue:text}`linear_first:.3f` (the untrained encoder) to {glue:text}`linear_last:.3f` for the
# linear read-out (best {glue:text}`linear_best:.3f`) and from {glue:text}`knn_first:.3f` to
# {glue:text}`knn_last:.3f` for k-NN (best {glue:text}`knn_best:.3f`); 0.5 is chance. Expect
# a dip first: the random encoder's features already carry some intensity information, and
# MoCo reorganises them before it builds its own.
#
# ## Summary
#
# - MoCo v2 pretraining of a {glue:text}`backbone_name` on {glue:text}`n_pretrain_images`
#   unlabelled training images: loss {glue:text}`loss_first:.2f` → {glue:text}`loss_last:.2f`,
#   monitor validation AUC, linear {glue:text}`linear_first:.3f` → {glue:text}`linear_last:.3f`,
#   k-NN {glue:text}`knn_first:.3f` → {glue:text}`knn_last:.3f`.
# - The exported backbone, {glue:text}`exported_rel` in the run folder, is a plain
#   torchvision state dict with its model card beside it (`backbone.card.json`: input size,
#   normalisation, recipe, data, steps, monitor AUCs, date, sha256). One line loads it ready
#   to use, as the cell above does: `model = mocoxr.load_backbone(path)`, then
#   `model(model.preprocess(images))` gives the embeddings of gray images (uint8, or floats in
#   [0, 1]); `head="classifier"` gives the plain torchvision classifier for fine-tuning;
#   `torch.hub.load(repo, name, source="local", weights=path)` with name
#   {glue:text}`hub_name` does the same, and {glue:text}`tv_call` loads the bare weights.
# - Next: is this representation better than the baseline when labels are scarce?
#   [Linear probing](03_linear_probe.ipynb) answers without touching the encoder.
