"""Frozen features and what is fitted on them: feature extraction (with a cache), the k-NN
monitor of pretraining, and the linear probe (the paper's first evaluation).

- ``extract_features``: (N, D) float32 features of cache rows from a frozen encoder (eval mode,
  no augmentation), stored beside a JSON sidecar and reused when model, rows and input match.
- ``knn_scores`` / ``make_knn_monitor``: a cosine k-NN vote (and a small logistic regression)
  on labelled rows, the AUC that ``pretrain.pretrain`` logs while it trains.
- ``probe_epochs``: the paper's epoch rule for a label fraction (used by fine-tuning too).
- ``linear_probe`` / ``fit_linear_probe``: a linear classifier on frozen features, scikit-learn
  logistic regression or the paper's Adam-trained linear layer.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn
from tqdm.auto import tqdm

from mocoxr import models, runtime, store

# ----------------------------------------------------------------------------- features


def _as_encoder(model: nn.Module) -> nn.Module:
    """The (B,3,H,W)->(B,D) encoder of a MoCo model, a torchvision model or an encoder."""
    if hasattr(model, "encoder_q"):
        return model.encoder_q
    head = getattr(model, "fc", getattr(model, "classifier", None))
    if head is None or isinstance(head, nn.Identity):
        return model
    return models.encoder(model)


def state_dict_sha1(model: nn.Module) -> str:
    """Content hash of a module's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _feature_meta(key: str, images: np.ndarray, rows: np.ndarray, mean: float, std: float,
                  image_size: int) -> dict:
    """The JSON sidecar of a feature cache: what the features were computed from."""
    return {"key": key, "rows_sha1": runtime.rows_sha1(rows),
            "n_rows": int(len(rows)), "image_size": int(image_size), "mean": float(mean),
            "std": float(std), "images_shape": [int(s) for s in images.shape]}


def load_cached_features(cache_file: str | Path, meta: dict) -> np.ndarray | None:
    """Features stored in ``cache_file`` when its JSON sidecar equals ``meta``; else None."""
    cache_file = Path(cache_file)
    if not store.sidecar_matches(cache_file.with_suffix(".json"), meta, [cache_file]):
        return None
    try:
        feats = np.load(cache_file)
    except (ValueError, OSError):
        return None  # unreadable cache: recompute
    return feats if feats.shape[0] == meta["n_rows"] else None


@torch.no_grad()
def extract_features(model: nn.Module | Callable[[], nn.Module], images: np.ndarray,
                     rows: np.ndarray, mean: float, std: float, image_size: int,
                     batch_size: int = 64,
                     device: str | torch.device | None = runtime.DEFAULT_DEVICE,
                     cache_file: str | Path | None = None, key: str | None = None,
                     progress: bool = False, channels_last: str = "auto") -> np.ndarray:
    """Frozen-encoder features (len(rows), D) float32 of cache rows, resized to ``image_size``.

    ``model``: a MoCo model, a torchvision model (its classifier is dropped) or an encoder, or a
    zero-argument callable returning one (only called on a cache miss). ``device``: where to run
    (``None``: where the model already is; ``"auto"``: cuda when available). With ``cache_file``
    (``.npy``) the result is stored with a JSON sidecar keyed by ``key`` (default: a hash of the
    model's weights), the rows, ``image_size``, mean and std, and reused when they match.
    ``channels_last``: as ``PretrainConfig.channels_last`` (``auto``: on for CUDA and CPU; the
    encoder is converted in place, like ``.to(device)``). The next batch is read from the cache
    (pinned on CUDA) while this one runs. The model's train/eval mode is restored afterwards.
    """
    rows = runtime.check_images(images, rows)
    runtime.check_norm(mean, std)
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    runtime.use_channels_last(channels_last, torch.device("cpu"))  # a bad setting fails first
    if cache_file is not None:
        if not isinstance(model, nn.Module) and key is None:
            raise ValueError("a lazily built model needs an explicit cache key")
        meta = _feature_meta(key or state_dict_sha1(model), images, rows, mean, std, image_size)
        cached = load_cached_features(cache_file, meta)
        if cached is not None:
            return cached
    enc = _as_encoder(model if isinstance(model, nn.Module) else model())
    feats = _encode(enc, images, rows, mean, std, image_size, batch_size, device, channels_last,
                    progress)
    if cache_file is not None:
        cache_file = Path(cache_file)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        store.atomic_write(cache_file, lambda fh: np.save(fh, feats))
        store.atomic_write_text(cache_file.with_suffix(".json"), json.dumps(meta, indent=1))
    return feats


