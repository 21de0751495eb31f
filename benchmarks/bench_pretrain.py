#!/usr/bin/env python
"""MoCo pretraining throughput: mocoxr's fast path against a faithful re-implementation of the
reference loop, on the same device, backbone, batch and resolution, in one run; plus
feature-extraction throughput and the time of a whole linear-probe sweep from cached features.

    python benchmarks/bench_pretrain.py                     # CPU preset (64 px, batch 32)
    python benchmarks/bench_pretrain.py --preset h100       # ResNet18 + DenseNet121 at 320 px
    python benchmarks/bench_pretrain.py --device cpu --size 64 --batch 32 --steps 20

Both paths read the same synthetic CheXpert tree (``mocoxr.phantom.generate_chexpert_tree``,
JPEG files in the real layout) and train the same ``mocoxr.moco.MoCo`` (random init, queue
``--queue``, Adam lr 1e-4, wd 1e-4) on the same rows:

(a) **fast path** = ``mocoxr.pretrain.pretrain`` as the notebooks call it: the JPEGs decoded once
    into the uint8 memmap cache (``mocoxr.data.cache``; its build time is reported separately),
    batches read by a background thread (pinned, non-blocking copies on CUDA), augmentations
    batched on the device (``augment.augment_batch``), bf16 autocast on CUDA, channels_last on
    CUDA and CPU, optionally ``torch.compile`` (``--compile``).
(b) **reference loop**, as stanfordmlgroup/MoCo-CXR ``moco_pretraining/moco/main_moco.py`` runs
    it (``--aug-setting chexpert``): a Dataset that opens each JPEG with PIL and converts it to
    RGB (torchvision's ``pil_loader``), ``TwoCropsTransform`` of ``Resize(size)``,
    ``RandomHorizontalFlip()``, ``RandomRotation(10)``, ``RandomCrop(size)``, ``ToTensor()``,
    ``Normalize`` (``aihc_utils/image_transform.py``) in ``DataLoader`` workers (shuffle,
    pin_memory, drop_last), fp32, ``cudnn.benchmark``; per step ``loss.item()`` and top-1/top-5
    accuracy for the meters, zero_grad, backward, step. (One process, no DDP wrapper.)

Throughput is measured at steady state: the clock starts after ``--warmup`` steps (CUDA
synchronised) and stops after ``--steps`` more. For (a) the timestamps come from a
``pretrain`` monitor that synchronises and reads the clock every gcd(warmup, steps) steps (the
monitor runs before the checkpoint, so the final checkpoint write is not timed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mocoxr import data, experiments, moco, phantom, pretrain, probe, runtime  # noqa: E402

PRESETS: dict[str, dict] = {
    # 2 shared CPU cores: small images and batch, one backbone
    # (threads=1: on 2 cores shared with other jobs, 2 OpenMP threads per process spin-wait and
    # ran a ResNet18 step 4-15x slower than one thread here)
    "cpu": dict(device="cpu", backbones="resnet18", size=64, batch=32, warmup=4, steps=20,
                patients=40, workers=2, queue=4096, feature_images=512, feature_batch=64,
                threads=1),
    # one H100: the paper's resolution; DenseNet121 at batch 128 (fp32 reference at 256 would
    # need ~70 GB of activations)
    "h100": dict(device="cuda", backbones="resnet18,densenet121", size=320, batch=256,
                 batch_densenet121=128, warmup=10, steps=40, patients=500,
                 workers=min(16, os.cpu_count() or 1), queue=moco.QUEUE_SIZE_MOCO_CXR,
                 feature_images=20480, feature_batch=256),
    # end-to-end check of this script (tests/test_benchmarks.py)
    "smoke": dict(device="cpu", backbones="resnet18", size=32, batch=4, warmup=1, steps=1,
                  patients=30, workers=1, queue=64, feature_images=16, feature_batch=8, n_boot=20,
                  threads=1),
}


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def make_data(work: Path, size: int, patients: int, workers: int) -> dict:
    """Phantom CheXpert tree (JPEG), prepared manifest + subsets, decoded-image cache."""
    t0 = time.perf_counter()
    cdir = phantom.generate_chexpert_tree(work / "phantom", n_patients=patients, image_size=size,
                                          n_valid_patients=max(8, patients // 4), seed=0,
                                          workers=workers or 0)
    t_phantom = time.perf_counter() - t0
    prepared = data.prepare_chexpert(cdir, work / "prepared")
    paths = prepared.manifest["path"].tolist()
    t0 = time.perf_counter()
    images = data.load_image_cache(paths, size, work / f"cache_{size}px.npy", workers=workers)
    t_cache = time.perf_counter() - t0
    train_rows = prepared.rows("train")
    mean, std = data.image_stats(images, train_rows)
    return {"prepared": prepared, "images": images, "paths": np.asarray(paths),
            "train_rows": train_rows, "mean": mean, "std": std, "phantom_s": t_phantom,
            "cache_s": t_cache}


def tiled_rows(rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows drawn as repeated shuffled passes over ``rows`` (a long single 'epoch')."""
    rng = np.random.default_rng(seed)
    reps = math.ceil(n / len(rows))
    return np.concatenate([rng.permutation(rows) for _ in range(reps)])[:n].astype(np.int64)


