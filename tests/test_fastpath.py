"""Fast-path options of ``train.pretrain``: ``torch.compile`` (on CPU with the ``aot_eager``
backend, through ``PretrainConfig.compile_backend``: inductor's C++ build of a ResNet takes
minutes on 2 shared cores; inductor itself runs in the GPU check), and CUDA checks (bf16
autocast + channels_last, CPU/GPU agreement of a step, pinned prefetch) that skip without a GPU
and run in ``benchmarks/gpu_check.sh``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from mocoxr import train

MEAN, STD = 0.5, 0.25
cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs CUDA (run benchmarks/gpu_check.sh on a GPU machine)")




def tiny_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 160, (n, size, size), dtype=np.uint8)
    img[::2, size // 2:, : size // 2] = 250
    return img


def cfg(**kw) -> train.PretrainConfig:
    base = dict(backbone="resnet18", init="random", image_size=32, batch_size=8, epochs=1,
                queue_size=32, device="cpu", lr_drops=())
    return train.PretrainConfig(**{**base, **kw})


IMAGES = tiny_images(16)  # batch 8: 2 steps


def _model_state(path) -> dict:
    return train.load_checkpoint(path)["model"]


def test_compile_option_resumes_an_eager_run_and_trains_like_eager(tmp_path):
    eager = train.pretrain(IMAGES, np.arange(16), cfg(), tmp_path / "eager", MEAN, STD,
                           progress=False)
    # 1 eager step, then the compiled run resumes it (compile settings are resumable fields)
    train.pretrain(IMAGES, np.arange(16), cfg(max_steps=1), tmp_path / "mixed", MEAN, STD,
                   progress=False)
    try:
        mixed = train.pretrain(IMAGES, np.arange(16), cfg(compile=True, compile_backend="aot_eager"),
                               tmp_path / "mixed", MEAN, STD, progress=False)
    finally:
        torch._dynamo.reset()
    assert mixed["step"] == 2 and not mixed["cached"]
    np.testing.assert_allclose(mixed["log"]["loss"], eager["log"]["loss"], rtol=1e-4)
    a, b = _model_state(tmp_path / "eager" / "checkpoint.pt"), _model_state(tmp_path / "mixed" / "checkpoint.pt")
    assert a.keys() == b.keys()  # nn.Module.compile keeps the state-dict names (no _orig_mod.)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    torchvision.models.resnet18().load_state_dict(
        torch.load(tmp_path / "mixed" / "backbone.pt", weights_only=True))


def test_compile_backend_is_a_resumable_field():
    assert {"compile", "compile_backend", "amp", "channels_last", "device"} <= train.RESUMABLE_FIELDS
    assert train.PretrainConfig().compile_backend == "inductor"


# ----------------------------------------------------------------------------- CUDA only


@cuda
def test_pinned_prefetch_batches_are_uint8_and_pinned():
    x = train._load_batch(IMAGES, np.array([5, 1, 3]), pin=True)
    assert x.is_pinned() and x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    assert torch.equal(x, torch.from_numpy(IMAGES[[1, 3, 5]]))  # read in sorted order


@cuda
def test_cuda_fp32_step_matches_the_cpu_step(tmp_path):
    """Augmentation parameters come from a CPU generator on every device, so a fp32 step on
    the GPU sees the same views as on the CPU and computes the same loss and weights."""
    allow = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        kw = dict(max_steps=2, amp="off", channels_last="off")
        c = train.pretrain(IMAGES, np.arange(16), cfg(**kw), tmp_path / "cpu", MEAN, STD,
                           progress=False)
        g = train.pretrain(IMAGES, np.arange(16), cfg(device="cuda", **kw), tmp_path / "gpu",
                           MEAN, STD, progress=False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow
    np.testing.assert_allclose(g["log"]["loss"], c["log"]["loss"], rtol=1e-3)
    a, b = _model_state(tmp_path / "cpu" / "checkpoint.pt"), _model_state(tmp_path / "gpu" / "checkpoint.pt")
    # the keys of both steps (same views, same encoder up to float error); the weights after
    # Adam's sign-like first steps are not compared: a near-zero gradient may flip its sign
    torch.testing.assert_close(b["queue"][:16], a["queue"][:16], rtol=1e-3, atol=1e-4)


@cuda
def test_cuda_fast_path_bf16_channels_last(tmp_path):
    images = tiny_images(48, size=64)
    c = cfg(image_size=64, batch_size=16, max_steps=3, device="cuda")  # amp/channels_last auto
    assert train._use_amp(c.amp, torch.device("cuda"))
    assert train._use_channels_last(c.channels_last, torch.device("cuda"))
    res = train.pretrain(images, np.arange(48), c, tmp_path / "fast", MEAN, STD, progress=False)
    ref = train.pretrain(images, np.arange(48), cfg(image_size=64, batch_size=16, max_steps=3,
                                                   device="cuda", amp="off", channels_last="off"),
                         tmp_path / "fp32", MEAN, STD, progress=False)
    assert np.isfinite(res["log"]["loss"]).all()
    np.testing.assert_allclose(res["log"]["loss"], ref["log"]["loss"], rtol=3e-2)  # bf16
    ck = train.load_checkpoint(tmp_path / "fast" / "checkpoint.pt")  # loads on the CPU
    assert all(t.device.type == "cpu" for t in ck["model"].values())
    torchvision.models.resnet18().load_state_dict(
        torch.load(tmp_path / "fast" / "backbone.pt", weights_only=True))
