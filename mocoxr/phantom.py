"""Synthetic chest radiographs ("phantom") written in the real CheXpert and Shenzhen formats.

The book must run on a fresh machine without the real datasets, so this module draws a
population of patients, studies and findings, renders each view as a radiograph-looking 8-bit
image, and writes the same on-disk trees the real datasets ship as:

- ``generate_chexpert_tree``: ``CheXpert-v1.0-small/{train.csv, valid.csv, train/..., valid/...}``
  with the real 19 columns, labels 1.0 / 0.0 / -1.0 / blank in proportions close to the real
  ``train.csv`` (``valid.csv``: consensus-read 1.0 / 0.0 labels, distinct patients from 64541);
- ``generate_shenzhen_tree``: ``CXR_png/CHNCXR_NNNN_L.png`` (about half tuberculosis);
- ``render_radiograph``: the single-image renderer (frontal or lateral).

Rendering is analytic and vectorised: anatomy is a set of implicit shapes (signed-distance-like
functions of normalised coordinates) summed into an attenuation map, which a random tone curve,
edge enhancement and noise turn into pixels. Coordinates are normalised by half the shorter image
side, so a portrait image (CheXpert-small is about 320 x 390) shows more neck and abdomen while the
lung bases stay inside the centred square crop that the image cache takes.

Every population parameter (prevalences, label noise, effusion severity, nuisance ranges) lives in
:class:`PhantomPopulation`; the defaults are documented there and can be overridden by the caller.
Images are derived from per-image seeds (a ``numpy.random.SeedSequence`` of the tree seed, split,
patient, study and view), so they do not depend on generation order or on the number of patients.
The hidden truth (finding severities per image) is written next to the CSVs as
``phantom_truth.csv`` for analyses such as AUC by effusion severity.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "CHEXPERT_COLUMNS",
    "CHEXPERT_OBSERVATIONS",
    "FINDING_KEYS",
    "PhantomPopulation",
    "DEFAULT_POPULATION",
    "make_population",
    "render_radiograph",
    "sample_chexpert_records",
    "sample_shenzhen_records",
    "generate_chexpert_tree",
    "generate_shenzhen_tree",
    "label_grid",
]

GENERATOR_VERSION = 1  # bump when rendering or sampling changes, so cached trees are rebuilt

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_OBSERVATIONS

#: Keys ``render_radiograph`` understands; each value is a severity in [0, 1] (0 = absent).
FINDING_KEYS: tuple[str, ...] = (
    "effusion_right", "effusion_left", "cardiomegaly", "enlarged_cardiomediastinum", "edema",
    "consolidation", "atelectasis", "pneumothorax", "lesion", "pleural_other", "fracture",
    "support_devices", "tb", "elevated_hemidiaphragm",
)

VALID_FIRST_PATIENT = 64541  # real CheXpert: train patients 1..64540, valid from 64541
CHEXPERT_DIRNAME = "CheXpert-v1.0-small"
SIDECAR = "phantom.json"


# --------------------------------------------------------------------------------------------
# Population parameters
# --------------------------------------------------------------------------------------------

def _label_model(pos: float, unc: float, neg: float, unc_absent: float = 0.0) -> dict[str, float]:
    """Report-label probabilities: P(1.0 | present), P(-1.0 | present), P(0.0 | absent),
    P(-1.0 | absent); the rest is blank (not mentioned)."""
    return {"pos": pos, "unc": unc, "neg": neg, "unc_absent": unc_absent}


@dataclass(frozen=True)
class PhantomPopulation:
    """All knobs of the synthetic population, in one place (tune here, not in the renderer).

    Prevalences are per study, before the correlations below (so the realised marginals differ a
    little; ``sample_chexpert_records`` lets you measure them). Label models give the chance that
    the "report" mentions a finding as 1.0 / -1.0 when present and 0.0 / -1.0 when absent; the rest
    is blank, like the CheXpert labeler output. Defaults were chosen so the frontal ``train.csv``
    marginals are near the real ones (e.g. Pleural Effusion 1.0 ~40%, -1.0 ~5%, 0.0 ~13%,
    blank ~42%; Support Devices 1.0 ~55%).

    Change it with ``dataclasses.replace(DEFAULT_POPULATION, ...)`` or pass a dict of overrides
    (see :func:`make_population`) wherever a ``population`` is accepted, e.g.
    ``{"prevalence": {"effusion": 0.3}, "noise_range": [0.01, 0.05]}``.
    """

    # --- studies and views (CheXpert) --------------------------------------------------------
    mean_studies_per_patient: float = 2.2   # geometric, truncated at max_studies (real mean ~2.9)
    max_studies: int = 8
    lateral_prob: float = 0.17              # a study also has a lateral view (real: 17%)
    second_frontal_prob: float = 0.03       # a study has a second frontal view
    valid_lateral_prob: float = 0.16        # real valid.csv: 32 laterals / 200 studies
    male_prob: float = 0.59
    age_mean: float = 61.0
    age_sd: float = 17.0
    icu_prob: float = 0.45                  # latent acuity; drives devices, AP films, effusion ...
    ap_prob_icu: float = 0.97               # AP (portable) film given an ICU patient
    ap_prob_ward: float = 0.70
    supine_prob_ap: float = 0.45            # AP films taken supine: effusion layers as a haze
    patient_propensity_shape: float = 1.5   # Gamma(k, 1/k) per patient and finding: clustering

    # --- findings: base prevalence and odds ratio for ICU patients ----------------------------
    prevalence: Mapping[str, float] = field(default_factory=lambda: {
        "effusion": 0.46, "cardiomegaly": 0.16, "enlarged_cardiomediastinum": 0.08,
        "edema": 0.33, "consolidation": 0.18, "atelectasis": 0.28, "pneumothorax": 0.10,
        "lesion": 0.05, "pleural_other": 0.02, "fracture": 0.04, "support_devices": 0.64,
        "other_opacity": 0.12,
    })
    icu_odds: Mapping[str, float] = field(default_factory=lambda: {
        "effusion": 2.0, "edema": 1.8, "consolidation": 1.5, "atelectasis": 1.8,
        "pneumothorax": 1.8, "support_devices": 6.0, "cardiomegaly": 1.3,
    })
    # odds multipliers between findings (mild, realistic correlations)
    effusion_odds_given_edema: float = 2.0
    effusion_odds_given_cardiomegaly: float = 1.5
    edema_odds_given_cardiomegaly: float = 2.0
    atelectasis_odds_given_effusion: float = 1.8
    pneumothorax_odds_given_devices: float = 1.5
    pneumonia_given_consolidation: float = 0.35

    # --- effusion severity (0..1: blunting < 0.15 < meniscus < 0.5 < large) -------------------
    # s = min + (1 - min) * Beta(a, b): median ~0.42, 10% below ~0.15 (blunting), 10% above ~0.75.
    # Was Beta(0.9, 2.6) (median ~0.22): most positives were trace blunting a 64 px model cannot
    # see, and MoCo could not beat random init (book/methods.md, runs A-G against H).
    effusion_severity_min: float = 0.03
    effusion_severity_beta: tuple[float, float] = (1.6, 2.2)
    effusion_bilateral_prob: float = 0.45
    effusion_right_prob: float = 0.55       # side of a unilateral effusion
    effusion_contralateral_scale: tuple[float, float] = (0.35, 1.0)
    # P(report label | effusion present, severity s): uncertain and blank for subtle ones
    effusion_unc_base: float = 0.03
    effusion_unc_subtle: float = 0.35       # added * exp(-s / effusion_subtle_scale)
    effusion_blank_base: float = 0.04
    effusion_blank_subtle: float = 0.25
    effusion_subtle_scale: float = 0.12     # was 0.08 with the older, subtler severities
    effusion_neg_absent: float = 0.24       # P(0.0 | absent)
    effusion_unc_absent: float = 0.015      # P(-1.0 | absent): a borderline call on a dry base
    effusion_unc_mimic: float = 0.05        # ... raised when a basal mimic is present
    # valid.csv is a consensus read of the image: trace effusions are called with
    # P = 1 - exp(-s / valid_read_scale); a dry base is called positive with valid_false_pos,
    # more often with a basal mimic (atelectasis, consolidation, elevated hemidiaphragm)
    valid_read_scale: float = 0.035
    valid_false_pos: float = 0.015
    valid_false_pos_mimic: float = 0.08
    elevated_hemidiaphragm_prob: float = 0.10   # per patient, a basal mimic without a label

    labels: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: {
        "Enlarged Cardiomediastinum": _label_model(0.40, 0.30, 0.09, 0.02),
        "Cardiomegaly": _label_model(0.75, 0.15, 0.05, 0.01),
        "Lung Opacity": _label_model(0.85, 0.03, 0.06, 0.01),
        "Lung Lesion": _label_model(0.75, 0.12, 0.005, 0.0),
        "Edema": _label_model(0.80, 0.12, 0.12, 0.03),
        "Consolidation": _label_model(0.35, 0.45, 0.13, 0.08),
        "Pneumonia": _label_model(0.25, 0.65, 0.01, 0.05),
        "Atelectasis": _label_model(0.50, 0.40, 0.005, 0.05),
        "Pneumothorax": _label_model(0.85, 0.08, 0.28, 0.005),
        "Pleural Other": _label_model(0.55, 0.35, 0.001, 0.002),
        "Fracture": _label_model(0.85, 0.07, 0.01, 0.001),
        "Support Devices": _label_model(0.97, 0.008, 0.06, 0.0),
    })

    # --- Shenzhen (TB screening, PA upright) --------------------------------------------------
    shenzhen_tb_fraction: float = 336 / 662
    shenzhen_rgb_fraction: float = 0.15     # 8-bit RGB with equal channels
    tb_severity_beta: tuple[float, float] = (2.0, 1.5)   # mean severity 0.70: findings a
    tb_severity_min: float = 0.3                         # 64 px model learns from ~430 images
    tb_effusion_prob: float = 0.12          # tuberculous pleurisy
    shenzhen_other_prob: float = 0.08       # unrelated minor findings in either class

    # --- nuisance (acquisition and anatomy) ranges ---------------------------------------------
    anatomy_variation: float = 1.0                       # scales every anatomical range (0: one patient)
    scale_range: tuple[float, float] = (0.86, 1.10)     # patient size / magnification
    shift_range: float = 0.07                            # translation, fraction of half-width
    tilt_deg: float = 5.0                                # in-plane rotation
    rotation_range: float = 0.05                         # axial rotation: mediastinum offset
    inspiration_range: tuple[float, float] = (-1.0, 1.0) # -1 poor, +1 deep
    habitus_range: tuple[float, float] = (0.0, 1.0)      # soft-tissue thickness
    exposure_center: tuple[float, float] = (0.30, 0.58)  # tone curve centre (attenuation units)
    exposure_width: tuple[float, float] = (0.16, 0.30)
    gamma_range: tuple[float, float] = (0.75, 1.35)
    equalize_range: tuple[float, float] = (0.0, 0.6)    # large-kernel range compression
    sharpen_range: tuple[float, float] = (0.0, 1.2)      # unsharp masking
    noise_range: tuple[float, float] = (0.008, 0.04)
    marker_prob: float = 0.8                             # an "L"/"R" side marker
    jpeg_quality: int = 90

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (used in the sidecar that decides whether a tree is up to date)."""
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d, default=lambda o: dict(o) if isinstance(o, Mapping) else list(o)))




