"""LatentClassifier: a covariate predicted from a model's latents, by category name."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_causalcell import CellData
from pyro_causalcell.infer import LatentClassifier
from pyro_causalcell.models.components import cells_plate


class KnownLatent(nn.Module):
    """z is (almost exactly) the log counts of the first two genes."""

    def __init__(self, schema):
        super().__init__()
        self.schema = schema

    def model(self, batch):
        with cells_plate(batch):
            pyro.sample("z", dist.Normal(torch.zeros(len(batch), 2), 1.0).to_event(1))

    def guide(self, batch):
        with cells_plate(batch):
            pyro.sample("z", dist.Normal(batch.counts[:, :2].log1p(), 1e-3).to_event(1))


def cells(seed: int, n: int = 80) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    label = np.array(["B cell", "T cell"])[rng.integers(0, 2, n)]
    high = np.where(label == "T cell", 0, 1)
    counts = rng.poisson(2.0, size=(n, 4)).astype(np.float32) + 1
    counts[np.arange(n), high] += 40
    obs = pd.DataFrame({"cell_type": label, "batch": rng.choice(["b1", "b2"], n)},
                       index=[f"c{seed}_{i}" for i in range(n)])
    return ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(4)]))


@pytest.fixture(scope="module")
def fitted():
    train = CellData.from_anndata(cells(0), label_key="cell_type", domain_key="batch")
    test = CellData.from_anndata(cells(1), schema=train.schema)
    return KnownLatent(train.schema), train, test


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_it_predicts_category_names_on_new_cells(fitted, kind):
    model, train, test = fitted
    predictor = LatentClassifier(model, "label", kind=kind).fit(train)
    assert predictor.classes == ("B cell", "T cell")
    probabilities = predictor.predict_proba(test)
    assert list(probabilities.columns) == ["B cell", "T cell"]
    assert list(probabilities.index) == test.obs_names
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)
    assert set(predictor.predict(test)) <= {"B cell", "T cell"}
    assert predictor.score(test) == 1.0


def test_a_chance_target_is_not_learned(fitted):
    model, train, test = fitted
    domain = LatentClassifier(model, "domain").fit(train)  # the batch is random here
    assert domain.score(test) < 0.8


def test_errors_are_named(fitted):
    model, train, _ = fitted
    with pytest.raises(ValueError, match="kind='tree'; choose one of"):
        LatentClassifier(model, kind="tree")
    with pytest.raises(RuntimeError, match=r"call fit\(data\) before predicting"):
        LatentClassifier(model).predict(train)
    unlabelled = CellData.from_anndata(cells(2))
    with pytest.raises(ValueError, match="the data carries no 'label' to learn from"):
        LatentClassifier(KnownLatent(unlabelled.schema)).fit(unlabelled)
