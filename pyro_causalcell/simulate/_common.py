"""Pieces shared by the simulators: a random nonlinear count decoder, the count sites, seeded
tracing of a program, and assembly of the AnnData.

Every simulator draws its fixed world parameters from a private ``torch.Generator`` and runs its
Pyro program under :func:`trace_with_seed`, so a ``seed`` reproduces the data exactly and the
global torch RNG is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import scipy.sparse as sp
import torch
from pyro import poutine

from ..distributions import NegativeBinomial


def standard_normal(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """``(*shape)`` standard normal draws from ``generator`` (never the global RNG)."""
    return torch.randn(*shape, generator=generator)


def sample_counts(logits: torch.Tensor, library: torch.Tensor,
                  inverse_dispersion: torch.Tensor) -> torch.Tensor:
    """The count sites of every simulator, called inside the ``"cells"`` plate.

    Records ``pyro.deterministic("expression", library * softmax(logits))`` and samples
    ``"counts" ~ NegativeBinomial(expression, inverse_dispersion)``.

    Parameters
    ----------
    logits : (n_cells, n_genes) tensor
        Gene logits; only their differences within a cell matter.
    library : (n_cells,) tensor
        Library size (expected total counts) per cell.
    inverse_dispersion : (n_genes,) tensor

    Returns
    -------
    (n_cells, n_genes) tensor
        The sampled counts (float tensor of non-negative integers).
    """
    log_mean = torch.log_softmax(logits, -1) + library.log()[:, None]
    pyro.deterministic("expression", log_mean.exp(), event_dim=1)
    return pyro.sample("counts", NegativeBinomial(log_mean=log_mean,
                                                  inverse_dispersion=inverse_dispersion
                                                  ).to_event(1))


@dataclass
class CountDecoder:
    """A fixed random nonlinear map from latents to negative-binomial counts.

    ``expression = library * softmax(leaky_relu(z @ hidden_weights, 0.2) @ output_weights
    + gene_offsets)``, ``library ~ LogNormal(log_library_mean, log_library_scale)`` and
    ``counts ~ NB(expression, inverse_dispersion)``.

    Attributes
    ----------
    hidden_weights : (n_latent, n_hidden) tensor
    output_weights : (n_hidden, n_genes) tensor
    gene_offsets : (n_genes,) tensor
        Baseline log expression of each gene.
    inverse_dispersion : (n_genes,) tensor
    log_library_mean, log_library_scale : float
    """

    hidden_weights: torch.Tensor
    output_weights: torch.Tensor
    gene_offsets: torch.Tensor
    inverse_dispersion: torch.Tensor
    log_library_mean: float
    log_library_scale: float

    @classmethod
    def draw(cls, n_latent: int, n_genes: int, library_size: float,
             generator: torch.Generator, n_hidden: int = 32) -> "CountDecoder":
        """Draw the decoder's weights from ``generator``.

        Parameters
        ----------
        n_latent, n_genes : int
            Input and output sizes.
        library_size : float
            Median library size (total counts per cell).
        generator : torch.Generator
        n_hidden : int
        """
        return cls(
            hidden_weights=standard_normal(generator, n_latent, n_hidden) / np.sqrt(n_latent),
            output_weights=standard_normal(generator, n_hidden, n_genes) * 1.5 / np.sqrt(n_hidden),
            gene_offsets=0.5 * standard_normal(generator, n_genes),
            inverse_dispersion=torch.exp(1.0 + 0.5 * standard_normal(generator, n_genes)),
            log_library_mean=float(np.log(library_size)),
            log_library_scale=0.3,
        )

    @property
    def n_latent(self) -> int:
        return self.hidden_weights.shape[0]

    @property
    def n_genes(self) -> int:
        return self.output_weights.shape[1]

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """``(cells, n_latent)`` -> ``(cells, n_genes)`` gene logits."""
        hidden = torch.nn.functional.leaky_relu(z @ self.hidden_weights, 0.2)
        return hidden @ self.output_weights + self.gene_offsets

    def expression(self, z: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """``(cells, n_latent)``, ``(cells,)`` -> ``(cells, n_genes)`` expected counts, the value
        of the ``"expression"`` site."""
        return torch.softmax(self.logits(z), -1) * library[:, None]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Sites ``"library"``, ``"expression"`` and ``"counts"`` for latents ``z`` of shape
        ``(n_cells, n_latent)``, inside the ``"cells"`` plate; returns the counts."""
        library = pyro.sample("library", dist.LogNormal(self.log_library_mean,
                                                        self.log_library_scale))
        return sample_counts(self.logits(z), library, self.inverse_dispersion)


def trace_with_seed(program: Callable, seed: int, *args, **kwargs) -> poutine.Trace:
    """Trace ``program(*args, **kwargs)`` after ``torch.manual_seed(seed)``, restoring the
    global torch RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return poutine.trace(program).get_trace(*args, **kwargs)


def categories(codes: torch.Tensor | np.ndarray, names: Sequence[str]) -> pd.Categorical:
    """Integer codes ``(n_cells,)`` -> a categorical of ``names`` (all names kept as categories,
    in the given order, even where no cell has them)."""
    return pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64), categories=list(names))


def counts_anndata(counts: torch.Tensor, obs: Mapping[str, Any],
                   obsm: Mapping[str, torch.Tensor | np.ndarray] | None = None,
                   uns: Mapping[str, Any] | None = None) -> ad.AnnData:
    """Assemble a simulator's output.

    Parameters
    ----------
    counts : (n_cells, n_genes) tensor
        Non-negative integer values; stored as an int64 CSR matrix in ``X``.
    obs : mapping of str to (n_cells,) array-like
        ``obs`` columns, in order. Cells are named ``cell_<i>`` and genes ``gene_<j>``.
    obsm, uns : mapping, optional
        Ground truth; tensors in ``obsm`` are converted to NumPy arrays.
    """
    n_cells, n_genes = counts.shape
    frame = pd.DataFrame(dict(obs), index=[f"cell_{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    adata = ad.AnnData(sp.csr_matrix(counts.numpy().astype(np.int64)), obs=frame, var=var)
    for key, value in (obsm or {}).items():
        adata.obsm[key] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    for key, value in (uns or {}).items():
        adata.uns[key] = value
    return adata
