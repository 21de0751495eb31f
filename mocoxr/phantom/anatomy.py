"""The patient and the view: anatomy and acquisition draws, the pixel grid in patient
coordinates (:class:`Frame`, shared by the frontal and the lateral renderer), and the frontal
chest geometry (:class:`Chest`: body, lungs, diaphragm, heart, mediastinum) computed once per
image from which every frontal drawing step reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mocoxr.phantom.population import PhantomPopulation
from mocoxr.phantom.shapes import grid, ramp, sel


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def sample_anatomy(rng: np.random.Generator, female: bool, variation: float = 1.0) -> dict:
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


def sample_acquisition(rng: np.random.Generator, pop: PhantomPopulation, ap: bool,
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


class LazyRngs:
    """Generators for the fixed sub-streams, created only when a finding needs one."""

    def __init__(self, seeds: np.ndarray) -> None:
        self._seeds, self._rngs = seeds, {}

    def __getitem__(self, i: int) -> np.random.Generator:
        if i not in self._rngs:
            self._rngs[i] = np.random.default_rng(int(self._seeds[i]))
        return self._rngs[i]


@dataclass
class Frame:
    """One view's pixels in patient coordinates and what every drawing step shares."""

    h: int
    w: int
    s: float             # half the shorter image side, in pixels
    X: np.ndarray        # patient coordinates of every pixel (X > 0: patient's left; Y down)
    Y: np.ndarray
    edge: float          # width of a sharp organ edge (normalised units)
    anat: dict           # patient (sample_anatomy)
    acq: dict            # acquisition (sample_acquisition)
    f: dict              # finding severities (render.FINDING_KEYS)
    rngs: LazyRngs       # one fixed sub-stream per finding

    def sev(self, key: str) -> float:
        """Severity of a finding (0.0 when absent)."""
        return float(self.f.get(key, 0.0))

    def to_image(self, P: np.ndarray) -> np.ndarray:
        """Patient-frame points (n, 2) to normalised image coordinates."""
        acq = self.acq
        c, sn = math.cos(acq["tilt"]), math.sin(acq["tilt"])
        Xp, Yp = P[:, 0] * acq["scale"], P[:, 1] * acq["scale"]
        return np.column_stack([c * Xp - sn * Yp + acq["tx"], sn * Xp + c * Yp + acq["ty"]])

    def rows(self, y0: float, y1: float) -> slice:
        """Image rows that can contain patient-frame Y in [y0, y1] (any X within the image)."""
        acq, h, s = self.acq, self.h, self.s
        c, sn, sc = math.cos(acq["tilt"]), abs(math.sin(acq["tilt"])), acq["scale"]
        lo = acq["ty"] + sc * (c * y0 - sn * 1.5)
        hi = acq["ty"] + sc * (c * y1 + sn * 1.5)
        r0 = max(0, int(math.floor(lo * s + (h - 1) / 2)) - 1)
        r1 = min(h, int(math.ceil(hi * s + (h - 1) / 2)) + 2)
        return slice(r0, max(r0, r1))


def make_frame(h: int, w: int, anat: dict, acq: dict, f: dict, seeds: np.ndarray) -> Frame:
    """The image grid shifted, tilted and scaled by the acquisition (``tx``, ``ty``, ``tilt``,
    ``scale``) into patient coordinates; ``seeds``: the per-finding sub-stream seeds."""
    s = min(h, w) / 2.0
    x0, y0 = grid(h, w)
    c, sn = math.cos(acq["tilt"]), math.sin(acq["tilt"])
    xs, ys = x0 - acq["tx"], y0 - acq["ty"]
    X = (c * xs + sn * ys) * (1.0 / acq["scale"])
    Y = (-sn * xs + c * ys) * (1.0 / acq["scale"])
    return Frame(h, w, s, X, Y, max(1.5 / s, 0.012), anat, acq, f, LazyRngs(seeds))


# --------------------------------------------------------------------------------------------
# Frontal chest geometry
# --------------------------------------------------------------------------------------------

