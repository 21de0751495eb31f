"""Golden hashes of the phantom generator (byte-identical trees): it must write byte-identical trees across refactors
(same random draws in the same order, same float operations). A change here is a change of the
generated data: bump ``GENERATOR_VERSION`` and record the new hashes on purpose."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mocoxr import phantom as ph

# Recorded at commit 501e7de (mocoxr/phantom.py as one 1,642-line module), numpy/Pillow of .venv.
CHEXPERT_TREE_SHA256 = "51ae07143e40834ec90c8f627de555956c9ea8b12958f40b57e587bf992d93cb"
SHENZHEN_TREE_SHA256 = "9c58db6fb0e4e05a09cd0683768e827ac0c83210cec35794f55461649fe2d7c0"
RENDER_SHA256 = "5fe3be8e3c61f1dd86e019e795d138f7497af0da61300dce933a7d3a9bca02a0"


def tree_sha256(root: Path) -> str:
    """SHA-256 over (relative path, bytes) of every file under ``root``, in sorted path order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix().encode()
        data = p.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def test_chexpert_tree_bytes_are_unchanged(tmp_path):
    """12 train patients (several studies, AP/PA, supine, lateral views) and 6 valid patients."""
    ph.generate_chexpert_tree(tmp_path, n_patients=12, n_valid_patients=6, image_size=48, seed=0)
    assert tree_sha256(tmp_path) == CHEXPERT_TREE_SHA256


def test_shenzhen_tree_bytes_are_unchanged(tmp_path):
    """Both classes, TB findings, gray and RGB PNGs, rendered by two worker processes."""
    ph.generate_shenzhen_tree(tmp_path, n_images=10, image_size=(52, 48), seed=0, workers=2,
                              population={"shenzhen_rgb_fraction": 0.5})
    assert tree_sha256(tmp_path) == SHENZHEN_TREE_SHA256


def test_every_finding_renders_unchanged():
    """Every finding key at two severities, frontal PA/AP/supine and lateral, several seeds
    (covers the branches a small tree may miss: pleural thickening, cavities, each device)."""
    h = hashlib.sha256()
    cases = [({}, 0.0)] + [({k: v}, v) for k in ph.FINDING_KEYS for v in (0.3, 0.9)]
    for i, (findings, _) in enumerate(cases):
        for view, projection, supine in (("frontal", "PA", False), ("frontal", "AP", True),
                                         ("lateral", "AP", False)):
            for seed in range(3):
                img = ph.render_radiograph(np.random.default_rng([seed, i]), (60, 50), findings,
                                           view=view, projection=projection, supine=supine)
                h.update(img.tobytes())
    assert h.hexdigest() == RENDER_SHA256
