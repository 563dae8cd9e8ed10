"""Sparse mechanism shifts: the simulation of the sVAE study (Lopez et al., CLeaR 2023).

Each of ``P`` perturbations shifts the mean of a few latent coordinates. The ground truth:

- targets: perturbation ``p`` draws ``n_p ~ Uniform{1, 2, 3}`` latent indices uniformly *with
  replacement* (as the reference implementation does), so a repeated index collapses and a
  perturbation has 1 to ``n_p`` distinct targets;
- shifts: ``shift[p, k] = target[p, k] * sign[p, k] * magnitude[p, k]`` with
  ``sign = +/-1`` with probability 1/2 and ``magnitude ~ Normal(5, 0.5^2)``;
- latents: ``z ~ Normal(a @ shift, I)`` where ``a`` is the cell's multi-hot perturbation vector
  (site ``"perturbation"``): one entry for a single perturbation, two for a combination
  ``"A+B"`` (their shifts add), none for a control cell (``z ~ Normal(0, I)``);
- mixing: ``logits = W4 f(W3 f(W2 f(W1 z)))`` with ``f`` a LeakyReLU of slope 0.2 and widths
  ``K -> 40 -> 40 -> 40 -> G``; every ``W`` is a Gaussian matrix made semi-orthogonal by a QR
  decomposition and scaled by ``sqrt(2 / (1 + 0.2^2)) * sqrt(2 / (fan_in + fan_out))``. The map
  is injective (almost surely) when ``K <= 40 <= G``;
- rates: the logits are divided by their standard deviation over all cells and genes, then
  ``rates = softmax`` over **cells** (each gene's rates sum to 1 over the simulated population,
  as in the reference) or, with ``softmax="genes"``, over the genes of each cell;
- counts: ``Poisson(1e6 * rates)``, or a negative binomial with that mean and a given inverse
  dispersion.

Cells are coupled: with the default softmax over cells (and, in both modes, the division by the
global standard deviation of the logits) the rates of one cell depend on the latents of every
cell traced together. So ``pyro.do`` on ``"z"`` or ``"perturbation"`` of some cells changes the
rates of all cells slightly, and the program's answer is the population-level one. For per-cell
mechanisms, freeze the normalisers on a reference population with
:meth:`SparseShiftWorld.frozen`: the rates of each cell then depend on its own latents only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ..distributions import NegativeBinomial
from ._common import counts_anndata, trace_with_seed

CONTROL = "control"
COMBINATION_SEPARATOR = "+"
SOFTMAX_AXES = ("cells", "genes")


class ConditionLaw(TorchDistribution):
    """A draw among fixed multi-hot rows: the law of the ``"perturbation"`` site.

    Parameters
    ----------
    conditions : (n_conditions, n_perturbations) tensor
        Distinct 0/1 rows: a control (all zeros), single perturbations, combinations.
    probs : (n_conditions,) tensor
        Probability of each row.

    ``log_prob`` of a row that is not among ``conditions`` is ``-inf``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, conditions: torch.Tensor, probs: torch.Tensor,
                 validate_args: bool | None = None) -> None:
        self.conditions = conditions
        self.probs = probs / probs.sum()
        super().__init__(torch.Size(), conditions.shape[-1:], validate_args=validate_args)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        index = torch.distributions.Categorical(probs=self.probs).sample(shape)
        return self.conditions[index]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        sizes = self.conditions.sum(-1)  # 0/1 rows match iff overlap = |row| = |value|
        overlap = value @ self.conditions.T
        match = (overlap == sizes) & (value.sum(-1, keepdim=True) == sizes)
        log_probs = torch.where(match, self.probs.log(), -math.inf)
        return torch.logsumexp(log_probs, -1)


def semi_orthogonal(fan_in: int, fan_out: int, negative_slope: float,
                    rng: np.random.Generator) -> np.ndarray:
    """A ``(fan_in, fan_out)`` Gaussian matrix orthonormalised by QR (orthonormal rows when
    ``fan_in <= fan_out``, columns otherwise) and scaled by
    ``sqrt(2 / (1 + negative_slope^2)) * sqrt(2 / (fan_in + fan_out))``."""
    gaussian = rng.normal(size=(fan_in, fan_out))
    if fan_in <= fan_out:
        orthonormal = np.linalg.qr(gaussian.T)[0].T
    else:
        orthonormal = np.linalg.qr(gaussian)[0]
    gain = np.sqrt(2.0 / (1.0 + negative_slope ** 2)) * np.sqrt(2.0 / (fan_in + fan_out))
    return gain * orthonormal


