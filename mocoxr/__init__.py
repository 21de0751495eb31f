"""mocoxr: MoCo v2 pretraining for chest X-rays, the pipeline behind the book.

Stages, one module each: ``data`` (readers, splits, label-fraction subsets), ``phantom``
(synthetic radiographs in the real on-disk formats), ``cache`` (decoded images), ``augment``,
``models``, ``moco``, ``train``, ``evaluate``, ``experiments`` (sweeps) and ``book`` (profiles,
papermill runs, site build).
"""

__version__ = "0.1.0"
