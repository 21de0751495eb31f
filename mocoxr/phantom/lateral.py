"""The lateral renderer: anterior at the image left, spine at the right.

Simpler than the frontal one (one lung field, no vessel trees), but with the same patient, the
same acquisition nuisances and the findings that show on a lateral film (posterior-sulcus
effusion, consolidation, edema, tubes). Patient-aware positive pairs use these views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mocoxr.phantom.anatomy import Frame
from mocoxr.phantom.shapes import curve_points, line, ramp, smooth_noise


@dataclass
class _Side:
    """Lateral geometry shared by the drawing steps."""

    rel: np.ndarray      # 0 (anterior) .. 1.2 (posterior) across the lung field
    dome_a: float        # anterior and posterior diaphragm heights
    dome_p: float
    lung: np.ndarray
    depth: np.ndarray
    heart: np.ndarray


def _torso(fr: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Silhouette (chest wall, back, neck), raised arms with humeri, spine and sternum:
    the attenuation so far, the anterior wall, the body mask and the spine's front edge."""
    X, Y, edge, hab = fr.X, fr.Y, fr.edge, fr.acq["habitus"]
    neck = np.clip((-0.72 - Y) * (1.0 / 0.35), 0.0, 1.0)
    neck = neck * neck * (3.0 - 2.0 * neck)
    front = -0.80 - 0.08 * hab - 0.06 * np.clip(Y - 0.25, 0.0, None) + 0.45 * neck
    back = 0.86 + 0.06 * hab - 0.25 * neck
    inside = ramp(back - X, 0.04) * ramp(X - front, 0.04)
    rim = np.clip(np.minimum(back - X, X - front) * (1.0 / 0.25), 0.0, 1.0)
    A = inside * (0.85 + 0.2 * hab) * (0.72 + 0.28 * rim)
    # raised arms over the upper chest, with the humeri
    da = ((X + 0.15) * (1.0 / 0.55)) ** 2 + ((Y + 0.95) * (1.0 / 0.45)) ** 2
    A += 0.22 * np.clip(1.0 - da, 0.0, 1.0)
    for off in (-0.05, 0.07):
        hd = np.abs((X + 0.10 + off) + 0.45 * (Y + 0.55))
        A += 0.07 * ramp(0.04 - hd, edge) * ramp(-0.50 - Y, 0.05)
    # spine: vertebral bodies (kyphotic column) and posterior elements; sternum in front
    sp = back - 0.36 + 0.06 * (np.clip(Y, -1.0, 0.6) + 0.1) ** 2
    per = 0.095
    frac = (Y + 3.0) * (1.0 / per)
    frac = frac - np.floor(frac)
    body_v = ramp(0.08 - np.abs(X - sp - 0.08), edge) * (0.55 + 0.45 * (np.abs(frac - 0.5) < 0.40))
    A += 0.14 * body_v * ramp(Y + 1.0, 0.05) \
        + 0.05 * ramp(0.05 - np.abs(X - sp - 0.24), 0.03) * (np.abs(frac - 0.3) < 0.3)
    stx = front + 0.05
    A += 0.09 * ramp(0.018 - np.abs(X - stx), edge) * ramp(Y + 0.62, 0.05) * ramp(0.22 - Y, 0.05)
    return A, front, inside, sp


def _side_geometry(fr: Frame, front: np.ndarray, sp: np.ndarray) -> _Side:
    """One lung field from behind the sternum to over the spine, above the sloping domes, and
    the heart: anterior-inferior, resting on the anterior diaphragm."""
    X, Y, anat = fr.X, fr.Y, fr.anat
    ant = front + 0.09
    post = sp + 0.10
    dome_a = anat["dome_y"] + 0.07 * fr.acq["insp"] + 0.02
    dome_p = dome_a + anat["dome_h"] + 0.22
    rel = np.clip((X - ant) * (1.0 / 1.2), 0.0, 1.2)
    diaph = dome_a - 0.08 * (rel * (1.0 - rel) * 4.0) + (dome_p - dome_a) * rel * rel * rel
    apex = anat["apex_y"] - 0.02 + 0.9 * (X - 0.05) ** 2
    f_lung = np.minimum(np.minimum(X - ant, post - X), np.minimum(diaph - Y, Y - apex))
    lung = ramp(f_lung, fr.edge)
    depth = lung * (0.55 + 0.45 * np.clip(f_lung * (1.0 / 0.18), 0.0, 1.0))
    hs = (1.0 + 0.4 * fr.f.get("cardiomegaly", 0.0)) * (1.05 if fr.acq["ap"] else 1.0)
    hcx, hcy = ant + 0.36 * hs, dome_a - 0.10
    he = ((X - hcx) * (1.0 / (0.34 * hs))) ** 2 + ((Y - hcy) * (1.0 / (0.30 * hs))) ** 2
    heart = ramp(1.0 - he, 0.25) * ramp(Y - (hcy - 0.35 * hs), 0.1)
    return _Side(rel, dome_a, dome_p, lung, depth, heart)


