"""Tests of the sampled population (mocoxr.phantom.records): label proportions close to the real
train.csv, patients independent of the patient count, the Shenzhen class mix."""

from __future__ import annotations

import numpy as np

from mocoxr import phantom as ph
from mocoxr.data import CHEXPERT_OBSERVATIONS


def test_label_proportions_look_like_chexpert(shared_data_optional):
    recs = [r for r in ph.sample_chexpert_records(1500, seed=0) if r["view"] == "Frontal"]
    eff = np.array([np.nan if r["labels"]["Pleural Effusion"] is None else r["labels"]["Pleural Effusion"]
                    for r in recs])
    frac = {v: float(np.mean(eff == v)) for v in (1.0, 0.0, -1.0)}
    frac["blank"] = float(np.mean(np.isnan(eff)))
    assert 0.28 < frac[1.0] < 0.50 and 0.02 < frac[-1.0] < 0.12
    assert 0.07 < frac[0.0] < 0.22 and 0.30 < frac["blank"] < 0.55
    # uncertain effusion labels mostly sit on subtle effusions
    sev = np.array([max(r["findings"].get("effusion_right", 0), r["findings"].get("effusion_left", 0))
                    for r in recs])
    unc, pos = eff == -1.0, eff == 1.0
    assert np.mean(sev[unc] > 0) > 0.5
    assert np.median(sev[unc & (sev > 0)]) < np.median(sev[pos])
    # devices and effusion co-occur (acuity), as in real data
    dev = np.array([r["findings"].get("support_devices", 0) > 0 for r in recs])
    has = sev > 0
    assert has[dev].mean() > has[~dev].mean()
    # No Finding only without positive/uncertain pathology
    for r in recs:
        if r["labels"]["No Finding"] == 1.0:
            assert all(r["labels"][o] not in (1.0, -1.0) for o in CHEXPERT_OBSERVATIONS[1:-1])
    if shared_data_optional is not None:  # compare with the real train.csv marginals
        import pandas as pd
        real = pd.read_csv(shared_data_optional / "chexpert/CheXpert-v1.0-small/train.csv.gz",
                           usecols=["Frontal/Lateral", "Pleural Effusion"], dtype=str,
                           keep_default_na=False)
        real = real.loc[real["Frontal/Lateral"] == "Frontal", "Pleural Effusion"]
        for v, key in (("1.0", 1.0), ("0.0", 0.0), ("-1.0", -1.0), ("", "blank")):
            assert abs(float((real == v).mean()) - frac[key]) < 0.08, (v, frac)


def test_population_does_not_depend_on_patient_count():
    a = ph.sample_chexpert_records(5, seed=2)
    b = ph.sample_chexpert_records(9, seed=2)
    assert a == [r for r in b if r["patient"] <= 5]
    assert ph.sample_chexpert_records(5, seed=3) != a


def test_shenzhen_population():
    recs = ph.sample_shenzhen_records(662, seed=0)
    labels = np.array([r["label"] for r in recs])
    assert labels.sum() == 336 and (labels[:326] == 0).all()
    assert 0.08 < np.mean([r["rgb"] for r in recs]) < 0.25
    assert all((r["findings"].get("tb", 0) > 0) == bool(r["label"]) for r in recs)
