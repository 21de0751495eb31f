"""The frontal (PA/AP) renderer: small drawing steps over one shared frame and chest geometry.

:func:`frontal_attenuation` builds the :class:`~mocoxr.phantom.anatomy.Chest` once, then adds, in
a fixed order, soft tissue, the findings' fill, lung air and airways, lung markings, bones,
soft-tissue overlays, focal findings and devices (:mod:`mocoxr.phantom.findings`). The order and
every float operation are part of the output: the golden test in ``tests/test_phantom_trees.py``
checks the bytes.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mocoxr.phantom import findings
from mocoxr.phantom.anatomy import Chest, Frame, chest_geometry
from mocoxr.phantom.shapes import ramp, smooth_noise, splat


def frontal_attenuation(fr: Frame) -> np.ndarray:
    """Attenuation map (arbitrary units; 0 = air outside the patient) of a PA/AP view."""
    ch = chest_geometry(fr)
    A = _soft_tissue(fr, ch)
    fill, tb_centres = findings.air_space_fill(fr, ch)
    rim = findings.pneumothorax(fr, ch, A)
    _air(fr, ch, A, fill, rim)
    _markings(fr, ch, A, rim)
    A += _bones(fr, ch) * ch.in_body
    _overlays(fr, ch, A)
    findings.focal_findings(fr, ch, A, tb_centres)
    if fr.sev("support_devices") > 0:
        A += findings.devices(fr, ch)
    return A


def _soft_tissue(fr: Frame, ch: Chest) -> np.ndarray:
    """Body soft tissue (thicker centrally), an obese habitus' basal haze, humeral heads."""
    X, Y, uX, bw, in_body = fr.X, fr.Y, ch.uX, ch.bw, ch.in_body
    hab = fr.acq["habitus"]
    core = np.clip(1.0 - uX * uX * (1.0 / (bw + 0.25) ** 2), 0.0, 1.0)
    A = in_body * (0.80 + 0.25 * hab) * (0.62 + 0.38 * core)
    if hab > 0.6:  # obese: soft tissue (pannus, breasts) hazes the lower zones
        A += (0.25 * (hab - 0.6)) * ramp(Y - fr.anat["dome_y"] + 0.35, 0.5) * in_body
    # humeral heads inside the shoulders
    rs = fr.rows(ch.y_neck + 0.22, ch.y_neck + 0.54)
    for sd in (-1.0, 1.0):
        dhx, dhy = X[rs] - sd * (bw + 0.10), Y[rs] - (ch.y_neck + 0.38)
        hd2 = dhx * dhx + dhy * dhy
        A[rs] += 0.07 * ramp(0.0169 - hd2, 0.004) * in_body[rs]
    return A


def _air(fr: Frame, ch: Chest, A: np.ndarray, fill: np.ndarray, rim: np.ndarray | None) -> None:
    """Lung air (less behind the heart and where findings fill it) and the airways."""
    heart_keep = 1.0 - 0.75 * ch.heart
    A -= 0.42 * ch.depth * heart_keep * (1.0 - fill) * (1.0 + (0.0 if rim is None else 0.25 * rim))
    # trachea and main bronchi (air column over the upper mediastinum)
    rs = fr.rows(-9.0, -0.08)
    um_r, Y_r = ch.um[rs], fr.Y[rs]
    tr = ramp(0.032 - um_r, fr.edge) * ramp(-0.30 - Y_r, 0.04)
    br = ramp(0.022 - np.abs(um_r - 0.05 - 0.6 * np.clip(Y_r + 0.30, 0.0, None)), fr.edge) \
        * ramp(Y_r + 0.32, 0.03) * ramp(-0.12 - Y_r, 0.04)
    A[rs] -= 0.09 * np.maximum(tr, br)


# --------------------------------------------------------------------------------------------
# Lung markings
# --------------------------------------------------------------------------------------------

