"""Frontal-view findings drawn over the :class:`~mocoxr.phantom.anatomy.Chest`.

Air-space findings (effusion, consolidation, atelectasis, edema, TB infiltrates) return the
fraction of lung air they replace (``fill``); pneumothorax retracts the lung edge; focal findings
(TB nodules, cavities and fibrosis, lesion, pleural thickening, rib fracture) and support devices
add attenuation. Each finding draws from its own fixed sub-stream ``fr.rngs[i]``, so adding one
never changes another.
"""

from __future__ import annotations

import math

import numpy as np

from mocoxr.phantom.anatomy import Chest, Frame
from mocoxr.phantom.shapes import curve_points, ramp, smooth_noise, splat


# --------------------------------------------------------------------------------------------
# Air-space findings: fraction of lung air replaced by fluid or tissue
# --------------------------------------------------------------------------------------------

def _effusion(fr: Frame, ch: Chest, fill: np.ndarray, side: int, sev: float, cp_y: float,
              span: float) -> np.ndarray:
    """One side's effusion: a meniscus upright, a basal veil (layering) when supine."""
    X, Y = fr.X, fr.Y
    r = fr.rngs[0 if side < 0 else 1]
    on_side = (X * side > 0).astype(np.float32)
    lw = fr.anat["lung_w"]
    tt = np.clip(ch.uX * (1.0 / lw), 0.0, 1.2)
    if fr.acq["supine"]:
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
    return fill


def _consolidation(fr: Frame, ch: Chest, fill: np.ndarray, cons: float) -> np.ndarray:
    """Patchy air-space opacity anywhere in the lungs (bases included)."""
    X, Y, r = fr.X, fr.Y, fr.rngs[2]
    patch = np.zeros((fr.h, fr.w), np.float32)
    for _ in range(1 + int(r.integers(0, 1 + int(2.5 * cons)))):
        cx = r.choice([-1, 1]) * r.uniform(0.25, 0.6)
        cy = r.uniform(-0.5, 0.1) if r.random() < 0.5 else ch.dome_r + 0.05 - r.uniform(0.0, 0.35)
        rx, ry = (r.uniform(0.08, 0.2) * (0.6 + cons), r.uniform(0.07, 0.16) * (0.6 + cons))
        d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
        patch = np.maximum(patch, np.clip(1.3 - d2, 0.0, 1.0))
    tex = smooth_noise(r, fr.h, fr.w, 0.05, fr.s)
    return np.maximum(fill, np.clip(patch * (0.75 + 0.45 * tex), 0.0, 1.0) * (0.45 + 0.45 * cons))


def _atelectasis(fr: Frame, ch: Chest, fill: np.ndarray, atel: float) -> np.ndarray:
    """Plate-like bands, mostly in the lower zones, and basal collapse when severe."""
    X, Y, r = fr.X, fr.Y, fr.rngs[3]
    for _ in range(1 + int(r.integers(0, 3))):
        sd = r.choice([-1, 1])
        cy = ch.dome_r + 0.02 - r.uniform(0.0, 0.3)
        cx = sd * r.uniform(0.3, 0.55)
        ang = r.uniform(-0.3, 0.3)
        half_len = r.uniform(0.10, 0.24)
        thick = r.uniform(0.010, 0.025) * (1.0 + atel)
        ddx, ddy = X - cx, Y - cy
        along = math.cos(ang) * ddx + math.sin(ang) * ddy
        across = -math.sin(ang) * ddx + math.cos(ang) * ddy
        band = ramp(thick - np.abs(across), 0.015) * ramp(half_len - np.abs(along), 0.06)
        fill = np.maximum(fill, band * (0.5 + 0.4 * atel))
    if atel > 0.6:
        sd = r.choice([-1, 1])
        basal = (X * sd > 0) * np.clip((Y - (ch.dome_r - 0.12 * atel)) / 0.15, 0.0, 1.0) \
            * np.clip(1.0 - np.abs(ch.uX - 0.30) / 0.25, 0.0, 1.0)
        fill = np.maximum(fill, basal * 0.55 * atel)
    return fill


def _edema(fr: Frame, ch: Chest, fill: np.ndarray, ed: float) -> np.ndarray:
    """Perihilar haze with interstitial texture."""
    X, Y, r = fr.X, fr.Y, fr.rngs[4]
    (hx_r, hy_r), (hx_l, hy_l) = ch.hila
    dh = np.minimum(((X - hx_r) / 0.35) ** 2 + ((Y - hy_r) / 0.42) ** 2,
                    ((X - hx_l) / 0.35) ** 2 + ((Y - hy_l) / 0.42) ** 2)
    haze = np.exp(-dh) * (0.25 + 0.5 * ed)
    tex = smooth_noise(r, fr.h, fr.w, 0.03, fr.s)
    return np.maximum(fill, np.clip(haze * (1.0 + 0.4 * tex) + 0.10 * ed, 0.0, 1.0))