DEFAULT_POPULATION = PhantomPopulation()
_MERGED_FIELDS = ("prevalence", "icu_odds", "labels")


def make_population(overrides: PhantomPopulation | Mapping[str, Any] | None = None) -> PhantomPopulation:
    """``DEFAULT_POPULATION`` with ``overrides`` applied (a :class:`PhantomPopulation` is returned
    as is). Dict-valued fields (``prevalence``, ``icu_odds``, ``labels``) are merged key by key;
    lists become tuples (so YAML profiles can hold overrides). Unknown names raise ValueError."""
    if overrides is None:
        return DEFAULT_POPULATION
    if isinstance(overrides, PhantomPopulation):
        return overrides
    if not isinstance(overrides, Mapping):
        raise ValueError(f"population must be a PhantomPopulation or a dict of overrides, got "
                         f"{type(overrides).__name__}")
    names = {f.name: f for f in dataclasses.fields(PhantomPopulation)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"unknown population parameters {unknown}; expected some of {sorted(names)}")
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        default = getattr(DEFAULT_POPULATION, key)
        if key in _MERGED_FIELDS:
            if not isinstance(value, Mapping):
                raise ValueError(f"population parameter {key!r} must be a dict, got {value!r}")
            bad = sorted(set(value) - set(default))
            if bad:
                raise ValueError(f"population parameter {key!r}: unknown keys {bad}; expected "
                                 f"some of {sorted(default)}")
            merged = dict(default)
            for k, v in value.items():
                merged[k] = {**default[k], **v} if isinstance(default[k], Mapping) else float(v)
            changes[key] = merged
        elif isinstance(default, tuple):
            if len(value) != len(default):
                raise ValueError(f"population parameter {key!r} needs {len(default)} values, got {value!r}")
            changes[key] = tuple(float(v) for v in value)
        else:
            changes[key] = type(default)(value)
    return dataclasses.replace(DEFAULT_POPULATION, **changes)
# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ValueError(f"image size must be at least 16x16 pixels, got {h}x{w}")
    return h, w


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates normalised by half the shorter side (float32, y down)."""
    key = (h, w)
    if key not in _GRID_CACHE:
        s = min(h, w) / 2.0
        y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) / s)[:, None]
        x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / s)[None, :]
        _GRID_CACHE[key] = (np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)))
    return _GRID_CACHE[key]


def _ramp(f: np.ndarray, eps: float) -> np.ndarray:
    """Soft step from 0 (f <= -eps/2) to 1 (f >= eps/2)."""
    t = f * (1.0 / eps)
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


_UPSAMPLE_CACHE: dict[tuple[int, int, int, int], tuple[np.ndarray, ...]] = {}


def _upsample(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small grid to (h, w) (align-corners), with cached indices."""
    gh, gw = small.shape
    key = (gh, gw, h, w)
    if key not in _UPSAMPLE_CACHE:
        fy = np.linspace(0, gh - 1, h, dtype=np.float32)
        fx = np.linspace(0, gw - 1, w, dtype=np.float32)
        i0 = np.minimum(fy.astype(np.int64), gh - 2)
        j0 = np.minimum(fx.astype(np.int64), gw - 2)
        _UPSAMPLE_CACHE[key] = (i0, (fy - i0).astype(np.float32)[:, None], j0,
                                (fx - j0).astype(np.float32)[None, :])
    i0, wy, j0, wx = _UPSAMPLE_CACHE[key]
    top, bot = small[i0], small[i0 + 1]
    rows = top + (bot - top) * wy                                  # (h, gw)
    left = np.take(rows, j0, axis=1)
    right = np.take(rows, j0 + 1, axis=1)
    right -= left
    right *= wx
    right += left
    return right


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, s: float) -> np.ndarray:
    """Smooth noise, roughly zero-mean and unit-variance, with feature size ``cell`` (normalised)."""
    gh = max(3, int(math.ceil(h / (cell * s))) + 1)
    gw = max(3, int(math.ceil(w / (cell * s))) + 1)
    g = ndimage.gaussian_filter(rng.standard_normal((gh, gw)).astype(np.float32), 0.7, mode="wrap")
    return _upsample(g * np.float32(1.0 / (g.std() + 1e-6)), h, w)


def _splat(h: int, w: int, s: float, pts_xy: np.ndarray, weights: np.ndarray,
           sigma: float) -> np.ndarray:
    """Render points (normalised image coords) as Gaussian blobs of std ``sigma`` (normalised),
    each with peak height about its weight when isolated."""
    if len(pts_xy) == 0:
        return np.zeros((h, w), np.float32)
    cols = np.rint(pts_xy[:, 0] * s + (w - 1) / 2).astype(np.int64)
    rows = np.rint(pts_xy[:, 1] * s + (h - 1) / 2).astype(np.int64)
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    img = np.bincount(rows[ok] * w + cols[ok], weights=weights[ok], minlength=h * w)
    img = img.astype(np.float32).reshape(h, w)
    sig_px = max(sigma * s, 0.5)
    out = ndimage.gaussian_filter(img, sig_px, mode="constant", truncate=3.0)
    return out * np.float32(2 * math.pi * sig_px * sig_px)