def vessel_tree(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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
def vessel_library(n: int = 64) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """A fixed library of vessel trees (drawing one per image costs more than the rest of the
    lung); patients pick two and rotate/scale them."""
    rng = np.random.default_rng(20210316)
    return tuple(vessel_tree(rng) for _ in range(n))


def _vessels(fr: Frame, ch: Chest) -> np.ndarray:
    """The patient's two vessel trees (picked from the library by ``vessel_seed``, rotated and
    scaled) drawn from the hila."""
    acq, s, lib, vs = fr.acq, fr.s, vessel_library(), fr.anat["vessel_seed"]
    pv, wv = [], []
    for k, ((hxx, hyy), sd) in enumerate(zip(ch.hila, (-1.0, 1.0))):
        pts_v, wt_v = lib[(vs >> (8 * k)) % len(lib)]
        rot = ((vs >> (16 + 4 * k)) % 16 - 7.5) * 0.02
        sc_v = 0.9 + 0.02 * ((vs >> (24 + 3 * k)) % 8)
        cr, sr = math.cos(rot) * sc_v, math.sin(rot) * sc_v
        pv.append(np.column_stack([hxx + sd * (cr * pts_v[:, 0] - sr * pts_v[:, 1]),
                                   hyy + sr * pts_v[:, 0] + cr * pts_v[:, 1]]))
        wv.append(wt_v)
    sig_v = max(0.009 * acq["scale"] * s, 0.6)
    return splat(fr.h, fr.w, s, fr.to_image(np.vstack(pv)),
                 np.concatenate(wv) * (0.012 * acq["scale"] * s / (2.5066 * sig_v)), sig_v / s)


def _markings(fr: Frame, ch: Chest, A: np.ndarray, rim: np.ndarray | None) -> None:
    """Vessels (none beyond a pneumothorax edge; fuller with edema), hilar density, texture."""
    anat, lung = fr.anat, ch.lung
    mark = lung if rim is None else lung * (1.0 - rim)
    A += anat["vessel_gain"] * (1.0 + 0.8 * fr.sev("edema")) * _vessels(fr, ch) * mark
    rs = fr.rows(-0.45, 0.2)
    for hxx, hyy in ch.hila:
        dxh, dyh = fr.X[rs] - hxx, fr.Y[rs] - hyy
        A[rs] += (0.8 * anat["vessel_gain"]) * np.exp(dxh * dxh * (-1 / 0.07 ** 2)
                                                      + dyh * dyh * (-1 / 0.10 ** 2)) * lung[rs]
    A += 0.018 * smooth_noise(np.random.default_rng(anat["tissue_seed"]), fr.h, fr.w, 0.06, fr.s) * lung


# --------------------------------------------------------------------------------------------
# Bones
# --------------------------------------------------------------------------------------------

def _spine(fr: Frame, ch: Chest) -> np.ndarray:
    """Vertebral bodies with end-plates and discs, pedicles, spinous processes."""
    X, Y, uX = fr.X, fr.Y, ch.uX
    per = 0.085 + 0.2 * (fr.anat["rib_spacing"] - 0.1)
    ph = (Y + 3.0) * (1.0 / per)
    frac = ph - np.floor(ph)
    disc = (frac - 0.5) * (frac - 0.5) * 4.0
    disc = disc * disc
    disc = disc * disc
    vb = ramp(0.068 + 0.012 * np.clip(Y, 0.0, None) - uX, fr.edge)
    bone = vb * (0.06 - 0.035 * disc)
    ped = np.exp(-(((uX - 0.050) * (1 / 0.016)) ** 2 + ((frac - 0.35) * (1 / 0.14)) ** 2))
    bone += 0.04 * ped + 0.03 * np.exp(-((X * (1 / 0.012)) ** 2 + ((frac - 0.7) * (1 / 0.15)) ** 2))
    return bone


def _posterior_ribs(fr: Frame, ch: Chest, t: np.ndarray) -> np.ndarray:
    """One periodic family in a warped coordinate (arching, then down laterally)."""
    X, Y, anat = fr.X, fr.Y, fr.anat
    gain = anat["rib_gain"] * (0.85 + 0.45 * np.clip((Y - ch.apex_y) * (1.0 / 1.1), 0.0, 1.0))
    tc = np.minimum(t, 1.05)
    tc2 = tc * tc
    warp = Y - gain * (-0.40 * tc + 0.75 * tc2 + 0.65 * tc2 * tc2)
    ph_r = (warp - (ch.apex_y - 0.02)) * (1.0 / ch.spacing)
    ph_r += anat["rib_jitter"][np.clip(ph_r, 0, 11).astype(np.intp)] * (X > 0)
    fr_r = ph_r - np.floor(ph_r)
    duty = 0.42
    tri = np.clip(1.0 - np.abs(fr_r * (2.0 / duty) - 1.0), 0.0, 1.0) * (fr_r < duty)
    rib_p = np.clip(tri * 6.0, 0.0, 1.0) * (0.55 + 0.45 * (1.0 - tri) * (1.0 - tri))
    vis = ramp(ph_r - 0.1, 0.4) * ramp(10.4 - ph_r, 0.8) * ramp(1.04 - t, 0.05) \
        * ramp(ch.uX - 0.06, 0.03) * (0.45 + 0.55 * ramp(ch.diaph + 0.05 - Y, 0.1))
    return anat["rib_bone"] * rib_p * vis


def _anterior_ribs(fr: Frame, ch: Chest, t: np.ndarray) -> np.ndarray:
    """Oblique, fainter bands descending medially."""
    ta = np.clip(t, 0.0, 1.0)
    warp_a = fr.Y - 0.36 * (1.0 - ta)
    ph_a = (warp_a - (ch.apex_y + 0.06)) * (1.0 / (ch.spacing * 1.3))
    fa = ph_a - np.floor(ph_a)
    tri_a = np.clip(1.0 - np.abs(fa * (2.0 / 0.5) - 1.0), 0.0, 1.0) * (fa < 0.5)
    vis_a = ramp(ph_a - 0.2, 0.4) * ramp(5.8 - ph_a, 0.6) * ramp(t - 0.30, 0.12) \
        * ramp(1.02 - t, 0.05)
    return 0.45 * fr.anat["rib_bone"] * np.clip(tri_a * 3.0, 0.0, 1.0) * vis_a


def _shoulder_girdle(fr: Frame, ch: Chest, bone: np.ndarray) -> None:
    """Clavicles (S-shaped bands from the sternal notch) and the scapular edges (more on AP)."""
    Y, uX, anat, ap = fr.Y, ch.uX, fr.anat, fr.acq["ap"]
    cy0 = anat["clav_y"] - 0.02 * fr.acq["insp"]
    rs = fr.rows(cy0 - anat["clav_tilt"] * 1.1 - 0.1, cy0 + 0.08)
    tcl = (uX[rs] - 0.07) * (1.0 / 0.80)
    tcc = np.clip(tcl, 0.0, 1.0)
    ycl = cy0 - anat["clav_tilt"] * tcl + 0.09 * tcc * (1.0 - tcc) * (0.6 - tcc)
    dcl = np.abs(Y[rs] - ycl)
    cl_w = 0.030 + 0.012 * (1.0 - tcc)
    clav = ramp(cl_w - dcl, fr.edge) * ramp(tcl, 0.03) * ramp(1.05 - tcl, 0.06)
    bone[rs] += 0.14 * clav * (0.75 + 0.5 * dcl / cl_w)
    rs = fr.rows(-0.8, 0.1)
    sca_x = ch.wall[rs] - (0.10 if ap else 0.03) - 0.2 * np.clip(Y[rs] + 0.3, 0.0, None)
    bone[rs] += (0.05 if ap else 0.03) * ramp(uX[rs] - sca_x, 0.03) * ramp(0.0 - Y[rs], 0.15) \
        * ramp(Y[rs] + 0.7, 0.1)


def _bones(fr: Frame, ch: Chest) -> np.ndarray:
    """Spine, posterior ribs, the cage's lateral cortex, anterior ribs, shoulder girdle."""
    Y, rib_b = fr.Y, fr.anat["rib_bone"]
    bone = _spine(fr, ch)
    cage = ch.wall + 0.045
    t = ch.uX / cage
    bone += _posterior_ribs(fr, ch, t)
    # lateral cortex of the cage, seen tangentially
    bone += 0.6 * rib_b * np.exp(-((ch.uX - cage) * (1.0 / 0.014)) ** 2) \
        * ramp(Y - (ch.apex_y + 0.1), 0.1) * ramp(ch.dome_r + ch.dome_h + 0.1 - Y, 0.1)
    bone += _anterior_ribs(fr, ch, t)
    _shoulder_girdle(fr, ch, bone)
    return bone


def _overlays(fr: Frame, ch: Chest, A: np.ndarray) -> None:
    """Soft-tissue overlays: breasts over the lower zones, gastric air under the left dome."""
    X, Y, anat = fr.X, fr.Y, fr.anat
    if anat["breast"] > 0:
        by = anat["breast_y"] - 0.03 * fr.acq["insp"]
        rs = fr.rows(by - 0.27, by + 0.27)
        dyb = (Y[rs] - by) * (1.0 / 0.26)
        dxb = (ch.uX[rs] - 0.46) * (1.0 / 0.36)
        bd = dxb * dxb + dyb * dyb
        A[rs] += anat["breast"] * np.sqrt(np.clip(1.0 - bd, 0.0, 1.0)) * np.clip(0.6 + dyb, 0.0, 1.0)
    bub, dome_l = anat["bubble"], ch.dome_l
    if bub > 0.3:
        rs = fr.rows(dome_l + 0.02, dome_l + 0.22)
        gb = ((X[rs] - (0.36 + ch.mx)) / (0.09 + 0.07 * bub)) ** 2 \
            + ((Y[rs] - (dome_l + 0.12)) / (0.05 + 0.02 * bub)) ** 2
        A[rs] -= 0.14 * bub * ramp(1.0 - gb, 0.25) * (Y[rs] > ch.diaph[rs] + 0.03)
