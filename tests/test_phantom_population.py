"""Tests of the population parameters (mocoxr.phantom.population)."""

from __future__ import annotations

import json

import pytest

from mocoxr import phantom as ph


def test_population_dict_is_json_and_overridable():
    d = ph.DEFAULT_POPULATION.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["prevalence"]["effusion"] == ph.DEFAULT_POPULATION.prevalence["effusion"]
    pop = ph.make_population({"prevalence": {"effusion": 0.05}, "noise_range": [0.01, 0.02],
                              "labels": {"Edema": {"pos": 0.5}}})
    assert pop.prevalence["effusion"] == 0.05 and pop.prevalence["edema"] == ph.DEFAULT_POPULATION.prevalence["edema"]
    assert pop.noise_range == (0.01, 0.02) and pop.labels["Edema"]["pos"] == 0.5
    assert ph.make_population(pop) is pop and ph.make_population(None) is ph.DEFAULT_POPULATION
    rare = ph.sample_chexpert_records(300, seed=0, population={"prevalence": {"effusion": 0.05}})
    common = ph.sample_chexpert_records(300, seed=0)
    n_eff = lambda recs: sum("effusion_right" in r["findings"] or "effusion_left" in r["findings"] for r in recs)  # noqa: E731
    assert n_eff(rare) < 0.4 * n_eff(common)
    for bad in ({"bogus": 1}, {"prevalence": {"flu": 0.1}}, {"noise_range": [0.1]}):
        with pytest.raises(ValueError):
            ph.make_population(bad)