@dataclass
class SparseShiftWorld:
    """Fixed parameters of the sparse-shift simulation.

    Attributes
    ----------
    targets : (n_perturbations, n_latent) bool tensor
        ``targets[p, k]``: perturbation ``p`` shifts latent ``k``.
    shifts : (n_perturbations, n_latent) tensor
        Shift of the latent mean, zero off-target.
    weights : tuple of four tensors
        Mixing matrices, ``(n_latent, n_hidden)``, ``(n_hidden, n_hidden)`` twice,
        ``(n_hidden, n_genes)``.
    negative_slope : float
        Slope of the LeakyReLU between layers.
    softmax : {"cells", "genes"}
        Axis of the softmax that turns logits into rates.
    count_scale : float
        ``expression = count_scale * rates``.
    inverse_dispersion : (n_genes,) tensor or None
        Negative-binomial inverse dispersion; ``None``: Poisson counts.
    conditions : (n_conditions, n_perturbations) tensor
        Multi-hot rows a cell can receive when ``"perturbation"`` is sampled (not observed).
    condition_probs : (n_conditions,) tensor
        Their probabilities.
    logit_scale : float or None
        Divisor of the logits; ``None``: their standard deviation over the traced cells.
    gene_log_normaliser : (n_genes,) tensor or None
        Log of the per-gene softmax denominator over cells (``softmax="cells"`` only); ``None``:
        computed over the traced cells.
    """

    targets: torch.Tensor
    shifts: torch.Tensor
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    negative_slope: float
    softmax: str
    count_scale: float
    inverse_dispersion: torch.Tensor | None
    conditions: torch.Tensor
    condition_probs: torch.Tensor
    logit_scale: float | None = None
    gene_log_normaliser: torch.Tensor | None = None

    @classmethod
    def draw(cls, n_latent: int, n_perturbations: int, n_genes: int, rng: np.random.Generator,
             *, n_hidden: int = 40, negative_slope: float = 0.2, shift_mean: float = 5.0,
             shift_std: float = 0.5, max_targets: int = 3, softmax: str = "cells",
             count_scale: float = 1e6, inverse_dispersion: float | None = None
             ) -> "SparseShiftWorld":
        """Draw targets, shifts and mixing weights from ``rng`` (arguments as in
        :func:`sparse_shift`). A sampled ``"perturbation"`` is one single perturbation, chosen
        uniformly."""
        _check_world_arguments(n_latent, n_perturbations, n_genes, n_hidden, max_targets,
                               softmax, count_scale, inverse_dispersion)
        targets = np.zeros((n_perturbations, n_latent), dtype=bool)
        for p in range(n_perturbations):
            n_draws = rng.integers(1, max_targets + 1)
            targets[p, rng.integers(0, n_latent, size=n_draws)] = True  # repeats collapse
        sign = np.where(rng.uniform(size=targets.shape) > 0.5, 1.0, -1.0)
        magnitude = rng.normal(shift_mean, shift_std, size=targets.shape)
        shifts = np.where(targets, sign * magnitude, 0.0)
        widths = [n_latent, n_hidden, n_hidden, n_hidden, n_genes]
        weights = tuple(torch.as_tensor(semi_orthogonal(a, b, negative_slope, rng),
                                        dtype=torch.float32)
                        for a, b in zip(widths[:-1], widths[1:]))
        dispersion = (None if inverse_dispersion is None
                      else torch.full((n_genes,), float(inverse_dispersion)))
        return cls(targets=torch.as_tensor(targets),
                   shifts=torch.as_tensor(shifts, dtype=torch.float32),
                   weights=weights, negative_slope=float(negative_slope), softmax=softmax,
                   count_scale=float(count_scale), inverse_dispersion=dispersion,
                   conditions=torch.eye(n_perturbations),
                   condition_probs=torch.full((n_perturbations,), 1.0 / n_perturbations))

    @property
    def n_latent(self) -> int:
        return self.shifts.shape[1]

    @property
    def n_perturbations(self) -> int:
        return self.shifts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.weights[-1].shape[1]

    @property
    def perturbation_names(self) -> list[str]:
        """``["p0", ..., "p<P-1>"]``, the order of the rows of ``targets`` and ``shifts``."""
        return [f"p{p}" for p in range(self.n_perturbations)]

    def perturbation_law(self) -> ConditionLaw:
        """Law of the ``"perturbation"`` site when it is sampled."""
        return ConditionLaw(self.conditions, self.condition_probs)

    def latent_loc(self, perturbation: torch.Tensor) -> torch.Tensor:
        """``(cells, n_perturbations)`` multi-hot -> ``(cells, n_latent)`` mean of ``z`` (the
        shifts of a cell's perturbations add)."""
        return perturbation @ self.shifts

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """``(cells, n_latent)`` -> ``(cells, n_genes)`` raw logits, before normalisation."""
        hidden = z
        for weight in self.weights[:-1]:
            hidden = torch.nn.functional.leaky_relu(hidden @ weight, self.negative_slope)
        return hidden @ self.weights[-1]

    def log_rates(self, z: torch.Tensor) -> torch.Tensor:
        """``(cells, n_latent)`` -> ``(cells, n_genes)`` log rates: the logits divided by their
        global standard deviation, log-softmaxed over cells (default) or genes. Couples the
        cells of ``z`` unless the normalisers are frozen (:meth:`frozen`)."""
        logits = self.logits(z)
        scale = self.logit_scale
        if scale is None:
            scale = logits.std(correction=0)
        logits = logits / scale
        if self.softmax == "genes":
            return torch.log_softmax(logits, -1)
        normaliser = self.gene_log_normaliser
        if normaliser is None:
            normaliser = torch.logsumexp(logits, 0)
        return logits - normaliser

    def rates(self, z: torch.Tensor) -> torch.Tensor:
        """``exp(log_rates(z))``, the value of the ``"rates"`` site."""
        return self.log_rates(z).exp()

    def frozen(self, z: torch.Tensor) -> "SparseShiftWorld":
        """This world with the logit scale and the per-gene softmax denominators fixed at their
        values for the reference population ``z`` (``(cells, n_latent)``).

        The rates of the reference cells are unchanged; the rates of any cell now depend on its
        own latents only, so interventions on some cells leave the others alone.
        """
        logits = self.logits(z)
        scale = float(logits.std(correction=0))
        normaliser = torch.logsumexp(logits / scale, 0) if self.softmax == "cells" else None
        return replace(self, logit_scale=scale, gene_log_normaliser=normaliser)

    def count_distribution(self, log_expression: torch.Tensor) -> TorchDistribution:
        """Law of the ``"counts"`` site for ``(cells, n_genes)`` log expected counts."""
        if self.inverse_dispersion is None:
            return dist.Poisson(log_expression.exp()).to_event(1)
        return NegativeBinomial(log_mean=log_expression,
                                inverse_dispersion=self.inverse_dispersion).to_event(1)