def _curve_points(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Dense points along a Catmull-Rom spline through control points (k, 2)."""
    p = np.vstack([ctrl[0], ctrl, ctrl[-1]])
    segs = len(ctrl) - 1
    t = np.linspace(0, segs, n, endpoint=False)
    i = np.minimum(t.astype(int), segs - 1)
    u = (t - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)


# --------------------------------------------------------------------------------------------
# Anatomy and acquisition parameters
# --------------------------------------------------------------------------------------------

def _sample_anatomy(rng: np.random.Generator, female: bool, variation: float = 1.0) -> dict:
    """Patient-level anatomy (fixed across a patient's studies), in normalised units.
    ``variation`` scales every range about its centre (0: one average patient). The number of
    draws never depends on the arguments, so the same seed gives the same patient."""
    def uni(lo: float, hi: float) -> float:
        return float((lo + hi) / 2 + (rng.random() - 0.5) * (hi - lo) * variation)

    anat = {
        "female": female,
        "lung_w": uni(0.70, 0.82),                # lateral lung edge (half-width)
        "lung_asym": uni(-0.025, 0.025),
        "apex_y": uni(-0.80, -0.68),
        "dome_y": uni(0.18, 0.32),                # right dome top, neutral inspiration
        "dome_h": uni(0.14, 0.22),                # dome top above the costophrenic angle
        "left_dome_dy": uni(0.0, 0.07),
        "heart_a": uni(0.27, 0.33),
        "heart_b": uni(0.19, 0.23),
        "heart_angle": uni(0.45, 0.75),
        "heart_x": uni(0.07, 0.13),
        "heart_y": uni(0.08, 0.16),
        "mediast_w": uni(0.09, 0.12),
        "knob": uni(0.03, 0.07),
        "rib_spacing": uni(0.098, 0.115),
        "rib_gain": uni(0.22, 0.34),
        "rib_jitter": (rng.normal(0.0, 0.06, 12) * variation).astype(np.float32),  # L/R offsets
        "rib_bone": uni(0.05, 0.09),
        "clav_y": uni(-0.70, -0.60),
        "clav_tilt": uni(0.03, 0.12),
        "body_w": uni(0.86, 1.02),
        "shoulder_y": uni(-1.02, -0.90),
        "breast": uni(0.03, 0.10),
        "breast_y": uni(0.22, 0.40),
        "bubble": float(rng.random()),
        "vessel_seed": int(rng.integers(2**31)),
        "vessel_gain": uni(0.06, 0.11),
        "tissue_seed": int(rng.integers(2**31)),
    }
    if not female:
        anat["breast"] = 0.0
    return anat


def _sample_acquisition(rng: np.random.Generator, pop: PhantomPopulation, ap: bool,
                        supine: bool) -> dict:
    """Per-view acquisition and positioning (AP portable films: magnified, shallower, noisier)."""
    insp = _u(rng, pop.inspiration_range) - (0.5 if ap else 0.0) - (0.3 if supine else 0.0)
    return {
        "scale": _u(rng, pop.scale_range) * (1.04 if ap else 1.0),
        "tx": float(rng.uniform(-1, 1) * pop.shift_range),
        "ty": float(rng.uniform(-1, 1) * pop.shift_range),
        "tilt": math.radians(float(rng.uniform(-1, 1) * pop.tilt_deg)),
        "rot": float(rng.uniform(-1, 1) * pop.rotation_range * (1.6 if ap else 1.0)),
        "insp": float(np.clip(insp, -1.5, 1.0)),
        "habitus": _u(rng, pop.habitus_range),
        "center": _u(rng, pop.exposure_center),
        "width": _u(rng, pop.exposure_width),
        "gamma": _u(rng, pop.gamma_range),
        "equalize": _u(rng, pop.equalize_range),
        "sharpen": _u(rng, pop.sharpen_range),
        "noise": _u(rng, pop.noise_range) * (1.3 if ap else 1.0),
        "marker": bool(rng.random() < pop.marker_prob),
        "marker_right": bool(rng.random() < 0.5),
        "arm_y": float(rng.uniform(-0.15, 0.35)) + (0.15 if ap else 0.0),
        "ap": ap,
        "supine": supine,
    }


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------

_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def _draw_marker(img: np.ndarray, letter: str, right: bool, rng: np.random.Generator) -> None:
    """Burn a small side marker into a top corner (in place)."""
    h, w = img.shape
    k = max(1, int(round(min(h, w) / 150)))
    g = np.kron(np.array([[c == "1" for c in row] for row in _GLYPHS[letter]], np.float32),
                np.ones((k, k), np.float32))
    gh, gw = g.shape
    r0 = int(rng.integers(max(1, h // 50), max(2, h // 10)))
    off = int(rng.integers(max(1, w // 40), max(2, w // 8)))
    c0 = w - gw - off if right else off
    if r0 + gh <= h and 0 <= c0 and c0 + gw <= w:
        region = img[r0:r0 + gh, c0:c0 + gw]
        np.maximum(region, g * 0.96, out=region)


def _to_image(P: np.ndarray, acq: dict) -> np.ndarray:
    """Patient-frame points (n, 2) to normalised image coordinates."""
    c, sn = math.cos(acq["tilt"]), math.sin(acq["tilt"])
    Xp, Yp = P[:, 0] * acq["scale"], P[:, 1] * acq["scale"]
    return np.column_stack([c * Xp - sn * Yp + acq["tx"], sn * Xp + c * Yp + acq["ty"]])


def _line(h: int, w: int, s: float, P: np.ndarray, peak: float, sigma: float) -> np.ndarray:
    """A polyline of dense image-frame points drawn with Gaussian cross-section of height ``peak``."""
    if len(P) < 2:
        return np.zeros((h, w), np.float32)
    step_px = float(np.mean(np.hypot(*np.diff(P, axis=0).T))) * s
    sig_px = max(sigma * s, 0.6)
    wt = peak * max(step_px, 1e-3) / (math.sqrt(2 * math.pi) * sig_px)
    return _splat(h, w, s, P, np.full(len(P), wt, np.float32), sig_px / s)


class _LazyRngs:
    """Generators for the fixed sub-streams, created only when a finding needs one."""

    def __init__(self, seeds: np.ndarray) -> None:
        self._seeds, self._rngs = seeds, {}

    def __getitem__(self, i: int) -> np.random.Generator:
        if i not in self._rngs:
            self._rngs[i] = np.random.default_rng(int(self._seeds[i]))
        return self._rngs[i]


def _sel(mask: np.ndarray, a: float, b: float) -> np.ndarray:
    """float32 ``where`` for two scalars (``np.where`` with Python floats gives float64)."""
    return np.where(mask, np.float32(a), np.float32(b))


def _vessel_tree(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Branching pulmonary vessels from a hilum at the origin, running towards +x (lateral):
    points and weights. Each generation is drawn for all branches at once."""
    n0 = int(rng.integers(9, 13))
    ang = np.sort(rng.uniform(-1.5, 1.3, n0))                  # 0 = lateral, <0 up, >0 down
    start = rng.normal(0, 0.025, (n0, 2))
    step = 0.012
    lengths = (0.12, 0.10, 0.08, 0.07, 0.06)
    weights = (1.0, 0.8, 0.6, 0.42, 0.28)
    pts, wts = [], []
    for g, L in enumerate(lengths):
        n = max(2, int(L / step))
        jit = np.cumsum(rng.normal(0, 0.10, (len(ang), n)), axis=1) + ang[:, None]
        dxy = np.stack([np.cos(jit), np.sin(jit)], axis=-1) * (step * rng.uniform(0.8, 1.2, (len(ang), 1, 1)))
        path = start[:, None, :] + np.cumsum(dxy, axis=1)
        pts.append(path.reshape(-1, 2))
        wts.append(np.full(path.shape[0] * path.shape[1], weights[g], np.float32))
        end = path[:, -1, :]
        if g >= 2:  # prune some branches so the periphery stays sparse
            keep = rng.random(len(ang)) < 0.6
            end, jit = end[keep], jit[keep]
        spread = rng.uniform(0.25, 0.6, len(end))
        ang = np.concatenate([jit[:, -1] - spread, jit[:, -1] + spread])
        start = np.concatenate([end, end])
    return np.vstack(pts), np.concatenate(wts)


@functools.lru_cache(maxsize=1)
def _vessel_library(n: int = 64) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """A fixed library of vessel trees (drawing one per image costs more than the rest of the
    lung); patients pick two and rotate/scale them."""
    rng = np.random.default_rng(20210316)
    return tuple(_vessel_tree(rng) for _ in range(n))


def _row_slice(acq: dict, h: int, s: float, y0: float, y1: float) -> slice:
    """Image rows that can contain patient-frame Y in [y0, y1] (any X within the image)."""
    c, sn, sc = math.cos(acq["tilt"]), abs(math.sin(acq["tilt"])), acq["scale"]
    lo = acq["ty"] + sc * (c * y0 - sn * 1.5)
    hi = acq["ty"] + sc * (c * y1 + sn * 1.5)
    r0 = max(0, int(math.floor(lo * s + (h - 1) / 2)) - 1)
    r1 = min(h, int(math.ceil(hi * s + (h - 1) / 2)) + 2)
    return slice(r0, max(r0, r1))


def _lowres_blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Wide Gaussian blur computed on a 4x downsampled copy (cheap; for large sigmas only)."""
    h, w = a.shape
    small = ndimage.gaussian_filter(a[::4, ::4], max(sigma_px / 4, 0.5), mode="nearest", truncate=2.5)
    return _upsample(small, h, w)


# --------------------------------------------------------------------------------------------
# Frontal renderer
# --------------------------------------------------------------------------------------------

def _patient_frame(h: int, w: int, acq: dict) -> tuple[float, np.ndarray, np.ndarray]:
    """Half-size in pixels and the patient's coordinates (X, Y) of every pixel: the image grid
    shifted, tilted and scaled by the acquisition (``tx``, ``ty``, ``tilt``, ``scale``)."""
    s = min(h, w) / 2.0
    x0, y0 = _grid(h, w)
    c, sn = math.cos(acq["tilt"]), math.sin(acq["tilt"])
    xs, ys = x0 - acq["tx"], y0 - acq["ty"]
    X = (c * xs + sn * ys) * (1.0 / acq["scale"])
    Y = (-sn * xs + c * ys) * (1.0 / acq["scale"])
    return s, X, Y


def _frontal_attenuation(h: int, w: int, anat: dict, acq: dict, f: dict,
                         seeds: np.ndarray) -> np.ndarray:
    """Attenuation map (arbitrary units; 0 = air outside the patient) of a PA/AP view."""
    s, X, Y = _patient_frame(h, w, acq)
    uX = np.abs(X)
    left = X > 0                                            # patient's left is the image right
    edge = max(1.5 / s, 0.012)
    insp, ap, hab = acq["insp"], acq["ap"], acq["habitus"]
    rngs = _LazyRngs(seeds)

    # ---- body silhouette: neck, shoulders, arms, torso ---------------------------------------
    bw = anat["body_w"] + 0.08 * hab
    neck_w = 0.24 + 0.06 * hab
    y_neck = anat["shoulder_y"] - 0.02 * hab
    dn = np.clip(uX - neck_w, 0.0, None)
    y_top = y_neck + 0.10 * (1.0 - np.exp(dn * (-1.0 / 0.06))) + 0.25 * dn + 0.40 * dn * dn
    y_top = np.where(uX < neck_w, np.float32(-9.0), y_top)
    arm_bottom = acq["arm_y"] - 0.9 * (uX - bw)
    torso = _ramp(bw - uX, 0.05)
    arm = _ramp(arm_bottom - Y, 0.06)
    in_body = _ramp(Y - y_top, 0.04) * np.maximum(torso, arm)
    core = np.clip(1.0 - uX * uX * (1.0 / (bw + 0.25) ** 2), 0.0, 1.0)
    A = in_body * (0.80 + 0.25 * hab) * (0.62 + 0.38 * core)
    if hab > 0.6:  # obese: soft tissue (pannus, breasts) hazes the lower zones
        A += (0.25 * (hab - 0.6)) * _ramp(Y - anat["dome_y"] + 0.35, 0.5) * in_body
    # humeral heads inside the shoulders
    rs = _row_slice(acq, h, s, y_neck + 0.22, y_neck + 0.54)
    for sd in (-1.0, 1.0):
        dhx, dhy = X[rs] - sd * (bw + 0.10), Y[rs] - (y_neck + 0.38)
        hd2 = dhx * dhx + dhy * dhy
        A[rs] += 0.07 * _ramp(0.0169 - hd2, 0.004) * in_body[rs]

    # ---- lungs: intersection of implicit half-spaces ----------------------------------------
    mx = acq["rot"]                                          # mediastinal offset (axial rotation)
    Xm = X - mx
    um = np.abs(Xm)
    asym = _sel(left, -anat["lung_asym"], anat["lung_asym"])
    lung_w = (anat["lung_w"] + asym) * (1.0 + 0.035 * insp)
    apex_y = anat["apex_y"] - 0.02 * insp
    dome_r = anat["dome_y"] + 0.07 * insp - (0.05 if acq["supine"] else 0.0)
    dome_l = dome_r + anat["left_dome_dy"]
    elev = float(f.get("elevated_hemidiaphragm", 0.0))
    if elev > 0:  # a basal mimic: one dome (usually the right) sits higher
        if rngs[12].random() < 0.65:
            dome_r -= 0.18 * elev
        else:
            dome_l -= 0.18 * elev
    dome = _sel(left, dome_l, dome_r)
    dome_h = anat["dome_h"] * (1.0 + 0.12 * insp)
    cp_r, cp_l = dome_r + dome_h, dome_l + dome_h           # costophrenic angles (Y)
    u_c = 0.30
    y_wide = dome_r + dome_h - 0.25
    tw = np.clip((Y - y_wide) / (y_wide - apex_y), -1.0, 0.0)
    wall = u_c + (lung_w - u_c) * np.sqrt(1.0 - tw * tw)
    f_lat = wall - uX
    f_top = Y - (apex_y + 2.4 * (uX - u_c) ** 2)
    u_pk = 0.40 * lung_w / 0.76
    k_lat = dome_h / (lung_w - u_pk) ** 2
    dlat = np.clip(uX - u_pk, 0.0, None)
    dmed = np.clip(u_pk - uX, 0.0, None)
    diaph = dome + k_lat * dlat * dlat + 0.6 * dmed * dmed
    f_bot = (diaph - Y) / np.sqrt(1.0 + (2.0 * k_lat * dlat) ** 2)
    # heart: rotated ellipse whose lower half is stretched into the diaphragm
    hs = (1.10 if ap else 1.0) * (1.0 + 0.42 * f.get("cardiomegaly", 0.0))
    ha, hb = anat["heart_a"] * hs, anat["heart_b"] * hs
    hx = anat["heart_x"] + mx + 0.10 * (hs - 1.0)
    hy = anat["heart_y"] + 0.06 * insp + 0.06 * (hs - 1.0)
    ca, sa = math.cos(anat["heart_angle"]), math.sin(anat["heart_angle"])
    dx, dy = X - hx, Y - hy
    eu = (ca * dx + sa * dy) / ha
    ev = (-sa * dx + ca * dy) / hb
    ev = np.where(ev > 0, ev * 0.5, ev)
    f_heart = (1.0 - np.sqrt(eu * eu + ev * ev)) * hb
    heart = _ramp(f_heart, edge)
    # mediastinum with aortic knob and widening
    mw = anat["mediast_w"] * (1.0 + 0.7 * f.get("enlarged_cardiomediastinum", 0.0)) * (1.08 if ap else 1.0)
    knob = anat["knob"] * np.exp(-((Y + 0.32) / 0.08) ** 2) * (Xm > 0)
    f_med = um - (mw + knob + 0.03 * np.clip(Y + 0.2, 0.0, None))
    f_lung = np.minimum(np.minimum(f_lat, f_top), np.minimum(f_bot, f_med))
    lung = _ramp(f_lung, edge)
    depth = lung * (0.55 + 0.45 * np.clip(f_lung * (1.0 / 0.14), 0.0, 1.0))

    # ---- pathology replacing air (fraction of lung air replaced by fluid/tissue) -------------
    fill = np.zeros((h, w), np.float32)
    span_r, span_l = cp_r - apex_y, cp_l - apex_y
    for side, key, cp_y, span in ((-1, "effusion_right", cp_r, span_r), (1, "effusion_left", cp_l, span_l)):
        sev = float(f.get(key, 0.0))
        if sev <= 0:
            continue
        r = rngs[0 if side < 0 else 1]
        on_side = (X * side > 0).astype(np.float32)
        lw = anat["lung_w"]
        tt = np.clip(uX * (1.0 / lw), 0.0, 1.2)
        if acq["supine"]:
            # layering posteriorly: a veil over the hemithorax, densest at the base
            top = cp_y - span * (0.35 + 0.65 * sev)
            veil = np.clip((Y - top) * (1.0 / (cp_y - top + 1e-3)), 0.0, 1.0)
            veil = veil * np.sqrt(veil)
            fill = np.maximum(fill, on_side * veil * (0.25 + 0.55 * sev))
            sev_m = 0.6 * sev * sev   # blunting appears only with larger layering effusions
        else:
            sev_m = sev
        if sev_m > 0.01:
            level = cp_y - sev_m * span * 0.80
            men = (0.07 + 0.25 * math.sqrt(sev_m)) * r.uniform(0.75, 1.25)   # meniscus rise
            t4 = tt * tt
            t4 = t4 * t4
            surf = level - men * t4 + 0.06 * sev_m * (1.0 - tt)
            soft = 0.012 + 0.10 * sev_m * r.uniform(0.5, 1.0)
            fl = np.clip((Y - surf) * (1.0 / soft), 0.0, 1.0)
            fill = np.maximum(fill, on_side * fl)
    cons = float(f.get("consolidation", 0.0))
    if cons > 0:  # patchy air-space opacity anywhere in the lungs (bases included)
        r = rngs[2]
        patch = np.zeros((h, w), np.float32)
        for _ in range(1 + int(r.integers(0, 1 + int(2.5 * cons)))):
            cx = r.choice([-1, 1]) * r.uniform(0.25, 0.6)
            cy = r.uniform(-0.5, 0.1) if r.random() < 0.5 else dome_r + 0.05 - r.uniform(0.0, 0.35)
            rx, ry = (r.uniform(0.08, 0.2) * (0.6 + cons), r.uniform(0.07, 0.16) * (0.6 + cons))
            d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
            patch = np.maximum(patch, np.clip(1.3 - d2, 0.0, 1.0))
        tex = _smooth_noise(r, h, w, 0.05, s)
        fill = np.maximum(fill, np.clip(patch * (0.75 + 0.45 * tex), 0.0, 1.0) * (0.45 + 0.45 * cons))
    atel = float(f.get("atelectasis", 0.0))
    if atel > 0:  # plate-like bands, mostly in the lower zones, and basal collapse
        r = rngs[3]
        for _ in range(1 + int(r.integers(0, 3))):
            sd = r.choice([-1, 1])
            cy = dome_r + 0.02 - r.uniform(0.0, 0.3)
            cx = sd * r.uniform(0.3, 0.55)
            ang = r.uniform(-0.3, 0.3)
            half_len = r.uniform(0.10, 0.24)
            thick = r.uniform(0.010, 0.025) * (1.0 + atel)
            ddx, ddy = X - cx, Y - cy
            along = math.cos(ang) * ddx + math.sin(ang) * ddy
            across = -math.sin(ang) * ddx + math.cos(ang) * ddy
            band = _ramp(thick - np.abs(across), 0.015) * _ramp(half_len - np.abs(along), 0.06)
            fill = np.maximum(fill, band * (0.5 + 0.4 * atel))
        if atel > 0.6:
            sd = r.choice([-1, 1])
            basal = (X * sd > 0) * np.clip((Y - (dome_r - 0.12 * atel)) / 0.15, 0.0, 1.0) \
                * np.clip(1.0 - np.abs(uX - 0.30) / 0.25, 0.0, 1.0)
            fill = np.maximum(fill, basal * 0.55 * atel)
    hx_r, hy_r, hx_l, hy_l = -0.19 + mx, -0.12, 0.19 + mx, -0.16     # hila
    ed = float(f.get("edema", 0.0))
    if ed > 0:  # perihilar haze with interstitial texture
        r = rngs[4]
        dh = np.minimum(((X - hx_r) / 0.35) ** 2 + ((Y - hy_r) / 0.42) ** 2,
                        ((X - hx_l) / 0.35) ** 2 + ((Y - hy_l) / 0.42) ** 2)
        haze = np.exp(-dh) * (0.25 + 0.5 * ed)
        tex = _smooth_noise(r, h, w, 0.03, s)
        fill = np.maximum(fill, np.clip(haze * (1.0 + 0.4 * tex) + 0.10 * ed, 0.0, 1.0))
    tb = float(f.get("tb", 0.0))
    tb_sides: list[int] = []
    tb_centres: list[tuple[float, float]] = []
    if tb > 0:  # upper-zone infiltrates (nodules, cavities and fibrosis are drawn below)
        r = rngs[5]
        tb_sides = [int(r.choice([-1, 1]))]
        if r.random() < 0.25 + 0.5 * tb:
            tb_sides.append(-tb_sides[0])
        patch = np.zeros((h, w), np.float32)
        for sd in tb_sides:
            cx, cy = sd * r.uniform(0.28, 0.48), r.uniform(-0.60, -0.30)
            tb_centres.append((cx, cy))
            rx, ry = r.uniform(0.10, 0.2) * (0.5 + tb), r.uniform(0.07, 0.14) * (0.5 + tb)
            d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
            patch = np.maximum(patch, np.clip(1.0 - d2, 0.0, 1.0))
        tex = _smooth_noise(r, h, w, 0.035, s)
        fill = np.maximum(fill, np.clip(patch * (0.4 + 0.9 * tex), 0.0, 1.0) * (0.2 + 0.55 * tb))
    np.clip(fill, 0.0, 1.0, out=fill)

    # pneumothorax: the lung edge retracts from the chest wall; no markings beyond it
    ptx = float(f.get("pneumothorax", 0.0))
    rim = None
    if ptx > 0:
        r = rngs[6]
        sd = int(r.choice([-1, 1]))
        gap = 0.03 + 0.2 * ptx
        f_rim = gap - np.minimum(f_lat, f_top + 0.06)
        on_side = (X * sd > 0) * lung
        rim = on_side * _ramp(f_rim, 0.008) * _ramp(0.5 * ptx + 0.1 - Y, 0.3)
        A += 0.08 * np.exp(-(f_rim / 0.007) ** 2) * on_side * _ramp(0.5 * ptx + 0.1 - Y, 0.3)

    heart_keep = 1.0 - 0.75 * heart
    A -= 0.42 * depth * heart_keep * (1.0 - fill) * (1.0 + (0.0 if rim is None else 0.25 * rim))
    # trachea and main bronchi (air column over the upper mediastinum)
    rs = _row_slice(acq, h, s, -9.0, -0.08)
    um_r, Y_r = um[rs], Y[rs]
    tr = _ramp(0.032 - um_r, edge) * _ramp(-0.30 - Y_r, 0.04)
    br = _ramp(0.022 - np.abs(um_r - 0.05 - 0.6 * np.clip(Y_r + 0.30, 0.0, None)), edge) \
        * _ramp(Y_r + 0.32, 0.03) * _ramp(-0.12 - Y_r, 0.04)
    A[rs] -= 0.09 * np.maximum(tr, br)

    # ---- lung markings: branching vessel trees from the hila, parenchymal texture -----------
    lib = _vessel_library()
    vs = anat["vessel_seed"]
    pv, wv = [], []
    for k, (hxx, hyy, sd) in enumerate(((hx_r, hy_r, -1.0), (hx_l, hy_l, 1.0))):
        pts_v, wt_v = lib[(vs >> (8 * k)) % len(lib)]
        rot = ((vs >> (16 + 4 * k)) % 16 - 7.5) * 0.02
        sc_v = 0.9 + 0.02 * ((vs >> (24 + 3 * k)) % 8)
        cr, sr = math.cos(rot) * sc_v, math.sin(rot) * sc_v
        pv.append(np.column_stack([hxx + sd * (cr * pts_v[:, 0] - sr * pts_v[:, 1]),
                                   hyy + sr * pts_v[:, 0] + cr * pts_v[:, 1]]))
        wv.append(wt_v)
    sig_v = max(0.009 * acq["scale"] * s, 0.6)
    vessels = _splat(h, w, s, _to_image(np.vstack(pv), acq),
                     np.concatenate(wv) * (0.012 * acq["scale"] * s / (2.5066 * sig_v)), sig_v / s)
    mark = lung if rim is None else lung * (1.0 - rim)
    A += anat["vessel_gain"] * (1.0 + 0.8 * ed) * vessels * mark
    rs = _row_slice(acq, h, s, -0.45, 0.2)
    for hxx, hyy in ((hx_r, hy_r), (hx_l, hy_l)):
        dxh, dyh = X[rs] - hxx, Y[rs] - hyy
        A[rs] += (0.8 * anat["vessel_gain"]) * np.exp(dxh * dxh * (-1 / 0.07 ** 2)
                                                      + dyh * dyh * (-1 / 0.10 ** 2)) * lung[rs]
    A += 0.018 * _smooth_noise(np.random.default_rng(anat["tissue_seed"]), h, w, 0.06, s) * lung

    # ---- bones -------------------------------------------------------------------------------
    rib_b = anat["rib_bone"]
    # spine: vertebral bodies with end-plates and discs, pedicles, spinous processes
    per = 0.085 + 0.2 * (anat["rib_spacing"] - 0.1)
    ph = (Y + 3.0) * (1.0 / per)
    frac = ph - np.floor(ph)
    disc = (frac - 0.5) * (frac - 0.5) * 4.0
    disc = disc * disc
    disc = disc * disc
    vb = _ramp(0.068 + 0.012 * np.clip(Y, 0.0, None) - uX, edge)
    bone = vb * (0.06 - 0.035 * disc)
    ped = np.exp(-(((uX - 0.050) * (1 / 0.016)) ** 2 + ((frac - 0.35) * (1 / 0.14)) ** 2))
    bone += 0.04 * ped + 0.03 * np.exp(-((X * (1 / 0.012)) ** 2 + ((frac - 0.7) * (1 / 0.15)) ** 2))
    # posterior ribs: one periodic family in a warped coordinate (arch, then down laterally)
    cage = wall + 0.045
    t = uX / cage
    gain = anat["rib_gain"] * (0.85 + 0.45 * np.clip((Y - apex_y) * (1.0 / 1.1), 0.0, 1.0))
    tc = np.minimum(t, 1.05)
    tc2 = tc * tc
    warp = Y - gain * (-0.40 * tc + 0.75 * tc2 + 0.65 * tc2 * tc2)
    spacing = anat["rib_spacing"] * (1.0 + 0.06 * insp)
    ph_r = (warp - (apex_y - 0.02)) * (1.0 / spacing)
    ph_r += anat["rib_jitter"][np.clip(ph_r, 0, 11).astype(np.intp)] * (X > 0)
    fr = ph_r - np.floor(ph_r)
    duty = 0.42
    tri = np.clip(1.0 - np.abs(fr * (2.0 / duty) - 1.0), 0.0, 1.0) * (fr < duty)
    rib_p = np.clip(tri * 6.0, 0.0, 1.0) * (0.55 + 0.45 * (1.0 - tri) * (1.0 - tri))
    vis = _ramp(ph_r - 0.1, 0.4) * _ramp(10.4 - ph_r, 0.8) * _ramp(1.04 - t, 0.05) \
        * _ramp(uX - 0.06, 0.03) * (0.45 + 0.55 * _ramp(diaph + 0.05 - Y, 0.1))
    bone += rib_b * rib_p * vis
    # lateral cortex of the cage, seen tangentially
    bone += 0.6 * rib_b * np.exp(-((uX - cage) * (1.0 / 0.014)) ** 2) \
        * _ramp(Y - (apex_y + 0.1), 0.1) * _ramp(dome_r + dome_h + 0.1 - Y, 0.1)
    # anterior ribs: oblique, fainter, descending medially
    ta = np.clip(t, 0.0, 1.0)
    warp_a = Y - 0.36 * (1.0 - ta)
    ph_a = (warp_a - (apex_y + 0.06)) * (1.0 / (spacing * 1.3))
    fa = ph_a - np.floor(ph_a)
    tri_a = np.clip(1.0 - np.abs(fa * (2.0 / 0.5) - 1.0), 0.0, 1.0) * (fa < 0.5)
    vis_a = _ramp(ph_a - 0.2, 0.4) * _ramp(5.8 - ph_a, 0.6) * _ramp(t - 0.30, 0.12) \
        * _ramp(1.02 - t, 0.05)
    bone += 0.45 * rib_b * np.clip(tri_a * 3.0, 0.0, 1.0) * vis_a
    # clavicles: S-shaped bands from the sternal notch to the shoulders
    cy0 = anat["clav_y"] - 0.02 * insp
    rs = _row_slice(acq, h, s, cy0 - anat["clav_tilt"] * 1.1 - 0.1, cy0 + 0.08)
    tcl = (uX[rs] - 0.07) * (1.0 / 0.80)
    tcc = np.clip(tcl, 0.0, 1.0)
    ycl = cy0 - anat["clav_tilt"] * tcl + 0.09 * tcc * (1.0 - tcc) * (0.6 - tcc)
    dcl = np.abs(Y[rs] - ycl)
    cl_w = 0.030 + 0.012 * (1.0 - tcc)
    clav = _ramp(cl_w - dcl, edge) * _ramp(tcl, 0.03) * _ramp(1.05 - tcl, 0.06)
    bone[rs] += 0.14 * clav * (0.75 + 0.5 * dcl / cl_w)
    # scapular edge over the upper lateral lung (more on AP films)
    rs = _row_slice(acq, h, s, -0.8, 0.1)
    sca_x = wall[rs] - (0.10 if ap else 0.03) - 0.2 * np.clip(Y[rs] + 0.3, 0.0, None)
    bone[rs] += (0.05 if ap else 0.03) * _ramp(uX[rs] - sca_x, 0.03) * _ramp(0.0 - Y[rs], 0.15) \
        * _ramp(Y[rs] + 0.7, 0.1)
    A += bone * in_body

    # ---- soft-tissue overlays ------------------------------------------------------------------
    if anat["breast"] > 0:
        by = anat["breast_y"] - 0.03 * insp
        rs = _row_slice(acq, h, s, by - 0.27, by + 0.27)
        dyb = (Y[rs] - by) * (1.0 / 0.26)
        dxb = (uX[rs] - 0.46) * (1.0 / 0.36)
        bd = dxb * dxb + dyb * dyb
        A[rs] += anat["breast"] * np.sqrt(np.clip(1.0 - bd, 0.0, 1.0)) * np.clip(0.6 + dyb, 0.0, 1.0)
    bub = anat["bubble"]
    if bub > 0.3:  # gastric air under the left dome
        rs = _row_slice(acq, h, s, dome_l + 0.02, dome_l + 0.22)
        gb = ((X[rs] - (0.36 + mx)) / (0.09 + 0.07 * bub)) ** 2 \
            + ((Y[rs] - (dome_l + 0.12)) / (0.05 + 0.02 * bub)) ** 2
        A[rs] -= 0.14 * bub * _ramp(1.0 - gb, 0.25) * (Y[rs] > diaph[rs] + 0.03)

    # ---- nodules, cavities, fibrosis, lesions, pleural thickening, fracture -------------------
    pts, wts = [], []
    if tb > 0:
        r = rngs[7]
        n_nod = int(4 + 36 * tb * r.uniform(0.5, 1.2))
        for cx, cy in tb_centres:
            k = max(2, n_nod // len(tb_centres))
            pts.append(np.column_stack([cx + r.normal(0, 0.10, k), cy + r.normal(0, 0.09, k)]))
            wts.append(r.uniform(0.06, 0.16, k))
            if tb > 0.45:  # cavities: thick bright wall, dark centre
                for _ in range(int(r.integers(1, 3))):
                    ccx, ccy = cx + r.normal(0, 0.05), cy + r.normal(0, 0.04)
                    rad = r.uniform(0.03, 0.06) * (0.6 + tb)
                    dd = np.sqrt((X - ccx) * (X - ccx) + (Y - ccy) * (Y - ccy))
                    A += 0.12 * np.exp(-((dd - rad) / (0.25 * rad + 0.006)) ** 2) \
                        - 0.10 * _ramp(rad * 0.8 - dd, 0.01)
            if tb > 0.3:  # fibrotic strands from the hilum towards the apex
                hxx = hx_r if cx < 0 else hx_l
                sd = -1.0 if cx < 0 else 1.0
                for _ in range(int(2 + 5 * tb)):
                    end = np.array([cx + r.normal(0, 0.1), cy - r.uniform(0.0, 0.2)])
                    ctrl = np.array([[hxx, -0.12], [(hxx + end[0]) / 2 + sd * 0.03, (-0.12 + end[1]) / 2], end])
                    cp = _curve_points(ctrl + r.normal(0, 0.015, ctrl.shape), 60)
                    pts.append(cp)
                    wts.append(np.full(len(cp), 0.012 * (0.5 + tb)))
    les = float(f.get("lesion", 0.0))
    if les > 0:
        r = rngs[8]
        cx, cy = r.choice([-1, 1]) * r.uniform(0.25, 0.6), r.uniform(-0.5, 0.2)
        rad = 0.025 + 0.08 * les
        dd = ((X - cx) ** 2 + (Y - cy) ** 2) * (1.0 / rad ** 2)
        A += 0.18 * np.sqrt(np.clip(1.0 - dd, 0.0, 1.0)) * lung
    po = float(f.get("pleural_other", 0.0))
    if po > 0:
        r = rngs[9]
        sd = r.choice([-1, 1])
        thick = 0.015 + 0.035 * po
        y0b = r.uniform(-0.7, -0.2)
        band = _ramp(thick - f_lat, 0.015) * _ramp(f_lat + 0.01, 0.01) * (X * sd > 0) \
            * _ramp(Y - y0b, 0.1) * _ramp(y0b + r.uniform(0.2, 0.6) - Y, 0.1)
        A += 0.2 * band
    frc = float(f.get("fracture", 0.0))
    if frc > 0:  # healing rib fracture: a small callus on a lateral rib
        r = rngs[10]
        sd = r.choice([-1, 1])
        k_rib = int(r.integers(4, 9))
        cy = apex_y + (k_rib + 0.25) * spacing + anat["rib_gain"] * 0.5
        pts.append(np.array([[sd * r.uniform(0.55, 0.70), cy]]))
        wts.append(np.array([0.08 + 0.08 * frc]))
    if pts:
        A += _splat(h, w, s, _to_image(np.vstack(pts), acq), np.concatenate(wts) * 1.0,
                    0.011 * acq["scale"])

    dev = float(f.get("support_devices", 0.0))
    if dev > 0:
        A += _devices(h, w, s, X, Y, acq, dev, rngs[11], mx, dome_l)
    return A


def _devices(h: int, w: int, s: float, X: np.ndarray, Y: np.ndarray, acq: dict, sev: float,
             r: np.random.Generator, mx: float, dome_l: float) -> np.ndarray:
    """Tubes, lines, pacemaker, ECG electrodes, sternotomy wires, chest tube (metal: bright)."""
    kinds = ("ett", "ng", "cvc", "pacer", "ecg", "sternotomy", "chest_tube")
    probs = np.array([0.22, 0.18, 0.28, 0.10, 0.30, 0.10, 0.08])
    n = min(1 + int(round(sev * 2.5)), len(kinds))
    chosen = r.choice(len(kinds), size=n, replace=False, p=probs / probs.sum())
    out = np.zeros((h, w), np.float32)
    lines: list[tuple[np.ndarray, float]] = []

    def add(ctrl: list, peak: float) -> None:
        ctrl_a = np.asarray(ctrl, float)
        ctrl_a = ctrl_a + r.normal(0, 0.012, ctrl_a.shape)
        lines.append((_curve_points(ctrl_a, 300), peak))

    for k in (kinds[i] for i in chosen):
        if k == "ett":
            add([[mx + 0.01, -1.6], [mx, -1.0], [mx, r.uniform(-0.45, -0.30)]], 0.55)
        elif k == "ng":
            add([[mx - 0.01, -1.6], [mx + 0.01, -0.6], [mx + 0.05, 0.1],
                 [mx + 0.2, dome_l + 0.12], [mx + 0.35, dome_l + 0.2]], 0.45)
        elif k == "cvc":
            sd = r.choice([-1, 1])
            add([[sd * 0.8, -0.88], [sd * 0.45, -0.66], [sd * 0.15, -0.48],
                 [mx - 0.05, -0.34], [mx - 0.07, r.uniform(-0.22, -0.02)]], 0.5)
        elif k == "pacer":
            cx, cy = r.uniform(0.35, 0.6), r.uniform(-0.66, -0.5)
            out += 1.2 * _ramp(0.07 - np.abs(X - cx), 0.02) * _ramp(0.05 - np.abs(Y - cy), 0.02)
            add([[cx - 0.05, cy], [0.15, -0.55], [mx - 0.05, -0.3], [mx - 0.08, 0.0], [0.05, 0.22]], 0.6)
            add([[cx - 0.05, cy + 0.02], [0.12, -0.5], [mx - 0.1, -0.1], [-0.12, 0.08]], 0.6)
        elif k == "ecg":
            for _ in range(int(r.integers(2, 5))):
                ex, ey = r.uniform(-0.8, 0.8), r.uniform(-0.8, 0.4)
                ring = np.sqrt((X - ex) * (X - ex) + (Y - ey) * (Y - ey))
                out += 0.6 * _ramp(0.022 - ring, 0.01) + 0.35 * np.exp(-((ring - 0.035) / 0.007) ** 2)
                add([[ex, ey], [ex + r.normal(0, 0.3), ey + r.normal(0, 0.3)],
                     [r.choice([-1.3, 1.3]), r.uniform(-1, 1)]], 0.25)
        elif k == "sternotomy":
            for yy in np.linspace(-0.5, 0.05, int(r.integers(4, 7))):
                ring = np.sqrt(((X - mx) / 0.03) ** 2 + ((Y - yy) / 0.016) ** 2)
                out += 0.9 * np.exp(-((ring - 1.0) / 0.35) ** 2)
        elif k == "chest_tube":
            sd = r.choice([-1, 1])
            add([[sd * 1.2, 0.45], [sd * 0.75, 0.3], [sd * 0.55, -0.1], [sd * 0.42, -0.55]], 0.5)
    if lines:
        P = np.vstack([_to_image(p, acq) for p, _ in lines])
        step_px = np.concatenate([np.full(len(p), np.mean(np.hypot(*np.diff(p, axis=0).T)))
                                  for p, _ in lines]) * acq["scale"] * s
        peak = np.concatenate([np.full(len(p), pk) for p, pk in lines])
        sig_px = max(0.006 * acq["scale"] * s, 0.6)
        out += np.minimum(_splat(h, w, s, P, peak * step_px / (2.5066 * sig_px), sig_px / s), 1.2)
    return out


# --------------------------------------------------------------------------------------------
# Lateral renderer
# --------------------------------------------------------------------------------------------

def _lateral_attenuation(h: int, w: int, anat: dict, acq: dict, f: dict,
                         seeds: np.ndarray) -> np.ndarray:
    """Attenuation map of a lateral view: anterior at the image left, spine at the right."""
    s, X, Y = _patient_frame(h, w, acq)
    edge = max(1.5 / s, 0.012)
    insp, hab = acq["insp"], acq["habitus"]
    rngs = _LazyRngs(seeds)
    # silhouette: chest wall in front, back behind, narrowing to the neck at the top
    neck = np.clip((-0.72 - Y) * (1.0 / 0.35), 0.0, 1.0)
    neck = neck * neck * (3.0 - 2.0 * neck)
    front = -0.80 - 0.08 * hab - 0.06 * np.clip(Y - 0.25, 0.0, None) + 0.45 * neck
    back = 0.86 + 0.06 * hab - 0.25 * neck
    inside = _ramp(back - X, 0.04) * _ramp(X - front, 0.04)
    rim = np.clip(np.minimum(back - X, X - front) * (1.0 / 0.25), 0.0, 1.0)
    A = inside * (0.85 + 0.2 * hab) * (0.72 + 0.28 * rim)
    # raised arms over the upper chest, with the humeri
    da = ((X + 0.15) * (1.0 / 0.55)) ** 2 + ((Y + 0.95) * (1.0 / 0.45)) ** 2
    A += 0.22 * np.clip(1.0 - da, 0.0, 1.0)
    for off in (-0.05, 0.07):
        hd = np.abs((X + 0.10 + off) + 0.45 * (Y + 0.55))
        A += 0.07 * _ramp(0.04 - hd, edge) * _ramp(-0.50 - Y, 0.05)
    # spine: vertebral bodies (kyphotic column) and posterior elements; sternum in front
    sp = back - 0.36 + 0.06 * (np.clip(Y, -1.0, 0.6) + 0.1) ** 2
    per = 0.095
    frac = (Y + 3.0) * (1.0 / per)
    frac = frac - np.floor(frac)
    body_v = _ramp(0.08 - np.abs(X - sp - 0.08), edge) * (0.55 + 0.45 * (np.abs(frac - 0.5) < 0.40))
    A += 0.14 * body_v * _ramp(Y + 1.0, 0.05) \
        + 0.05 * _ramp(0.05 - np.abs(X - sp - 0.24), 0.03) * (np.abs(frac - 0.3) < 0.3)
    stx = front + 0.05
    A += 0.09 * _ramp(0.018 - np.abs(X - stx), edge) * _ramp(Y + 0.62, 0.05) * _ramp(0.22 - Y, 0.05)
    # lungs: one field from behind the sternum to over the spine, above the sloping domes
    ant = front + 0.09
    post = sp + 0.10
    dome_a = anat["dome_y"] + 0.07 * insp + 0.02
    dome_p = dome_a + anat["dome_h"] + 0.22
    rel = np.clip((X - ant) * (1.0 / 1.2), 0.0, 1.2)
    diaph = dome_a - 0.08 * (rel * (1.0 - rel) * 4.0) + (dome_p - dome_a) * rel * rel * rel
    apex = anat["apex_y"] - 0.02 + 0.9 * (X - 0.05) ** 2
    f_lung = np.minimum(np.minimum(X - ant, post - X), np.minimum(diaph - Y, Y - apex))
    lung = _ramp(f_lung, edge)
    depth = lung * (0.55 + 0.45 * np.clip(f_lung * (1.0 / 0.18), 0.0, 1.0))
    # heart: anterior-inferior, resting on the anterior diaphragm
    hs = (1.0 + 0.4 * f.get("cardiomegaly", 0.0)) * (1.05 if acq["ap"] else 1.0)
    hcx, hcy = ant + 0.36 * hs, dome_a - 0.10
    he = ((X - hcx) * (1.0 / (0.34 * hs))) ** 2 + ((Y - hcy) * (1.0 / (0.30 * hs))) ** 2
    heart = _ramp(1.0 - he, 0.25) * _ramp(Y - (hcy - 0.35 * hs), 0.1)
    fill = np.zeros((h, w), np.float32)
    sev = max(float(f.get("effusion_right", 0.0)), float(f.get("effusion_left", 0.0)))
    if sev > 0:  # fluid in the posterior sulcus, meniscus rising up the back
        sev_m = 0.6 * sev * sev if acq["supine"] else sev
        if sev_m > 0.01:
            level = dome_p - 0.05 - sev_m * 0.85
            r4 = np.clip((rel - 0.35) * (1.0 / 0.65), 0.0, 1.0)
            r4 = r4 * r4
            surf = level - (0.06 + 0.2 * math.sqrt(sev_m)) * r4 * r4 + 0.5 * np.clip(0.55 - rel, 0.0, None)
            fill = np.maximum(fill, np.clip((Y - surf) * (1.0 / (0.015 + 0.08 * sev_m)), 0.0, 1.0))
        if acq["supine"]:
            fill = np.maximum(fill, (0.2 + 0.4 * sev) * np.clip((Y - (dome_a - 0.6)) * (1.0 / 0.8), 0.0, 1.0))
    cons = max(float(f.get("consolidation", 0.0)), float(f.get("tb", 0.0)))
    if cons > 0:
        r = rngs[2]
        cx, cy = r.uniform(-0.3, 0.3), r.uniform(-0.5, 0.2)
        d2 = ((X - cx) / 0.16) ** 2 + ((Y - cy) / 0.13) ** 2
        fill = np.maximum(fill, np.clip(1.0 - d2, 0.0, 1.0) * (0.3 + 0.4 * cons))
    ed = float(f.get("edema", 0.0))
    if ed > 0:
        fill = np.maximum(fill, ed * 0.35 * np.exp(-(((X - 0.05) / 0.35) ** 2 + ((Y + 0.05) / 0.35) ** 2)))
    A -= 0.40 * depth * (1.0 - 0.8 * heart) * (1.0 - fill)
    # trachea (oblique air column) and hilar density
    trx = -0.02 + 0.12 * (Y + 1.0)
    A -= 0.07 * _ramp(0.03 - np.abs(X - trx), edge) * _ramp(-0.18 - Y, 0.05) * inside
    A += 0.06 * np.exp(-(((X - 0.10) * (1 / 0.10)) ** 2 + ((Y + 0.02) * (1 / 0.12)) ** 2))
    # posterior ribs: faint oblique bands over the back of the lungs; texture
    ph = (Y - 0.45 * X) * (1.0 / (anat["rib_spacing"] * 1.15))
    fr = ph - np.floor(ph)
    A += 0.025 * (fr < 0.4) * lung * _ramp(X - 0.1, 0.3)
    A += 0.018 * _smooth_noise(np.random.default_rng(anat["tissue_seed"] + 1), h, w, 0.05, s) * lung
    if f.get("support_devices", 0.0) > 0:
        r = rngs[11]
        P = [_curve_points(np.array([[r.uniform(-0.3, 0.0), -1.6], [r.uniform(-0.1, 0.15), -0.6],
                                     [r.uniform(-0.2, 0.3), r.uniform(-0.2, 0.4)]]), 300)
             for _ in range(int(r.integers(1, 3)))]
        for p in P:
            A += np.minimum(_line(h, w, s, _to_image(p, acq), 0.45, 0.006 * acq["scale"]), 1.2)
    return A


# --------------------------------------------------------------------------------------------
# Public renderer
# --------------------------------------------------------------------------------------------

def _tone(A: np.ndarray, acq: dict, rng: np.random.Generator, s: float) -> np.ndarray:
    """Attenuation -> display intensity in [0, 1]: equalisation, tone curve, gamma, unsharp
    masking and quantum noise (stronger where fewer photons arrive, i.e. in bright regions)."""
    h, w = A.shape
    if acq["equalize"] > 0:  # large-kernel dynamic-range compression, as in CR/DR processing
        A = A - acq["equalize"] * (_lowres_blur(A, 0.35 * s) - 0.6)
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

def _check_findings(findings: Mapping[str, float] | None) -> dict[str, float]:
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
    h, w = _as_hw(size)
    if view not in ("frontal", "lateral"):
        raise ValueError(f"view must be 'frontal' or 'lateral', got {view!r}")
    if projection not in ("PA", "AP"):
        raise ValueError(f"projection must be 'PA' or 'AP', got {projection!r}")
    f = _check_findings(findings)
    population = make_population(population)
    seeds = rng.integers(0, 2**63 - 1, size=20)
    anat_rng = np.random.default_rng(int(seeds[0]) if anatomy_seed is None else int(anatomy_seed))
    if female is None:
        female = bool(anat_rng.random() < 1.0 - population.male_prob)
    anat = _sample_anatomy(anat_rng, female, population.anatomy_variation)
    acq = _sample_acquisition(np.random.default_rng(int(seeds[1])), population,
                              ap=projection == "AP", supine=supine)
    if view == "lateral":
        acq["tilt"] *= 0.5
        acq["rot"] = 0.0
        A = _lateral_attenuation(h, w, anat, acq, f, seeds[4:20])
    else:
        A = _frontal_attenuation(h, w, anat, acq, f, seeds[4:20])
    noise_rng = np.random.default_rng(int(seeds[2]))
    img = _tone(A, acq, noise_rng, min(h, w) / 2.0)
    if acq["marker"]:
        _draw_marker(img, "L" if view == "lateral" or noise_rng.random() < 0.7 else "R",
                     acq["marker_right"], noise_rng)
    return np.round(img * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Population: patients, studies, findings, report labels
# --------------------------------------------------------------------------------------------

_SPLIT_CODE = {"train": 1, "valid": 2, "shenzhen": 3}
_OBS_TO_FINDING = {
    "Cardiomegaly": "cardiomegaly", "Lung Lesion": "lesion", "Edema": "edema",
    "Consolidation": "consolidation", "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax",
    "Pleural Other": "pleural_other", "Fracture": "fracture", "Support Devices": "support_devices",
}


def _odds(p: float, mult: float) -> float:
    o = p / max(1.0 - p, 1e-9) * mult
    return o / (1.0 + o)


@functools.lru_cache(maxsize=4096)
def _ward_prob(target: float, icu_prob: float, odds_ratio: float) -> float:
    """Base probability for non-ICU studies such that the ICU mixture has marginal ``target``."""
    lo, hi = 0.0, target
    for _ in range(40):
        mid = (lo + hi) / 2
        if icu_prob * _odds(mid, odds_ratio) + (1 - icu_prob) * mid < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _severity(rng: np.random.Generator, lo: float = 0.2) -> float:
    return float(lo + (1.0 - lo) * rng.beta(1.5, 2.0))


def _study_findings(rng: np.random.Generator, pop: PhantomPopulation, icu: bool,
                    propensity: Mapping[str, float], elevated: float = 0.0
                    ) -> tuple[dict[str, float], dict[str, bool]]:
    """Draw the true findings of one study: (render severities, truth flags per observation)."""
    def present(name: str, extra: float = 1.0) -> bool:
        p = pop.prevalence[name]
        ratio = pop.icu_odds.get(name, 1.0)
        base = _ward_prob(p, pop.icu_prob, ratio)
        mult = (ratio if icu else 1.0) * propensity.get(name, 1.0) * extra
        return bool(rng.random() < _odds(base, mult))

    f: dict[str, float] = {}
    cm = present("cardiomegaly")
    ed = present("edema", pop.edema_odds_given_cardiomegaly if cm else 1.0)
    eff = present("effusion", (pop.effusion_odds_given_edema if ed else 1.0)
                  * (pop.effusion_odds_given_cardiomegaly if cm else 1.0))
    atel = present("atelectasis", pop.atelectasis_odds_given_effusion if eff else 1.0)
    dev = present("support_devices")
    ptx = present("pneumothorax", pop.pneumothorax_odds_given_devices if dev else 1.0)
    cons = present("consolidation")
    other = present("other_opacity")
    truth = {
        "Cardiomegaly": cm, "Edema": ed, "Pleural Effusion": eff, "Atelectasis": atel,
        "Support Devices": dev, "Pneumothorax": ptx, "Consolidation": cons,
        "Enlarged Cardiomediastinum": present("enlarged_cardiomediastinum") or cm,
        "Lung Lesion": present("lesion"), "Pleural Other": present("pleural_other"),
        "Fracture": present("fracture"),
    }
    truth["Pneumonia"] = cons and rng.random() < pop.pneumonia_given_consolidation
    truth["Lung Opacity"] = cons or ed or atel or truth["Lung Lesion"] or other
    if eff:
        a, b = pop.effusion_severity_beta
        sev = pop.effusion_severity_min + (1 - pop.effusion_severity_min) * float(rng.beta(a, b))
        if rng.random() < pop.effusion_bilateral_prob:
            lo, hi = pop.effusion_contralateral_scale
            other_sev = sev * float(rng.uniform(lo, hi))
            main_right = rng.random() < 0.5
        else:
            other_sev = 0.0
            main_right = rng.random() < pop.effusion_right_prob
        f["effusion_right"], f["effusion_left"] = (sev, other_sev) if main_right else (other_sev, sev)
    for obs, key in _OBS_TO_FINDING.items():
        if truth[obs]:
            f[key] = _severity(rng)
    if truth["Enlarged Cardiomediastinum"] and not cm:
        f["enlarged_cardiomediastinum"] = _severity(rng)
    if other and not cons:
        f["consolidation"] = 0.25 * _severity(rng)      # a faint patch that may not be "called"
    if elevated > 0:
        f["elevated_hemidiaphragm"] = elevated
    return {k: round(v, 4) for k, v in f.items() if v > 0}, truth


def _report_labels(rng: np.random.Generator, pop: PhantomPopulation, truth: Mapping[str, bool],
                   findings: Mapping[str, float]) -> dict[str, float | None]:
    """Labeler-style labels (1.0, 0.0, -1.0 or None for blank) from the true findings."""
    lab: dict[str, float | None] = {}
    for obs in CHEXPERT_OBSERVATIONS[1:]:
        u = rng.random()
        if obs == "Pleural Effusion":
            if truth[obs]:
                sev = max(findings.get("effusion_right", 0.0), findings.get("effusion_left", 0.0))
                subtle = math.exp(-sev / pop.effusion_subtle_scale)
                p_unc = pop.effusion_unc_base + pop.effusion_unc_subtle * subtle
                p_blank = pop.effusion_blank_base + pop.effusion_blank_subtle * subtle
                lab[obs] = -1.0 if u < p_unc else (None if u < p_unc + p_blank else 1.0)
            else:
                p_neg = pop.effusion_neg_absent
                p_unc = pop.effusion_unc_mimic if _basal_mimic(findings) else pop.effusion_unc_absent
                lab[obs] = 0.0 if u < p_neg else (-1.0 if u < p_neg + p_unc else None)
            continue
        m = pop.labels[obs]
        if truth[obs]:
            lab[obs] = 1.0 if u < m["pos"] else (-1.0 if u < m["pos"] + m["unc"] else None)
        else:
            lab[obs] = 0.0 if u < m["neg"] else (-1.0 if u < m["neg"] + m["unc_absent"] else None)
    sick = any(lab[o] in (1.0, -1.0) for o in CHEXPERT_OBSERVATIONS[1:-1])
    return {"No Finding": None if sick else 1.0, **lab}


def _basal_mimic(findings: Mapping[str, float]) -> bool:
    return any(findings.get(k, 0.0) > 0 for k in ("atelectasis", "consolidation", "elevated_hemidiaphragm"))


def _valid_labels(rng: np.random.Generator, pop: PhantomPopulation, truth: Mapping[str, bool],
                  findings: Mapping[str, float]) -> dict[str, float]:
    """Consensus-read labels, as in the real valid.csv (1.0 / 0.0, no blanks). Pleural effusion
    is read from the image: trace effusions may be missed and mimics over-called; the other
    observations are the truth."""
    lab = {obs: 1.0 if truth[obs] else 0.0 for obs in CHEXPERT_OBSERVATIONS[1:]}
    sev = max(findings.get("effusion_right", 0.0), findings.get("effusion_left", 0.0))
    u = rng.random()
    if sev > 0:
        lab["Pleural Effusion"] = 1.0 if u < 1.0 - math.exp(-sev / pop.valid_read_scale) else 0.0
    else:
        fp = pop.valid_false_pos_mimic if _basal_mimic(findings) else pop.valid_false_pos
        lab["Pleural Effusion"] = 1.0 if u < fp else 0.0
    sick = any(lab[o] == 1.0 for o in CHEXPERT_OBSERVATIONS[1:-1])
    return {"No Finding": 0.0 if sick else 1.0, **lab}


def sample_chexpert_records(n_patients: int, seed: int = 0, split: str = "train",
                            population: PhantomPopulation | Mapping[str, Any] | None = None) -> list[dict]:
    """Draw the study population without rendering: one dict per image with the CSV fields
    (``path``, ``sex``, ``age``, ``view``, ``ap_pa``, ``labels``) and the hidden truth
    (``findings`` severities, ``projection``, ``supine``, seeds). ``split`` is ``"train"``
    (patients 1..n, several studies, labeler-style labels) or ``"valid"`` (patients from 64541,
    one study each, clean labels). Patient k's content does not depend on ``n_patients``."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    pop = make_population(population)
    first = 1 if split == "train" else VALID_FIRST_PATIENT
    out: list[dict] = []
    for pid in range(first, first + n_patients):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], pid])
        male = rng.random() < pop.male_prob
        age = int(np.clip(round(rng.normal(pop.age_mean, pop.age_sd)), 18, 90))
        icu = bool(rng.random() < pop.icu_prob)
        k = pop.patient_propensity_shape
        propensity = {name: float(rng.gamma(k, 1.0 / k)) for name in pop.prevalence}
        anatomy_seed = int(rng.integers(2**62))
        elevated = float(rng.uniform(0.3, 1.0)) if rng.random() < pop.elevated_hemidiaphragm_prob else 0.0
        if split == "train":
            p = 1.0 / max(pop.mean_studies_per_patient, 1.0)
            n_studies = int(min(rng.geometric(p), pop.max_studies))
            lateral_p = pop.lateral_prob
        else:
            n_studies, lateral_p = 1, pop.valid_lateral_prob
        for st in range(1, n_studies + 1):
            srng = np.random.default_rng([seed, _SPLIT_CODE[split], pid, st])
            findings, truth = _study_findings(srng, pop, icu, propensity, elevated)
            if split == "train":
                labels = _report_labels(srng, pop, truth, findings)
            else:
                labels = _valid_labels(srng, pop, truth, findings)
            ap = srng.random() < (pop.ap_prob_icu if icu else pop.ap_prob_ward)
            supine = bool(ap and srng.random() < pop.supine_prob_ap)
            views = ["frontal"]
            if split == "train" and srng.random() < pop.second_frontal_prob:
                views.append("frontal")
            if srng.random() < lateral_p:
                views.append("lateral")
            for vi, view in enumerate(views, start=1):
                out.append({
                    "path": f"{CHEXPERT_DIRNAME}/{split}/patient{pid:05d}/study{st}/view{vi}_{view}.jpg",
                    "patient": pid, "study": st, "view_index": vi,
                    "sex": "Male" if male else "Female", "age": age,
                    "view": "Frontal" if view == "frontal" else "Lateral",
                    "ap_pa": ("AP" if ap else "PA") if view == "frontal" else "",
                    "labels": labels, "findings": findings,
                    "projection": "AP" if ap else "PA", "supine": supine, "female": not male,
                    "icu": icu, "anatomy_seed": anatomy_seed,
                    "image_seed": [seed, _SPLIT_CODE[split], pid, st, vi],
                })
    return out


