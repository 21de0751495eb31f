"""Datasets: CheXpert and Shenzhen readers, splits, label-fraction subsets, decoded images.

The modules: :mod:`~mocoxr.data.chexpert` (CSV reader, uncertain-label policies),
:mod:`~mocoxr.data.shenzhen` (PNG reader), :mod:`~mocoxr.data.splits` (splits, subsets, the
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
from mocoxr.data.prepared import PreparedDataset, prepare_chexpert, prepare_shenzhen
from mocoxr.data.shenzhen import read_shenzhen

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "UNCERTAIN_POLICIES",
    "PreparedDataset",
    "apply_uncertain_policy",
    "decode_image",
    "find_chexpert_dir",
    "find_csv",
    "image_stats",
    "load_image_cache",
    "prepare_chexpert",
    "prepare_shenzhen",
    "read_chexpert_csv",
    "read_shenzhen",
]
