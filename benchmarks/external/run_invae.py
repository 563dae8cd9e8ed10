"""Run the published inVAE (Aliee, Kapl et al. 2023; PyPI ``invae`` 0.1.0, import ``inVAE``) for
the benchmark, in its own virtual environment. Never imports pyro_causalcell.

Environment (recreate exactly; inVAE pins ``anndata==0.8.0``, which needs pandas<2 / numpy<2):

    python3 -m venv /work/bench_envs/invae
    /work/bench_envs/invae/bin/pip install torch==2.13.0        # CPU build; never plain `pip install torch`
    /work/bench_envs/invae/bin/pip install invae "pandas<2" "numpy<2" "scanpy<1.10"
    # resolved: invae 0.1.0, anndata 0.8.0, pandas 1.5.3, numpy 1.26.4, scanpy 1.9.8,
    #           scikit-learn 1.9.1, torch 2.13.0+cpu

Usage:

    /work/bench_envs/invae/bin/python benchmarks/external/run_invae.py \
        --input data.h5ad --label-key cell_type --batch-key tech \
        --n-latent-inv 9 --n-latent-spur 1 --epochs 100 --seed 0 --output invae.npz

Input: ``X`` = raw integer counts (CSR); ``obs`` has the label column, the batch column and
``split`` ("train" / "test").

Protocol (what the script does, and why):

* Model: ``inVAE.FinVAE`` (factorized prior; ``--model nfinvae`` for the non-factorized one)
  fitted on the ``split == "train"`` cells only, negative-binomial decoder on raw counts,
  invariant covariate = the label (cell type), spurious covariate = the batch, both one-hot
  (the package's own README setup: ``inv_covar_keys={'cat': [cell_type, ...]}``,
  ``spur_covar_keys={'cat': [site/tech]}``). Optimiser as in the README:
  Adam, lr 1e-3, weight decay 1e-4.
* IMPORTANT: inVAE's encoder is q(z | x, inv covariates, spur covariates): it takes the one-hot
  label AND the one-hot batch of the cell as inputs (``FinVAEmodule.encode`` concatenates
  log1p(x) with both one-hots). Test cells' labels may not be used and their batch may be
  unseen, so the encoder cannot be used honestly on them as designed. The package's own route
  for new data, used here, does not touch the encoder: ``train_classifier`` + ``predict(adata,
  dataset_type='test')`` (i) picks, for each test cell, the best of ``nr_samples`` (100)
  latents of training cells by decoder log-likelihood p(x | z) (the decoder takes no
  covariates by default), (ii) refines that z by ``n_epochs_opt_val`` (100) Adam steps
  (lr 1e-3) on log p(x | z), per cell, and (iii) classifies its invariant part with the
  package's classifier (an MLP trained on the training cells' invariant encoder means,
  loss averaged over batches = environments). ``predict`` reads ``adata.obs[label_key]`` only
  to print an accuracy; we pass a copy whose label column is overwritten with a training class,
  so test labels never reach the package.
* Output ``latent`` (invariant part, ``n_latent_inv`` dims): training cells = encoder means with
  their true one-hot label and batch (``get_latent_representation``, as the package does for
  its training data, and what its classifier is trained on); test cells = the package's
  decoder-likelihood latents from the route above. ``latent_source`` says which per cell.
  With ``--test-latent encoder-zero`` the test cells instead get the encoder mean with all
  covariate one-hots set to zero (what the package's OneHotEncoder(handle_unknown='ignore')
  would give for an unseen category); that alternative is always saved as
  ``latent_encoder_zero_covariates`` (zero one-hots for EVERY cell, train included, so it is
  a covariate-free encoding of all cells).
* ``test_predictions``: the package's classifier on the test cells (label strings).
* ``train_seconds`` = the generative model's ``train()`` only; ``epoch_seconds`` = mean wall
  time of one pass over the training data loader (measured per epoch);
  ``classifier_seconds`` / ``predict_seconds`` are saved separately.
* The classifier's "validation" set (the package requires one; used only for printed
  accuracies) is a random subset of ``--n-val-cells`` TRAINING cells.
* torch compatibility: inVAE 0.1.0 passes ``verbose=True`` to ``ReduceLROnPlateau`` (its
  classifier's scheduler), which torch 2.13 no longer accepts; the script drops that argument
  in its own process (nothing else changes).
* If ``n_train % batch_size == 1`` the training loader drops its last (single-cell) batch,
  since BatchNorm cannot train on one cell.

Package defaults worth knowing (FinVAE): latent_dim_inv 9, latent_dim_spur 1, hidden_dim 128,
n_layers 2, relu, batch_norm True, dropout 0.1, decoder 'nb', prior: invariant & spurious
Gaussian priors with fixed mean 0 and covariate-dependent variance (fix_mean_prior=True,
fix_var_prior=False), kl_rate 1, elbo_version 'sample', batch_size 256; ``train`` defaults to
500 epochs and requires lr and weight decay (README: 1e-3, 1e-4); classifier: 1 layer, 50
hidden, 500 epochs, lr 0.01 (ReduceLROnPlateau).
"""