@dataclass
class Chest:
    """Frontal-view geometry (normalised patient units), computed once per image."""

    uX: np.ndarray       # |X|
    bw: float            # body half-width
    y_neck: float        # neck base (top of the shoulders)
    in_body: np.ndarray  # 0..1 inside the silhouette (neck, shoulders, arms, torso)
    mx: float            # mediastinal offset (axial rotation)
    um: np.ndarray       # |X - mx|
    apex_y: float        # lung apices
    dome_r: float        # top of the right and left hemidiaphragm domes
    dome_l: float
    dome_h: float        # dome top above the costophrenic angle
    wall: np.ndarray     # lateral lung edge (|X|) per row
    f_lat: np.ndarray    # signed distance inside the lateral wall, and below the apex
    f_top: np.ndarray
    diaph: np.ndarray    # diaphragm Y per column
    heart: np.ndarray    # 0..1 heart shadow
    lung: np.ndarray     # 0..1 lung fields
    depth: np.ndarray    # lung air thickness
    spacing: float       # posterior rib spacing

    @property
    def cp(self) -> tuple[float, float]:
        """Costophrenic angles (Y), right and left."""
        return self.dome_r + self.dome_h, self.dome_l + self.dome_h

    @property
    def hila(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Right and left hilum (X, Y)."""
        return (-0.19 + self.mx, -0.12), (0.19 + self.mx, -0.16)


def _silhouette(fr: Frame, uX: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Body half-width, neck base and the 0..1 body mask (neck, shoulders, arms, torso)."""
    anat, hab = fr.anat, fr.acq["habitus"]
    bw = anat["body_w"] + 0.08 * hab
    neck_w = 0.24 + 0.06 * hab
    y_neck = anat["shoulder_y"] - 0.02 * hab
    dn = np.clip(uX - neck_w, 0.0, None)
    y_top = y_neck + 0.10 * (1.0 - np.exp(dn * (-1.0 / 0.06))) + 0.25 * dn + 0.40 * dn * dn
    y_top = np.where(uX < neck_w, np.float32(-9.0), y_top)
    arm_bottom = fr.acq["arm_y"] - 0.9 * (uX - bw)
    torso = ramp(bw - uX, 0.05)
    arm = ramp(arm_bottom - fr.Y, 0.06)
    return bw, y_neck, ramp(fr.Y - y_top, 0.04) * np.maximum(torso, arm)


def _domes(fr: Frame) -> tuple[float, float, float, float]:
    """Apex, right and left dome tops and dome height (an elevated hemidiaphragm raises one)."""
    anat, insp = fr.anat, fr.acq["insp"]
    apex_y = anat["apex_y"] - 0.02 * insp
    dome_r = anat["dome_y"] + 0.07 * insp - (0.05 if fr.acq["supine"] else 0.0)
    dome_l = dome_r + anat["left_dome_dy"]
    elev = fr.sev("elevated_hemidiaphragm")
    if elev > 0:  # a basal mimic: one dome (usually the right) sits higher
        if fr.rngs[12].random() < 0.65:
            dome_r -= 0.18 * elev
        else:
            dome_l -= 0.18 * elev
    return apex_y, dome_r, dome_l, anat["dome_h"] * (1.0 + 0.12 * insp)


def _lung_outline(fr: Frame, uX: np.ndarray, apex_y: float, dome_r: float, dome_l: float,
                  dome_h: float) -> tuple[np.ndarray, ...]:
    """Lateral wall, signed distances to it / the apex / the diaphragm, and the diaphragm."""
    X, Y, anat, insp = fr.X, fr.Y, fr.anat, fr.acq["insp"]
    left = X > 0                                            # patient's left is the image right
    asym = sel(left, -anat["lung_asym"], anat["lung_asym"])
    lung_w = (anat["lung_w"] + asym) * (1.0 + 0.035 * insp)
    dome = sel(left, dome_l, dome_r)
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
    return wall, f_lat, f_top, diaph, f_bot


def _heart(fr: Frame, mx: float) -> np.ndarray:
    """Heart shadow: a rotated ellipse whose lower half is stretched into the diaphragm."""
    anat, insp = fr.anat, fr.acq["insp"]
    hs = (1.10 if fr.acq["ap"] else 1.0) * (1.0 + 0.42 * fr.f.get("cardiomegaly", 0.0))
    ha, hb = anat["heart_a"] * hs, anat["heart_b"] * hs
    hx = anat["heart_x"] + mx + 0.10 * (hs - 1.0)
    hy = anat["heart_y"] + 0.06 * insp + 0.06 * (hs - 1.0)
    ca, sa = math.cos(anat["heart_angle"]), math.sin(anat["heart_angle"])
    dx, dy = fr.X - hx, fr.Y - hy
    eu = (ca * dx + sa * dy) / ha
    ev = (-sa * dx + ca * dy) / hb
    ev = np.where(ev > 0, ev * 0.5, ev)
    f_heart = (1.0 - np.sqrt(eu * eu + ev * ev)) * hb
    return ramp(f_heart, fr.edge)


def _mediastinum(fr: Frame, mx: float, um: np.ndarray) -> np.ndarray:
    """Signed distance outside the mediastinum (aortic knob, widening)."""
    Y, anat = fr.Y, fr.anat
    mw = anat["mediast_w"] * (1.0 + 0.7 * fr.f.get("enlarged_cardiomediastinum", 0.0)) \
        * (1.08 if fr.acq["ap"] else 1.0)
    knob = anat["knob"] * np.exp(-((Y + 0.32) / 0.08) ** 2) * (fr.X - mx > 0)
    return um - (mw + knob + 0.03 * np.clip(Y + 0.2, 0.0, None))


def chest_geometry(fr: Frame) -> Chest:
    """The frontal :class:`Chest` of a frame: lungs as an intersection of implicit half-spaces."""
    uX = np.abs(fr.X)
    bw, y_neck, in_body = _silhouette(fr, uX)
    mx = fr.acq["rot"]
    um = np.abs(fr.X - mx)
    apex_y, dome_r, dome_l, dome_h = _domes(fr)
    wall, f_lat, f_top, diaph, f_bot = _lung_outline(fr, uX, apex_y, dome_r, dome_l, dome_h)
    heart = _heart(fr, mx)
    f_med = _mediastinum(fr, mx, um)
    f_lung = np.minimum(np.minimum(f_lat, f_top), np.minimum(f_bot, f_med))
    lung = ramp(f_lung, fr.edge)
    depth = lung * (0.55 + 0.45 * np.clip(f_lung * (1.0 / 0.14), 0.0, 1.0))
    spacing = fr.anat["rib_spacing"] * (1.0 + 0.06 * fr.acq["insp"])
    return Chest(uX, bw, y_neck, in_body, mx, um, apex_y, dome_r, dome_l, dome_h, wall, f_lat,
                 f_top, diaph, heart, lung, depth, spacing)
