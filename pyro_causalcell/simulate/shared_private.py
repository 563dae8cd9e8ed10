"""Shared and group-private latents: the ground truth of the multiGroupVI setting.

Per cell: a group ``g`` (site ``"domain"``, the data layer's name for groups) drawn uniformly,
shared latents ``z_shared ~ Normal(0, I)`` for every cell, and private latents ``z_private``
laid out in one block of ``n_latent_private`` columns per group that has them. A cell's own
block is ``Normal(0, I)``; every other column is exactly zero:

``z_private ~ Normal(0, diag(private_blocks[g]))``

a normal whose scale is 0 off the active block (a point mass at 0 there; see
:class:`ZeroScaleNormal`), so the exogenous noise of every column is drawn for every cell and
``pyro.do`` on the group switches blocks on and off with that noise. With ``background=True``,
group 0 (``"background"``) has no private block, as the background group of multiGroupVI.
Counts come from a fixed random nonlinear decoder of ``[z_shared, z_private]``
(:class:`~pyro_causalcell.simulate._common.CountDecoder`) with negative-binomial noise, so the
private blocks add group-specific variation on top of the shared one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import anndata as ad
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ._common import CountDecoder, categories, counts_anndata, trace_with_seed


class ZeroScaleNormal(dist.Normal):
    """Normal whose scale may be 0, where it is a point mass at ``loc``.

    ``log_prob`` is the normal log density where ``scale > 0`` and, where ``scale == 0``, 0 at
    ``loc`` and ``-inf`` elsewhere (a density against Lebesgue x counting measure). Sampling is
    ``loc + scale * eps``, so it stays a location-scale family (``LocScaleReparam`` applies).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.greater_than_eq(0.0)}

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        positive = self.scale > 0
        scale = torch.where(positive, self.scale, torch.ones_like(self.scale))
        density = (-((value - self.loc) ** 2) / (2 * scale ** 2) - scale.log()
                   - 0.5 * math.log(2 * math.pi))
        point = torch.where(value == self.loc, 0.0, -math.inf)
        return torch.where(positive, density, point)


@dataclass
class SharedPrivateWorld:
    """Fixed parameters of the shared / private simulation.

    Attributes
    ----------
    private_blocks : (n_groups, n_private_total) bool tensor
        ``private_blocks[g, j]``: column ``j`` of ``z_private`` is active in group ``g``.
        ``n_private_total = n_latent_private * (number of groups with private latents)``.
    n_latent_shared : int
    decoder : CountDecoder
        Maps ``[z_shared, z_private]`` to counts.
    """

    private_blocks: torch.Tensor
    n_latent_shared: int
    decoder: CountDecoder

    @classmethod
    def draw(cls, n_genes: int, n_groups: int, n_latent_shared: int, n_latent_private: int,
             background: bool, library_size: float, generator: torch.Generator
             ) -> "SharedPrivateWorld":
        """Draw a world from ``generator``; arguments as in :func:`shared_private`."""
        with_private = torch.arange(n_groups)[1:] if background else torch.arange(n_groups)
        if len(with_private) == 0:
            raise ValueError("no group has private latents: use n_groups >= 2 with "
                             "background=True")
        blocks = torch.zeros(n_groups, len(with_private) * n_latent_private, dtype=torch.bool)
        for block, group in enumerate(with_private.tolist()):
            blocks[group, block * n_latent_private:(block + 1) * n_latent_private] = True
        decoder = CountDecoder.draw(n_latent_shared + blocks.shape[1], n_genes, library_size,
                                    generator)
        return cls(private_blocks=blocks, n_latent_shared=n_latent_shared, decoder=decoder)

    @property
    def n_groups(self) -> int:
        return self.private_blocks.shape[0]


