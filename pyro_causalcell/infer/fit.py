"""One SVI training loop for every model that follows the model protocol."""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import pyro
import torch
from pyro.infer import ELBO
from tqdm.auto import tqdm

from ..data import CellData
from ..data.prefetch import prefetch
from ..data.samplers import RandomSampler, Sampler, group_codes, stratified_split
from ..handlers import block_penalties, engine_holds_parameters
from .checkpoint import read_checkpoint, restore_random_states, write_checkpoint
from .device import place_data, resolve_device
from .distributed import make_strategy
from .elbo import DeviceTraceELBO
from .free_bits import FreeBitsELBO
from .history import TrainingHistory
from .protocol import (check_schema, evaluation, model_device, non_finite_parameters,
                       seeded)
from .steps import Adversary, StepResult, TrainingStep, Weight, only_training, warmup


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the model holds the last good parameters.

    Attributes
    ----------
    history : TrainingHistory
        The epochs completed before the divergence.
    """

    def __init__(self, message: str, history: TrainingHistory):
        super().__init__(message)
        self.history = history


def split_cells(n_cells: int, validation_fraction: float, generator: torch.Generator,
                groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(train_index, validation_index)`` with ``round(fraction * n)`` held out, or
    ``round(fraction * n_g)`` of each group when ``groups`` (``(n_cells,)`` codes) is given."""
    if groups is not None:
        return stratified_split(groups, validation_fraction, generator)
    order = torch.randperm(n_cells, generator=generator)
    n_validation = int(round(validation_fraction * n_cells))
    return order[n_validation:], order[:n_validation]


class EpochSums:
    """Running sums of one epoch's step results, turned into per-cell history entries."""

    def __init__(self):
        self.loss, self.penalties, self.adversaries = 0.0, {}, {}

    def add(self, result: StepResult, n_rows: int) -> None:
        # penalties stay tensors until the epoch ends: no device synchronisation per step
        self.loss += result.loss * n_rows
        for name, value in result.penalties.items():
            self.penalties[name] = self.penalties.get(name, 0.0) + value * n_rows
        for name, value in result.adversaries.items():
            self.adversaries.setdefault(name, []).append(value)

    def combine(self, parallel) -> None:
        """Sum the loss and penalties over the processes of a distributed fit."""
        names = sorted(self.penalties)
        totals = parallel.total([float(self.loss)] + [float(self.penalties[n]) for n in names])
        self.loss = totals[0]
        self.penalties = dict(zip(names, totals[1:]))

    def record(self, history: TrainingHistory, n_train: int) -> None:
        """Per-cell means (each step's values are scaled to the ``n_train`` training cells);
        the ELBO is the objective without the penalties."""
        penalties = {name: float(total) / n_train / n_train
                     for name, total in self.penalties.items()}
        history.train_elbo.append(-self.loss / n_train / n_train - sum(penalties.values()))
        for name, value in penalties.items():
            history.penalties.setdefault(name, []).append(value)
        for name, values in self.adversaries.items():
            history.adversary_loss.setdefault(name, []).append(float(sum(values)) / len(values))


def evaluate_elbo(model, data: CellData, index: torch.Tensor, *, batch_size: int = 1024,
                  elbo: ELBO | None = None, device: torch.device | None = None) -> float:
    """Per-cell ELBO of ``model`` on the cells ``index`` of ``data`` (one Monte Carlo sample).

    Global latent sites enter once for the whole set: each batch's loss is scaled to the set
    and the batches are averaged with weights proportional to their size. Penalties
    (``pyro.factor`` sites) are left out: this is the ELBO itself. Minibatches are moved to
    ``device``, by default the model's (so a model fitted on a GPU scores CPU data).
    """
    elbo = elbo or DeviceTraceELBO()
    device = model_device(model) if device is None else device
    total = 0.0
    model_fn = block_penalties(model.model)
    if getattr(data.counts, "on_disk", False):
        index = index.sort().values  # read the file front to back
    with (evaluation(model), torch.no_grad(), pyro.validation_enabled(False),
          engine_holds_parameters()):  # nothing to optimise: no param-store registration
        for batch in data.batches(batch_size, index):
            batch = batch.to(device)
            total += elbo.differentiable_loss(model_fn, model.guide, batch).item() * len(batch)
    n = len(index)
    return -total / n / n


def _diverged(model, step: TrainingStep, last_good, history: TrainingHistory, start: float,
              message: str) -> TrainingDivergedError:
    """Restore the last good parameters and optimiser states; the error to raise."""
    model.load_state_dict(last_good[0])
    step.load_state_dict(last_good[1])
    history.seconds = time.perf_counter() - start
    return TrainingDivergedError(message, history)