def step_flops_per_image(backbone: str, size: int, queue: int) -> float:
    """Matrix FLOPs of one MoCo training step per image, as ``FlopCounterMode`` counts them
    (convolutions and matrix products; not batch norm or elementwise work): query encoder
    forward + backward, key encoder forward, the queue logits. Counted on the CPU, batch 2."""
    from torch.utils.flop_counter import FlopCounterMode

    model = moco.MoCo(backbone, init="random", queue_size=queue, seed=0).train()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(x, x.flip(-1))
        loss.backward()
    return counter.get_total_flops() / 2


# ----------------------------------------------------------------------------- (a) fast path


def run_fast_path(d: dict, backbone: str, batch: int, size: int, queue: int, warmup: int,
                  steps: int, device: torch.device, out: Path,
                  on_step: Callable[[int], None], compile_: bool = False,
                  compile_backend: str = "inductor") -> float:
    """``pretrain.pretrain`` for ``warmup + steps`` steps on tiled training rows, calling
    ``on_step(step)`` (device synchronised) before training (step 0), after every
    gcd(warmup, steps) steps and at the end, from the loop's monitor hook, so the final
    checkpoint write falls outside the window. Returns the wall time of the whole call."""
    every = math.gcd(warmup, steps)
    total = warmup + steps
    cfg = pretrain.PretrainConfig(
           backbone=backbone, init="random", image_size=size, batch_size=batch, epochs=1,
           max_steps=total, queue_size=queue, lr_drops=(), device=str(device),
           monitor_every=every, compile=compile_, compile_backend=compile_backend)
    calls = [0]

    def hook(_encoder) -> dict:
        sync(device)
        on_step(calls[0] * every)
        calls[0] += 1
        return {}

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    pretrain.pretrain(d["images"], tiled_rows(d["train_rows"], total * batch), cfg, out, d["mean"],
                      d["std"], monitor=hook, progress=False)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    assert calls[0] == total // every + 1, (calls[0], total, every)
    return wall


def bench_fast(d: dict, backbone: str, batch: int, args, device: torch.device, work: Path,
               compile_: bool = False) -> dict:
    """Steady-state images/s of ``pretrain.pretrain`` (one run, clock read by its monitor)."""
    warmup, steps = max(1, args.warmup), max(1, args.steps)
    stamps: dict[int, float] = {}
    wall = run_fast_path(d, backbone, batch, args.size, args.queue, warmup, steps, device,
                         work / f"fast_{backbone}{'_compile' if compile_ else ''}",
                         lambda step: stamps.__setitem__(step, time.perf_counter()),
                         compile_, args.compile_backend)
    seconds = stamps[warmup + steps] - stamps[warmup]
    return {"images_per_s": steps * batch / seconds, "timed_steps": steps,
            "timed_s": seconds, "warmup_s": stamps[warmup] - stamps[0], "wall_s": wall}


# ----------------------------------------------------------------------------- (b) reference


class TwoCropsTransform:
    """MoCo's loader.TwoCropsTransform: two random crops of one image as query and key."""

    def __init__(self, base):
        self.base = base

    def __call__(self, x):
        return [self.base(x), self.base(x)]


class JpegDataset(torch.utils.data.Dataset):
    """ImageFolder-like: PIL open + convert('RGB') per item (torchvision's pil_loader)."""

    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as fh:
            img = Image.open(fh).convert("RGB")
        return self.transform(img), 0