def shared_private_program(world: SharedPrivateWorld, n_cells: int) -> torch.Tensor:
    """The shared / private simulator as a Pyro program.

    Sites, in order: ``"domain"`` (group index), ``"z_shared"``, ``"z_private"`` (zero off the
    cell's group block), ``"library"``, ``"expression"``, ``"counts"``, all in the ``"cells"``
    plate. ``pyro.do`` on ``"domain"`` moves cells to another group.

    Parameters
    ----------
    world : SharedPrivateWorld
    n_cells : int

    Returns
    -------
    (n_cells, n_genes) tensor
        Counts.
    """
    n_private = world.private_blocks.shape[1]
    with pyro.plate("cells", n_cells):
        group = pyro.sample("domain", dist.Categorical(logits=torch.zeros(world.n_groups)))
        z_shared = pyro.sample("z_shared", dist.Normal(
            torch.zeros(n_cells, world.n_latent_shared), 1.0).to_event(1))
        scale = world.private_blocks[group].float()
        z_private = pyro.sample("z_private", ZeroScaleNormal(
            torch.zeros(n_cells, n_private), scale).to_event(1))
        return world.decoder(torch.cat([z_shared, z_private], -1))


def shared_private(n_cells: int = 3000, n_genes: int = 200, n_groups: int = 3,
                   n_latent_shared: int = 4, n_latent_private: int = 2, background: bool = True,
                   library_size: float = 2000.0, seed: int = 0,
                   world_seed: int | None = None) -> ad.AnnData:
    """Simulate cells of several groups with shared latents and group-private latents (see the
    module docstring for the equations).

    Parameters
    ----------
    n_cells, n_genes : int
    n_groups : int
        Number of groups (drawn uniformly per cell), the background group included.
    n_latent_shared : int
        Size of the shared block.
    n_latent_private : int
        Size of each group's private block.
    background : bool
        Group 0 is a background group (named ``"background"``) without private latents.
    library_size : float
        Median total counts per cell.
    seed : int
        Makes the result exactly reproducible; the global RNG is left untouched.
    world_seed : int, optional
        Seed of the fixed parameters (default ``seed``). Keep it and change ``seed`` to draw new
        cells from the same world.

    Returns
    -------
    anndata.AnnData
        ``X``: ``(n_cells, n_genes)`` int64 CSR counts.
        ``obs["group"]``: categorical ``background`` (with ``background=True``) and
        ``group_<i>`` (``i`` the group index).
        ``obsm["z_shared"]``: ``(n_cells, n_latent_shared)``; ``obsm["z_private"]``:
        ``(n_cells, n_private_total)``, zero outside the cell's group block, where
        ``n_private_total = n_latent_private * (n_groups - background)``.
        ``uns["true_private_blocks"]``: ``(n_groups, n_private_total)`` bool, the columns of
        ``z_private`` each group uses (row ``i`` is the ``i``-th category of ``obs["group"]``);
        ``uns["simulation"]``: the arguments.

    Notes
    -----
    The world is ``SharedPrivateWorld.draw(..., generator=torch.Generator().manual_seed(
    world_seed))`` and the cells are ``shared_private_program(world, n_cells)`` traced after
    ``torch.manual_seed(seed)``.
    """
    world_seed = seed if world_seed is None else world_seed
    world = SharedPrivateWorld.draw(n_genes, n_groups, n_latent_shared, n_latent_private,
                                    background, library_size,
                                    torch.Generator().manual_seed(world_seed))
    trace = trace_with_seed(shared_private_program, seed, world, n_cells)
    value = lambda name: trace.nodes[name]["value"]  # noqa: E731
    names = [f"group_{i}" for i in range(n_groups)]
    if background:
        names[0] = "background"
    return counts_anndata(
        value("counts"),
        obs={"group": categories(value("domain"), names)},
        obsm={"z_shared": value("z_shared"), "z_private": value("z_private")},
        uns={"true_private_blocks": world.private_blocks.numpy(),
             "simulation": dict(
                 name="shared_private", n_cells=n_cells, n_genes=n_genes, n_groups=n_groups,
                 n_latent_shared=n_latent_shared, n_latent_private=n_latent_private,
                 background=background, library_size=library_size, seed=seed,
                 world_seed=world_seed)})