def _fill(fr: Frame, sd: _Side) -> np.ndarray:
    """Fraction of lung air replaced: effusion in the posterior sulcus (meniscus rising up the
    back; a haze when supine), consolidation or TB, edema."""
    X, Y, f, supine = fr.X, fr.Y, fr.f, fr.acq["supine"]
    fill = np.zeros((fr.h, fr.w), np.float32)
    sev = max(float(f.get("effusion_right", 0.0)), float(f.get("effusion_left", 0.0)))
    if sev > 0:
        sev_m = 0.6 * sev * sev if supine else sev
        if sev_m > 0.01:
            level = sd.dome_p - 0.05 - sev_m * 0.85
            r4 = np.clip((sd.rel - 0.35) * (1.0 / 0.65), 0.0, 1.0)
            r4 = r4 * r4
            surf = level - (0.06 + 0.2 * math.sqrt(sev_m)) * r4 * r4 + 0.5 * np.clip(0.55 - sd.rel, 0.0, None)
            fill = np.maximum(fill, np.clip((Y - surf) * (1.0 / (0.015 + 0.08 * sev_m)), 0.0, 1.0))
        if supine:
            fill = np.maximum(fill, (0.2 + 0.4 * sev) * np.clip((Y - (sd.dome_a - 0.6)) * (1.0 / 0.8), 0.0, 1.0))
    cons = max(float(f.get("consolidation", 0.0)), float(f.get("tb", 0.0)))
    if cons > 0:
        r = fr.rngs[2]
        cx, cy = r.uniform(-0.3, 0.3), r.uniform(-0.5, 0.2)
        d2 = ((X - cx) / 0.16) ** 2 + ((Y - cy) / 0.13) ** 2
        fill = np.maximum(fill, np.clip(1.0 - d2, 0.0, 1.0) * (0.3 + 0.4 * cons))
    ed = float(f.get("edema", 0.0))
    if ed > 0:
        fill = np.maximum(fill, ed * 0.35 * np.exp(-(((X - 0.05) / 0.35) ** 2 + ((Y + 0.05) / 0.35) ** 2)))
    return fill


def lateral_attenuation(fr: Frame) -> np.ndarray:
    """Attenuation map of a lateral view: anterior at the image left, spine at the right."""
    X, Y, h, w, s, acq = fr.X, fr.Y, fr.h, fr.w, fr.s, fr.acq
    A, front, inside, sp = _torso(fr)
    side = _side_geometry(fr, front, sp)
    A -= 0.40 * side.depth * (1.0 - 0.8 * side.heart) * (1.0 - _fill(fr, side))
    # trachea (oblique air column) and hilar density
    trx = -0.02 + 0.12 * (Y + 1.0)
    A -= 0.07 * ramp(0.03 - np.abs(X - trx), fr.edge) * ramp(-0.18 - Y, 0.05) * inside
    A += 0.06 * np.exp(-(((X - 0.10) * (1 / 0.10)) ** 2 + ((Y + 0.02) * (1 / 0.12)) ** 2))
    # posterior ribs: faint oblique bands over the back of the lungs; texture
    ph = (Y - 0.45 * X) * (1.0 / (fr.anat["rib_spacing"] * 1.15))
    frac = ph - np.floor(ph)
    A += 0.025 * (frac < 0.4) * side.lung * ramp(X - 0.1, 0.3)
    A += 0.018 * smooth_noise(np.random.default_rng(fr.anat["tissue_seed"] + 1), h, w, 0.05, s) * side.lung
    if fr.f.get("support_devices", 0.0) > 0:
        r = fr.rngs[11]
        P = [curve_points(np.array([[r.uniform(-0.3, 0.0), -1.6], [r.uniform(-0.1, 0.15), -0.6],
                                    [r.uniform(-0.2, 0.3), r.uniform(-0.2, 0.4)]]), 300)
             for _ in range(int(r.integers(1, 3)))]
        for p in P:
            A += np.minimum(line(h, w, s, fr.to_image(p), 0.45, 0.006 * acq["scale"]), 1.2)
    return A
