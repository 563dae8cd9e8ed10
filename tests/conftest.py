"""Shared fixtures: tiny AnnData objects of raw counts with every kind of covariate."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch

N_CELLS = 12
GENES = ["Gm5", "Actb", "Cd3e", "Xist", "Mki67", "Zfp1"]  # deliberately not sorted

# perturbation values cycle through control, single and combined perturbations
PERTURBATIONS = ["ctrl", "KO_b", "KO_a", "KO_a+KO_b"]
DOMAINS = ["donor_2", "donor_1", "donor_3"]
LABELS = ["T", "B"]


def make_counts(n_cells: int = N_CELLS, n_genes: int = len(GENES), seed: int = 0) -> np.ndarray:
    """Integer counts with no empty cell and no empty gene (and plenty of zeros)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.5, size=(n_cells, n_genes)) * rng.integers(0, 2, (n_cells, n_genes))
    counts[np.arange(n_cells), np.arange(n_cells) % n_genes] += 1 + np.arange(n_cells)
    counts[0, :] += 1  # every gene has at least one count
    return counts.astype(np.float32)


def make_adata(n_cells: int = N_CELLS, *, sparse: bool = False, seed: int = 0) -> ad.AnnData:
    counts = make_counts(n_cells, seed=seed)
    obs = pd.DataFrame(
        {
            "perturbation": [PERTURBATIONS[i % 4] for i in range(n_cells)],
            "domain": [DOMAINS[i % 3] for i in range(n_cells)],
            "label": pd.Categorical([LABELS[i % 2] for i in range(n_cells)]),
            "dose": np.linspace(0.0, 1.0, n_cells),
            "size_factor": np.arange(1, n_cells + 1, dtype=np.float64) * 10.0,
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"highly_variable": [True] * len(GENES)}, index=GENES)
    X = sp.csr_matrix(counts) if sparse else counts.copy()
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.layers["logged"] = np.log1p(counts)
    adata.uns["note"] = {"source": "fixture"}
    adata.obsm["X_pca"] = np.arange(n_cells * 2, dtype=np.float64).reshape(n_cells, 2)
    return adata


@pytest.fixture(name="make_adata")
def make_adata_fixture():
    """Factory ``make_adata(n_cells=12, *, sparse=False, seed=0)`` for fresh AnnData objects."""
    return make_adata


@pytest.fixture
def layout() -> SimpleNamespace:
    """What the fixture AnnData objects contain (gene order, obs value cycles)."""
    return SimpleNamespace(n_cells=N_CELLS, genes=list(GENES), perturbations=list(PERTURBATIONS),
                           domains=list(DOMAINS), labels=list(LABELS))


@pytest.fixture
def adata() -> ad.AnnData:
    """12 cells x 6 genes, dense float32 integer counts, every covariate column."""
    return make_adata()


@pytest.fixture
def sparse_adata() -> ad.AnnData:
    """Same as ``adata`` but ``X`` is a CSR matrix."""
    return make_adata(sparse=True)


@pytest.fixture
def all_keys() -> dict:
    return dict(perturbation_key="perturbation", control="ctrl", domain_key="domain",
                label_key="label", dose_key="dose")


@pytest.fixture
def seeded():
    """Empty Pyro param store and fixed seeds (Python, NumPy, torch) for the test.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("seeded")``.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def replayed():
    """``replayed(model, batch) -> (guide_trace, model_trace)``: the guide traced, and the
    model traced while replaying the guide's latents."""
    from pyro import poutine

    def traces(model, batch):
        guide = poutine.trace(model.guide).get_trace(batch)
        return guide, poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)

    return traces


def log_fold_change(after, before) -> np.ndarray:
    """``(n_genes,)`` log of the ratio of mean expression, ``after`` over ``before``
    (``(n_cells, n_genes)`` each, e.g. expression per library size)."""
    return np.log(np.asarray(after).mean(0) / np.asarray(before).mean(0))


@pytest.fixture
def unseen_pair():
    """``unseen_pair(seed, n_cells, **design) -> SimpleNamespace``: ``simulate.factorized``
    cells in which covariate_0's treatment_1 cells are the pair to hold out.

    Attributes: ``adata``; ``held_out`` and ``controls`` (bool masks: covariate_0's
    treatment_1 cells and its control cells); ``true_lfc``, the simulator's own response of
    those control cells (its program rerun under ``pyro.do(perturbation=treatment_1)`` with the
    same noise: log fold change of mean expression per library size); ``lfc``, the function
    that computed it (:func:`log_fold_change`).
    """
    from pyro_causalcell.simulate import factorized
    from pyro_causalcell.simulate._common import trace_with_seed
    from pyro_causalcell.simulate.factorized import FactorizedWorld, factorized_program

    def simulate(seed: int, n_cells: int, **design) -> SimpleNamespace:
        adata = factorized(n_cells=n_cells, seed=seed, **design)
        settings = adata.uns["simulation"]
        world = FactorizedWorld.draw(
            settings["n_genes"], settings["n_covariates"], settings["n_treatments"],
            settings["n_latent_x"], settings["n_latent_t"], settings["n_latent_tx"],
            settings["covariate_strength"], settings["treatment_strength"],
            settings["interaction_strength"], None, settings["control_fraction"],
            settings["library_size"], torch.Generator().manual_seed(seed))
        factual = trace_with_seed(factorized_program, seed, world, n_cells)
        np.testing.assert_array_equal(adata.obsm["z_x"], factual.nodes["z_x"]["value"].numpy())
        treated = trace_with_seed(
            pyro.do(factorized_program,
                    data={"perturbation": torch.ones(n_cells, dtype=torch.long)}),
            seed, world, n_cells)
        obs = adata.obs
        in_covariate = (obs["covariate"] == "covariate_0").to_numpy()
        held_out = in_covariate & (obs["treatment"] == "treatment_1").to_numpy()
        controls = in_covariate & (obs["treatment"] == "control").to_numpy()
        library = factual.nodes["library"]["value"][controls].unsqueeze(-1)
        true_lfc = log_fold_change(treated.nodes["expression"]["value"][controls] / library,
                                   factual.nodes["expression"]["value"][controls] / library)
        return SimpleNamespace(adata=adata, held_out=held_out, controls=controls,
                               true_lfc=true_lfc, lfc=log_fold_change)

    return simulate


@pytest.fixture(autouse=True, scope="session")
def engines_on_the_chosen_device():
    """``CAUSALCELL_DEVICE=cuda python -m pytest`` runs every engine (fit, latent, queries ...)
    on that device, including those a test asks to run on the CPU, as Pyro's ``--cuda`` test
    switch does. Unset: nothing changes."""
    chosen = os.environ.get("CAUSALCELL_DEVICE", "").strip()
    if not chosen or chosen in ("auto", "cpu"):
        yield
        return
    from pyro_causalcell.infer import device as device_module

    resolve = device_module.resolve_device
    target = resolve(chosen)  # fails here, naming the device, if it does not exist

    def on_chosen_device(device="auto"):
        resolved = resolve(device)
        return target if resolved.type == "cpu" else resolved

    # every module that imported it, not its own module: tests of resolve_device see the real one
    patched = [(module, module.resolve_device) for name, module in list(sys.modules.items())
               if name.startswith("pyro_causalcell") and name != device_module.__name__
               and hasattr(module, "resolve_device")]
    for module, _ in patched:
        module.resolve_device = on_chosen_device
    yield
    for module, original in patched:
        module.resolve_device = original
