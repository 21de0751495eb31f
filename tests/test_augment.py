import math

import pytest
import torch

from mocoxr.augment import AugmentConfig, augment_batch, resize_batch, sample_params, to_model_input

IDENTITY = dict(max_rotation=0.0, flip_p=0.0, scale=(1.0, 1.0), max_translate=0.0)


def _images(b=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, size, size), generator=g, dtype=torch.uint8)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shapes_dtype_range_and_channel_layouts():
    x = _images()
    cfg = AugmentConfig(out_size=24)
    a = augment_batch(x, cfg, _gen(1))
    b = augment_batch(x.unsqueeze(1), cfg, _gen(1))
    assert a.shape == (6, 1, 24, 24) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)


def test_deterministic_by_generator_and_varies_with_seed():
    x = _images()
    cfg = AugmentConfig(out_size=32)
    assert torch.equal(augment_batch(x, cfg, _gen(3)), augment_batch(x, cfg, _gen(3)))
    assert not torch.equal(augment_batch(x, cfg, _gen(3)), augment_batch(x, cfg, _gen(4)))
    torch.manual_seed(5)
    a = augment_batch(x, cfg, None)
    torch.manual_seed(5)
    assert torch.equal(a, augment_batch(x, cfg, None))


def test_identity_config_returns_the_image():
    x = _images()
    out = augment_batch(x, AugmentConfig(out_size=32, **IDENTITY), _gen(0))
    assert torch.allclose(out[:, 0], x.float() / 255, atol=1e-5)
    assert torch.allclose(resize_batch(x, 32)[:, 0], x.float() / 255)


def test_flip_really_flips():
    x = _images()
    cfg = AugmentConfig(out_size=32, **{**IDENTITY, "flip_p": 1.0})
    out = augment_batch(x, cfg, _gen(0))
    assert torch.allclose(out[:, 0], x.float().flip(-1) / 255, atol=1e-5)
    # flip_p = 0.5 flips some images and not others
    half = augment_batch(x.repeat(4, 1, 1), AugmentConfig(out_size=32, **{**IDENTITY, "flip_p": 0.5}), _gen(0))
    flipped = [torch.allclose(o[0], xi.float().flip(-1) / 255, atol=1e-5) for o, xi in zip(half, x.repeat(4, 1, 1))]
    assert 0 < sum(flipped) < len(flipped)


def _bar_angle(img: torch.Tensor) -> float:
    """Orientation (degrees) of the bright structure from second moments of its intensity."""
    h, w = img.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    wgt = img.double()
    m = wgt.sum()
    cx, cy = (wgt * xx).sum() / m, (wgt * yy).sum() / m
    mxx = (wgt * (xx - cx) ** 2).sum() / m
    myy = (wgt * (yy - cy) ** 2).sum() / m
    mxy = (wgt * (xx - cx) * (yy - cy)).sum() / m
    return math.degrees(0.5 * math.atan2(2 * mxy, mxx - myy))


