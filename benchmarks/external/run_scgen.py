"""Run the published scGen (Lotfollahi, Wolf & Theis 2019, Nat. Methods; PyPI ``scgen``,
theislab/scgen, the scvi-tools port) for the benchmark, in its own virtual environment:
counterfactual IFN-beta response of a held-out cell type. Never imports pyro_causalcell.

Environment (recreate exactly). The registry serves scgen 2.1.0 as its newest release. It
declares ``scvi-tools>=0.15.0`` with no upper bound, but its module imports
``scvi.module.base.LossRecorder``, which scvi-tools 0.20 removed, so the newest scvi-tools it
runs with is 0.19.0; that one pins ``pytorch-lightning>=1.7,<1.8`` (its Trainer imports
``LightningLoggerBase``, gone in lightning 1.9), and lightning 1.7.7 needs torchmetrics<0.11
(it imports ``torchmetrics.utilities.imports._compare_version``). torch stays at the local
2.13 CPU build (scgen and scvi-tools 0.19 run on it: see "Smoke test" below). scgen itself
is installed with ``--no-deps`` only so that pip cannot move scvi-tools; the jax pins are the
ones that worked for the CPA environment (scvi-tools 0.19 imports jax/flax/numpyro):

    python3 -m venv /work/bench_envs/scgen
    /work/bench_envs/scgen/bin/pip install torch==2.13.0        # CPU build; never plain `pip install torch`
    /work/bench_envs/scgen/bin/pip install torch==2.13.0 scvi-tools==0.19.0 "pytorch-lightning==1.7.7" \
        "numpy<2" "anndata<0.10" "scanpy<1.10" "pandas<2.1" "scipy<1.13" "jax==0.4.23" \
        "jaxlib==0.4.23" "flax<0.8" "optax<0.2" "chex<0.1.86" "numpyro<0.14" \
        "orbax-checkpoint<0.5" adjustText seaborn "setuptools<81" requests
    /work/bench_envs/scgen/bin/pip install --no-deps scgen==2.1.0
    /work/bench_envs/scgen/bin/pip install torch==2.13.0 "numpy<2" "torchmetrics<0.11"
    # resolved: scgen 2.1.0, scvi-tools 0.19.0, pytorch-lightning 1.7.7, torchmetrics 0.10.3,
    #           torch 2.13.0+cpu, anndata 0.9.2, scanpy 1.9.8, pandas 2.0.3, numpy 1.26.4,
    #           scipy 1.12.0, scikit-learn 1.9.1, jax/jaxlib 0.4.23, flax 0.7.5, optax 0.1.9,
    #           chex 0.1.85, numpyro 0.13.2, pyro-ppl 1.9.2, setuptools 80.10.2
    # logs: /work/bench_envs/scgen_torch.log, /work/bench_envs/scgen_pkg.log
    # `pip check`: no broken requirements (scgen 2.1.0 accepts scvi-tools>=0.15). The venv's
    # own pip (23.2.1, from python3.11's ensurepip) is used: pip>=24.1 rejects lightning
    # 1.7.7's metadata (``torch>=1.9.*``), so do not upgrade pip in this venv.

Usage:

    /work/bench_envs/scgen/bin/python benchmarks/external/run_scgen.py \
        --input data.h5ad --perturbation-key condition --control ctrl \
        --covariate-key cell_type --held-out-type "CD14+ Monocytes" \
        --epochs 100 --seed 0 --output scgen.npz [--threads 2]

Input: ``X`` = raw integer counts (CSR); ``obs`` has the perturbation column (control value
``--control``, one other value, e.g. 'stim'), the covariate column (cell type) and ``split``
("train" / "held_out"; held_out = the perturbed cells of the held-out type).

Protocol (what the script does, and why): scGen's own perturbation-prediction tutorial
(docs/tutorials/scgen_perturbation_prediction.ipynb, the Kang 2018 IFN-beta data with the
stimulated CD4T cells removed) on this task:

* Only ``split == "train"`` cells are given to scGen (the held-out cells are dropped before
  the package sees anything). scGen models log-normalised expression with a Gaussian
  (squared-error) decoder ("scGen expects the expression data to come from adata.X", not
  counts; the tutorial's train_kang.h5ad is log-normalised), so the training counts are
  normalised to 1e4 per cell and log1p'd (= the benchmark's log1p CP10k scale), dense
  float32.
* ``SCGEN.setup_anndata(train, batch_key=<perturbation>, labels_key=<cell type>)``;
  ``SCGEN(train)`` with the package defaults the tutorial uses (n_hidden 800, n_latent 100,
  n_layers 2, dropout 0.2; module: batch norm in encoder and decoder, LeakyReLU, kl_weight
  5e-5, loss = 0.5 * sum of squared errors + 0.5 * 5e-5 * KL, linear decoder output);
  ``train(max_epochs=--epochs (tutorial 100), batch_size=32, early_stopping=True,
  early_stopping_patience=25)`` as in the tutorial; scvi-tools 0.19's defaults for the rest:
  ``train_size`` 0.9 (a random 10% of the training cells is scvi's validation set, whose
  ``elbo_validation`` drives early stopping; early stopping does NOT restore the best
  weights: the last epoch's are used), Adam lr 1e-3, weight_decay 1e-6, eps 0.01.
  ``scvi.settings.seed = --seed`` (lightning's seed_everything) fixes the split and training.
* Counterfactual: ``model.predict(ctrl_key=--control, stim_key=<perturbation>,
  celltype_to_predict=--held-out-type)`` (the tutorial's call). What it does (scgen 2.1.0
  source): from the model's training AnnData it takes all control cells and all perturbed
  cells, balances each set over cell types (every type resampled with replacement to the
  largest type's count), subsamples both to the same size, and takes delta = mean latent
  (posterior mean) of the perturbed set - mean latent of the control set. The cells it
  predicts are ``extractor(...)[1]`` = the held-out type's CONTROL training cells, in the
  training AnnData's obs order (checked: its ``obs_names`` equal the query cells'); each
  prediction = decoder(latent mean of the cell + delta). The balancing / subsampling use
  the global numpy RNG, which the script seeds with ``--seed`` right before ``predict``.
* ``predicted`` = that decoder output, unchanged: it is on the scale scGen was trained on
  (log1p CP10k), but it is a linear layer's output, NOT renormalised per cell (rows do not
  sum to 1e4 after expm1), and it can be negative (the script leaves negative values as
  they are; ``notes`` says how many entries are < 0). ``predicted_ctrl`` = decoder(latent
  mean) of the same cells (scGen's reconstruction under control), ``delta`` = the latent
  shift.
* Smoke test (shared/data kang2018_ifnb_muscat_example.h5ad, 1,556 x 1,267; split 'held_out'
  for the 200 stim CD14+ Monocytes; 2 threads): ``--epochs 5``, ``30`` and ``100`` run,
  ``predicted`` (200, 1267); identical output on reruns with the same seed. ``--epochs 100``
  (the tutorial's settings) early-stopped after 34 epochs (best ``elbo_validation`` at epoch
  index 8; the tutorial's own run also stopped early, at 31/100): 25 s of training, 0.71
  s/epoch on an idle machine (2-5 s/epoch when another job shared the 2 cores). Held-out CD14+
  monocytes, log1p CP10k: ISG15 mean observed 0.46 (ctrl) / 6.12 (stim), scGen 3.58; R2
  (squared Pearson r, as scGen's reg_mean_plot) of per-gene means, predicted vs observed stim,
  0.81 (observed ctrl vs stim: 0.52); about 2% of the predicted entries are < 0 (min -0.49).
  Without early stopping reaching its patience: 5 epochs 3.76 / 0.79, 30 epochs 3.80 / 0.88
  (ISG15 / R2). ``expm1(predicted)`` sums to about 5,800 per cell, not 1e4 (decoder output,
  not renormalised).
* ``train_seconds`` = wall time of ``model.train``; ``epoch_seconds`` = mean wall time of one
  training epoch measured by a lightning callback (includes the per-epoch validation pass
  that early stopping needs).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from importlib.metadata import version

from common import (epoch_timer, held_out_response_input, limit_threads, response_parser,
                    seed_everything)


def parse_args(argv=None):
    p = response_parser(__doc__.split("\n\n")[0], 100, "max_epochs (tutorial: 100)")
    p.add_argument("--batch-size", type=int, default=32, help="tutorial: 32")
    p.add_argument("--early-stopping-patience", type=int, default=25, help="tutorial: 25")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="train exactly --epochs epochs (the tutorial uses early stopping)")
    p.add_argument("--train-size", type=float, default=0.9,
                   help="scvi's train fraction; the rest is its validation set (default 0.9)")
    return p.parse_args(argv)


# scgen 2.1.0 defaults, as the tutorial uses them (SCGEN(train_new) with no arguments).
MODEL_PARAMS = {"n_hidden": 800, "n_latent": 100, "n_layers": 2, "dropout_rate": 0.2}


def main(argv=None):
    args = parse_args(argv)
    n_threads = limit_threads(args.threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # scvi-tools 0.19 imports jax

    import numpy as np
    import scipy.sparse as sp
    import torch

    seed_everything(args.seed, n_threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import scgen
        import scvi
        from pytorch_lightning.callbacks import Callback

    scvi.settings.seed = args.seed  # lightning's seed_everything
    logdir = tempfile.mkdtemp(prefix="scgen_logs_")
    scvi.settings.logging_dir = logdir

    train, target, others, query_mask = held_out_response_input(args, np.float64)
    pk, ck = args.perturbation_key, args.covariate_key
    if len(others) > 1:
        # scgen's predict contrasts ALL cells of ctrl_key with all cells of stim_key; with more
        # perturbations, keep only the control and the target ones (as the tutorial data has).
        train = train[np.isin(train.obs[pk], [args.control, target])].copy()
        held_mask = (train.obs[ck] == args.held_out_type).to_numpy()
        query_mask = held_mask & (train.obs[pk] == args.control).to_numpy()
    query_names = np.asarray(train.obs_names[query_mask]).astype(str)

    # log1p(CP10k): scGen's Gaussian decoder models log-normalised expression.
    tot = np.asarray(train.X.sum(axis=1)).ravel()
    Xn = sp.diags(1e4 / np.maximum(tot, 1e-12)) @ train.X
    Xn = Xn.tocsr()
    Xn.data = np.log1p(Xn.data)
    train.X = np.asarray(Xn.todense(), dtype=np.float32)

    scgen.SCGEN.setup_anndata(train, batch_key=pk, labels_key=ck)
    model = scgen.SCGEN(train, **MODEL_PARAMS)
    module_defaults = {"kl_weight": model.module.kl_weight}

    timer = epoch_timer(Callback, "elbo_validation")
    early = not args.no_early_stopping
    train_kwargs = dict(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        early_stopping=early,
        train_size=args.train_size,
    )
    if early:
        train_kwargs["early_stopping_patience"] = args.early_stopping_patience
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            use_gpu=False,
            callbacks=[timer],
            enable_progress_bar=args.progress,
            simple_progress_bar=args.progress,  # scvi adds its own bar unless this is off
            **train_kwargs,
        )
    train_seconds = time.perf_counter() - t0
    n_epochs_done = len(timer.times)
    epoch_seconds = float(np.mean(timer.times)) if timer.times else train_seconds / max(1, args.epochs)
    model.module.eval()

    # The tutorial's counterfactual call; its balancing/subsampling use numpy's global RNG.
    np.random.seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred, delta = model.predict(ctrl_key=args.control, stim_key=target,
                                    celltype_to_predict=args.held_out_type)
    pred_names = np.asarray(pred.obs_names).astype(str)
    if not np.array_equal(pred_names, query_names):
        # map by name (scgen 2.1.0 keeps the training obs order, so this is not expected)
        order = {n: i for i, n in enumerate(pred_names)}
        pred = pred[[order[n] for n in query_names]]
    predicted = np.asarray(pred.X, dtype=np.float32)
    with torch.no_grad():
        q = train[query_mask].copy()
        lat = model.get_latent_representation(q)
        predicted_ctrl = model.module.generative(torch.as_tensor(lat, dtype=torch.float32))["px"]
        predicted_ctrl = predicted_ctrl.cpu().numpy().astype(np.float32)
    n_neg = int((predicted < 0).sum())

    notes = (
        f"scgen {version('scgen')} (scGen), scvi-tools {scvi.__version__}, pytorch-lightning "
        f"{version('pytorch-lightning')}, torch {torch.__version__}, anndata {version('anndata')}. "
        f"Fitted on {train.n_obs} split=='train' cells (held-out cells never given to the "
        f"package; scvi train_size {args.train_size:g}, the rest its validation set), X = "
        f"log1p(counts / total * 1e4). setup_anndata(batch_key='{pk}', labels_key='{ck}'); "
        f"SCGEN{MODEL_PARAMS} (module {module_defaults}); train(max_epochs={args.epochs}, "
        f"batch_size={args.batch_size}, early_stopping={early}"
        + (f", early_stopping_patience={args.early_stopping_patience}" if early else "")
        + f", seed {args.seed}). Ran {n_epochs_done} epochs (last epoch's weights). predicted = "
        f"model.predict(ctrl_key='{args.control}', stim_key='{target}', celltype_to_predict="
        f"'{args.held_out_type}') for the {len(query_names)} '{args.held_out_type}' "
        f"{args.control} training cells: decoder(latent mean + delta), delta = balanced mean "
        f"latent difference {target} - {args.control} over the training cells; log1p CP10k "
        f"scale as trained, not renormalised, {n_neg} entries < 0 left as they are. "
        f"predicted_ctrl = decoder(latent mean) of the same cells. Torch threads "
        f"{torch.get_num_threads()}."
    )
    np.savez(
        args.output,
        predicted=predicted,
        predicted_ctrl=predicted_ctrl,
        delta=np.asarray(delta, dtype=np.float32),
        obs_names=query_names,
        var_names=np.asarray(train.var_names).astype(str),
        train_seconds=float(train_seconds),
        epoch_seconds=float(epoch_seconds),
        epoch_seconds_all=np.asarray(timer.times, dtype=float),
        n_epochs=int(n_epochs_done),
        val_elbo=np.asarray(timer.val, dtype=float).reshape(-1, 2),
        perturbation=str(target),
        notes=notes,
    )
    shutil.rmtree(logdir, ignore_errors=True)
    print(notes)
    print(f"wrote {args.output}: predicted {predicted.shape} (scGen decoder output, log1p CP10k "
          f"scale, for '{args.held_out_type}' {args.control} cells under '{target}'), "
          f"{n_epochs_done} epochs, train {train_seconds:.2f}s, {epoch_seconds:.3f}s/epoch")


if __name__ == "__main__":
    sys.exit(main())
