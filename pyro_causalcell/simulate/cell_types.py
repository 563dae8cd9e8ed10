"""Cell types x technical batches: a small ground-truth world for demos and integration tests.

Per cell: a cell type (``"label"``) and a batch (``"domain"``) drawn uniformly, latents
``z ~ Normal(centre[label], I)``, a library size, and counts from a negative binomial whose
mean is ``library * softmax(g(z) + offset[domain])`` with a fixed random nonlinear ``g`` and
per-batch gene offsets. Biology lives in ``z``; batch acts only on the genes.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch

from ._common import counts_anndata, sample_counts, trace_with_seed


@dataclass
class CellTypeWorld:
    """Fixed parameters of the simulation (the structural equations' functions).

    Attributes
    ----------
    centres : (n_cell_types, n_latent) tensor
    hidden_weights : (n_latent, n_hidden) tensor
    output_weights : (n_hidden, n_genes) tensor
    batch_offsets : (n_batches, n_genes) tensor
    inverse_dispersion : (n_genes,) tensor
    log_library_mean, log_library_scale : float
    """

    centres: torch.Tensor
    hidden_weights: torch.Tensor
    output_weights: torch.Tensor
    batch_offsets: torch.Tensor
    inverse_dispersion: torch.Tensor
    log_library_mean: float
    log_library_scale: float

    @classmethod
    def draw(cls, n_genes: int, n_cell_types: int, n_batches: int, n_latent: int,
             batch_strength: float, library_size: float, generator: torch.Generator
             ) -> "CellTypeWorld":
        def normal(*shape):
            return torch.randn(*shape, generator=generator)
        n_hidden = 32
        centres = 2.5 * normal(n_cell_types, n_latent)
        return cls(
            centres=centres,
            hidden_weights=normal(n_latent, n_hidden) / np.sqrt(n_latent),
            output_weights=normal(n_hidden, n_genes) * 1.5 / np.sqrt(n_hidden),
            batch_offsets=batch_strength * normal(n_batches, n_genes),
            inverse_dispersion=torch.exp(1.0 + 0.5 * normal(n_genes)),
            log_library_mean=float(np.log(library_size)),
            log_library_scale=0.3,
        )

    def expression_logits(self, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """``(cells, n_latent)``, ``(cells,)`` -> ``(cells, n_genes)`` gene logits."""
        hidden = torch.nn.functional.leaky_relu(z @ self.hidden_weights, 0.2)
        return hidden @ self.output_weights + self.batch_offsets[domain]


def cell_types_program(world: CellTypeWorld, n_cells: int) -> torch.Tensor:
    """The simulator as a Pyro program; sites ``label``, ``domain``, ``z``, ``library``,
    ``expression`` and ``counts``. Returns ``(n_cells, n_genes)`` counts."""
    n_types, n_latent = world.centres.shape
    n_batches = world.batch_offsets.shape[0]
    with pyro.plate("cells", n_cells):
        label = pyro.sample("label", dist.Categorical(logits=torch.zeros(n_types)))
        domain = pyro.sample("domain", dist.Categorical(logits=torch.zeros(n_batches)))
        z = pyro.sample("z", dist.Normal(world.centres[label], 1.0).to_event(1))
        library = pyro.sample("library", dist.LogNormal(world.log_library_mean,
                                                        world.log_library_scale))
        return sample_counts(world.expression_logits(z, domain), library,
                             world.inverse_dispersion)


def cell_types(n_cells: int = 3000, n_genes: int = 200, n_cell_types: int = 4,
               n_batches: int = 2, n_latent: int = 5, batch_strength: float = 1.0,
               library_size: float = 2000.0, seed: int = 0) -> ad.AnnData:
    """Simulate cell types observed in several technical batches.

    Parameters
    ----------
    n_cells, n_genes, n_cell_types, n_batches, n_latent : int
    batch_strength : float
        Standard deviation of the per-batch gene offsets (log scale).
    library_size : float
        Median total counts per cell.
    seed : int
        Makes the result exactly reproducible.

    Returns
    -------
    anndata.AnnData
        ``X``: CSR integer counts; ``obs["cell_type"]``, ``obs["batch"]``;
        ``obsm["z_true"]``: ``(n_cells, n_latent)`` true latents; ``uns["simulation"]``: the
        arguments.
    """
    generator = torch.Generator().manual_seed(seed)
    world = CellTypeWorld.draw(n_genes, n_cell_types, n_batches, n_latent, batch_strength,
                               library_size, generator)
    trace = trace_with_seed(cell_types_program, seed, world, n_cells)
    label = trace.nodes["label"]["value"].numpy()
    domain = trace.nodes["domain"]["value"].numpy()
    return counts_anndata(
        trace.nodes["counts"]["value"],
        obs={"cell_type": pd.Categorical([f"type_{i}" for i in label]),
             "batch": pd.Categorical([f"batch_{i}" for i in domain])},
        obsm={"z_true": trace.nodes["z"]["value"]},
        uns={"simulation": dict(name="cell_types", n_cells=n_cells, n_genes=n_genes,
                                n_cell_types=n_cell_types, n_batches=n_batches,
                                n_latent=n_latent, batch_strength=batch_strength,
                                library_size=library_size, seed=seed)})
