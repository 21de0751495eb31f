"""Drawing primitives over normalised image coordinates: the pixel grid, soft steps, smooth noise,
Gaussian splats of points and polylines, splines, and the burnt-in side-marker glyphs.

Coordinates are normalised by half the shorter image side ``s`` (y down), so shapes keep their
proportions at any image size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
_UPSAMPLE_CACHE: dict[tuple[int, int, int, int], tuple[np.ndarray, ...]] = {}


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates normalised by half the shorter side (float32, y down)."""
    key = (h, w)
    if key not in _GRID_CACHE:
        s = min(h, w) / 2.0
        y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) / s)[:, None]
        x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / s)[None, :]
        _GRID_CACHE[key] = (np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)))
    return _GRID_CACHE[key]


def ramp(f: np.ndarray, eps: float) -> np.ndarray:
    """Soft step from 0 (f <= -eps/2) to 1 (f >= eps/2)."""
    t = f * (1.0 / eps)
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def sel(mask: np.ndarray, a: float, b: float) -> np.ndarray:
    """float32 ``where`` for two scalars (``np.where`` with Python floats gives float64)."""
    return np.where(mask, np.float32(a), np.float32(b))


def upsample(small: np.ndarray, h: int, w: int) -> np.ndarray:
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


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, s: float) -> np.ndarray:
    """Smooth noise, roughly zero-mean and unit-variance, with feature size ``cell`` (normalised)."""
    gh = max(3, int(math.ceil(h / (cell * s))) + 1)
    gw = max(3, int(math.ceil(w / (cell * s))) + 1)
    g = ndimage.gaussian_filter(rng.standard_normal((gh, gw)).astype(np.float32), 0.7, mode="wrap")
    return upsample(g * np.float32(1.0 / (g.std() + 1e-6)), h, w)


def lowres_blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Wide Gaussian blur computed on a 4x downsampled copy (cheap; for large sigmas only)."""
    h, w = a.shape
    small = ndimage.gaussian_filter(a[::4, ::4], max(sigma_px / 4, 0.5), mode="nearest", truncate=2.5)
    return upsample(small, h, w)


def splat(h: int, w: int, s: float, pts_xy: np.ndarray, weights: np.ndarray,
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


def curve_points(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Dense points along a Catmull-Rom spline through control points (k, 2)."""
    p = np.vstack([ctrl[0], ctrl, ctrl[-1]])
    segs = len(ctrl) - 1
    t = np.linspace(0, segs, n, endpoint=False)
    i = np.minimum(t.astype(int), segs - 1)
    u = (t - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)


def line(h: int, w: int, s: float, P: np.ndarray, peak: float, sigma: float) -> np.ndarray:
    """A polyline of dense image-frame points drawn with Gaussian cross-section of height ``peak``."""
    if len(P) < 2:
        return np.zeros((h, w), np.float32)
    step_px = float(np.mean(np.hypot(*np.diff(P, axis=0).T))) * s
    sig_px = max(sigma * s, 0.6)
    wt = peak * max(step_px, 1e-3) / (math.sqrt(2 * math.pi) * sig_px)
    return splat(h, w, s, P, np.full(len(P), wt, np.float32), sig_px / s)


GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def draw_marker(img: np.ndarray, letter: str, right: bool, rng: np.random.Generator) -> None:
    """Burn a small side marker into a top corner (in place)."""
    h, w = img.shape
    k = max(1, int(round(min(h, w) / 150)))
    g = np.kron(np.array([[c == "1" for c in row] for row in GLYPHS[letter]], np.float32),
                np.ones((k, k), np.float32))
    gh, gw = g.shape
    r0 = int(rng.integers(max(1, h // 50), max(2, h // 10)))
    off = int(rng.integers(max(1, w // 40), max(2, w // 8)))
    c0 = w - gw - off if right else off
    if r0 + gh <= h and 0 <= c0 and c0 + gw <= w:
        region = img[r0:r0 + gh, c0:c0 + gw]
        np.maximum(region, g * 0.96, out=region)
