"""Tests of the single-image renderer (mocoxr.phantom.render and the frontal/lateral views it
draws): determinism, input checks, and that the planted findings change the right part of the
image; plus a golden hash of every finding rendered, which pins the pixels bit for bit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mocoxr import phantom as ph

SIZE = (40, 32)  # (height, width): tiny, portrait like CheXpert-small
# Recorded at commit 501e7de (mocoxr/phantom.py as one 1,642-line module), numpy 2.4.6, scipy 1.17.1.
RENDER_SHA256 = "9e883fbd47f9dde3308f5b301396457492b9ff65ddff6e74da2ee65dda91c1b5"


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Pixels in a box given in the renderer's normalised image coordinates."""
    h, w = img.shape
    s = min(h, w) / 2
    cols = slice(int((w - 1) / 2 + x0 * s), int((w - 1) / 2 + x1 * s) + 1)
    rows = slice(int((h - 1) / 2 + y0 * s), int((h - 1) / 2 + y1 * s) + 1)
    return img[rows, cols].astype(float)


def test_render_shape_dtype_and_determinism():
    f = {"effusion_right": 0.3, "support_devices": 0.5}
    a = ph.render_radiograph(np.random.default_rng(5), SIZE, f)
    b = ph.render_radiograph(np.random.default_rng(5), SIZE, f)
    c = ph.render_radiograph(np.random.default_rng(6), SIZE, f)
    assert a.dtype == np.uint8 and a.shape == SIZE
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 20, "a radiograph has contrast (black background, bright mediastinum)"
    assert ph.render_radiograph(7, 24).shape == (24, 24)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown finding"):
        ph.render_radiograph(0, SIZE, {"effusion": 0.5})
    with pytest.raises(ValueError, match="severity"):
        ph.render_radiograph(0, SIZE, {"edema": 1.5})
    with pytest.raises(ValueError, match="view"):
        ph.render_radiograph(0, SIZE, {}, view="oblique")
    with pytest.raises(ValueError, match="size"):
        ph.render_radiograph(0, (8, 8), {})


@pytest.mark.parametrize("side,x0,x1", [("right", -0.75, -0.35), ("left", 0.35, 0.75)])
def test_effusion_opacifies_the_lung_base_graded(side, x0, x1):
    """Same patient and exposure with and without fluid: the lower-lateral lung gets brighter,
    more so for a larger effusion, while the upper zone is left alone."""
    size = (96, 80)
    gains_small, gains_large, upper = [], [], []
    for seed in range(6):
        imgs = {sev: ph.render_radiograph(np.random.default_rng(seed), size,
                                          {f"effusion_{side}": sev} if sev else {})
                for sev in (0.0, 0.15, 0.6)}
        base = lambda im: _region(im, x0, x1, 0.15, 0.5).mean()  # noqa: E731
        top = lambda im: _region(im, x0, x1, -0.6, -0.3).mean()  # noqa: E731
        gains_small.append(base(imgs[0.15]) - base(imgs[0.0]))
        gains_large.append(base(imgs[0.6]) - base(imgs[0.0]))
        upper.append(abs(top(imgs[0.15]) - top(imgs[0.0])))
    assert min(gains_small) > 1.0, gains_small
    assert np.mean(gains_large) > np.mean(gains_small) + 5, (gains_large, gains_small)
    assert np.mean(upper) < 0.25 * np.mean(gains_small), (upper, gains_small)


def test_findings_do_not_change_the_patient():
    """Fixed sub-streams: adding a finding elsewhere leaves the rest of the image alone."""
    a = ph.render_radiograph(np.random.default_rng(11), (64, 64), {})
    b = ph.render_radiograph(np.random.default_rng(11), (64, 64), {"effusion_left": 0.4})
    right_half = (slice(None), slice(0, 24))  # patient's right, far from a left effusion
    assert np.abs(a[right_half].astype(int) - b[right_half].astype(int)).mean() < 1.0


def test_tb_lives_in_the_upper_zones():
    size = (96, 96)
    up, low = [], []
    for seed in range(4):
        a = ph.render_radiograph(np.random.default_rng(seed), size, {})
        b = ph.render_radiograph(np.random.default_rng(seed), size, {"tb": 0.8})
        d = np.abs(b.astype(float) - a.astype(float))
        up.append(_region(d, -0.7, 0.7, -0.75, -0.2).mean())
        low.append(_region(d, -0.7, 0.7, 0.2, 0.5).mean())
    assert np.mean(up) > 3 * np.mean(low) and np.mean(up) > 1.0, (up, low)


def test_lateral_view_is_not_a_frontal():
    """A frontal film has a bright mediastinum between two dark lungs at mid-chest; a lateral
    one has a single lung field there (the spine lies posteriorly, at one side)."""
    def mediastinal_contrast(im):
        centre = _region(im, -0.06, 0.06, -0.4, 0.0).mean()
        lungs = (_region(im, -0.55, -0.35, -0.4, 0.0).mean() + _region(im, 0.35, 0.55, -0.4, 0.0).mean()) / 2
        return centre - lungs
    fr = [mediastinal_contrast(ph.render_radiograph(s, (64, 52), {})) for s in range(4)]
    la = [mediastinal_contrast(ph.render_radiograph(s, (64, 52), {}, view="lateral")) for s in range(4)]
    assert min(fr) > 25 and max(la) < 15, (fr, la)
    lat = ph.render_radiograph(0, (64, 52), {}, view="lateral")
    assert not np.array_equal(lat, ph.render_radiograph(0, (64, 52), {}))


def test_renderer_survives_random_populations():
    recs = ph.sample_chexpert_records(60, seed=3)
    for r in recs:
        img = ph.render_radiograph(np.random.default_rng(r["image_seed"]), (24, 20), r["findings"],
                                   view=r["view"].lower(), projection=r["projection"],
                                   supine=r["supine"], female=r["female"],
                                   anatomy_seed=r["anatomy_seed"])
        assert img.shape == (24, 20) and img.dtype == np.uint8


def test_every_finding_renders_unchanged():
    """Every finding key at two severities, frontal and lateral, upright PA and supine AP,
    several seeds (the branches a small tree may miss: pleural thickening, cavities, devices)."""
    h = hashlib.sha256()
    cases = [{}] + [{k: v} for k in ph.FINDING_KEYS for v in (0.3, 0.9)]
    for i, findings in enumerate(cases):
        for view, projection, supine in (("frontal", "PA", False), ("frontal", "AP", True),
                                         ("lateral", "PA", False), ("lateral", "AP", True)):
            for seed in range(3):
                img = ph.render_radiograph(np.random.default_rng([seed, i]), (60, 50), findings,
                                           view=view, projection=projection, supine=supine)
                h.update(img.tobytes())
    assert h.hexdigest() == RENDER_SHA256
