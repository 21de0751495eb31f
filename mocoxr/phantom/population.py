"""The synthetic population's parameters: one frozen dataclass holding every knob.

Prevalences, label models, effusion severity, the Shenzhen mix and the nuisance (acquisition and
anatomy) ranges live in :class:`PhantomPopulation`; :func:`make_population` applies a dict of
overrides (e.g. from a YAML profile) to :data:`DEFAULT_POPULATION`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


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