def _encode(enc: nn.Module, images: np.ndarray, rows: np.ndarray, mean: float, std: float,
            image_size: int, batch_size: int, device: str | torch.device | None,
            channels_last: str, progress: bool) -> np.ndarray:
    """The features of ``rows`` from encoder ``enc`` in eval mode (its mode restored after)."""
    device = runtime.resolve_device(next(enc.parameters()).device if device is None else device)
    nhwc = runtime.use_channels_last(channels_last, device)
    was_training = enc.training
    enc.to(device).eval()
    if nhwc:
        enc.to(memory_format=torch.channels_last)
    chunks = []
    try:
        for x in tqdm(runtime.model_inputs(images, rows, mean, std, image_size, batch_size,
                                           device, nhwc),
                      total=-(-len(rows) // batch_size), disable=not progress, desc="features"):
            chunks.append(enc(x).float().reshape(x.shape[0], -1).cpu())
    finally:
        enc.train(was_training)
    return (torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)).astype(np.float32)


# ----------------------------------------------------------------------------- the k-NN monitor


def knn_scores(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, k: int = 20,
               temperature: float = 0.1) -> np.ndarray:
    """Similarity-weighted k-NN score (share of positive neighbours) on cosine similarity."""
    a = torch.nn.functional.normalize(torch.as_tensor(train_X, dtype=torch.float32), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(test_X, dtype=torch.float32), dim=1)
    sim, idx = (b @ a.T).topk(min(k, len(a)), dim=1)
    w = torch.exp(sim / temperature)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.float32)[idx]
    return ((w * y).sum(1) / w.sum(1)).numpy()


def make_knn_monitor(images: np.ndarray, train_rows: np.ndarray, train_y: np.ndarray,
                     eval_rows: np.ndarray, eval_y: np.ndarray, mean: float, std: float,
                     image_size: int, k: int = 20, batch_size: int = 64,
                     linear_C: float | None = 0.1) -> Callable[[nn.Module], dict]:
    """A pretraining monitor: AUC on ``eval`` rows of read-outs fitted on labelled ``train`` rows.

    Returns ``callable(encoder) -> {"knn_auc": float, "linear_auc": float}``: a cosine k-NN
    vote and (unless ``linear_C`` is None) an L2 logistic regression with inverse regularisation
    ``linear_C`` on standardised features. Features are extracted on the encoder's own device,
    in eval mode, without augmentation.
    """
    train_y, eval_y = np.asarray(train_y), np.asarray(eval_y)
    for name, y in (("train_y", train_y), ("eval_y", eval_y)):
        if len(np.unique(y)) != 2:
            raise ValueError(f"{name} needs both classes 0 and 1 for an AUC")
    if linear_C is not None and not linear_C > 0:
        raise ValueError(f"linear_C must be > 0 or None, got {linear_C}")
    return functools.partial(monitor_metrics, images=images, train_rows=np.asarray(train_rows),
                             train_y=train_y, eval_rows=np.asarray(eval_rows), eval_y=eval_y,
                             mean=mean, std=std, image_size=image_size, k=k,
                             batch_size=batch_size, linear_C=linear_C)


