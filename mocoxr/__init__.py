"""mocoxr: MoCo v2 pretraining for chest X-rays, the pipeline behind the book.

Stages, one module each: ``data`` (readers, splits, label-fraction subsets), ``phantom``
(synthetic radiographs in the real on-disk formats), ``cache`` (decoded images), ``augment``,
``models``, ``moco``, ``pretrain`` (its files in ``checkpoint``, torch.distributed in
``distributed``, devices and batches in ``runtime``), ``probe``, ``finetune``, ``evaluate``,
``experiments`` (sweeps) and ``book`` (profiles, papermill runs, site build). ``weights`` holds the model card and
``mocoxr.load_backbone(path)``, which loads an exported backbone in one line.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``mocoxr.load_backbone``, imported on first use (``import mocoxr`` stays light)."""
    if name == "load_backbone":
        from mocoxr.weights import load_backbone

        return load_backbone
    raise AttributeError(f"module 'mocoxr' has no attribute {name!r}")
