"""Seconds per epoch of an sVAE+ fit of the study's design: former settings, current ones, and
the floor of the same networks trained in plain PyTorch.

Both are measured in one run, interleaved (``--rounds`` times each, after one warm-up epoch per
setting), on the simulation of ``causalcell benchmark sparse-shift`` (15 latents, 80 training
perturbations x 250 cells, 100 genes; 10% of cells for validation):

``former``
    batch 128, the NB kernel's lookup table for every whole-number count (before the kernel
    switched to the direct formula when more than 1% of the counts lie beyond the table), and
    the networks registered in Pyro's param store at every step, and torch's dropout and
    mixture density (as in ``torch-parts``);
``registering``
    as ``current`` but with that registration (``pyro.module`` in every step, as before the
    engine held the parameters itself: :func:`~pyro_causalcell.handlers.register_module`);
``torch-parts``
    as ``current`` but with torch's ``nn.Dropout`` in the networks (one random draw per entry)
    and the shift mixture's density computed by ``MixtureSameFamily`` over its :math:`2^M`
    components, as before :class:`~pyro_causalcell.nn.PackedDropout` and the closed-form
    :meth:`ShiftMixture.log_prob <pyro_causalcell.distributions.ShiftMixture.log_prob>`;
``current``
    batch 256 (the benchmark's default), the current NB kernel, no registration;
``floor``
    the same encoder and decoder (batch norm, :class:`PackedDropout`), NB likelihood and fused
    Adam, stepped on the same number of minibatches of 256 by a plain PyTorch loop: a
    standard-normal prior with its closed-form KL, no perturbation prior, no Pyro trace, no
    validation. What a fit of these networks costs before any of the model's structure or the
    engine's bookkeeping.

Prints each setting's median seconds per epoch, the ratios, and the implied time of a
300-epoch fit. It also times :func:`~pyro_causalcell.infer.realign_latents` on the same cells
(once per round) and prints the implied time of a fit with realignment of half the steps
(``SparseShiftBenchmark(realign=True, step_share=0.5)``: 100 + 50 epochs of 256) against the
300-epoch fit. The fits' recovery is not measured here: see ``benchmarks/svae_sweep.py`` and
``docs/sparse_shift.rst`` (batch 256 reached MCC 0.925 on the tuning seed where 128 reached
0.924)::

    python benchmarks/svae_speed.py            # 1-3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from pyro_causalcell import CellData, SparseShiftVAE, fit, realign_latents
from pyro_causalcell.benchmarks.sparse_shift import SparseShiftBenchmark
from pyro_causalcell.distributions import nb_log_prob
from pyro_causalcell.infer import fit as fit_module
from pyro_causalcell.infer import steps
from pyro_causalcell.infer.steps import make_adam
from pyro_causalcell.models.shift_priors import SparseShifts
from pyro_causalcell.nn import PackedDropout

#: share of the cells fit trains on (its default validation_fraction is 0.1)
TRAINING_SHARE = 0.9

SETTINGS = {"former": dict(batch_size=128, max_large_share=1.0, register=True,
                          torch_parts=True),
            "registering": dict(batch_size=256, max_large_share=nb_log_prob.MAX_LARGE_SHARE,
                                register=True, torch_parts=False),
            "torch-parts": dict(batch_size=256, max_large_share=nb_log_prob.MAX_LARGE_SHARE,
                                register=False, torch_parts=True),
            "current": dict(batch_size=256, max_large_share=nb_log_prob.MAX_LARGE_SHARE,
                            register=False, torch_parts=False)}


class TorchMixtureShifts(SparseShifts):
    """sVAE+'s perturbation prior whose mechanism is the ``MixtureSameFamily`` of Normals."""

    def mechanism(self, perturbation, globals_):
        return dist.Independent(super().mechanism(perturbation, globals_).base_dist.as_mixture(),
                                1)