def monitor_metrics(encoder: nn.Module, *, images: np.ndarray, train_rows: np.ndarray,
                    train_y: np.ndarray, eval_rows: np.ndarray, eval_y: np.ndarray, mean: float,
                    std: float, image_size: int, k: int, batch_size: int,
                    linear_C: float | None) -> dict:
    """``{"knn_auc", "linear_auc"}`` of ``encoder`` (see :func:`make_knn_monitor`)."""
    both = np.concatenate([train_rows, eval_rows])
    feats = extract_features(encoder, images, both, mean, std, image_size,
                             batch_size=batch_size, device=None,  # the training model's
                             channels_last="on" if runtime.is_channels_last(encoder) else "off")
    n = len(train_rows)
    scores = knn_scores(feats[:n], train_y, feats[n:], k=k)
    out = {"knn_auc": float(roc_auc_score(eval_y, scores))}
    if linear_C is not None:
        probs = linear_probe(feats[:n], train_y, feats[n:], method="logreg", C=linear_C)
        out["linear_auc"] = float(roc_auc_score(eval_y, probs))
    return out


# ----------------------------------------------------------------------------- linear probes


def probe_epochs(label_fraction: float) -> int:
    """The paper's epoch rule ``int(5 * 4 ** log8(1 / f))`` (= 5 * (1/f) ** (2/3)).

    f=1 -> 5, 0.1 -> 23, 0.01 -> 107, 0.001 -> 500 (a 1e-9 guard keeps 499.999... at 500).
    """
    f = float(label_fraction)
    if not 0 < f <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    return int(5 * 4 ** math.log(1 / f, 8) + 1e-9)