def _format_label(v: float | None) -> str:
    return "" if v is None else f"{float(v):.1f}"


def _write_chexpert_csv(path: Path, records: Sequence[dict]) -> None:
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(CHEXPERT_COLUMNS)
        for r in records:
            wr.writerow([r["path"], r["sex"], r["age"], r["view"], r["ap_pa"]]
                        + [_format_label(r["labels"][o]) for o in CHEXPERT_OBSERVATIONS])


def _write_truth_csv(path: Path, records: Sequence[dict]) -> None:
    """Hidden ground truth next to the CSVs (the readers ignore it): severities per image."""
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["Path", "projection", "supine", "icu"] + list(FINDING_KEYS))
        for r in records:
            wr.writerow([r["path"], r["projection"], int(r["supine"]), int(r.get("icu", False))]
                        + [f"{r['findings'].get(k, 0.0):.4f}" for k in FINDING_KEYS])


# --------------------------------------------------------------------------------------------
# Writing trees
# --------------------------------------------------------------------------------------------

def _render_job(job: tuple) -> None:
    path, image_seed, findings, view, projection, supine, female, anatomy_seed, size, pop, fmt = job
    img = render_radiograph(np.random.default_rng(image_seed), size, findings, view=view,
                            projection=projection, supine=supine, female=female,
                            anatomy_seed=anatomy_seed, population=pop)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jpeg":
        Image.fromarray(img, "L").save(path, format="JPEG", quality=pop.jpeg_quality)
    elif fmt == "png_rgb":
        Image.fromarray(np.repeat(img[:, :, None], 3, axis=2), "RGB").save(path, format="PNG")
    else:
        Image.fromarray(img, "L").save(path, format="PNG")


