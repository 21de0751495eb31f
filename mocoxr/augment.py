"""Batched chest X-ray augmentations (CPU or GPU) and model-input normalisation.

The paper (Sowrirajan et al., MIDL 2021, section 2) replaces MoCo v2's ImageNet augmentations,
which were designed for natural colour photographs, by ones that respect radiographs: a random
**horizontal flip** and a random **rotation of up to 10 degrees**. It drops random-resized crops
(a crop can remove the few pixels that hold the finding), colour jitter and random grayscale
(meaningless on a gray image) and blur (it erases fine findings).

The reference code (stanfordmlgroup/MoCo-CXR, ``aihc_utils/image_transform.py``, training):
resize the shorter side to 320, ``RandomHorizontalFlip()``, ``RandomRotation(10)`` (black corners),
``RandomCrop(320)`` (on a portrait radiograph: a random vertical position along the longer side),
then normalise with fixed CXR statistics (mean .502, std .0856).

Here one affine warp per image does flip, rotation and a *gentle* crop at once (`affine_grid` +
`grid_sample`, the whole batch in one call, on whatever device the images are on). The crop keeps
the whole lung field: its side is 85-100 % of the image, it is anchored to the image's bottom edge
so the lung bases and costophrenic angles (where pleural effusion shows first) are always in view,
and it moves sideways by a few percent only. ``AugmentConfig(scale=(1.0, 1.0), max_translate=0.0)``
is exactly the paper's flip + rotation.

Exposure jitter (brightness, contrast, gamma) and gaussian noise exist as options, **off by
default**; they are there for experiments on invariance to exposure, not for the reproduction.

Randomness: every random number comes from the ``generator`` passed (or torch's global RNG when it
is ``None``). Geometric parameters are always drawn on the CPU in a fixed order, so the same seed
gives the same warps on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch", "resize_batch", "to_model_input", "sample_params"]


@dataclass
class AugmentConfig:
    """Parameters of :func:`augment_batch`; defaults reproduce the paper plus a lung-safe crop.

    Attributes:
        out_size: side of the square output in pixels.
        max_rotation: rotation angle drawn uniformly in [-max_rotation, +max_rotation] degrees
            (paper: 10).
        flip_p: probability of a horizontal flip (paper: 0.5, torchvision's default).
        scale: range of the crop side as a fraction of the image side, drawn uniformly; (1, 1)
            disables cropping (the paper's setting). The crop keeps the aspect ratio.
        max_translate: largest shift of the crop centre as a fraction of the image side, drawn
            uniformly per axis, always clamped so the crop stays inside the image.
        keep_lung_bases: anchor the crop's bottom edge to the image's bottom edge (no vertical
            shift; only the top of the image, apex/neck, is ever cropped away). When False the crop
            moves vertically like horizontally.
        padding_mode: ``grid_sample`` padding for the corners a rotation uncovers: ``zeros``
            (black, as torchvision's RandomRotation), ``border`` or ``reflection``.
        brightness: option, multiplicative exposure factor drawn in [1-b, 1+b]; 0 = off.
        contrast: option, contrast factor around the image mean drawn in [1-c, 1+c]; 0 = off.
        gamma: option, gamma exponent drawn log-uniformly in [exp(-g), exp(g)]; 0 = off.
        noise_std: option, standard deviation of additive gaussian noise in [0, 1] units; 0 = off.
    """

    out_size: int
    max_rotation: float = 10.0
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.85, 1.0)
    max_translate: float = 0.03
    keep_lung_bases: bool = True
    padding_mode: str = "zeros"
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if int(self.out_size) != self.out_size or self.out_size < 1:
            raise ValueError(f"AugmentConfig.out_size must be a positive int, got {self.out_size!r}")
        self.out_size = int(self.out_size)
        if not 0.0 <= self.max_rotation <= 180.0:
            raise ValueError(f"AugmentConfig.max_rotation must be in [0, 180] degrees, got {self.max_rotation}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"AugmentConfig.flip_p must be in [0, 1], got {self.flip_p}")
        lo, hi = (float(v) for v in self.scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"AugmentConfig.scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        self.scale = (lo, hi)
        if not 0.0 <= self.max_translate <= 0.5:
            raise ValueError(f"AugmentConfig.max_translate must be in [0, 0.5], got {self.max_translate}")
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(
                f"AugmentConfig.padding_mode must be 'zeros', 'border' or 'reflection', got {self.padding_mode!r}"
            )
        for name in ("brightness", "contrast"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1), got {v}")
        if self.gamma < 0.0 or self.noise_std < 0.0:
            raise ValueError(f"AugmentConfig.gamma and noise_std must be >= 0, got {self.gamma}, {self.noise_std}")


def _as_float01(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """uint8 (B,H,W) / (B,1,H,W), or float already in [0, 1] -> float32 (B,1,H,W) in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{name} must be square (the decoded cache is), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise ValueError(f"{name} must be uint8 (0-255) or float in [0, 1], got dtype {images.dtype}")


def _resize(x: torch.Tensor, out_size: int) -> torch.Tensor:
    if x.shape[-1] == out_size:
        return x
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)


def resize_batch(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """No augmentation (evaluation): uint8 (B,H,W) or (B,1,H,W) -> float32 (B,1,out,out) in [0, 1].

    Antialiased bilinear resize when the size differs; identity (just /255) when it matches.
    """
    return _resize(_as_float01(images), int(out_size)).clamp(0.0, 1.0)  # never in place: may alias


def sample_params(batch: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Draw the geometric parameters of one batch on the CPU (fixed order, so device-independent).

    Returns float64 CPU tensors of length ``batch``: ``flip`` (0/1), ``angle`` (degrees), ``scale``
    (crop side fraction), ``cx``, ``cy`` (crop centre in ``grid_sample`` units, [-1, 1], y down).
    """
    g = generator if generator is not None and generator.device.type == "cpu" else None
    if generator is not None and g is None:  # a device generator: seed a CPU one from it
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        g = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, 5, generator=g, dtype=torch.float64)
    flip = (u[:, 0] < cfg.flip_p).double()
    angle = (2.0 * u[:, 1] - 1.0) * cfg.max_rotation
    lo, hi = cfg.scale
    scale = lo + (hi - lo) * u[:, 2]
    # grid units span 2 per image side; the crop of side s may move by (1 - s) before leaving it.
    room = 1.0 - scale
    shift = torch.clamp(room, max=2.0 * cfg.max_translate)
    cx = (2.0 * u[:, 3] - 1.0) * shift
    if cfg.keep_lung_bases:
        cy = room  # crop spans [cy - s, cy + s] = [1 - 2s, 1]: bottom edge on the image's bottom edge
    else:
        cy = (2.0 * u[:, 4] - 1.0) * shift
    return {"flip": flip, "angle": angle, "scale": scale, "cx": cx, "cy": cy}


def _theta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Affine matrices (B,2,3) mapping output grid coords to input coords: c + s * R * Flip."""
    a = torch.deg2rad(p["angle"])
    s = p["scale"]
    f = 1.0 - 2.0 * p["flip"]  # -1 flips x
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack(
        [
            torch.stack([s * cos * f, -s * sin, p["cx"]], dim=1),
            torch.stack([s * sin * f, s * cos, p["cy"]], dim=1),
        ],
        dim=1,
    )
    return theta


def _noise_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator(device=device).manual_seed(seed)


def _photometric(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Optional exposure jitter and noise (all off by default); draws after the geometric ones."""
    b = x.shape[0]
    if cfg.brightness or cfg.contrast or cfg.gamma:
        g = generator if generator is not None and generator.device.type == "cpu" else None
        if generator is not None and g is None:
            g = torch.Generator().manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            )
        u = (2.0 * torch.rand(b, 3, generator=g) - 1.0).to(x.device).view(b, 3, 1, 1, 1)
        if cfg.gamma:
            x = x.clamp(min=0.0).pow(torch.exp(u[:, 2] * cfg.gamma))
        if cfg.brightness:
            x = x * (1.0 + u[:, 0] * cfg.brightness)
        if cfg.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = mean + (x - mean) * (1.0 + u[:, 1] * cfg.contrast)
    if cfg.noise_std:
        noise = torch.randn(x.shape, generator=_noise_generator(generator, x.device), device=x.device)
        x = x + noise * cfg.noise_std
    return x


def augment_batch(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a batch: uint8 (B,H,W) or (B,1,H,W) on any device -> float32 (B,1,out,out) in [0, 1].

    Images are first resized (antialiased) to ``cfg.out_size`` when their size differs, then warped
    by one flip + rotation + crop affine per image with bilinear ``grid_sample``, then (options)
    exposure jitter and noise. Deterministic for a given ``generator`` state.
    """
    x = _resize(_as_float01(images), cfg.out_size)
    p = sample_params(x.shape[0], cfg, generator)
    theta = _theta(p).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding_mode, align_corners=False)
    x = _photometric(x, cfg, generator)
    return x.clamp_(0.0, 1.0)


def to_model_input(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(B,1,H,W) in [0, 1] -> (B,3,H,W) ``(x - mean) / std`` with the channel replicated.

    ``mean`` and ``std`` are the dataset's own statistics in [0, 1] units (``data.image_stats``),
    not ImageNet's; the three channels are identical, as torchvision backbones expect RGB.
    """
    if x01.ndim != 4 or x01.shape[1] != 1:
        raise ValueError(f"to_model_input expects (B, 1, H, W), got {tuple(x01.shape)}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"to_model_input: std must be a positive finite number, got {std}")
    if not math.isfinite(mean):
        raise ValueError(f"to_model_input: mean must be finite, got {mean}")
    return ((x01 - mean) / std).expand(-1, 3, -1, -1).contiguous()
