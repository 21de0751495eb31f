# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Your own data
#
# The book runs on the embedded synthetic data by default, and on real chest X-rays with one
# command. Two folders can be given: the **pretraining and target data** (`--data-dir`: the
# unlabelled pool for MoCo and the labelled set the linear probe and fine-tuning are scored
# on) and the **transfer data** (`--transfer-dir`, alias `--shenzhen-dir`). The format is told
# from the files; a folder in none of them gets one error listing what was looked for.
#
# | role | formats | command |
# |---|---|---|
# | pretraining / target | CheXpert, NIH ChestX-ray14, a labels CSV | `python -m mocoxr.book run --profile quick --data-dir D` |
# | transfer | Shenzhen, Montgomery, a labels CSV | `python -m mocoxr.book run --profile quick --transfer-dir D` |
#
# - **CheXpert**: `CheXpert-v1.0-small/` with `train.csv`, `valid.csv` and the image folders
#   (the [data chapter](01_data.ipynb) shows it); uncertain labels follow the profile's policy.
# - **NIH ChestX-ray14**: `Data_Entry_2017_v2020.csv` (or `Data_Entry_2017.csv`), the
#   `images_001/images/` ... folders as the archives unpack (or one flat `images/`), and the
#   official `train_val_list.txt` / `test_list.txt`, which then give the patient-disjoint test
#   set. The target is any of the 14 findings (`Effusion` is the paper's pleural effusion; the
#   profile's `Pleural Effusion` maps to it); views come from `View Position`. The labels were
#   mined from reports and have **no uncertain class**, so the uncertain-label policy changes
#   nothing.
# - **Shenzhen** and **Montgomery**: `CXR_png/` with `CHNCXR_NNNN_L.png` or `MCUCXR_NNNN_L.png`
#   (L = 1 tuberculosis); Montgomery's PNGs hold 12 bits in 16 (8-bit PNGs are read too). Both
#   use the 65/15/20 split and the 6.25%, 25%, 100% label fractions.
# - **A labels CSV**: `labels.csv` with `path,label` and optional `patient`, `study` and `view`
#   columns, paths relative to the CSV, images in PNG, JPEG or **DICOM**. DICOM is read with
#   pydicom: the VOI LUT or window is applied, 12/16-bit data scaled to 8 bits, MONOCHROME1
#   inverted. Images are split by patient; **without a `patient` column the split is per image**
#   and two images of one patient can land in training and test (leakage), which a warning says.
#
# Below, the phantom writes a small folder of three of these formats, exactly as they are on
# disk, and the package reads each one the way a run does.

# %% tags=["parameters"]
run_dir = "../runs/interactive"  # run folder shared by all notebooks (the runner sets it)
n_patients = 30  # patients (NIH, labels CSV) or images (Montgomery) of each example folder
image_size = 64  # pixels of the example images
seed = 0

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from mocoxr import data, notebook, own_data, plots

root = notebook.run_paths(run_dir).data / "own"
examples = own_data.example_folders(root, n_patients, image_size, seed)
options = {"fractions": [0.5, 1.0], "draws": [2, 1]}
for name, (role, folder) in examples.items():
    out = root / "manifests" / folder.name
    fmt, manifest = own_data.manifest_preview(role, folder, out, options, seed)
    display(Markdown(f"### {name}\n\nThe folder (detected: **{fmt}**):"))
    print(own_data.folder_listing(folder))
    cmd = own_data.command(role, "path/to/" + folder.name)
    display(Markdown(f"The command: `{cmd}`. The first rows of the manifest it becomes:"))
    display(manifest)

# %% [markdown]
# Every manifest has the same columns the rest of the book reads: `path`, `patient`, `label`
# and `split`, plus `study`, `view` and `raw_label` where the format has them (NIH adds the
# `projection`, its `Finding Labels` and the official split). The labels CSV of the example:

# %%
labels = data.formats.label_file_head(examples["labels CSV (DICOM)"][1])
display(labels)

# %% [markdown]
# ## The same pipeline for every format
#
# The images go through one decoder: 8-bit and 16-bit PNG, JPEG and DICOM all become the same
# 8-bit gray picture. One image of each example, as the models see it (the DICOM files
# alternate MONOCHROME2 and MONOCHROME1; the second is stored inverted and comes out the same
# way up):

# %%
shown, titles = [], []
for name, (role, folder) in examples.items():
    m = data.prepare_dataset(role, folder, root / "manifests" / folder.name, options,
                             seed).manifest
    for r in range(2):
        shown.append(data.decode_image(m["path"].iloc[r], image_size))
        titles.append(f"{name.split(' (')[0]}\n{m['path'].iloc[r].rsplit('/', 1)[-1]}")
fig = plots.image_grid(shown, titles, ncols=6)
plt.show()