def _run_jobs(jobs: list[tuple], workers: int | None, progress: bool, desc: str) -> None:
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    it: Iterable = jobs
    if n_workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        # spawn: safe after torch/OpenMP threads exist in the parent (fork is not)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as ex:
            it = ex.map(_render_job, jobs, chunksize=max(1, min(64, len(jobs) // (4 * n_workers))))
            if progress:
                it = _tqdm(it, len(jobs), desc)
            for _ in it:
                pass
        return
    if progress:
        it = _tqdm(jobs, len(jobs), desc)
    for job in it:
        _render_job(job)


def _tqdm(it: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc)


def _chexpert_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """An int is the width (the shorter side); height follows CheXpert-small's 390:320."""
    if isinstance(image_size, (int, np.integer)):
        return _as_hw((int(round(int(image_size) * 390 / 320)), int(image_size)))
    return _as_hw(image_size)


def _up_to_date(sidecar: Path, params: dict, required: Sequence[Path]) -> bool:
    if not sidecar.is_file() or not all(p.exists() for p in required):
        return False
    try:
        return json.loads(sidecar.read_text()) == params
    except (OSError, json.JSONDecodeError):
        return False


def _replace_dir(tmp: Path, final: Path, ours: bool) -> None:
    """Move a freshly written ``tmp`` tree to ``final``, removing an older phantom tree there."""
    if final.exists():
        if not ours:
            shutil.rmtree(tmp.parent, ignore_errors=True)
            raise FileExistsError(f"{final} exists and was not written by mocoxr.phantom "
                                  f"(no sidecar); refusing to overwrite it")
        trash = final.with_name(final.name + f".old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def generate_chexpert_tree(out_dir: str | os.PathLike, n_patients: int = 1000,
                           image_size: int | Sequence[int] = 160, seed: int = 0,
                           n_valid_patients: int = 200,
                           population: PhantomPopulation | Mapping[str, Any] | None = None,
                           workers: int | None = 0, progress: bool = False) -> Path:
    """Write a synthetic CheXpert-v1.0-small tree under ``out_dir`` and return the CheXpert dir.

    Layout and CSVs follow the real release: ``train.csv`` (labeler-style 1.0 / 0.0 / -1.0 /
    blank labels, several studies per patient, some lateral views), ``valid.csv`` (patients from
    64541, one study each, clean 1.0 / 0.0 labels), ``train/patientNNNNN/studyN/viewN_frontal.jpg``
    and ``viewN_lateral.jpg``. ``image_size`` is (height, width) or an int width (height =
    width * 390 / 320, like CheXpert-small's portrait images). Also writes ``phantom_truth.csv``
    (true finding severities per image, for analysis; readers ignore it) and ``phantom.json``
    (the parameters). When ``phantom.json`` matches the requested parameters the existing tree is
    reused; otherwise a phantom tree is rebuilt (a non-phantom folder is never overwritten).
    ``population``: a :class:`PhantomPopulation` or a dict of overrides of the defaults.
    ``workers``: processes for rendering (0 or 1: serial; None: all cores).
    """
    if n_patients < 1 or n_valid_patients < 1:
        raise ValueError(f"n_patients and n_valid_patients must be >= 1, got {n_patients}, "
                         f"{n_valid_patients}")
    if n_valid_patients > 99_999 - VALID_FIRST_PATIENT or n_patients >= VALID_FIRST_PATIENT:
        raise ValueError(f"n_patients must be < {VALID_FIRST_PATIENT} (train ids stop before the "
                         f"valid ids), got {n_patients}")
    hw = _chexpert_hw(image_size)
    population = make_population(population)
    out = Path(out_dir)
    final = out / CHEXPERT_DIRNAME
    params = {"generator": "mocoxr.phantom", "kind": "chexpert", "version": GENERATOR_VERSION,
              "n_patients": int(n_patients), "n_valid_patients": int(n_valid_patients),
              "image_size": list(hw), "seed": int(seed), "population": population.to_dict()}
    sidecar = final / SIDECAR
    if _up_to_date(sidecar, params, [final / "train.csv", final / "valid.csv"]):
        return final
    ours = sidecar.is_file()
    if final.exists() and not ours:
        raise FileExistsError(f"{final} exists and was not written by mocoxr.phantom (no "
                              f"{SIDECAR}); refusing to overwrite it. Use another out_dir.")
    out.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".phantom-chexpert-", dir=out))
    try:
        tmp = tmp_root / CHEXPERT_DIRNAME
        tmp.mkdir()
        train = sample_chexpert_records(n_patients, seed, "train", population)
        valid = sample_chexpert_records(n_valid_patients, seed, "valid", population)
        jobs = [(str(tmp_root / r["path"]), r["image_seed"], r["findings"], r["view"].lower(),
                 r["projection"], r["supine"], r["female"], r["anatomy_seed"], hw, population, "jpeg")
                for r in train + valid]
        _run_jobs(jobs, workers, progress, "phantom CheXpert")
        _write_chexpert_csv(tmp / "train.csv", train)
        _write_chexpert_csv(tmp / "valid.csv", valid)
        _write_truth_csv(tmp / "phantom_truth.csv", train + valid)
        (tmp / SIDECAR).write_text(json.dumps(params, indent=1, sort_keys=True))
        _replace_dir(tmp, final, ours)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def sample_shenzhen_records(n_images: int, seed: int = 0,
                            population: PhantomPopulation | Mapping[str, Any] | None = None) -> list[dict]:
    """Shenzhen-like screening population: normal images first, then TB, as in the real
    numbering (CHNCXR_0001_0 ... CHNCXR_0327_1 ...); PA upright; no devices."""
    if n_images < 2:
        raise ValueError(f"n_images must be >= 2 (both classes), got {n_images}")
    pop = make_population(population)
    n_tb = int(round(n_images * pop.shenzhen_tb_fraction))
    n_tb = min(max(n_tb, 1), n_images - 1)
    out = []
    for i in range(1, n_images + 1):
        tb = i > n_images - n_tb
        rng = np.random.default_rng([seed, _SPLIT_CODE["shenzhen"], i])
        f: dict[str, float] = {}
        if tb:
            a, b = pop.tb_severity_beta
            f["tb"] = pop.tb_severity_min + (1 - pop.tb_severity_min) * float(rng.beta(a, b))
            if rng.random() < pop.tb_effusion_prob:
                f["effusion_right" if rng.random() < 0.5 else "effusion_left"] = float(rng.uniform(0.05, 0.5))
        if rng.random() < pop.shenzhen_other_prob:
            key = ["cardiomegaly", "atelectasis", "lesion", "pleural_other", "fracture"][int(rng.integers(5))]
            f[key] = _severity(rng)
        out.append({
            "name": f"CHNCXR_{i:04d}_{int(tb)}.png", "label": int(tb),
            "findings": {k: round(v, 4) for k, v in f.items()},
            "female": bool(rng.random() < 0.33), "rgb": bool(rng.random() < pop.shenzhen_rgb_fraction),
            "anatomy_seed": int(rng.integers(2**62)), "image_seed": [seed, _SPLIT_CODE["shenzhen"], i, 0],
        })
    return out


def generate_shenzhen_tree(out_dir: str | os.PathLike, n_images: int = 662,
                           image_size: int | Sequence[int] = 256, seed: int = 0,
                           population: PhantomPopulation | Mapping[str, Any] | None = None,
                           workers: int | None = 0, progress: bool = False) -> Path:
    """Write ``out_dir/CXR_png/CHNCXR_NNNN_L.png`` (L = 1 tuberculosis) and return ``out_dir``.

    About half the images show TB (upper-zone nodules and infiltrates, cavities, fibrotic
    strands; graded), the rest are normal screening films; 8-bit gray PNGs, a fraction
    stored as 8-bit RGB with equal channels like the real set. ``image_size``: int (square) or
    (height, width). Reuses the tree when ``out_dir/phantom_shenzhen.json`` matches.
    """
    hw = _as_hw(image_size)
    population = make_population(population)
    out = Path(out_dir)
    final = out / "CXR_png"
    sidecar = out / "phantom_shenzhen.json"
    params = {"generator": "mocoxr.phantom", "kind": "shenzhen", "version": GENERATOR_VERSION,
              "n_images": int(n_images), "image_size": list(hw), "seed": int(seed),
              "population": population.to_dict()}
    if _up_to_date(sidecar, params, [final]):
        return out
    ours = sidecar.is_file()
    if final.exists() and not ours:
        raise FileExistsError(f"{final} exists and was not written by mocoxr.phantom (no "
                              f"{sidecar.name}); refusing to overwrite it. Use another out_dir.")
    records = sample_shenzhen_records(n_images, seed, population)
    out.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".phantom-shenzhen-", dir=out))
    try:
        tmp = tmp_root / "CXR_png"
        tmp.mkdir()
        jobs = [(str(tmp / r["name"]), r["image_seed"], r["findings"], "frontal", "PA", False,
                 r["female"], r["anatomy_seed"], hw, population, "png_rgb" if r["rgb"] else "png")
                for r in records]
        _run_jobs(jobs, workers, progress, "phantom Shenzhen")
        if sidecar.exists():
            sidecar.unlink()
        _replace_dir(tmp, final, ours)
        sidecar.write_text(json.dumps(params, indent=1, sort_keys=True))
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return out


