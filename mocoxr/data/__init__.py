"""Datasets: readers, splits, label-fraction subsets, decoded images.

The modules: :mod:`~mocoxr.data.chexpert` (CSV reader, uncertain-label policies),
:mod:`~mocoxr.data.shenzhen` (PNG reader), :mod:`~mocoxr.data.nih` (NIH ChestX-ray14),
:mod:`~mocoxr.data.montgomery` (Montgomery TB set), :mod:`~mocoxr.data.labels` (a labels CSV
over PNG, JPEG or DICOM images; :mod:`~mocoxr.data.dicom` decodes DICOM),
:mod:`~mocoxr.data.formats` (which format a folder holds) with
:mod:`~mocoxr.data.prepare_formats`, :mod:`~mocoxr.data.splits` (splits, subsets, the
paper's fractions and draws), :mod:`~mocoxr.data.prepared` (manifests kept on disk) and
:mod:`~mocoxr.data.cache` (the decoded-image cache). This face holds what the rest of the
package, the notebooks and the benchmarks call.
"""

from mocoxr.data.cache import decode_image, image_stats, load_image_cache
from mocoxr.data.chexpert import (
    CHEXPERT_OBSERVATIONS,
    UNCERTAIN_POLICIES,
    apply_uncertain_policy,
    find_chexpert_dir,
    find_csv,
    read_chexpert_csv,
)
from mocoxr.data.formats import detect_format, prepare_dataset
from mocoxr.data.labels import read_labels
from mocoxr.data.montgomery import read_montgomery
from mocoxr.data.nih import NIH_FINDINGS, read_nih
from mocoxr.data.prepare_formats import prepare_labels, prepare_montgomery, prepare_nih
from mocoxr.data.prepared import PreparedDataset, prepare_chexpert, prepare_shenzhen
from mocoxr.data.shenzhen import read_shenzhen

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "NIH_FINDINGS",
    "UNCERTAIN_POLICIES",
    "PreparedDataset",
    "apply_uncertain_policy",
    "decode_image",
    "detect_format",
    "find_chexpert_dir",
    "find_csv",
    "image_stats",
    "load_image_cache",
    "prepare_chexpert",
    "prepare_dataset",
    "prepare_labels",
    "prepare_montgomery",
    "prepare_nih",
    "prepare_shenzhen",
    "read_chexpert_csv",
    "read_labels",
    "read_montgomery",
    "read_nih",
    "read_shenzhen",
]