def _check_xy(X: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{name}: need features (N, D) and labels (N,), got {X.shape} and {y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
        raise ValueError(f"{name}: labels must be 0/1 with at least one positive and one "
                         f"negative, got values {np.unique(y)[:5]}")
    return X, y.astype(np.int64)



def fit_linear_probe(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray,
                     method: str = "logreg", label_fraction: float = 1.0,
                     val: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0, *,
                     Cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0), C: float = 1.0,
                     max_iter: int = 2000, epochs: int | None = None, batch_size: int = 16,
                     lr: float = 1e-4, standardize: bool | None = None,
                     unlabelled_X: np.ndarray | None = None,
                     device: str | torch.device = runtime.DEFAULT_DEVICE
                     ) -> tuple[np.ndarray, dict]:
    """Fit a linear classifier on frozen features; return ``(test scores (N_test,) in [0, 1],
    info dict)`` (``method``, the chosen ``C`` or epochs, ``val_auc``...).

    ``logreg`` (fast default): StandardScaler + sklearn LogisticRegression (L2); with ``val``
    the inverse regularisation C is chosen from ``Cs`` by validation AUC, otherwise ``C``.
    ``adam`` (the paper's variant): one linear layer trained with Adam (``lr`` 1e-4,
    ``batch_size``, ``epochs`` = ``probe_epochs(label_fraction)`` unless given), BCE loss;
    with ``val`` the epoch with the best validation AUC is kept. ``standardize`` defaults to
    True for logreg and False for adam (the paper feeds raw features). The scaler is fitted on
    ``unlabelled_X`` when given (features of the whole training split: images are plentiful,
    only labels are scarce), else on ``train_X``; a scaler fitted on the 2 rows of a 0.1%
    subset scales every feature to +-1 and throws away which features vary.
    """
    if method not in ("logreg", "adam"):
        raise ValueError(f"method must be 'logreg' or 'adam', got {method!r}")
    X, y, T, val = _probe_inputs(train_X, train_y, test_X, val, unlabelled_X,
                                 method == "logreg" if standardize is None else standardize)
    if method == "logreg":
        return _logreg_probe(X, y, T, val, Cs if val is not None else (C,), max_iter, seed)
    return _adam_probe(X, y, T, val, epochs or probe_epochs(label_fraction), batch_size, lr, seed,
                       runtime.resolve_device(device))


def linear_probe(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray,
                 **options: Any) -> np.ndarray:
    """The test scores of :func:`fit_linear_probe` (same options), without its info."""
    return fit_linear_probe(train_X, train_y, test_X, **options)[0]


def _probe_inputs(train_X, train_y, test_X, val, unlabelled_X, standardize: bool):
    """Checked float64 ``(X, y, T, val)``, standardised when asked (see fit_linear_probe)."""
    X, y = _check_xy(train_X, train_y, "train")
    T = np.asarray(test_X, dtype=np.float64)
    if T.ndim != 2 or T.shape[1] != X.shape[1] or not np.isfinite(T).all():
        raise ValueError(f"test_X must be finite (N, {X.shape[1]}), got {T.shape}")
    if val is not None:
        val = _check_xy(val[0], val[1], "val")
        if val[0].shape[1] != X.shape[1]:
            raise ValueError(f"val features have {val[0].shape[1]} columns, train has {X.shape[1]}")
    if unlabelled_X is not None:
        U = np.asarray(unlabelled_X, dtype=np.float64)
        if U.ndim != 2 or U.shape[1] != X.shape[1] or len(U) < 2 or not np.isfinite(U).all():
            raise ValueError(f"unlabelled_X must be finite (N >= 2, {X.shape[1]}), got {U.shape}")
    if standardize:
        scaler = StandardScaler().fit(U if unlabelled_X is not None else X)
        X, T = scaler.transform(X), scaler.transform(T)
        if val is not None:
            val = (scaler.transform(val[0]), val[1])
    return X, y, T, val


def _logreg_probe(X, y, T, val, grid, max_iter: int, seed: int) -> tuple[np.ndarray, dict]:
    """L2 logistic regression; with ``val`` the C of ``grid`` with the best validation AUC.

    BLAS runs on one thread here: L-BFGS on a few hundred features is many tiny products, and
    a second OpenBLAS thread beside torch's idling OpenMP threads made the fits of chapter 03
    5.6x slower on the 2-core machine (18.6 s against 3.3 s for its 32 probes)."""
    best = None
    with threadpool_limits(limits=1, user_api="blas"):
        for c in grid:
            clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(X, y)
            score = (roc_auc_score(val[1], clf.predict_proba(val[0])[:, 1])
                     if val is not None else 0.0)
            if best is None or score > best[0]:
                best = (score, c, clf)
    info = {"method": "logreg", "C": best[1], "val_auc": best[0] if val is not None else None}
    return best[2].predict_proba(T)[:, 1], info


def _adam_probe(X, y, T, val, epochs: int, batch_size: int, lr: float, seed: int,
                device: torch.device) -> tuple[np.ndarray, dict]:
    """The paper's probe: one seeded linear layer, Adam, BCE; with ``val`` the best epoch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(X.shape[1], 1).to(device)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.float32, device=device)
    Vt = torch.as_tensor(val[0], dtype=torch.float32, device=device) if val is not None else None
    best, history = (-1.0, None, epochs), []
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(Xt), generator=gen).split(batch_size):
            idx = idx.to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(layer(Xt[idx]).squeeze(1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if Vt is not None:
            with torch.no_grad():
                auc = float(roc_auc_score(val[1], layer(Vt).squeeze(1).cpu().numpy()))
            history.append(auc)
            if auc > best[0]:
                best = (auc, copy.deepcopy(layer.state_dict()), epoch)
    if best[1] is not None:
        layer.load_state_dict(best[1])
    with torch.no_grad():
        scores = torch.sigmoid(layer(torch.as_tensor(T, dtype=torch.float32, device=device)))
    info = {"method": "adam", "epochs": epochs, "best_epoch": best[2],
            "val_auc": best[0] if Vt is not None else None, "val_auc_history": history}
    return scores.squeeze(1).cpu().numpy().astype(np.float64), info