def label_grid(images: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 6,
               cell: int = 160) -> np.ndarray:
    """Tile uint8 images (any sizes) into one uint8 grid with a caption above each tile, for
    looking at the phantom (e.g. ``Image.fromarray(label_grid(...)).save("grid.png")``)."""
    from PIL import ImageDraw
    n = len(images)
    rows = (n + ncols - 1) // ncols
    cap = 12
    tiles = []
    for im in images:
        h, w = im.shape[:2]
        k = cell / max(h, w)
        tiles.append(Image.fromarray(np.asarray(im, np.uint8)).convert("L").resize(
            (max(1, int(round(w * k))), max(1, int(round(h * k)))), Image.BILINEAR))
    grid = Image.new("L", (ncols * cell, rows * (cell + cap)), 0)
    draw = ImageDraw.Draw(grid)
    for i, (tile, title) in enumerate(zip(tiles, titles)):
        x, y = (i % ncols) * cell, (i // ncols) * (cell + cap)
        grid.paste(tile, (x + (cell - tile.width) // 2, y + cap))
        draw.text((x + 2, y), str(title)[:28], fill=255)
    return np.asarray(grid)


# --------------------------------------------------------------------------------------------
# Ground truth for saliency: where an effusion shows in an image
# --------------------------------------------------------------------------------------------

EFFUSION_KEYS = ("effusion_right", "effusion_left")


def effusion_masks(chexpert_dir: str | os.PathLike, rel_paths: Sequence[str], size: int,
                   threshold: int = 8) -> np.ndarray:
    """Boolean (N, size, size) masks of where each phantom image shows its effusion.

    ``chexpert_dir``: a tree written by :func:`generate_chexpert_tree` (its ``phantom.json``
    gives the parameters); ``rel_paths``: image paths as in its CSVs
    (``CheXpert-v1.0-small/valid/...``). Each image is rendered again from the same seeds with
    and without its effusion (the renderer keeps patient, exposure and noise fixed across
    findings), and the mask is where the two differ by at least ``threshold`` gray levels, then
    resized and centre-cropped to ``size`` as the image cache does. Images without an effusion
    get an empty mask. Nothing is written: the tree's images are left as they are.
    """
    sidecar = Path(chexpert_dir) / SIDECAR
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} not found: effusion masks exist only for phantom "
                                "trees written by mocoxr.phantom.generate_chexpert_tree")
    params = json.loads(sidecar.read_text())
    pop, hw = make_population(params["population"]), tuple(params["image_size"])
    splits = {p.split("/")[1] if p.count("/") > 1 else "" for p in rel_paths}
    records: dict[str, dict] = {}
    for split, n in (("train", params["n_patients"]), ("valid", params["n_valid_patients"])):
        if split in splits:
            records.update({r["path"]: r for r in sample_chexpert_records(n, params["seed"], split, pop)})
    out = np.zeros((len(rel_paths), size, size), bool)
    for i, p in enumerate(rel_paths):
        if p not in records:
            raise ValueError(f"{p} is not an image of the phantom tree {chexpert_dir}")
        r = records[p]
        if not any(r["findings"].get(k, 0.0) > 0 for k in EFFUSION_KEYS):
            continue
        dry = {k: v for k, v in r["findings"].items() if k not in EFFUSION_KEYS}
        a, b = (render_radiograph(np.random.default_rng(r["image_seed"]), hw, f,
                                  view=r["view"].lower(), projection=r["projection"],
                                  supine=r["supine"], female=r["female"],
                                  anatomy_seed=r["anatomy_seed"], population=pop)
                for f in (r["findings"], dry))
        diff = (np.abs(a.astype(np.int16) - b.astype(np.int16)) >= threshold).astype(np.uint8)
        im = Image.fromarray(diff * 255, "L")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        out[i] = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box)) >= 128
    return out
