"""Treatments x covariates with factorized latents: the ground truth of the FCR setting.

Per cell: a covariate ``x`` (e.g. a cell line; site ``"domain"``), a treatment ``t`` (site
``"perturbation"``; index 0 is the untreated control) and, optionally, a dose (site ``"dose"``,
0 for control cells). Three latent blocks, each ``Normal(loc, I)``:

- ``z_x ~ Normal(covariate_means[x], I)``: depends on the covariate only;
- ``z_t ~ Normal(r_t(dose) * treatment_shifts[t], I)``: on the treatment (and dose) only;
- ``z_tx ~ Normal(r_t(dose) * interaction_shifts[t, x], I)``: on both, a true interaction, since
  the shift of every (treatment, covariate) pair is drawn independently, so a treatment moves it
  differently in each covariate.

Control cells have no shift in ``z_t`` or ``z_tx``. ``r_t(d) = d^h_t / (d^h_t + ec50_t^h_t)`` is a
Hill dose response per treatment (``r = 1`` without doses). Counts come from a fixed random
nonlinear decoder of ``[z_x, z_t, z_tx]`` (:class:`~pyro_causalcell.simulate._common.CountDecoder`)
with negative-binomial noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ._common import CountDecoder, categories, counts_anndata, standard_normal, trace_with_seed


@dataclass
class FactorizedWorld:
    """Fixed parameters of the factorized simulation.

    Treatment index 0 is the control; rows 0 of the treatment tables are zeros (no effect).

    Attributes
    ----------
    covariate_means : (n_covariates, n_latent_x) tensor
    treatment_shifts : (n_treatments + 1, n_latent_t) tensor
    interaction_shifts : (n_treatments + 1, n_covariates, n_latent_tx) tensor
    ec50, hill : (n_treatments + 1,) tensor
        Hill dose-response parameters per treatment (row 0, the control's, is 1 and unused).
    dose_levels : (n_doses,) tensor or None
        Doses a treated cell receives (uniformly at random); ``None``: no ``"dose"`` site.
    control_fraction : float
        Probability that a cell is an untreated control; the treatments share the rest equally.
    decoder : CountDecoder
        Maps ``[z_x, z_t, z_tx]`` to counts.
    """

    covariate_means: torch.Tensor
    treatment_shifts: torch.Tensor
    interaction_shifts: torch.Tensor
    ec50: torch.Tensor
    hill: torch.Tensor
    dose_levels: torch.Tensor | None
    control_fraction: float
    decoder: CountDecoder

    @classmethod
    def draw(cls, n_genes: int, n_covariates: int, n_treatments: int, n_latent_x: int,
             n_latent_t: int, n_latent_tx: int, covariate_strength: float,
             treatment_strength: float, interaction_strength: float,
             dose_levels: Sequence[float] | None, control_fraction: float,
             library_size: float, generator: torch.Generator) -> "FactorizedWorld":
        """Draw a world from ``generator``; arguments as in :func:`factorized`."""
        if n_treatments < 1:
            raise ValueError(f"n_treatments must be at least 1, got {n_treatments}")
        if not 0.0 <= control_fraction < 1.0:
            raise ValueError(f"control_fraction must be in [0, 1), got {control_fraction}")
        if dose_levels is not None and len(dose_levels) == 0:
            dose_levels = None
        if dose_levels is not None and min(dose_levels) <= 0:
            raise ValueError(f"dose_levels must be positive, got {dose_levels}")

        def normal(*shape):
            return standard_normal(generator, *shape)

        def control(table, fill=0.0):  # prepend the control's row
            return torch.cat([torch.full_like(table[:1], fill), table])

        covariate_means = covariate_strength * normal(n_covariates, n_latent_x)
        treatment_shifts = control(treatment_strength * normal(n_treatments, n_latent_t))
        interaction_shifts = control(
            interaction_strength * normal(n_treatments, n_covariates, n_latent_tx))
        ec50 = control(0.3 * torch.exp(0.5 * normal(n_treatments)), fill=1.0)
        hill = control(1.5 * torch.exp(0.2 * normal(n_treatments)), fill=1.0)
        decoder = CountDecoder.draw(n_latent_x + n_latent_t + n_latent_tx, n_genes, library_size,
                                    generator)
        levels = None if dose_levels is None else torch.tensor(dose_levels, dtype=torch.float32)
        return cls(covariate_means, treatment_shifts, interaction_shifts, ec50, hill, levels,
                   float(control_fraction), decoder)

    @property
    def n_covariates(self) -> int:
        return self.covariate_means.shape[0]

    @property
    def n_treatments(self) -> int:
        """Number of treatments, not counting the control."""
        return self.treatment_shifts.shape[0] - 1

    def dose_response(self, treatment: torch.Tensor, dose: torch.Tensor | None) -> torch.Tensor:
        """``(cells,)`` treatment indices and doses -> ``(cells,)`` response in [0, 1]
        (``1`` where ``dose`` is ``None``; irrelevant for controls, whose shifts are zero)."""
        if dose is None:
            return torch.ones(treatment.shape)
        hill, ec50 = self.hill[treatment], self.ec50[treatment]
        powered = dose.clamp(min=0) ** hill
        return powered / (powered + ec50 ** hill)

    def latent_locs(self, covariate: torch.Tensor, treatment: torch.Tensor,
                    dose: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means of ``z_x``, ``z_t`` and ``z_tx`` for ``(cells,)`` covariates, treatments, doses:
        ``(cells, n_latent_x)``, ``(cells, n_latent_t)``, ``(cells, n_latent_tx)``."""
        response = self.dose_response(treatment, dose)[:, None]
        return (self.covariate_means[covariate],
                response * self.treatment_shifts[treatment],
                response * self.interaction_shifts[treatment, covariate])

    def dose_distribution(self, treatment: torch.Tensor) -> dist.Empirical:
        """Law of the ``"dose"`` site: 0 for controls, a uniform dose level for treated cells."""
        values = torch.cat([torch.zeros(1), self.dose_levels]).expand(len(treatment), -1)
        treated = (treatment > 0)[:, None]
        allowed = torch.cat([~treated, treated.expand(-1, len(self.dose_levels))], -1)
        log_weights = torch.zeros(allowed.shape).masked_fill(~allowed, -float("inf"))
        return dist.Empirical(values, log_weights)


def factorized_program(world: FactorizedWorld, n_cells: int) -> torch.Tensor:
    """The factorized simulator as a Pyro program.

    Sites, in order: ``"domain"`` (covariate index), ``"perturbation"`` (treatment index, 0 =
    control), ``"dose"`` (only if ``world.dose_levels`` is set; 0 for controls), ``"z_x"``,
    ``"z_t"``, ``"z_tx"``, ``"library"``, ``"expression"``, ``"counts"``, all in the ``"cells"``
    plate. ``pyro.do`` on ``"domain"``, ``"perturbation"`` or ``"dose"`` gives true interventional
    answers.

    Parameters
    ----------
    world : FactorizedWorld
    n_cells : int

    Returns
    -------
    (n_cells, n_genes) tensor
        Counts.
    """
    n_covariates, n_treatments = world.n_covariates, world.n_treatments
    treatment_probs = torch.cat([torch.tensor([world.control_fraction]),
                                 torch.full((n_treatments,),
                                            (1.0 - world.control_fraction) / n_treatments)])
    with pyro.plate("cells", n_cells):
        covariate = pyro.sample("domain", dist.Categorical(logits=torch.zeros(n_covariates)))
        treatment = pyro.sample("perturbation", dist.Categorical(probs=treatment_probs))
        dose = None
        if world.dose_levels is not None:
            dose = pyro.sample("dose", world.dose_distribution(treatment))
        loc_x, loc_t, loc_tx = world.latent_locs(covariate, treatment, dose)
        z_x = pyro.sample("z_x", dist.Normal(loc_x, 1.0).to_event(1))
        z_t = pyro.sample("z_t", dist.Normal(loc_t, 1.0).to_event(1))
        z_tx = pyro.sample("z_tx", dist.Normal(loc_tx, 1.0).to_event(1))
        return world.decoder(torch.cat([z_x, z_t, z_tx], -1))


def factorized(n_cells: int = 3000, n_genes: int = 200, n_covariates: int = 3,
               n_treatments: int = 4, n_latent_x: int = 4, n_latent_t: int = 4,
               n_latent_tx: int = 4, covariate_strength: float = 2.0,
               treatment_strength: float = 2.0, interaction_strength: float = 2.0,
               dose_levels: Sequence[float] | None = (0.1, 0.3, 1.0),
               control_fraction: float = 0.2, library_size: float = 2000.0, seed: int = 0,
               world_seed: int | None = None) -> ad.AnnData:
    """Simulate treated and control cells of several covariates (cell lines) with factorized
    latents ``z_x``, ``z_t``, ``z_tx`` (see the module docstring for the equations).

    Parameters
    ----------
    n_cells, n_genes : int
    n_covariates : int
        Number of covariate values (cell lines), drawn uniformly per cell.
    n_treatments : int
        Number of treatments, not counting the control.
    n_latent_x, n_latent_t, n_latent_tx : int
        Sizes of the three latent blocks.
    covariate_strength, treatment_strength, interaction_strength : float
        Standard deviations of the block means (``interaction_strength=0`` removes the
        interaction: ``z_tx`` is then pure noise).
    dose_levels : sequence of float or None
        Positive doses, one drawn uniformly per treated cell; ``None`` or empty: no doses (full
        effect, no ``"dose"`` site or column).
    control_fraction : float
        Probability that a cell is an untreated control.
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
        ``obs["covariate"]``: categorical ``covariate_<i>``;
        ``obs["treatment"]``: categorical ``control``, ``treatment_1`` ... ``treatment_<T>``;
        ``obs["dose"]``: float dose, 0 for controls (only with ``dose_levels``).
        ``obsm["z_x"]``: ``(n_cells, n_latent_x)``, ``obsm["z_t"]``: ``(n_cells, n_latent_t)``,
        ``obsm["z_tx"]``: ``(n_cells, n_latent_tx)`` true latents.
        ``uns["true_covariate_means"]``: ``(n_covariates, n_latent_x)``;
        ``uns["true_treatment_shifts"]``: ``(n_treatments, n_latent_t)`` (row ``j`` is
        ``treatment_<j+1>``); ``uns["true_interaction_shifts"]``:
        ``(n_treatments, n_covariates, n_latent_tx)``; ``uns["true_ec50"]``,
        ``uns["true_hill"]``: ``(n_treatments,)`` dose response (only with ``dose_levels``);
        ``uns["simulation"]``: the arguments.

    Notes
    -----
    The world is ``FactorizedWorld.draw(..., generator=torch.Generator().manual_seed(world_seed))``
    and the cells are ``factorized_program(world, n_cells)`` traced after
    ``torch.manual_seed(seed)``, so the true interventional answer for these cells is that trace
    under ``pyro.do``.
    """
    world_seed = seed if world_seed is None else world_seed
    world = FactorizedWorld.draw(n_genes, n_covariates, n_treatments, n_latent_x, n_latent_t,
                                 n_latent_tx, covariate_strength, treatment_strength,
                                 interaction_strength, dose_levels, control_fraction,
                                 library_size, torch.Generator().manual_seed(world_seed))
    trace = trace_with_seed(factorized_program, seed, world, n_cells)
    value = lambda name: trace.nodes[name]["value"]  # noqa: E731
    obs = {"covariate": categories(value("domain"),
                                   [f"covariate_{i}" for i in range(n_covariates)]),
           "treatment": categories(value("perturbation"),
                                   ["control"] + [f"treatment_{j}"
                                                  for j in range(1, n_treatments + 1)])}
    uns = {"true_covariate_means": world.covariate_means.numpy(),
           "true_treatment_shifts": world.treatment_shifts[1:].numpy(),
           "true_interaction_shifts": world.interaction_shifts[1:].numpy()}
    if world.dose_levels is not None:
        # the sampled float32 doses, written as the exact float64 levels they are
        levels = np.array([0.0] + [float(d) for d in dose_levels])
        sampled = value("dose").numpy()
        obs["dose"] = levels[np.abs(sampled[:, None] - levels.astype(np.float32)).argmin(1)]
        uns.update(true_ec50=world.ec50[1:].numpy(), true_hill=world.hill[1:].numpy())
    uns["simulation"] = dict(
        name="factorized", n_cells=n_cells, n_genes=n_genes, n_covariates=n_covariates,
        n_treatments=n_treatments, n_latent_x=n_latent_x, n_latent_t=n_latent_t,
        n_latent_tx=n_latent_tx, covariate_strength=covariate_strength,
        treatment_strength=treatment_strength, interaction_strength=interaction_strength,
        dose_levels=[] if world.dose_levels is None else [float(d) for d in dose_levels],
        control_fraction=control_fraction, library_size=library_size, seed=seed,
        world_seed=world_seed)
    return counts_anndata(value("counts"), obs,
                          obsm={"z_x": value("z_x"), "z_t": value("z_t"), "z_tx": value("z_tx")},
                          uns=uns)