def reference_transform(size: int, mean: float, std: float):
    """MoCo-CXR aihc_utils/image_transform.get_transform(training=True), maintain_ratio=True."""
    return T.Compose([T.Resize(size), T.RandomHorizontalFlip(), T.RandomRotation(10),
                      T.RandomCrop((size, size)), T.ToTensor(),
                      T.Normalize(mean=[mean] * 3, std=[std] * 3)])


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """main_moco.py's accuracy (top-k in percent)."""
    with torch.no_grad():
        maxk = max(topk)
        bsz = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / bsz) for k in topk]


def reference_loader(d: dict, rows: np.ndarray, batch: int, args,
                     device: torch.device) -> torch.utils.data.DataLoader:
    """main_moco.py's loader: JPEG dataset, two views per image, ``--workers`` processes."""
    ds = JpegDataset(d["paths"][rows], TwoCropsTransform(
        reference_transform(args.size, d["mean"], d["std"])))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True,
                                       num_workers=args.workers,
                                       pin_memory=device.type == "cuda", drop_last=True)


def bench_reference(d: dict, backbone: str, batch: int, args, device: torch.device) -> dict:
    """Steady-state images/s of the MoCo-CXR style loop (PIL + torchvision in workers, fp32)."""
    warmup, steps = max(1, args.warmup), max(1, args.steps)
    loader = reference_loader(d, tiled_rows(d["train_rows"], (warmup + steps) * batch, seed=1),
                              batch, args, device)
    model = moco.MoCo(backbone, init="random", queue_size=args.queue, seed=0).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4,
                                 betas=(0.9, 0.999), weight_decay=1e-4)
    model.train()
    meters = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
    t_start = time.perf_counter()
    t0 = t1 = None
    for i, (images, _) in enumerate(loader):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        im_q = images[0].to(device, non_blocking=True)
        im_k = images[1].to(device, non_blocking=True)
        loss, output = model(im_q, im_k)
        target = torch.zeros(output.shape[0], dtype=torch.long, device=device)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        meters["loss"] += loss.item()
        meters["top1"] += float(acc1[0])
        meters["top5"] += float(acc5[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    t1 = time.perf_counter()
    n_steps = len(loader)
    return {"images_per_s": (n_steps - warmup) * batch / (t1 - t0), "timed_steps": n_steps - warmup,
            "timed_s": t1 - t0, "warmup_s": t0 - t_start, "wall_s": t1 - t_start,
            "workers": args.workers}


# ----------------------------------------------------------------------------- features, probes


def bench_features(d: dict, backbone: str, args, device: torch.device) -> dict:
    """``probe.extract_features`` as the notebooks call it (channels_last auto) and, side by
    side on the same rows, with NCHW tensors (``channels_last="off"``)."""
    rows = tiled_rows(np.arange(len(d["images"])), args.feature_images, seed=2)
    kw = dict(mean=d["mean"], std=d["std"], image_size=args.size,
              batch_size=args.feature_batch, device=device)
    out: dict = {"images": len(rows)}
    for label, setting in (("nchw", "off"), ("default", "auto")):
        net = moco.MoCo(backbone, init="random", queue_size=16, seed=0).encoder_q
        probe.extract_features(net, d["images"], rows[: 2 * args.feature_batch],
                               channels_last=setting, **kw)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        feats = probe.extract_features(net, d["images"], rows, channels_last=setting, **kw)
        sync(device)
        dt = time.perf_counter() - t0
        key = "images_per_s" if label == "default" else "images_per_s_nchw"
        out.update({key: len(rows) / dt, f"seconds_{label}": dt, "dim": int(feats.shape[1])})
    out["default_over_nchw"] = out["images_per_s"] / out["images_per_s_nchw"]
    return out


def bench_loaders(d: dict, batch: int, args, device: torch.device) -> dict:
    """The data paths alone, no model: how many images/s each can supply at most.

    ``fast``: the fast path's prefetch function (cache rows -> uint8 tensor, pinned on CUDA),
    one thread, as ``pretrain.pretrain`` runs it; the augmentations then run batched on the device.
    ``reference``: the reference DataLoader (PIL decode + two torchvision views per image in
    ``--workers`` processes), iterated without a model. When the reference's model step is
    faster than its loader, the reference is bound by its data path.
    """
    warmup, steps = max(1, args.warmup), max(1, args.steps)
    rows = tiled_rows(d["train_rows"], (warmup + steps) * batch, seed=3)
    pin = device.type == "cuda"
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        runtime.load_batch(d["images"], rows[i * batch:(i + 1) * batch], pin)
    fast = steps * batch / (time.perf_counter() - t0)
    loader = reference_loader(d, rows, batch, args, device)
    for i, _ in enumerate(loader):
        if i == warmup - 1:  # the clock starts once the warm-up batches have arrived
            t0 = time.perf_counter()
    ref = (len(loader) - warmup) * batch / (time.perf_counter() - t0)
    return {"fast_images_per_s": fast, "reference_images_per_s": ref,
            "reference_workers": args.workers, "batch": batch}


def bench_probe(d: dict, backbone: str, args, device: torch.device, work: Path) -> dict:
    """Whole linear-probe sweep (every fraction and draw, C chosen on val, bootstrap CIs,
    predictions written) with the features already cached: experiments.run_linear_experiment."""
    prep = d["prepared"]
    out = work / f"probe_{backbone}"
    shutil.rmtree(out, ignore_errors=True)
    kw = dict(mean=d["mean"], std=d["std"], image_size=args.size, out_dir=out,
              n_boot=args.n_boot, device=str(device), batch_size=args.feature_batch,
              progress=False)
    experiments.run_linear_experiment(prep, d["images"], {"random": "random"}, backbone, **kw)
    t0 = time.perf_counter()
    experiments.run_linear_experiment(prep, d["images"], {"random": "random"}, backbone, **kw)
    dt = time.perf_counter() - t0
    sweep = experiments.plan(prep)
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": dt, "probes": int(sum(len(dr) for _, dr in sweep)),
            "fractions": [f for f, _ in sweep], "n_train": int(len(prep.rows("train"))),
            "n_test": int(len(prep.rows("test"))), "n_boot": args.n_boot}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--device", help="cpu, cuda, cuda:N (preset: cpu / cuda)")
    p.add_argument("--backbones", help="comma-separated (preset)")
    p.add_argument("--size", type=int, help="image side in pixels")
    p.add_argument("--batch", type=int, help="batch size (both paths)")
    p.add_argument("--steps", type=int, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, help="untimed steps first")
    p.add_argument("--patients", type=int, help="phantom patients (about 2.5 frontal images each)")
    p.add_argument("--workers", type=int, help="reference DataLoader workers; also decoding")
    p.add_argument("--queue", type=int, help="MoCo queue size")
    p.add_argument("--feature-images", type=int, dest="feature_images")
    p.add_argument("--feature-batch", type=int, dest="feature_batch")
    p.add_argument("--n-boot", type=int, dest="n_boot", help="bootstrap replicates in the sweep")
    p.add_argument("--threads", type=int, help="torch / BLAS threads of the main process "
                   "(preset cpu: 1; default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time the fast path compiled")
    p.add_argument("--compile-backend", default="inductor", dest="compile_backend")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-fast", action="store_true")
    p.add_argument("--skip-loaders", action="store_true",
                   help="skip the data-path-only rows (no model)")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench"), help="scratch folder")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    preset = {"n_boot": 1000, "threads": 0, **PRESETS[args.preset]}
    batch_given = args.batch is not None
    for key, value in preset.items():
        if not key.startswith("batch_") and getattr(args, key, None) is None:
            setattr(args, key, value)
    args.batch_for = {b: args.batch if batch_given else preset.get(f"batch_{b}", args.batch)
                      for b in args.backbones.split(",")}
    return args


def fmt(v: float | None, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:,.1f}{unit}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        before = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            with threadpool_limits(args.threads):
                return _main(args, argv)
        finally:
            torch.set_num_threads(before)
    return _main(args, argv)


def _main(args: argparse.Namespace, argv) -> dict:
    device = runtime.resolve_device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # both paths (main_moco.py sets it too)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cmd = " ".join([Path(sys.argv[0]).name if argv is None else "bench_pretrain.py",
                    *(sys.argv[1:] if argv is None else argv)])
    result = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": cmd,
              "device": device_name(device), "torch": torch.__version__,
              "load_before": load_average(), "size": args.size, "queue": args.queue,
              "warmup": args.warmup, "steps": args.steps, "threads": torch.get_num_threads(),
              "workers": args.workers, "backbones": {}}
    print(f"# {result['date']}  {result['device']}  torch {torch.__version__}  "
          f"threads {result['threads']}  load {result['load_before']}\n# {cmd}", flush=True)
    d = make_data(work, args.size, args.patients, args.workers)
    result.update(n_images=int(len(d["images"])), n_train=int(len(d["train_rows"])),
                  phantom_s=round(d["phantom_s"], 2), cache_build_s=round(d["cache_s"], 2))
    print(f"# data: {len(d['images'])} images ({len(d['train_rows'])} train) at {args.size} px; "
          f"phantom {d['phantom_s']:.1f} s, cache build {d['cache_s']:.1f} s", flush=True)

    for backbone in args.backbones.split(","):
        batch = args.batch_for[backbone]
        r: dict = {"batch": batch,
                   "step_flops_per_image": step_flops_per_image(backbone, args.size, args.queue)}
        steps = [("fast", lambda: bench_fast(d, backbone, batch, args, device, work))]
        if args.compile:
            steps.append(("fast_compiled",
                          lambda: bench_fast(d, backbone, batch, args, device, work, True)))
        steps.append(("reference", lambda: bench_reference(d, backbone, batch, args, device)))
        steps.append(("loaders", lambda: bench_loaders(d, batch, args, device)))
        steps.append(("features", lambda: bench_features(d, backbone, args, device)))
        steps.append(("probe_sweep", lambda: bench_probe(d, backbone, args, device, work)))
        skip = {"fast": args.skip_fast, "fast_compiled": args.skip_fast,
                "reference": args.skip_reference, "loaders": args.skip_loaders,
                "features": args.skip_features,
                "probe_sweep": args.skip_probe}
        for name, fn in steps:
            if skip[name]:
                continue
            try:
                r[name] = fn()
            except torch.cuda.OutOfMemoryError as err:  # record it and go on
                r[name] = {"error": f"out of memory: {str(err)[:120]}"}
                torch.cuda.empty_cache()
            print(f"  {backbone:12s} {name:14s} {json.dumps(r[name], default=float)}", flush=True)
        for name in ("fast", "fast_compiled", "reference"):
            if r.get(name, {}).get("images_per_s"):  # achieved matrix TFLOP/s
                r[name]["tflops"] = r[name]["images_per_s"] * r["step_flops_per_image"] / 1e12
        fast = r.get("fast", {}).get("images_per_s")
        ref = r.get("reference", {}).get("images_per_s")
        r["ratio"] = fast / ref if fast and ref else None
        result["backbones"][backbone] = r
    result["load_after"] = load_average()

    print(f"\n| backbone | batch | fast path img/s | reference img/s | ratio | loaders img/s "
          f"(fast / reference, no model) | features img/s (NCHW) | probe sweep s |\n"
          f"|---|---|---|---|---|---|---|---|")
    for backbone, r in result["backbones"].items():
        fast_s = fmt(r.get("fast", {}).get("images_per_s"))
        if "fast_compiled" in r:
            fast_s += f" (compiled {fmt(r['fast_compiled'].get('images_per_s'))})"
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"| {backbone} | {r['batch']} | {fast_s} | "
              f"{fmt(r.get('reference', {}).get('images_per_s'))} | {ratio} | "
              f"{fmt(r.get('loaders', {}).get('fast_images_per_s'))} / "
              f"{fmt(r.get('loaders', {}).get('reference_images_per_s'))} | "
              f"{fmt(r.get('features', {}).get('images_per_s'))} "
              f"({fmt(r.get('features', {}).get('images_per_s_nchw'))}) | "
              f"{fmt(r.get('probe_sweep', {}).get('seconds'))} |")
    for backbone, r in result["backbones"].items():
        tf = ", ".join(f"{n} {r[n]['tflops']:.2f}" for n in ("fast", "fast_compiled", "reference")
                       if "tflops" in r.get(n, {}))
        print(f"# {backbone}: {r['step_flops_per_image'] / 1e9:.2f} GFLOP per image per MoCo step "
              f"(matrix FLOPs, FlopCounterMode){'; achieved TFLOP/s: ' + tf if tf else ''}")
    print(f"# load average before {result['load_before']}, after {result['load_after']}",
          flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