def use_torch_parts(model: SparseShiftVAE) -> None:
    """``nn.Dropout`` for every :class:`PackedDropout` and the mixture's density by torch."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, PackedDropout):
                setattr(module, name, nn.Dropout(child.p))
    model.shifts.__class__ = TorchMixtureShifts


def seconds_per_epoch(data: CellData, batch_size: int, max_large_share: float, register: bool,
                      torch_parts: bool, epochs: int, device: str) -> float:
    nb_log_prob.MAX_LARGE_SHARE = max_large_share
    holds = contextlib.nullcontext if register else steps.engine_holds_parameters
    steps.engine_holds_parameters = fit_module.engine_holds_parameters = holds
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=15, sparsity="svae+")
    if torch_parts:
        use_torch_parts(model)
    start = time.perf_counter()
    fit(model, data, max_epochs=epochs, batch_size=batch_size, lr=1e-2, kl_warmup_epochs=50,
        device=device, seed=0, progress=False)
    return (time.perf_counter() - start) / epochs


def realign_seconds(data: CellData) -> float:
    """Seconds of :func:`realign_latents` (its default search) on an unfitted sVAE+: the
    search's steps do not depend on the fit."""
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=15, sparsity="svae+")
    start = time.perf_counter()
    realign_latents(model, data)
    return time.perf_counter() - start


def floor_seconds_per_epoch(data: CellData, batch_size: int, epochs: int,
                            device: str = "cpu") -> float:
    """Seconds per epoch of the sVAE+ networks trained by a plain PyTorch loop (see ``floor``).

    The loss is the negative ELBO of a VAE with a ``Normal(0, I)`` prior on the latents:
    ``-log p(counts | z) + KL(q(z | counts) || N(0, I))`` summed over the minibatch.
    """
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=15, sparsity="svae+")
    model.to(device).train()
    encoder, decoder = model.encoder, model.decoder
    optimizer = make_adam(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-2)
    counts = data.dense_counts()
    n_train = int(TRAINING_SHARE * len(counts))
    counts = torch.as_tensor(counts[:n_train], dtype=torch.get_default_dtype(), device=device)
    library = counts.sum(-1)
    start = time.perf_counter()
    for _ in range(epochs):
        for index in torch.randperm(n_train, device=device).split(batch_size):
            x = counts[index]
            loc, scale = encoder(x)
            q = Normal(loc, scale)
            decoded = decoder(q.rsample(), library[index])
            log_likelihood = decoder.distribution(decoded).log_prob(x).sum()
            loss = kl_divergence(q, Normal(0.0, 1.0)).sum() - log_likelihood
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, _ = SparseShiftBenchmark(seed=0).simulate()
    data = CellData.from_anndata(train, perturbation_key="perturbation")
    default = nb_log_prob.MAX_LARGE_SHARE, steps.engine_holds_parameters
    times = {name: [] for name in (*SETTINGS, "floor")}
    search = []
    try:
        for name, setting in SETTINGS.items():  # warm-up: imports, allocator, first epoch
            seconds_per_epoch(data, epochs=1, device=args.device, **setting)
        floor_seconds_per_epoch(data, batch_size=256, epochs=1, device=args.device)
        for _ in range(args.rounds):
            for name, setting in SETTINGS.items():
                times[name].append(seconds_per_epoch(data, epochs=args.epochs,
                                                     device=args.device, **setting))
            times["floor"].append(floor_seconds_per_epoch(data, batch_size=256,
                                                          epochs=args.epochs,
                                                          device=args.device))
            search.append(realign_seconds(data))
    finally:
        nb_log_prob.MAX_LARGE_SHARE, steps.engine_holds_parameters = default
        fit_module.engine_holds_parameters = default[1]
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        setting = SETTINGS.get(name, "plain PyTorch, batch 256")
        print(f"{name:8s} {setting}: s/epoch {', '.join(f'{v:.2f}' for v in values)} "
              f"(median {median[name]:.2f}; 300 epochs {300 * median[name]:.0f} s)")
    print(f"former / current time per epoch: {median['former'] / median['current']:.2f} "
          f"({args.threads} threads, {args.device}, {data.n_cells} cells)")
    print(f"registering / current time per epoch: "
          f"{median['registering'] / median['current']:.2f}")
    print(f"torch-parts / current time per epoch: "
          f"{median['torch-parts'] / median['current']:.2f}")
    print(f"current / floor time per epoch: {median['current'] / median['floor']:.2f}")
    plain, realigned = 300 * median["current"], 150 * median["current"] + min(search)
    print(f"realign_latents: s {', '.join(f'{v:.1f}' for v in search)}; a realigned fit of "
          f"150 epochs {realigned:.0f} s against {plain:.0f} s for 300 epochs "
          f"(ratio {plain / realigned:.2f})")


if __name__ == "__main__":
    main()