def test_rotation_is_bounded_by_max_rotation_and_preserves_content():
    size = 64
    x = torch.zeros(1, size, size, dtype=torch.uint8)
    x[:, size // 2 - 2 : size // 2 + 2, 12:-12] = 255  # horizontal bar through the centre
    x = x.repeat(24, 1, 1)
    cfg = AugmentConfig(out_size=size, **{**IDENTITY, "max_rotation": 10.0})
    out = augment_batch(x, cfg, _gen(0))[:, 0]
    params = sample_params(24, cfg, _gen(0))
    angles = [abs(_bar_angle(o)) for o in out]
    assert max(angles) <= 10.5
    assert max(angles) > 5.0  # it does rotate
    for o, a in zip(out, params["angle"]):  # measured angle follows the drawn one
        assert abs(abs(_bar_angle(o)) - abs(float(a))) < 1.0
    # the bar stays whole: total intensity preserved within interpolation error
    mass = out.sum(dim=(1, 2))
    assert torch.allclose(mass, x[0].float().sum() / 255, rtol=0.03)
    still = augment_batch(x[:2], AugmentConfig(out_size=size, **IDENTITY), _gen(0))[:, 0]
    assert abs(_bar_angle(still[0])) < 0.1


def test_crop_keeps_lung_bases_in_every_output():
    size = 32
    bottom = torch.zeros(1, size, size, dtype=torch.uint8)
    bottom[:, -size // 10 :, :] = 255  # bright stripe: bottom 10 % of the image (lung bases)
    top = torch.zeros(1, size, size, dtype=torch.uint8)
    top[:, : size // 16, :] = 255  # thin stripe at the very top (neck)
    n = 64
    cfg = AugmentConfig(out_size=size, scale=(0.8, 1.0), max_translate=0.05)
    out_b = augment_batch(bottom.repeat(n, 1, 1), cfg, _gen(0))[:, 0]
    out_t = augment_batch(top.repeat(n, 1, 1), cfg, _gen(0))[:, 0]
    band = out_b[:, -size // 5 :, :]  # bottom 20 % of every output
    assert (band.amax(dim=(1, 2)) > 0.9).all()
    # the stripe covers most of the output's width in every sample (the whole base, not a corner)
    assert ((band > 0.5).any(dim=1).float().mean(dim=1) > 0.75).all()
    # ...whereas the crop does remove the top of the image in many samples
    assert ((out_t.amax(dim=(1, 2)) < 0.5).float().mean() > 0.3)


def test_crop_scale_and_translation_are_within_bounds():
    cfg = AugmentConfig(out_size=32, scale=(0.85, 1.0), max_translate=0.03)
    p = sample_params(500, cfg, _gen(0))
    s = p["scale"]
    assert s.min() >= 0.85 and s.max() <= 1.0 and s.max() - s.min() > 0.1
    assert torch.allclose(p["cy"] + s, torch.ones_like(s))  # bottom edge anchored
    assert (p["cx"].abs() <= torch.minimum(1 - s, torch.full_like(s, 0.06)) + 1e-12).all()
    assert (p["angle"].abs() <= 10.0).all()
    free = sample_params(500, AugmentConfig(out_size=32, keep_lung_bases=False), _gen(0))
    assert (free["cy"].abs() <= 1 - free["scale"] + 1e-12).all() and free["cy"].std() > 0


def test_resize_batch_changes_size_and_keeps_range():
    x = torch.full((2, 40, 40), 128, dtype=torch.uint8)
    out = resize_batch(x, 20)
    assert out.shape == (2, 1, 20, 20)
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=1e-5)
    f = torch.full((1, 1, 8, 8), 1.5)  # float input is taken as [0, 1] and never modified in place
    assert resize_batch(f, 8).max() == 1.0 and f.max() == 1.5
    aug = augment_batch(_images(size=48), AugmentConfig(out_size=16), _gen(0))
    assert aug.shape == (6, 1, 16, 16) and aug.min() >= 0 and aug.max() <= 1


def test_to_model_input_normalises_and_replicates_channels():
    x = torch.rand(3, 1, 8, 8)
    y = to_model_input(x, mean=0.5, std=0.25)
    assert y.shape == (3, 3, 8, 8) and y.is_contiguous()
    assert torch.allclose(y[:, 0], (x[:, 0] - 0.5) / 0.25)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    with pytest.raises(ValueError, match="std"):
        to_model_input(x, 0.5, 0.0)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        to_model_input(torch.rand(3, 3, 8, 8), 0.5, 0.2)


def test_optional_photometric_jitter_off_by_default_and_bounded():
    cfg = AugmentConfig(out_size=32)
    assert (cfg.brightness, cfg.contrast, cfg.gamma, cfg.noise_std) == (0.0, 0.0, 0.0, 0.0)
    x = torch.full((4, 32, 32), 100, dtype=torch.uint8)
    plain = augment_batch(x, AugmentConfig(out_size=32, **IDENTITY), _gen(0))
    assert torch.allclose(plain, torch.full_like(plain, 100 / 255), atol=1e-5)
    jit = AugmentConfig(out_size=32, **IDENTITY, brightness=0.3, contrast=0.3, gamma=0.3, noise_std=0.05)
    a = augment_batch(x, jit, _gen(0))
    assert torch.equal(a, augment_batch(x, jit, _gen(0)))
    assert a.min() >= 0 and a.max() <= 1
    per_image = a.mean(dim=(1, 2, 3))
    assert per_image.std() > 0.01  # exposure differs between images
    assert a[0].std() > 0.02  # noise added
    # options draw after the geometric parameters: the same seed gives the same geometry
    geo = dict(max_rotation=10.0, flip_p=0.5, scale=(0.85, 1.0))
    p0 = sample_params(4, AugmentConfig(out_size=32, **geo), _gen(7))
    p1 = sample_params(4, AugmentConfig(out_size=32, **geo, brightness=0.3), _gen(7))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(scale=(0.0, 1.0)), dict(scale=(0.9, 1.1)), dict(max_rotation=-1.0), dict(flip_p=1.5),
     dict(padding_mode="wrap"), dict(out_size=0), dict(brightness=1.0)],
)
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(ValueError, match="AugmentConfig"):
        AugmentConfig(**{"out_size": 32, **kwargs})


def test_bad_input_is_a_clear_error():
    cfg = AugmentConfig(out_size=8)
    with pytest.raises(ValueError, match="shape"):
        augment_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), cfg)
    with pytest.raises(ValueError, match="square"):
        augment_batch(torch.zeros(2, 8, 10, dtype=torch.uint8), cfg)
    with pytest.raises(ValueError, match="dtype"):
        augment_batch(torch.zeros(2, 8, 8, dtype=torch.int32), cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    x = _images()
    cfg = AugmentConfig(out_size=32)
    cpu = augment_batch(x, cfg, _gen(0))
    gpu = augment_batch(x.cuda(), cfg, _gen(0))
    assert gpu.is_cuda
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