def sparse_shift_program(world: SparseShiftWorld, perturbation_matrix: torch.Tensor | None = None,
                         n_cells: int | None = None) -> torch.Tensor:
    """The sparse-shift simulator as a Pyro program.

    Sites, in order, all in the ``"cells"`` plate: ``"perturbation"`` (multi-hot,
    ``(n_cells, n_perturbations)``; observed when ``perturbation_matrix`` is given, otherwise
    drawn from ``world.perturbation_law()``), ``"z"`` (``Normal(a @ shifts, I)``), ``"rates"``
    and ``"expression"`` (deterministic: ``rates`` and ``world.count_scale * rates``) and
    ``"counts"``. ``pyro.do`` on ``"perturbation"`` or ``"z"`` gives true interventional
    answers; note that the rates of all cells traced together are coupled (module docstring).

    Parameters
    ----------
    world : SparseShiftWorld
    perturbation_matrix : (n_cells, n_perturbations) tensor, optional
        Each cell's perturbations (0/1; control cells all zeros).
    n_cells : int, optional
        Number of cells when ``perturbation_matrix`` is not given.

    Returns
    -------
    (n_cells, n_genes) tensor
        Counts.
    """
    if perturbation_matrix is not None:
        if perturbation_matrix.ndim != 2 or perturbation_matrix.shape[1] != world.n_perturbations:
            raise ValueError("perturbation_matrix must have shape (n_cells, "
                             f"{world.n_perturbations}), got {tuple(perturbation_matrix.shape)}")
        if n_cells is not None and n_cells != perturbation_matrix.shape[0]:
            raise ValueError(f"n_cells={n_cells} but perturbation_matrix has "
                             f"{perturbation_matrix.shape[0]} rows")
        n_cells = perturbation_matrix.shape[0]
    elif n_cells is None:
        raise ValueError("give perturbation_matrix or n_cells")
    with pyro.plate("cells", n_cells):
        perturbation = pyro.sample("perturbation", world.perturbation_law(),
                                   obs=perturbation_matrix)
        z = pyro.sample("z", dist.Normal(world.latent_loc(perturbation), 1.0).to_event(1))
        log_rates = world.log_rates(z)
        pyro.deterministic("rates", log_rates.exp(), event_dim=1)
        log_expression = log_rates + math.log(world.count_scale)
        pyro.deterministic("expression", log_expression.exp(), event_dim=1)
        return pyro.sample("counts", world.count_distribution(log_expression))


