"""One radiograph: the public single-image renderer.

:func:`render_radiograph` splits the random stream into fixed sub-streams, draws the patient and
the acquisition, builds the :class:`~mocoxr.phantom.anatomy.Frame`, sums the view's attenuation
(:mod:`~mocoxr.phantom.frontal` or :mod:`~mocoxr.phantom.lateral`) and turns it into 8-bit
pixels with a tone curve, edge enhancement, quantum noise and a side marker (:func:`tone`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from mocoxr.phantom.anatomy import make_frame, sample_acquisition, sample_anatomy
from mocoxr.phantom.frontal import frontal_attenuation
from mocoxr.phantom.lateral import lateral_attenuation
from mocoxr.phantom.population import PhantomPopulation, make_population
from mocoxr.phantom.shapes import draw_marker, lowres_blur

#: Keys ``render_radiograph`` understands; each value is a severity in [0, 1] (0 = absent).
FINDING_KEYS: tuple[str, ...] = (
    "effusion_right", "effusion_left", "cardiomegaly", "enlarged_cardiomediastinum", "edema",
    "consolidation", "atelectasis", "pneumothorax", "lesion", "pleural_other", "fracture",
    "support_devices", "tb", "elevated_hemidiaphragm",
)


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an int (square) or a pair; at least 16 x 16."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ValueError(f"image size must be at least 16x16 pixels, got {h}x{w}")
    return h, w


def tone(A: np.ndarray, acq: dict, rng: np.random.Generator, s: float) -> np.ndarray:
    """Attenuation -> display intensity in [0, 1]: equalisation, tone curve, gamma, unsharp
    masking and quantum noise (stronger where fewer photons arrive, i.e. in bright regions)."""
    h, w = A.shape
    if acq["equalize"] > 0:  # large-kernel dynamic-range compression, as in CR/DR processing
        A = A - acq["equalize"] * (lowres_blur(A, 0.35 * s) - 0.6)
    c, wd = acq["center"], acq["width"]
    lo = 1.0 / (1.0 + math.exp(c / wd))
    hi = 1.0 / (1.0 + math.exp(-(1.6 - c) / wd))
    img = (1.0 / (1.0 + np.exp((c - A) * (1.0 / wd))) - lo) * (1.0 / (hi - lo))
    img = np.exp(np.log(np.clip(img, 1e-4, 1.0)) * acq["gamma"])
    if acq["sharpen"] > 0:
        blur = ndimage.gaussian_filter(img, max(0.8, 0.025 * s), truncate=2.0)
        img = img + acq["sharpen"] * 0.6 * (img - blur)
    sig = acq["noise"] * (0.4 + np.clip(img, 0.0, 1.0))
    img = img + sig * ((rng.random((h, w), dtype=np.float32) - 0.5) * 3.464)
    if min(h, w) >= 48:
        img = ndimage.gaussian_filter(img, 0.5, truncate=2.0)
    return np.clip(img, 0.0, 1.0)


def check_findings(findings: Mapping[str, float] | None) -> dict[str, float]:
    """A float copy of ``findings``; unknown keys or severities outside [0, 1] raise ValueError."""
    f = dict(findings or {})
    bad = sorted(set(f) - set(FINDING_KEYS))
    if bad:
        raise ValueError(f"unknown finding keys {bad}; expected a subset of {FINDING_KEYS}")
    out = {}
    for k, v in f.items():
        v = float(v)
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ValueError(f"finding {k!r} must be a severity in [0, 1], got {v!r}")
        out[k] = v
    return out


def render_radiograph(rng: np.random.Generator | int, size: int | Sequence[int],
                      findings: Mapping[str, float] | None = None, *, view: str = "frontal",
                      projection: str = "PA", supine: bool = False, female: bool | None = None,
                      anatomy_seed: int | None = None,
                      population: PhantomPopulation | Mapping[str, Any] | None = None) -> np.ndarray:
    """Render one synthetic chest radiograph as a uint8 array of shape ``size`` (H, W).

    ``findings`` maps keys of :data:`FINDING_KEYS` to severities in [0, 1] (0 or missing =
    absent); e.g. ``{"effusion_right": 0.1}`` is costophrenic blunting, 0.3 a meniscus, 0.8 a
    large effusion. ``view`` is ``"frontal"`` or ``"lateral"``; ``projection`` ``"PA"`` or
    ``"AP"`` (AP: magnified heart, poorer inspiration, more noise); ``supine`` makes an effusion
    layer as a basal haze. ``anatomy_seed`` fixes the patient's anatomy (same across studies);
    by default it is drawn from ``rng``. ``population`` (a :class:`PhantomPopulation` or a dict
    of overrides) supplies the nuisance ranges.

    The random stream is split into fixed sub-streams (anatomy, acquisition, one per finding,
    noise) before anything is drawn, so the same ``rng`` seed with and without a finding gives the
    same patient and exposure, differing only by that finding.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    h, w = as_hw(size)
    if view not in ("frontal", "lateral"):
        raise ValueError(f"view must be 'frontal' or 'lateral', got {view!r}")
    if projection not in ("PA", "AP"):
        raise ValueError(f"projection must be 'PA' or 'AP', got {projection!r}")
    f = check_findings(findings)
    population = make_population(population)
    seeds = rng.integers(0, 2**63 - 1, size=20)
    anat_rng = np.random.default_rng(int(seeds[0]) if anatomy_seed is None else int(anatomy_seed))
    if female is None:
        female = bool(anat_rng.random() < 1.0 - population.male_prob)
    anat = sample_anatomy(anat_rng, female, population.anatomy_variation)
    acq = sample_acquisition(np.random.default_rng(int(seeds[1])), population,
                             ap=projection == "AP", supine=supine)
    if view == "lateral":
        acq["tilt"] *= 0.5
        acq["rot"] = 0.0
    fr = make_frame(h, w, anat, acq, f, seeds[4:20])
    A = lateral_attenuation(fr) if view == "lateral" else frontal_attenuation(fr)
    noise_rng = np.random.default_rng(int(seeds[2]))
    img = tone(A, acq, noise_rng, min(h, w) / 2.0)
    if acq["marker"]:
        draw_marker(img, "L" if view == "lateral" or noise_rng.random() < 0.7 else "R",
                    acq["marker_right"], noise_rng)
    return np.round(img * 255.0).astype(np.uint8)
