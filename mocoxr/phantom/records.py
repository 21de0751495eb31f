"""The sampled population: patients, studies, views, true findings and report labels.

Nothing is rendered here: :func:`sample_chexpert_records` and :func:`sample_shenzhen_records`
return one dict per image with the CSV fields and the hidden truth (finding severities,
projection, seeds). Every patient (and every study) draws from its own seeded generator, so
patient k's content does not depend on how many patients are drawn.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import numpy as np

from mocoxr.data import CHEXPERT_OBSERVATIONS
from mocoxr.phantom.population import PhantomPopulation, make_population

VALID_FIRST_PATIENT = 64541  # real CheXpert: train patients 1..64540, valid from 64541
CHEXPERT_DIRNAME = "CheXpert-v1.0-small"
SPLIT_CODE = {"train": 1, "valid": 2, "shenzhen": 3}
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


def severity(rng: np.random.Generator, lo: float = 0.2) -> float:
    """A severity in [lo, 1] (Beta(1.5, 2) scaled)."""
    return float(lo + (1.0 - lo) * rng.beta(1.5, 2.0))


def _effusion_sides(rng: np.random.Generator, pop: PhantomPopulation) -> tuple[float, float]:
    """(right, left) effusion severities: one side, or both with a smaller contralateral one."""
    a, b = pop.effusion_severity_beta
    sev = pop.effusion_severity_min + (1 - pop.effusion_severity_min) * float(rng.beta(a, b))
    if rng.random() < pop.effusion_bilateral_prob:
        lo, hi = pop.effusion_contralateral_scale
        other_sev = sev * float(rng.uniform(lo, hi))
        main_right = rng.random() < 0.5
    else:
        other_sev = 0.0
        main_right = rng.random() < pop.effusion_right_prob
    return (sev, other_sev) if main_right else (other_sev, sev)


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
        f["effusion_right"], f["effusion_left"] = _effusion_sides(rng, pop)
    for obs, key in _OBS_TO_FINDING.items():
        if truth[obs]:
            f[key] = severity(rng)
    if truth["Enlarged Cardiomediastinum"] and not cm:
        f["enlarged_cardiomediastinum"] = severity(rng)
    if other and not cons:
        f["consolidation"] = 0.25 * severity(rng)      # a faint patch that may not be "called"
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
        out += _patient_records(seed, split, pid, pop)
    return out


def _patient_records(seed: int, split: str, pid: int, pop: PhantomPopulation) -> list[dict]:
    """One patient: sex, age, acuity, per-finding propensities, anatomy; then their studies."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], pid])
    male = rng.random() < pop.male_prob
    patient = {
        "pid": pid, "male": male,
        "age": int(np.clip(round(rng.normal(pop.age_mean, pop.age_sd)), 18, 90)),
        "icu": bool(rng.random() < pop.icu_prob),
    }
    k = pop.patient_propensity_shape
    patient["propensity"] = {name: float(rng.gamma(k, 1.0 / k)) for name in pop.prevalence}
    patient["anatomy_seed"] = int(rng.integers(2**62))
    patient["elevated"] = (float(rng.uniform(0.3, 1.0)) if rng.random() < pop.elevated_hemidiaphragm_prob
                           else 0.0)
    if split == "train":
        p = 1.0 / max(pop.mean_studies_per_patient, 1.0)
        n_studies = int(min(rng.geometric(p), pop.max_studies))
        lateral_p = pop.lateral_prob
    else:
        n_studies, lateral_p = 1, pop.valid_lateral_prob
    out: list[dict] = []
    for st in range(1, n_studies + 1):
        out += _study_records(seed, split, st, pop, patient, lateral_p)
    return out


def _study_records(seed: int, split: str, st: int, pop: PhantomPopulation, patient: dict,
                   lateral_p: float) -> list[dict]:
    """One study: true findings, report (train) or consensus (valid) labels, projection and
    views (a frontal, sometimes a second frontal, sometimes a lateral)."""
    pid, icu = patient["pid"], patient["icu"]
    srng = np.random.default_rng([seed, SPLIT_CODE[split], pid, st])
    findings, truth = _study_findings(srng, pop, icu, patient["propensity"], patient["elevated"])
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
    male = patient["male"]
    return [{
        "path": f"{CHEXPERT_DIRNAME}/{split}/patient{pid:05d}/study{st}/view{vi}_{view}.jpg",
        "patient": pid, "study": st, "view_index": vi,
        "sex": "Male" if male else "Female", "age": patient["age"],
        "view": "Frontal" if view == "frontal" else "Lateral",
        "ap_pa": ("AP" if ap else "PA") if view == "frontal" else "",
        "labels": labels, "findings": findings,
        "projection": "AP" if ap else "PA", "supine": supine, "female": not male,
        "icu": icu, "anatomy_seed": patient["anatomy_seed"],
        "image_seed": [seed, SPLIT_CODE[split], pid, st, vi],
    } for vi, view in enumerate(views, start=1)]


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
        rng = np.random.default_rng([seed, SPLIT_CODE["shenzhen"], i])
        f: dict[str, float] = {}
        if tb:
            a, b = pop.tb_severity_beta
            f["tb"] = pop.tb_severity_min + (1 - pop.tb_severity_min) * float(rng.beta(a, b))
            if rng.random() < pop.tb_effusion_prob:
                f["effusion_right" if rng.random() < 0.5 else "effusion_left"] = float(rng.uniform(0.05, 0.5))
        if rng.random() < pop.shenzhen_other_prob:
            key = ["cardiomegaly", "atelectasis", "lesion", "pleural_other", "fracture"][int(rng.integers(5))]
            f[key] = severity(rng)
        out.append({
            "name": f"CHNCXR_{i:04d}_{int(tb)}.png", "label": int(tb),
            "findings": {k: round(v, 4) for k, v in f.items()},
            "female": bool(rng.random() < 0.33), "rgb": bool(rng.random() < pop.shenzhen_rgb_fraction),
            "anatomy_seed": int(rng.integers(2**62)), "image_seed": [seed, SPLIT_CODE["shenzhen"], i, 0],
        })
    return out
