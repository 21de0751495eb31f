"""mocoxr: MoCo v2 pretraining for chest X-rays, the pipeline behind the book.

In the paper's order: the packages ``data`` (CheXpert and Shenzhen readers, patient-level
splits, label-fraction subsets, the decoded-image cache) and ``phantom`` (synthetic radiographs
in the real on-disk formats); the method: ``augment``, ``models``, ``moco``, ``pretrain`` (its
files in ``checkpoint``, devices and batches in ``runtime``, torch.distributed in
``distributed``), ``pairs`` (and ``pairs_study``, which compares the rules); the evaluation:
``probe``, ``finetune``, ``evaluate``, ``experiments``, ``seeds``, ``weights`` (model card and
``mocoxr.load_backbone(path)``, which loads an exported backbone in one line), ``saliency``,
``calibration``; the report: ``plots``, ``tables``, ``notebook`` (what the notebooks call) and
the package ``book`` (profiles, runner, site). CONTRACT.md maps them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``mocoxr.load_backbone``, imported on first use (``import mocoxr`` stays light)."""
    if name == "load_backbone":
        from mocoxr.weights import load_backbone

        return load_backbone
    raise AttributeError(f"module 'mocoxr' has no attribute {name!r}")
