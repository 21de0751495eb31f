"""What do an encoder's frozen features encode? Cross-validated read-outs of the phantom's truth.

For an ``effect_study.py`` run (its results folder holds the cached features of every init) and
its manifest, fits a ridge regression (severities) or a logistic regression (binary acquisition
facts) from the standardised training-image features to each ground-truth column of
``phantom_truth.csv`` and prints the 3-fold cross-validated R² or AUC per init, plus the share of
variance in the top 5 principal components. Used for book/methods.md (second round).

    python benchmarks/feature_diagnostic.py runs/effect_study/results/<run> runs/effect_study/manifests/<data>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.preprocessing import StandardScaler

SEVERITIES = ("effusion", "cardiomegaly", "support_devices", "edema", "atelectasis")
BINARY = ("ap", "supine", "icu")


def truth_table(manifest_dir: Path) -> pd.DataFrame:
    """The CheXpert manifest joined with the phantom's ground truth (one row per manifest row)."""
    m = pd.read_csv(manifest_dir / "chexpert.csv")
    root = m["path"].iloc[0].split("CheXpert-v1.0-small")[0]
    truth_file = Path(root) / "CheXpert-v1.0-small" / "phantom_truth.csv"
    if not truth_file.exists():
        raise FileNotFoundError(f"{truth_file}: expected the phantom's ground truth (synthetic data only)")
    t = pd.read_csv(truth_file)
    t["path"] = root + t["Path"]
    m = m.merge(t, on="path", how="left", validate="one_to_one")
    m["effusion"] = m[["effusion_right", "effusion_left"]].max(axis=1)
    m["ap"] = (m["projection"] == "AP").astype(float)
    return m


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Print and return ``{init: {measure: value}}`` for every cached feature file of the run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results_dir", type=Path)
    p.add_argument("manifest_dir", type=Path)
    a = p.parse_args(argv)
    m = truth_table(a.manifest_dir)
    train = (m["split"] == "train").to_numpy()
    files = sorted((a.results_dir / "features").glob("chexpert__*.npy"))
    if not files:
        raise FileNotFoundError(f"{a.results_dir / 'features'}: no cached chexpert features")
    report = {}
    for f in files:
        X = np.load(f)
        if len(X) != len(m):
            raise ValueError(f"{f}: {len(X)} rows, manifest has {len(m)}")
        X = StandardScaler().fit_transform(X[train])
        ev = np.linalg.svd(X - X.mean(0), compute_uv=False) ** 2
        out = {"top5 PC variance": np.round(ev[:5] / ev.sum(), 3).tolist()}
        for col in SEVERITIES:
            y = m.loc[train, col].to_numpy(float)
            pred = cross_val_predict(RidgeCV(alphas=(1, 10, 100, 1000)), X, y, cv=3)
            out[f"R2 {col}"] = round(float(r2_score(y, pred)), 3)
        for col in BINARY:
            y = m.loc[train, col].to_numpy(float)
            pred = cross_val_predict(LogisticRegression(C=0.1, max_iter=2000), X, y, cv=3,
                                     method="predict_proba")[:, 1]
            out[f"AUC {col}"] = round(float(roc_auc_score(y, pred)), 3)
        report[f.stem.split("__")[2]] = out
        print(f.stem.split("__")[2], out)
    return report


if __name__ == "__main__":
    main()
