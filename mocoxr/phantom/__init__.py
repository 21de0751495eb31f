"""Synthetic chest radiographs ("phantom") written in the real CheXpert and Shenzhen formats.

The book must run on a fresh machine without the real datasets, so this package draws a
population of patients, studies and findings, renders each view as a radiograph-looking 8-bit
image, and writes the same on-disk trees the real datasets ship as:

- :func:`generate_chexpert_tree`: ``CheXpert-v1.0-small/{train.csv, valid.csv, train/..., valid/...}``
  with the real 19 columns, labels 1.0 / 0.0 / -1.0 / blank in proportions close to the real
  ``train.csv`` (``valid.csv``: consensus-read 1.0 / 0.0 labels, distinct patients from 64541);
- :func:`generate_shenzhen_tree`: ``CXR_png/CHNCXR_NNNN_L.png`` (about half tuberculosis);
- :func:`generate_nih_tree`, :func:`generate_montgomery_tree` and :func:`generate_labels_tree`
  (modules ``formats`` and ``labelled``): NIH ChestX-ray14, Montgomery (16-bit PNGs) and a
  labelled folder (``labels.csv`` over PNG, JPEG or DICOM MONOCHROME1/MONOCHROME2);
- :func:`render_radiograph`: the single-image renderer (frontal or lateral);
- :func:`effusion_masks`: where a tree's images show their effusion (saliency ground truth).

Rendering is analytic and vectorised: anatomy is a set of implicit shapes (signed-distance-like
functions of normalised coordinates) summed into an attenuation map, which a random tone curve,
edge enhancement and noise turn into pixels. Coordinates are normalised by half the shorter image
side, so a portrait image (CheXpert-small is about 320 x 390) shows more neck and abdomen while the
lung bases stay inside the centred square crop that the image cache takes.

Every population parameter lives in :class:`PhantomPopulation`. Images are derived from per-image
seeds (the tree seed, split, patient, study and view), so they do not depend on generation order
or on the number of patients. The hidden truth (finding severities per image) is written next to
the CSVs as ``phantom_truth.csv``.

Modules, in the order an image is made: ``population`` (parameters), ``records`` (patients,
studies, findings, labels), ``shapes`` (drawing primitives), ``anatomy`` (patient, acquisition,
the shared frame and chest geometry), ``frontal`` and ``findings`` (the frontal view), ``lateral``,
``render`` (one image), ``trees`` (the on-disk trees), ``masks`` (effusion ground truth).
"""

from mocoxr.phantom.formats import generate_montgomery_tree, generate_nih_tree
from mocoxr.phantom.labelled import generate_labels_tree
from mocoxr.phantom.masks import effusion_masks
from mocoxr.phantom.population import DEFAULT_POPULATION, PhantomPopulation, make_population
from mocoxr.phantom.records import sample_chexpert_records, sample_shenzhen_records
from mocoxr.phantom.render import FINDING_KEYS, render_radiograph
from mocoxr.phantom.trees import generate_chexpert_tree, generate_shenzhen_tree

__all__ = [
    "DEFAULT_POPULATION",
    "FINDING_KEYS",
    "PhantomPopulation",
    "effusion_masks",
    "generate_chexpert_tree",
    "generate_labels_tree",
    "generate_montgomery_tree",
    "generate_nih_tree",
    "generate_shenzhen_tree",
    "make_population",
    "render_radiograph",
    "sample_chexpert_records",
    "sample_shenzhen_records",
]