from __future__ import annotations

import random
import time
from importlib.metadata import version

import numpy as np
import scipy.sparse as sp
import torch

from common import common_parser, read_h5ad, write_result


def _patch_torch_compat():
    """inVAE 0.1.0 calls ``ReduceLROnPlateau(..., verbose=True)``; torch >= 2.7 removed that
    argument. Drop it, in this process only (behaviour is otherwise unchanged)."""
    base = torch.optim.lr_scheduler.ReduceLROnPlateau
    if getattr(base, "_invae_compat", False):
        return

    class ReduceLROnPlateau(base):
        _invae_compat = True

        def __init__(self, *args, verbose=None, **kwargs):
            super().__init__(*args, **kwargs)

    torch.optim.lr_scheduler.ReduceLROnPlateau = ReduceLROnPlateau


def parse_args(argv=None):
    p = common_parser(__doc__.split("\n\n")[0], epochs=500)
    p.add_argument("--n-latent-inv", type=int, default=9)
    p.add_argument("--n-latent-spur", type=int, default=1)
    p.add_argument("--model", choices=["finvae", "nfinvae"], default="finvae")
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--test-latent", choices=["optimize", "encoder-zero"], default="optimize",
                   help="test cells' latent: the package's decoder-likelihood route (default) or "
                        "the encoder with zeroed covariate one-hots")
    p.add_argument("--no-predict", action="store_true",
                   help="skip the package's classifier / test-latent optimisation (implies "
                        "--test-latent encoder-zero, no test_predictions)")
    p.add_argument("--n-val-cells", type=int, default=50,
                   help="training cells used as the classifier's 'validation' set (printing only)")
    p.add_argument("--nr-samples", type=int, default=100, help="package default 100")
    p.add_argument("--n-opt-steps", type=int, default=100, help="n_epochs_opt_val; package default 100")
    p.add_argument("--classifier-epochs", type=int, default=500, help="package default 500")
    return p.parse_args(argv)