def perturbation_matrix(values: Sequence[str] | pd.Series | np.ndarray,
                        perturbation_names: Sequence[str], control: str = CONTROL
                        ) -> torch.Tensor:
    """Perturbation labels -> ``(n_cells, len(perturbation_names))`` multi-hot float tensor.

    ``"A+B"`` sets the columns of ``A`` and ``B``; ``control`` is all zeros. Columns follow
    ``perturbation_names`` (for the simulation: ``adata.uns["perturbation_names"]``), so this
    rebuilds the program's observed ``"perturbation"`` for any subset of simulated cells.
    """
    values = np.asarray(values, dtype=object)
    column = {name: j for j, name in enumerate(perturbation_names)}
    matrix = np.zeros((len(values), len(column)), dtype=np.float32)
    for value in pd.unique(values):
        rows = values == value
        for atom in str(value).split(COMBINATION_SEPARATOR):
            if atom == control:
                continue
            if atom not in column:
                raise ValueError(f"unknown perturbation {atom!r} in {value!r}; known: "
                                 f"{list(perturbation_names)[:10]}...")
            matrix[rows, column[atom]] = 1.0
    return torch.as_tensor(matrix)


def sparse_shift(n_latent: int = 15, n_perturbations: int = 100,
                 n_cells_per_perturbation: int = 250, n_genes: int = 100, *,
                 n_control_cells: int = 0, n_combinations: int = 0,
                 n_cells_per_combination: int | None = None, softmax: str = "cells",
                 count_scale: float = 1e6, inverse_dispersion: float | None = None,
                 n_hidden: int = 40, negative_slope: float = 0.2, shift_mean: float = 5.0,
                 shift_std: float = 0.5, max_targets: int = 3, seed: int = 0,
                 world_seed: int | None = None, return_world: bool = False
                 ) -> ad.AnnData | tuple[ad.AnnData, SparseShiftWorld, torch.Tensor]:
    """Simulate the sparse-mechanism-shift study of sVAE (see the module docstring).

    The defaults are the study's: 15 latents, 100 perturbations of 250 cells, 100 genes, rates
    softmaxed over cells, Poisson counts of mean ``1e6 * rates`` (mean library size
    ``n_genes * 1e6 / n_cells``, 4000 here).

    Parameters
    ----------
    n_latent, n_perturbations, n_cells_per_perturbation, n_genes : int
    n_control_cells : int
        Unperturbed cells (``obs["perturbation"] == "control"``, ``z ~ Normal(0, I)``).
    n_combinations : int
        Distinct pairs of perturbations, drawn at random, applied together (``"p1+p7"``); their
        shifts add.
    n_cells_per_combination : int, optional
        Cells per combination (default ``n_cells_per_perturbation``).
    softmax : {"cells", "genes"}
        ``"cells"`` (the reference's): each gene's rates sum to 1 over all simulated cells, so
        the library size varies between cells and the total count is about
        ``count_scale * n_genes``. ``"genes"``: each cell's rates sum to 1 over genes, so each
        cell's expected library size is ``count_scale`` (lower it, e.g. to 4000).
    count_scale : float
        Expected counts are ``count_scale * rates``.
    inverse_dispersion : float, optional
        Negative-binomial counts with this inverse dispersion for every gene; ``None`` (default):
        Poisson counts.
    n_hidden : int
        Width of the three hidden layers of the mixing network.
    negative_slope : float
        LeakyReLU slope (also enters the weight scale).
    shift_mean, shift_std : float
        Shift magnitudes are ``Normal(shift_mean, shift_std^2)``.
    max_targets : int
        The number of target draws per perturbation is uniform in ``1..max_targets``.
    seed : int
        Makes the result exactly reproducible; the global torch and NumPy RNGs are left alone.
    world_seed : int, optional
        Seed of the world (targets, shifts, mixing, combinations; default ``seed``). Keep it and
        change ``seed`` to draw new cells from the same world.
    return_world : bool
        Also return the world and the observed perturbation matrix (to replay the program).

    Returns
    -------
    anndata.AnnData
        ``X``: ``(n_cells, n_genes)`` int64 CSR counts, cells in random order;
        ``obs["perturbation"]``: categorical, categories ``"control"`` (if any), ``"p0"`` ...
        ``"p<P-1>"``, then combinations ``"p<i>+p<j>"`` (``i < j``);
        ``obsm["z_true"]``: ``(n_cells, n_latent)`` float32 true latents;
        ``uns["perturbation_names"]``: ``["p0", ..., "p<P-1>"]`` (not sorted as strings: reorder
        to ``CellData.schema.perturbations`` before comparing with a model);
        ``uns["true_targets"]``: ``(n_perturbations, n_latent)`` bool;
        ``uns["true_shifts"]``: ``(n_perturbations, n_latent)`` float32, zero off-target;
        ``uns["simulation"]``: the arguments (``name="sparse_shift"``).
    (anndata.AnnData, SparseShiftWorld, torch.Tensor)
        With ``return_world=True``: also the world (its ``conditions`` set to this design) and
        the ``(n_cells, n_perturbations)`` observed perturbations.

    Notes
    -----
    The world is ``SparseShiftWorld.draw(..., rng=np.random.default_rng([world_seed, 0]))``
    followed by the combinations from the same ``rng``; the cell order is a permutation from
    ``np.random.default_rng([seed, 1])``; the cells are ``sparse_shift_program(world, matrix)``
    traced after ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``). So
    ``pyro.do(sparse_shift_program, data=...)`` traced with the same seed gives these cells'
    true counterfactuals (for all cells together: they are coupled, see the module docstring).
    """
    world_seed = seed if world_seed is None else world_seed
    if n_cells_per_combination is None:
        n_cells_per_combination = n_cells_per_perturbation
    for name, value in (("n_cells_per_perturbation", n_cells_per_perturbation),
                        ("n_control_cells", n_control_cells), ("n_combinations", n_combinations),
                        ("n_cells_per_combination", n_cells_per_combination)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    n_pairs = n_perturbations * (n_perturbations - 1) // 2
    if n_combinations > n_pairs:
        raise ValueError(f"n_combinations={n_combinations} exceeds the {n_pairs} distinct pairs "
                         f"of {n_perturbations} perturbations")

    world_rng = np.random.default_rng([world_seed, 0])
    world = SparseShiftWorld.draw(
        n_latent, n_perturbations, n_genes, world_rng, n_hidden=n_hidden,
        negative_slope=negative_slope, shift_mean=shift_mean, shift_std=shift_std,
        max_targets=max_targets, softmax=softmax, count_scale=count_scale,
        inverse_dispersion=inverse_dispersion)
    names = world.perturbation_names
    pairs = np.stack(np.triu_indices(n_perturbations, k=1), 1)
    chosen = np.sort(world_rng.choice(len(pairs), size=n_combinations, replace=False))
    conditions = ([CONTROL] if n_control_cells > 0 else []) + names + [
        f"{names[i]}{COMBINATION_SEPARATOR}{names[j]}" for i, j in pairs[chosen]]
    sizes = ([n_control_cells] if n_control_cells > 0 else []) + (
        [n_cells_per_perturbation] * n_perturbations + [n_cells_per_combination] * n_combinations)
    if sum(sizes) == 0:
        raise ValueError("the design has no cells")

    labels = np.repeat(np.array(conditions, dtype=object), sizes)
    labels = labels[np.random.default_rng([seed, 1]).permutation(len(labels))]
    matrix = perturbation_matrix(labels, names)
    sizes_tensor = torch.tensor(sizes, dtype=torch.float32)
    world = replace(world, conditions=perturbation_matrix(conditions, names),
                    condition_probs=sizes_tensor / sizes_tensor.sum())

    trace = trace_with_seed(sparse_shift_program, seed, world, matrix)
    simulation = dict(
        name="sparse_shift", n_latent=n_latent, n_perturbations=n_perturbations,
        n_cells_per_perturbation=n_cells_per_perturbation, n_genes=n_genes,
        n_control_cells=n_control_cells, n_combinations=n_combinations,
        n_cells_per_combination=n_cells_per_combination, softmax=softmax,
        count_scale=count_scale, inverse_dispersion=inverse_dispersion, n_hidden=n_hidden,
        negative_slope=negative_slope, shift_mean=shift_mean, shift_std=shift_std,
        max_targets=max_targets, seed=seed, world_seed=world_seed)
    adata = counts_anndata(
        trace.nodes["counts"]["value"],
        obs={"perturbation": pd.Categorical(labels, categories=conditions)},
        obsm={"z_true": trace.nodes["z"]["value"]},
        uns={"perturbation_names": list(names),
             "true_targets": world.targets.numpy().copy(),
             "true_shifts": world.shifts.numpy().copy(),
             "simulation": simulation})
    return (adata, world, matrix) if return_world else adata


def split_perturbations(adata: ad.AnnData, n_held_out: int = 20, seed: int = 0, *,
                        held_out: Sequence[str] | None = None,
                        perturbation_key: str = "perturbation", control: str = CONTROL
                        ) -> tuple[ad.AnnData, ad.AnnData]:
    """Hold out whole perturbations (the sVAE study trains on 80 and holds out 20).

    A cell goes to the held-out data when any of its perturbations is held out (so a
    combination ``"A+B"`` with ``A`` held out does); control cells stay in the training data.

    Parameters
    ----------
    adata : anndata.AnnData
        Left unchanged.
    n_held_out : int
        Number of perturbations held out, chosen at random among those some cell has (ignored
        when ``held_out`` is given).
    seed : int
        Seed of that choice.
    held_out : sequence of str, optional
        The perturbations to hold out.
    perturbation_key, control : str
        ``obs`` column with the perturbations (combinations written ``"A+B"``) and its control
        value.

    Returns
    -------
    (anndata.AnnData, anndata.AnnData)
        New objects: training cells and held-out cells, each with
        ``uns["held_out_perturbations"]`` (in the order of ``uns["perturbation_names"]``, or of
        first appearance in ``obs``). Everything else (including the true targets of all
        perturbations) is copied as is.
    """
    if perturbation_key not in adata.obs.columns:
        raise KeyError(f"{perturbation_key!r} is not a column of adata.obs "
                       f"(columns: {list(adata.obs.columns)})")
    values = adata.obs[perturbation_key].astype(str).to_numpy()
    atoms_of = {value: [a for a in value.split(COMBINATION_SEPARATOR) if a != control]
                for value in pd.unique(values)}
    seen = dict.fromkeys(a for atoms in atoms_of.values() for a in atoms)
    listed = [str(name) for name in adata.uns.get("perturbation_names", [])]
    names = [name for name in listed if name in seen]  # the perturbations present, in order
    names += [name for name in seen if name not in set(names)]
    if held_out is None:
        if not 0 <= n_held_out <= len(names):
            raise ValueError(f"n_held_out must be in [0, {len(names)}], got {n_held_out}")
        chosen = set(np.random.default_rng(seed).choice(names, size=n_held_out, replace=False))
    else:
        chosen = set(held_out)
        unknown = sorted(chosen - set(names))
        if unknown:
            raise ValueError(f"unknown perturbations in held_out (no cell has them): {unknown}")
    held_out_names = [name for name in names if name in chosen]
    held_value = {value: bool(set(atoms) & chosen) for value, atoms in atoms_of.items()}
    is_held_out = np.array([held_value[v] for v in values], dtype=bool)
    train, test = adata[~is_held_out].copy(), adata[is_held_out].copy()
    for part in (train, test):
        part.uns["held_out_perturbations"] = list(held_out_names)
    return train, test


def _check_world_arguments(n_latent: int, n_perturbations: int, n_genes: int, n_hidden: int,
                           max_targets: int, softmax: str, count_scale: float,
                           inverse_dispersion: float | None) -> None:
    for name, value in (("n_latent", n_latent), ("n_perturbations", n_perturbations),
                        ("n_genes", n_genes), ("n_hidden", n_hidden),
                        ("max_targets", max_targets)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if softmax not in SOFTMAX_AXES:
        raise ValueError(f"softmax must be one of {SOFTMAX_AXES}, got {softmax!r}")
    if not count_scale > 0:
        raise ValueError(f"count_scale must be positive, got {count_scale}")
    if inverse_dispersion is not None and not inverse_dispersion > 0:
        raise ValueError(f"inverse_dispersion must be positive or None, got {inverse_dispersion}")
    if not n_latent <= n_hidden <= n_genes:
        warnings.warn(f"the mixing is injective only when n_latent <= n_hidden <= n_genes; got "
                      f"{n_latent}, {n_hidden}, {n_genes}, so the latents may not be "
                      "identifiable from the counts", stacklevel=3)