def _tb_infiltrates(fr: Frame, fill: np.ndarray, tb: float
                    ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Upper-zone infiltrates on one or both sides; returns the fill and their centres (where
    :func:`focal_findings` puts the nodules, cavities and fibrosis)."""
    X, Y, r = fr.X, fr.Y, fr.rngs[5]
    tb_sides = [int(r.choice([-1, 1]))]
    if r.random() < 0.25 + 0.5 * tb:
        tb_sides.append(-tb_sides[0])
    centres: list[tuple[float, float]] = []
    patch = np.zeros((fr.h, fr.w), np.float32)
    for sd in tb_sides:
        cx, cy = sd * r.uniform(0.28, 0.48), r.uniform(-0.60, -0.30)
        centres.append((cx, cy))
        rx, ry = r.uniform(0.10, 0.2) * (0.5 + tb), r.uniform(0.07, 0.14) * (0.5 + tb)
        d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
        patch = np.maximum(patch, np.clip(1.0 - d2, 0.0, 1.0))
    tex = smooth_noise(r, fr.h, fr.w, 0.035, fr.s)
    fill = np.maximum(fill, np.clip(patch * (0.4 + 0.9 * tex), 0.0, 1.0) * (0.2 + 0.55 * tb))
    return fill, centres


def air_space_fill(fr: Frame, ch: Chest) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Fraction (0..1) of lung air replaced by every air-space finding, and the TB centres."""
    fill = np.zeros((fr.h, fr.w), np.float32)
    cp_r, cp_l = ch.cp
    for side, key, cp_y in ((-1, "effusion_right", cp_r), (1, "effusion_left", cp_l)):
        sev = fr.sev(key)
        if sev > 0:
            fill = _effusion(fr, ch, fill, side, sev, cp_y, cp_y - ch.apex_y)
    if (cons := fr.sev("consolidation")) > 0:
        fill = _consolidation(fr, ch, fill, cons)
    if (atel := fr.sev("atelectasis")) > 0:
        fill = _atelectasis(fr, ch, fill, atel)
    if (ed := fr.sev("edema")) > 0:
        fill = _edema(fr, ch, fill, ed)
    tb_centres: list[tuple[float, float]] = []
    if (tb := fr.sev("tb")) > 0:
        fill, tb_centres = _tb_infiltrates(fr, fill, tb)
    np.clip(fill, 0.0, 1.0, out=fill)
    return fill, tb_centres


def pneumothorax(fr: Frame, ch: Chest, A: np.ndarray) -> np.ndarray | None:
    """The lung edge retracts from the chest wall: draws the visceral pleural line into ``A``
    and returns the air rim without lung markings (None without a pneumothorax)."""
    ptx = fr.sev("pneumothorax")
    if ptx <= 0:
        return None
    r = fr.rngs[6]
    sd = int(r.choice([-1, 1]))
    gap = 0.03 + 0.2 * ptx
    f_rim = gap - np.minimum(ch.f_lat, ch.f_top + 0.06)
    on_side = (fr.X * sd > 0) * ch.lung
    rim = on_side * ramp(f_rim, 0.008) * ramp(0.5 * ptx + 0.1 - fr.Y, 0.3)
    A += 0.08 * np.exp(-(f_rim / 0.007) ** 2) * on_side * ramp(0.5 * ptx + 0.1 - fr.Y, 0.3)
    return rim


# --------------------------------------------------------------------------------------------
# Focal findings
# --------------------------------------------------------------------------------------------

def _cavities(fr: Frame, A: np.ndarray, r: np.random.Generator, cx: float, cy: float,
              tb: float) -> None:
    """TB cavities: thick bright wall, dark centre."""
    X, Y = fr.X, fr.Y
    for _ in range(int(r.integers(1, 3))):
        ccx, ccy = cx + r.normal(0, 0.05), cy + r.normal(0, 0.04)
        rad = r.uniform(0.03, 0.06) * (0.6 + tb)
        dd = np.sqrt((X - ccx) * (X - ccx) + (Y - ccy) * (Y - ccy))
        A += 0.12 * np.exp(-((dd - rad) / (0.25 * rad + 0.006)) ** 2) \
            - 0.10 * ramp(rad * 0.8 - dd, 0.01)


def _fibrosis(ch: Chest, r: np.random.Generator, cx: float, cy: float, tb: float,
              pts: list, wts: list) -> None:
    """Fibrotic strands from the hilum towards the apex (points to splat)."""
    (hx_r, _), (hx_l, _) = ch.hila
    hxx = hx_r if cx < 0 else hx_l
    sd = -1.0 if cx < 0 else 1.0
    for _ in range(int(2 + 5 * tb)):
        end = np.array([cx + r.normal(0, 0.1), cy - r.uniform(0.0, 0.2)])
        ctrl = np.array([[hxx, -0.12], [(hxx + end[0]) / 2 + sd * 0.03, (-0.12 + end[1]) / 2], end])
        cp = curve_points(ctrl + r.normal(0, 0.015, ctrl.shape), 60)
        pts.append(cp)
        wts.append(np.full(len(cp), 0.012 * (0.5 + tb)))


def _tb_lesions(fr: Frame, ch: Chest, A: np.ndarray, tb: float,
                centres: list[tuple[float, float]], pts: list, wts: list) -> None:
    """Nodules around each infiltrate, cavities (severe) and fibrosis (moderate)."""
    r = fr.rngs[7]
    n_nod = int(4 + 36 * tb * r.uniform(0.5, 1.2))
    for cx, cy in centres:
        k = max(2, n_nod // len(centres))
        pts.append(np.column_stack([cx + r.normal(0, 0.10, k), cy + r.normal(0, 0.09, k)]))
        wts.append(r.uniform(0.06, 0.16, k))
        if tb > 0.45:
            _cavities(fr, A, r, cx, cy, tb)
        if tb > 0.3:
            _fibrosis(ch, r, cx, cy, tb, pts, wts)


def _lesion(fr: Frame, ch: Chest, A: np.ndarray, les: float) -> None:
    """A round lung lesion."""
    r = fr.rngs[8]
    cx, cy = r.choice([-1, 1]) * r.uniform(0.25, 0.6), r.uniform(-0.5, 0.2)
    rad = 0.025 + 0.08 * les
    dd = ((fr.X - cx) ** 2 + (fr.Y - cy) ** 2) * (1.0 / rad ** 2)
    A += 0.18 * np.sqrt(np.clip(1.0 - dd, 0.0, 1.0)) * ch.lung


def _pleural_thickening(fr: Frame, ch: Chest, A: np.ndarray, po: float) -> None:
    """A band of pleural thickening along one lateral wall ("Pleural Other")."""
    r = fr.rngs[9]
    sd = r.choice([-1, 1])
    thick = 0.015 + 0.035 * po
    y0b = r.uniform(-0.7, -0.2)
    band = ramp(thick - ch.f_lat, 0.015) * ramp(ch.f_lat + 0.01, 0.01) * (fr.X * sd > 0) \
        * ramp(fr.Y - y0b, 0.1) * ramp(y0b + r.uniform(0.2, 0.6) - fr.Y, 0.1)
    A += 0.2 * band


def focal_findings(fr: Frame, ch: Chest, A: np.ndarray, tb_centres: list[tuple[float, float]]
                   ) -> None:
    """TB lesions, lung lesion, pleural thickening and a healing rib fracture (a small callus on
    a lateral rib), added to ``A`` in place."""
    pts: list = []
    wts: list = []
    if (tb := fr.sev("tb")) > 0:
        _tb_lesions(fr, ch, A, tb, tb_centres, pts, wts)
    if (les := fr.sev("lesion")) > 0:
        _lesion(fr, ch, A, les)
    if (po := fr.sev("pleural_other")) > 0:
        _pleural_thickening(fr, ch, A, po)
    if (frc := fr.sev("fracture")) > 0:
        r = fr.rngs[10]
        sd = r.choice([-1, 1])
        k_rib = int(r.integers(4, 9))
        cy = ch.apex_y + (k_rib + 0.25) * ch.spacing + fr.anat["rib_gain"] * 0.5
        pts.append(np.array([[sd * r.uniform(0.55, 0.70), cy]]))
        wts.append(np.array([0.08 + 0.08 * frc]))
    if pts:
        A += splat(fr.h, fr.w, fr.s, fr.to_image(np.vstack(pts)), np.concatenate(wts),
                   0.011 * fr.acq["scale"])


# --------------------------------------------------------------------------------------------
# Support devices (metal: bright)
# --------------------------------------------------------------------------------------------

DEVICE_KINDS = ("ett", "ng", "cvc", "pacer", "ecg", "sternotomy", "chest_tube")
DEVICE_PROBS = (0.22, 0.18, 0.28, 0.10, 0.30, 0.10, 0.08)


class _Lines:
    """Tubes and leads: splines through jittered control points, drawn together at the end."""

    def __init__(self, r: np.random.Generator) -> None:
        self.r, self.items = r, []

    def add(self, ctrl: list, peak: float) -> None:
        ctrl_a = np.asarray(ctrl, float)
        ctrl_a = ctrl_a + self.r.normal(0, 0.012, ctrl_a.shape)
        self.items.append((curve_points(ctrl_a, 300), peak))

    def draw(self, fr: Frame) -> np.ndarray:
        acq, s = fr.acq, fr.s
        P = np.vstack([fr.to_image(p) for p, _ in self.items])
        step_px = np.concatenate([np.full(len(p), np.mean(np.hypot(*np.diff(p, axis=0).T)))
                                  for p, _ in self.items]) * acq["scale"] * s
        peak = np.concatenate([np.full(len(p), pk) for p, pk in self.items])
        sig_px = max(0.006 * acq["scale"] * s, 0.6)
        return np.minimum(splat(fr.h, fr.w, s, P, peak * step_px / (2.5066 * sig_px), sig_px / s), 1.2)


def _tube(kind: str, r: np.random.Generator, lines: _Lines, mx: float, dome_l: float) -> None:
    """Endotracheal and nasogastric tubes, central venous catheter, chest tube."""
    if kind == "ett":
        lines.add([[mx + 0.01, -1.6], [mx, -1.0], [mx, r.uniform(-0.45, -0.30)]], 0.55)
    elif kind == "ng":
        lines.add([[mx - 0.01, -1.6], [mx + 0.01, -0.6], [mx + 0.05, 0.1],
                   [mx + 0.2, dome_l + 0.12], [mx + 0.35, dome_l + 0.2]], 0.45)
    elif kind == "cvc":
        sd = r.choice([-1, 1])
        lines.add([[sd * 0.8, -0.88], [sd * 0.45, -0.66], [sd * 0.15, -0.48],
                   [mx - 0.05, -0.34], [mx - 0.07, r.uniform(-0.22, -0.02)]], 0.5)
    else:  # chest_tube
        sd = r.choice([-1, 1])
        lines.add([[sd * 1.2, 0.45], [sd * 0.75, 0.3], [sd * 0.55, -0.1], [sd * 0.42, -0.55]], 0.5)


def _hardware(kind: str, fr: Frame, r: np.random.Generator, lines: _Lines, out: np.ndarray,
              mx: float) -> None:
    """Pacemaker with leads, ECG electrodes with wires, sternotomy wires (into ``out``)."""
    X, Y = fr.X, fr.Y
    if kind == "pacer":
        cx, cy = r.uniform(0.35, 0.6), r.uniform(-0.66, -0.5)
        out += 1.2 * ramp(0.07 - np.abs(X - cx), 0.02) * ramp(0.05 - np.abs(Y - cy), 0.02)
        lines.add([[cx - 0.05, cy], [0.15, -0.55], [mx - 0.05, -0.3], [mx - 0.08, 0.0], [0.05, 0.22]], 0.6)
        lines.add([[cx - 0.05, cy + 0.02], [0.12, -0.5], [mx - 0.1, -0.1], [-0.12, 0.08]], 0.6)
    elif kind == "ecg":
        for _ in range(int(r.integers(2, 5))):
            ex, ey = r.uniform(-0.8, 0.8), r.uniform(-0.8, 0.4)
            ring = np.sqrt((X - ex) * (X - ex) + (Y - ey) * (Y - ey))
            out += 0.6 * ramp(0.022 - ring, 0.01) + 0.35 * np.exp(-((ring - 0.035) / 0.007) ** 2)
            lines.add([[ex, ey], [ex + r.normal(0, 0.3), ey + r.normal(0, 0.3)],
                       [r.choice([-1.3, 1.3]), r.uniform(-1, 1)]], 0.25)
    else:  # sternotomy
        for yy in np.linspace(-0.5, 0.05, int(r.integers(4, 7))):
            ring = np.sqrt(((X - mx) / 0.03) ** 2 + ((Y - yy) / 0.016) ** 2)
            out += 0.9 * np.exp(-((ring - 1.0) / 0.35) ** 2)


def devices(fr: Frame, ch: Chest) -> np.ndarray:
    """Tubes, lines, pacemaker, ECG electrodes, sternotomy wires, chest tube: more kinds for a
    higher ``support_devices`` severity."""
    r = fr.rngs[11]
    probs = np.array(DEVICE_PROBS)
    n = min(1 + int(round(fr.sev("support_devices") * 2.5)), len(DEVICE_KINDS))
    chosen = r.choice(len(DEVICE_KINDS), size=n, replace=False, p=probs / probs.sum())
    out = np.zeros((fr.h, fr.w), np.float32)
    lines = _Lines(r)
    for kind in (DEVICE_KINDS[i] for i in chosen):
        if kind in ("pacer", "ecg", "sternotomy"):
            _hardware(kind, fr, r, lines, out, ch.mx)
        else:
            _tube(kind, r, lines, ch.mx, ch.dome_l)
    if lines.items:
        out += lines.draw(fr)
    return out