def _diverged_message(what: str, epoch: int, where: str, lr: float) -> str:
    kept = f"the end of epoch {epoch - 1}" if epoch else "before this fit"
    return (f"{what} at epoch {epoch}, {where}; the model holds its parameters from {kept}. "
            f"Lower lr (now {lr}), use kl_warmup_epochs, or check the data for extreme counts.")


def training_objective(elbo: ELBO | None, free_bits: float) -> ELBO:
    """The objective ``fit`` trains on: ``elbo``, or free bits, or ``DeviceTraceELBO()``."""
    if not free_bits >= 0:
        raise ValueError(f"free_bits must be >= 0 nats (0: the ELBO itself), got {free_bits}")
    if free_bits and elbo is not None:
        raise ValueError(f"give free_bits or elbo, not both: free_bits={free_bits} trains on "
                         f"FreeBitsELBO({free_bits}) and validates on the ELBO")
    if free_bits:
        return FreeBitsELBO(free_bits)
    return elbo or DeviceTraceELBO()


def fit(model, data: CellData, *, max_epochs: int = 100, batch_size: int = 128,
        lr: float = 1e-3, kl_warmup_epochs: int = 0, validation_fraction: float = 0.1,
        early_stopping: bool = False, patience: int = 10, device: str | torch.device = "auto",
        seed: int = 0, progress: bool = True, elbo: ELBO | None = None,
        free_bits: float = 0.0, weight_decay: float = 0.0, adam_eps: float = 0.01,
        eval_mode: bool = False, sampler: Sampler | None = None,
        stratify: str | Sequence[str] | None = None,
        parameters: Iterable[torch.nn.Parameter] | None = None,
        adversaries: Iterable[Adversary] = (),
        penalty_weights: dict[str, Weight] | None = None,
        monitor: Callable | None = None, checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 1, prefetch_batches: int = 0,
        strategy: str | None = None) -> TrainingHistory:
    """Fit a model by minibatch stochastic variational inference.

    Parameters
    ----------
    model : nn.Module with ``model(batch)`` and ``guide(batch)``
        Any model following the model protocol; trained in place. A model with a
        ``prepare_fit(data, train_index)`` method is handed the data and the training cells
        first, before its parameters are collected (LORD makes its per-cell content codes
        there).
    data : CellData
        Encoded with the model's schema.
    max_epochs : int
    batch_size : int
    lr : float
        Adam learning rate.
    kl_warmup_epochs : int
        Linearly raise the weight of every latent site from ``1/kl_warmup_epochs`` to 1 over this
        many epochs (0: no warm-up).
    validation_fraction : float
        Fraction of cells held out to compute the validation ELBO after each epoch.
    early_stopping : bool
        Stop when the validation ELBO (or ``monitor``) has not improved for ``patience``
        epochs, and keep the parameters of the best epoch.
    patience : int
    device : {"auto", "cpu", "cuda"} or torch.device
        Where to train; data that fits on the device is moved there once.
    seed : int
        Seeds the train/validation split, the shuffling and Pyro's samplers.
    progress : bool
        Show a progress bar over epochs.
    elbo : pyro.infer.ELBO, optional
        Objective (default ``DeviceTraceELBO()``); anything with ``differentiable_loss`` works.
    free_bits : float
        Train on :class:`~pyro_causalcell.infer.free_bits.FreeBitsELBO`: the first
        ``free_bits`` nats per cell of each latent coordinate's KL term are free, so no
        coordinate is switched off (0: the ELBO itself). The validation ELBO stays the ELBO.
        Not combined with ``elbo`` (which, when given, is also the validation objective).
    weight_decay : float
    adam_eps : float
        Adam's denominator constant. 0.01 (scvi-tools' default) damps the steps of parameters
        whose gradients are small; it recovered simulated latents markedly better than
        PyTorch's 1e-8 in our sparse-shift runs.
    eval_mode : bool
        Keep the model's modules in eval mode while training (no dropout, batch norm uses and
        keeps its running statistics), e.g. when only a few global parameters are learned
        and the networks are frozen (:func:`~pyro_causalcell.infer.transfer`).
    sampler : Sampler, optional
        How training cells are cut into minibatches (default: the model's
        ``default_sampler(data, batch_size)`` where it has one -- MultiGroupVI's group-balanced
        batches, InVAE's batches balanced over (label, batch) groups -- else
        :class:`~pyro_causalcell.data.samplers.RandomSampler`);
        :class:`~pyro_causalcell.data.samplers.BalancedSampler` puts every group of a covariate
        in every batch, :class:`~pyro_causalcell.data.samplers.WithinGroupSampler` draws each
        batch from one group.
    stratify : str or sequence of str, optional
        Hold out ``validation_fraction`` of each group of these covariates (e.g. ``"domain"``)
        instead of a random ``validation_fraction`` of all cells.
    parameters : iterable of nn.Parameter, optional
        Train only these; the others are frozen during the fit (stage two of a two-stage fit,
        or a transfer that learns a few rows).
    adversaries : iterable of Adversary
        Networks trained on their own loss with their own optimiser after each ELBO step
        (besides any the model lists in ``model.adversaries()``); see
        :mod:`~pyro_causalcell.infer.steps`.
    penalty_weights : dict of str -> float or callable(epoch)
        Weight of each named ``pyro.factor`` site of the model, fixed or a schedule such as
        :func:`~pyro_causalcell.infer.steps.warmup`.
    monitor : callable, ``monitor(model, data, validation_index) -> float``, optional
        A score to watch instead of the validation ELBO (higher is better), e.g. a held-out
        classifier accuracy; computed after each epoch in evaluation mode and recorded in
        ``history.monitored``.

    checkpoint : str or path, optional
        A file to checkpoint the fit to (atomically, every ``checkpoint_every`` epochs and at
        the end: parameters, optimisers, random states, history, epoch); if it exists, the
        fit resumes from it and ends where an uninterrupted fit with the same seed ends. A
        larger ``max_epochs`` continues a finished fit. See
        :mod:`~pyro_causalcell.infer.checkpoint`.
    checkpoint_every : int
    prefetch_batches : int
        Minibatches drawn ahead by a background thread while a step runs (0: no thread). For
        counts on a slow disk or network file system; on a 2-core machine reading from a local
        disk the thread competes with the step and slowed epochs by about 25%. The batches and
        the fit are the same either way.

    Returns
    -------
    TrainingHistory
        The ELBO (without penalties) per epoch, each penalty and adversary loss beside it.

    Notes
    -----
    The engine's Adam optimises ``model.parameters()`` directly, so the package's models do
    not put their networks in Pyro's param store during a fit
    (:func:`~pyro_causalcell.handlers.register_module`); they do, as ever, when a user runs
    them under ``pyro.infer.SVI`` or ``Predictive``.

    Raises
    ------
    CheckpointMismatchError
        ``checkpoint`` was written by a fit with other settings (data size, seed, batch size,
        learning rate, ...).
    TrainingDivergedError
        The loss became NaN or infinite; parameters are restored to the end of the last
        complete epoch.
    """
    if max_epochs < 1 or batch_size < 1:
        raise ValueError(f"max_epochs and batch_size must be >= 1, got {max_epochs}, "
                         f"{batch_size}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if early_stopping and validation_fraction == 0.0:
        raise ValueError("early_stopping=True needs held-out cells: set validation_fraction > 0")
    check_schema(model, data)

    device = resolve_device(device)
    parallel = make_strategy(strategy, device)
    device = parallel.device(device)
    with seeded(seed + parallel.rank, device):  # other draws in each process
        generator = torch.Generator().manual_seed(seed)
        model.to(device)
        data = place_data(data, device)
        copy_batches = data.device != device
        groups = None if stratify is None else group_codes(data, stratify).cpu()
        train_index, validation_index = split_cells(data.n_cells, validation_fraction, generator,
                                                    groups)
        prepare = getattr(model, "prepare_fit", None)
        if prepare is not None:  # per-cell parameters (LORD's codes) are sized to the data
            prepare(data, train_index)
        if sampler is None and hasattr(model, "default_sampler"):
            sampler = model.default_sampler(data, batch_size)
        sampler = sampler or RandomSampler()
        if len(train_index) == 0:
            raise ValueError(f"no cells left to train on ({data.n_cells} cells, "
                             f"validation_fraction={validation_fraction})")
        adversaries = [*getattr(model, "adversaries", lambda: ())(), *adversaries]
        step = TrainingStep(model, elbo=training_objective(elbo, free_bits), lr=lr,
                            weight_decay=weight_decay, adam_eps=adam_eps, parameters=parameters, adversaries=adversaries,
                            penalty_weights=penalty_weights, parallel=parallel)
        history = TrainingHistory()
        best = (-math.inf, None)
        epochs_without_improvement = first_epoch = 0
        fingerprint = dict(n_cells=data.n_cells, n_train=len(train_index), seed=seed,
                           batch_size=batch_size, lr=lr, kl_warmup_epochs=kl_warmup_epochs,
                           validation_fraction=validation_fraction,
                           early_stopping=early_stopping,
                           **({"free_bits": free_bits} if free_bits else {}))
        resumed = None if checkpoint is None else read_checkpoint(checkpoint, fingerprint)
        if resumed is not None:
            model.load_state_dict(resumed["model"])
            step.load_state_dict(resumed["step"])
            history = TrainingHistory(**resumed["history"])
            best, epochs_without_improvement = resumed["best"], resumed["stale_epochs"]
            first_epoch = resumed["epoch"]
            restore_random_states(resumed, generator)
        seconds_before = history.seconds
        start = time.perf_counter()
        n_train = len(train_index)
        train_shard = parallel.shard(train_index)
        epochs = range(first_epoch, max_epochs) if not history.stopped_early else range(0)
        bar = tqdm(epochs, initial=first_epoch, total=max_epochs,
                   disable=not progress or not parallel.is_main,
                   desc="fit", unit="epoch")
        kl_weight = warmup(max(kl_warmup_epochs, 0))
        model.train(not eval_mode)
        trained = [*step.parameters, *(p for a in adversaries for p in a.module.parameters())]
        frozen = only_training(model, None if parameters is None else trained)
        with frozen, warnings.catch_warnings():
            # pyro.module notes each frozen parameter it skips; freezing them is the point
            warnings.filterwarnings("ignore", message=".*not registered in the param store "
                                    "because requires_grad=False")
            last_good = (copy.deepcopy(model.state_dict()), copy.deepcopy(step.state_dict()),
                         copy.deepcopy(history))
            epoch = first_epoch
            try:
                for epoch in bar:
                    weight = kl_weight(epoch)
                    step.start_epoch(epoch, weight)
                    last_good = (copy.deepcopy(model.state_dict()),
                                 copy.deepcopy(step.state_dict()), copy.deepcopy(history))
                    sums = EpochSums()
                    batches = sampler.batches(data, train_shard, batch_size, generator)
                    if copy_batches:
                        batches = (batch.to(device) for batch in batches)
                    batches = parallel.batches(prefetch(batches, prefetch_batches), n_train)
                    for number, batch in enumerate(batches):
                        # validate distributions and shapes on the very first step only: costly
                        result = step(batch, validate=epoch == 0 and number == 0)
                        if not math.isfinite(result.loss):
                            raise _diverged(model, step, last_good, history, start,
                                            _diverged_message(f"the loss became {result.loss}",
                                                              epoch, f"step {number}", lr))
                        sums.add(result, len(batch))
                    sums.combine(parallel)
                    parallel.synchronise_buffers(model)
                    sums.record(history, n_train)
                    history.kl_weight.append(weight)
                    postfix = {"elbo": f"{history.train_elbo[-1]:.4g}"}
                    if len(validation_index):
                        score = evaluate_elbo(model, data, validation_index,
                                              batch_size=max(batch_size, 1024), elbo=elbo,
                                              device=device)
                        score = parallel.from_main(score)
                        if not math.isfinite(score):
                            raise _diverged(model, step, last_good, history, start,
                                            _diverged_message(f"the validation ELBO became {score}",
                                                              epoch, "validation", lr))
                        history.validation_elbo.append(score)
                        postfix["val"] = f"{score:.4g}"
                        if monitor is not None:
                            with evaluation(model), torch.no_grad():
                                score = float(monitor(model, data, validation_index))
                            score = parallel.from_main(score)
                            history.monitored.append(score)
                        if early_stopping:
                            if score > best[0]:
                                best = (score, copy.deepcopy(model.state_dict()))
                                history.best_epoch = epoch
                                epochs_without_improvement = 0
                            else:
                                epochs_without_improvement += 1
                    bar.set_postfix(postfix)
                    stopping = early_stopping and epochs_without_improvement >= patience
                    history.stopped_early = stopping
                    if checkpoint is not None and parallel.is_main and (stopping or epoch + 1 == max_epochs
                                                   or (epoch + 1) % checkpoint_every == 0):
                        history.seconds = seconds_before + time.perf_counter() - start
                        write_checkpoint(checkpoint, fingerprint=fingerprint, epoch=epoch + 1,
                                         model=model, step=step, history=history,
                                         generator=generator, best=best,
                                         stale_epochs=epochs_without_improvement)
                    if stopping:
                        break
            except KeyboardInterrupt:
                # the epoch in progress is dropped: parameters, optimisers and history as it began
                model.load_state_dict(last_good[0])
                step.load_state_dict(last_good[1])
                history = last_good[2]
                history.interrupted = True
        bar.close()
        broken = non_finite_parameters(model)  # the last step can break them unseen
        if broken:
            raise _diverged(model, step, last_good, history, start, _diverged_message(
                f"parameters {broken[:3]} became NaN or infinite", epoch, "last step", lr))
        if early_stopping and best[1] is not None:
            model.load_state_dict(best[1])
    history.seconds = seconds_before + time.perf_counter() - start
    if history.interrupted:
        warnings.warn(f"fit interrupted during epoch {history.n_epochs}: the model holds its "
                      f"parameters from the end of epoch {history.n_epochs - 1}, the history "
                      "its completed epochs", UserWarning, stacklevel=2)
    return history
