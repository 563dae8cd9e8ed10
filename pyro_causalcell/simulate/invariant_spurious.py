"""Invariant biology and spurious technical variation: the ground truth of the inVAE setting.

Per cell: a biological label ``y`` (site ``"label"``) drawn uniformly, and a technical domain
``d`` (site ``"domain"``) that is, with probability ``rho = label_domain_correlation``, the
domain tied to the label (``label_to_domain[y] = y mod n_domains``) and otherwise uniform:

``P(d | y) = rho * [d = label_to_domain[y]] + (1 - rho) / n_domains``.

``rho`` sets how strongly label and domain are associated in the sample (0: independent, 1: the
domain is a function of the label); it changes no mechanism, so data drawn with different
``rho`` from the same world differ only in that association. Latents:

- ``z_inv ~ Normal(label_means[y], I)``: invariant, driven by biology only;
- ``z_spur ~ Normal(domain_means[d], I)``: spurious, driven by the technical domain only.

Counts come from a fixed random nonlinear decoder of ``[z_inv, z_spur]``
(:class:`~pyro_causalcell.simulate._common.CountDecoder`) with negative-binomial noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import pyro
import pyro.distributions as dist
import torch

from ._common import CountDecoder, categories, counts_anndata, standard_normal, trace_with_seed


@dataclass
class InvariantSpuriousWorld:
    """Fixed parameters of the invariant / spurious simulation.

    Attributes
    ----------
    label_means : (n_labels, n_latent_inv) tensor
    domain_means : (n_domains, n_latent_spur) tensor
    label_to_domain : (n_labels,) long tensor
        The domain each label is tied to (``label mod n_domains``).
    decoder : CountDecoder
        Maps ``[z_inv, z_spur]`` to counts.
    """

    label_means: torch.Tensor
    domain_means: torch.Tensor
    label_to_domain: torch.Tensor
    decoder: CountDecoder

    @classmethod
    def draw(cls, n_genes: int, n_labels: int, n_domains: int, n_latent_inv: int,
             n_latent_spur: int, label_strength: float, domain_strength: float,
             library_size: float, generator: torch.Generator) -> "InvariantSpuriousWorld":
        """Draw a world from ``generator``; arguments as in :func:`invariant_spurious`."""
        return cls(
            label_means=label_strength * standard_normal(generator, n_labels, n_latent_inv),
            domain_means=domain_strength * standard_normal(generator, n_domains, n_latent_spur),
            label_to_domain=torch.arange(n_labels) % n_domains,
            decoder=CountDecoder.draw(n_latent_inv + n_latent_spur, n_genes, library_size,
                                      generator),
        )

    @property
    def n_labels(self) -> int:
        return self.label_means.shape[0]

    @property
    def n_domains(self) -> int:
        return self.domain_means.shape[0]

    def domain_probs(self, label: torch.Tensor, label_domain_correlation: float) -> torch.Tensor:
        """``(cells,)`` labels -> ``(cells, n_domains)`` probabilities of each domain."""
        tied = torch.nn.functional.one_hot(self.label_to_domain[label], self.n_domains).float()
        rho = float(label_domain_correlation)
        return rho * tied + (1.0 - rho) / self.n_domains


def invariant_spurious_program(world: InvariantSpuriousWorld, n_cells: int,
                               label_domain_correlation: float = 0.0) -> torch.Tensor:
    """The invariant / spurious simulator as a Pyro program.

    Sites, in order: ``"label"``, ``"domain"`` (its law depends on the label unless
    ``label_domain_correlation`` is 0), ``"z_inv"``, ``"z_spur"``, ``"library"``,
    ``"expression"``, ``"counts"``, all in the ``"cells"`` plate. ``pyro.do`` on ``"domain"``
    changes the technical domain with the biology held fixed; to change the biology with the
    domain held fixed, intervene on both ``"label"`` and ``"domain"`` (or use
    ``label_domain_correlation=0``).

    Parameters
    ----------
    world : InvariantSpuriousWorld
    n_cells : int
    label_domain_correlation : float
        In [0, 1]: probability that a cell's domain is the one tied to its label.

    Returns
    -------
    (n_cells, n_genes) tensor
        Counts.
    """
    if not 0.0 <= label_domain_correlation <= 1.0:
        raise ValueError("label_domain_correlation must be in [0, 1], got "
                         f"{label_domain_correlation}")
    with pyro.plate("cells", n_cells):
        label = pyro.sample("label", dist.Categorical(logits=torch.zeros(world.n_labels)))
        domain = pyro.sample("domain", dist.Categorical(
            probs=world.domain_probs(label, label_domain_correlation)))
        z_inv = pyro.sample("z_inv", dist.Normal(world.label_means[label], 1.0).to_event(1))
        z_spur = pyro.sample("z_spur", dist.Normal(world.domain_means[domain], 1.0).to_event(1))
        return world.decoder(torch.cat([z_inv, z_spur], -1))


def invariant_spurious(n_cells: int = 3000, n_genes: int = 200, n_labels: int = 3,
                       n_domains: int = 3, n_latent_inv: int = 4, n_latent_spur: int = 2,
                       label_strength: float = 2.5, domain_strength: float = 2.0,
                       label_domain_correlation: float = 0.0, library_size: float = 2000.0,
                       seed: int = 0, world_seed: int | None = None) -> ad.AnnData:
    """Simulate cells whose biological labels drive invariant latents and whose technical
    domains drive spurious latents, with an adjustable label-domain association (see the module
    docstring for the equations).

    Parameters
    ----------
    n_cells, n_genes : int
    n_labels, n_domains : int
        Numbers of biological labels and technical domains.
    n_latent_inv, n_latent_spur : int
        Sizes of the invariant and spurious latent blocks.
    label_strength, domain_strength : float
        Standard deviations of the label means of ``z_inv`` and the domain means of ``z_spur``.
    label_domain_correlation : float
        In [0, 1]: probability that a cell's domain is the one tied to its label rather than
        drawn uniformly. With ``n_labels == n_domains``, 1 makes domain and label identical.
    library_size : float
        Median total counts per cell.
    seed : int
        Makes the result exactly reproducible; the global RNG is left untouched.
    world_seed : int, optional
        Seed of the fixed parameters (default ``seed``). Keep it, change ``seed`` and
        ``label_domain_correlation`` to draw e.g. a confounded training set and an unconfounded
        test set from the same world.

    Returns
    -------
    anndata.AnnData
        ``X``: ``(n_cells, n_genes)`` int64 CSR counts.
        ``obs["label"]``: categorical ``label_<i>``; ``obs["domain"]``: categorical
        ``domain_<k>``.
        ``obsm["z_inv"]``: ``(n_cells, n_latent_inv)``, ``obsm["z_spur"]``:
        ``(n_cells, n_latent_spur)`` true latents.
        ``uns["true_label_means"]``: ``(n_labels, n_latent_inv)``;
        ``uns["true_domain_means"]``: ``(n_domains, n_latent_spur)``;
        ``uns["true_label_to_domain"]``: ``(n_labels,)`` index of each label's tied domain;
        ``uns["simulation"]``: the arguments.

    Notes
    -----
    The world is ``InvariantSpuriousWorld.draw(...,
    generator=torch.Generator().manual_seed(world_seed))`` and the cells are
    ``invariant_spurious_program(world, n_cells, label_domain_correlation)`` traced after
    ``torch.manual_seed(seed)``.
    """
    world_seed = seed if world_seed is None else world_seed
    world = InvariantSpuriousWorld.draw(n_genes, n_labels, n_domains, n_latent_inv,
                                        n_latent_spur, label_strength, domain_strength,
                                        library_size, torch.Generator().manual_seed(world_seed))
    trace = trace_with_seed(invariant_spurious_program, seed, world, n_cells,
                            label_domain_correlation)
    value = lambda name: trace.nodes[name]["value"]  # noqa: E731
    return counts_anndata(
        value("counts"),
        obs={"label": categories(value("label"), [f"label_{i}" for i in range(n_labels)]),
             "domain": categories(value("domain"), [f"domain_{k}" for k in range(n_domains)])},
        obsm={"z_inv": value("z_inv"), "z_spur": value("z_spur")},
        uns={"true_label_means": world.label_means.numpy(),
             "true_domain_means": world.domain_means.numpy(),
             "true_label_to_domain": world.label_to_domain.numpy(),
             "simulation": dict(
                 name="invariant_spurious", n_cells=n_cells, n_genes=n_genes,
                 n_labels=n_labels, n_domains=n_domains, n_latent_inv=n_latent_inv,
                 n_latent_spur=n_latent_spur, label_strength=label_strength,
                 domain_strength=domain_strength,
                 label_domain_correlation=label_domain_correlation,
                 library_size=library_size, seed=seed, world_seed=world_seed)})