class _TimedLoader:
    """Wraps the package's data loader to time each pass (epoch) over it."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch_times = []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        t0 = time.perf_counter()
        yield from self.loader
        self.epoch_times.append(time.perf_counter() - t0)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)  # inVAE has no seed function; it samples with np.random / torch
    torch.manual_seed(args.seed)
    _patch_torch_compat()

    from anndata.experimental.pytorch import AnnLoader
    from inVAE import FinVAE, NFinVAE

    adata = read_h5ad(args.input)
    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    for key in (args.label_key, args.batch_key):
        adata.obs[key] = adata.obs[key].astype(str)
    split = adata.obs["split"].astype(str).to_numpy()
    is_train = split == "train"
    is_test = split == "test"
    if not (is_train | is_test).all():
        raise ValueError("obs['split'] must be 'train' or 'test'")
    train = adata[is_train].copy()
    test = adata[is_test].copy()
    # test cells must not carry labels into the package
    test.obs[args.label_key] = "__unknown__"
    n_train, n_test = train.n_obs, test.n_obs

    inv_keys = {"cat": [args.label_key], "cont": []}
    spur_keys = {"cat": [args.batch_key], "cont": []}
    cls = FinVAE if args.model == "finvae" else NFinVAE
    model = cls(
        adata=train,
        layer=None,
        inv_covar_keys=inv_keys,
        spur_covar_keys=spur_keys,
        latent_dim_inv=args.n_latent_inv,
        latent_dim_spur=args.n_latent_spur,
        hidden_dim=args.hidden_dim,
        n_layers=args.n_layers,
        batch_size=args.batch_size,
        device="cpu",
    )
    drop_note = ""
    if n_train % args.batch_size == 1:
        model.data_loader = AnnLoader(train, batch_size=args.batch_size, shuffle=True,
                                      convert=model.data_loading_encoders, drop_last=True)
        drop_note = " Training loader drops its last single-cell batch (BatchNorm)."
    timed = _TimedLoader(model.data_loader)
    model.data_loader = timed

    t0 = time.perf_counter()
    model.train(n_epochs=args.epochs, lr_train=args.lr, weight_decay=args.weight_decay,
                print_every_n_epochs=max(1, args.epochs // 5))
    train_seconds = time.perf_counter() - t0
    epoch_seconds = float(np.mean(timed.epoch_times)) if timed.epoch_times else train_seconds / max(1, args.epochs)
    n_epochs_done = len(timed.epoch_times)
    model.data_loader = timed.loader
    model.module.eval()

    d_inv = model.latent_dim_inv
    # training cells: encoder means with their own one-hot label and batch (package API)
    lat_train = model.get_latent_representation(None, latent_type="invariant", verbose=False)

    # covariate-free encoder latent for every cell (zero one-hots)
    with torch.no_grad():
        x_all = torch.tensor(adata.X.toarray(), dtype=torch.float32)
        inv0 = torch.zeros(adata.n_obs, model.inv_covar_dim) if model.inv_covar_dim else None
        spur0 = torch.zeros(adata.n_obs, model.spur_covar_dim) if model.spur_covar_dim else None
        mean_zero, _ = model.module.encode(x_all, inv0, spur0)
    lat_zero = mean_zero[:, :d_inv].numpy().astype(np.float32)

    latent = np.zeros((adata.n_obs, d_inv), dtype=np.float32)
    latent[is_train] = lat_train
    source = np.where(is_train, "encoder_with_covariates", "").astype(object)
    out = {}
    classifier_seconds = predict_seconds = 0.0
    test_latent_mode = "encoder-zero" if args.no_predict else args.test_latent
    if not args.no_predict and n_test > 0:
        rng = np.random.default_rng(args.seed)
        val_idx = np.sort(rng.choice(n_train, min(args.n_val_cells, n_train), replace=False))
        val = train[val_idx].copy()
        nr_samples = min(args.nr_samples, n_train)
        t1 = time.perf_counter()
        model.train_classifier(
            val, batch_key=args.batch_key, label_key=args.label_key,
            n_epochs_train_class=args.classifier_epochs, n_epochs_opt_val=args.n_opt_steps,
            nr_samples=nr_samples,
            class_print_every_n_epochs=max(1, args.classifier_epochs // 5),
            opt_val_print_every_n_epochs=max(1, args.n_opt_steps // 5),
        )
        classifier_seconds = time.perf_counter() - t1
        # dummy label (a training class): predict() reads it only to print an accuracy
        test_dummy = test.copy()
        test_dummy.obs[args.label_key] = str(train.obs[args.label_key].iloc[0])
        t2 = time.perf_counter()
        pred = model.predict(test_dummy, dataset_type="test")
        predict_seconds = time.perf_counter() - t2
        z_test = model.saved_latent["test"].detach().cpu().numpy()[:, :d_inv].astype(np.float32)
        out["test_predictions"] = np.asarray(pred).astype(str)
        out["latent_test_optimized"] = z_test
        if test_latent_mode == "optimize":
            latent[is_test] = z_test
            source[is_test] = "decoder_likelihood_optimized"
    if test_latent_mode == "encoder-zero" or args.no_predict:
        latent[is_test] = lat_zero[is_test]
        source[is_test] = "encoder_zero_covariates"

    notes = (
        f"inVAE {version('inVAE')} {cls.__name__}; torch {torch.__version__}; anndata "
        f"{version('anndata')}. Trained on {n_train} train cells for {n_epochs_done} epochs "
        f"(Adam lr {args.lr}, wd {args.weight_decay}, batch {args.batch_size}, hidden "
        f"{args.hidden_dim}, layers {args.n_layers}, NB decoder); invariant covariate = one-hot "
        f"'{args.label_key}', spurious covariate = one-hot '{args.batch_key}'. The encoder takes "
        f"both one-hots as input, so {n_test} test cells (labels hidden) get their latent via "
        + ("the package's predict route: best of "
           f"{min(args.nr_samples, n_train)} training latents by decoder likelihood, then "
           f"{args.n_opt_steps} Adam steps on log p(x|z) per cell; test_predictions = package "
           "classifier on that invariant latent (classifier trained on train-cell encoder means). "
           if test_latent_mode == "optimize" else
           "the encoder with zero one-hot label and batch. ")
        + "Train cells: encoder mean with their true one-hots. latent = invariant part "
        f"({d_inv} dims).{drop_note} Seed {args.seed}, torch threads {torch.get_num_threads()}."
    )
    write_result(args.output, latent, adata.obs_names, train_seconds, epoch_seconds,
                 n_epochs_done, notes, latent_encoder_zero_covariates=lat_zero,
                 latent_source=source.astype(str), classifier_seconds=float(classifier_seconds),
                 predict_seconds=float(predict_seconds), **out)


if __name__ == "__main__":
    main()
