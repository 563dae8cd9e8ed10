"""Run scVI (scvi-tools) with scArches query mapping for the benchmark, in its own virtual
environment. Never imports pyro_causalcell.

Environment (recreate exactly):

    python3 -m venv /work/bench_envs/scvi
    /work/bench_envs/scvi/bin/pip install torch==2.13.0         # CPU build; never plain `pip install torch`
    /work/bench_envs/scvi/bin/pip install scvi-tools==1.4.2
    # resolved: scvi-tools 1.4.2 (newest the registry serves), lightning 2.6.6, anndata 0.12.19,
    #           scanpy 1.11.5, pandas 2.3.3, numpy 2.4.6, pyro-ppl 1.9.2, torch 2.13.0+cpu

Usage:

    /work/bench_envs/scvi/bin/python benchmarks/external/run_scvi.py \
        --input data.h5ad --label-key cell_type --batch-key tech \
        --n-latent 10 --epochs 100 --seed 0 --output scvi.npz

Input: ``X`` = raw integer counts (CSR); ``obs`` has the label column, the batch column and
``split`` ("train" / "test").

Protocol:

* Reference: ``SCVI.setup_anndata(train, layer="counts", batch_key=batch)`` on the
  ``split == "train"`` cells only (``layers["counts"]`` = the input X), ``SCVI(train,
  n_latent=...)``, ``train(max_epochs=--epochs, batch_size=--batch-size, train_size=1.0)``:
  every training cell is used for fitting (scvi's own default, 0.9, would hold 10% out for a
  validation loss nobody reads here; pass ``--train-size 0.9`` for that). scVI is
  unsupervised: the labels are never used (no predictions; scANVI would be the labelled
  variant). Training cells' latent = ``get_latent_representation`` of the reference model
  (posterior means).
* Test cells (their batch may be new): the scArches route,
  ``SCVI.prepare_query_anndata(test, model)`` then ``SCVI.load_query_data(test, model)``
  (new batch categories appended; freezing defaults: only the new batch's weights train).
  ``--query-epochs`` (default 0) sets the query training: with 0, no query training at all
  (the model is only marked trained) and the test latent is the reference encoder's output.
  With scvi's default architecture (``encode_covariates=False``) the encoder does not see the
  batch, so query training cannot change the latent anyway; with ``--arch scarches``
  (``encode_covariates=True``, layer norm, no batch norm, dropout 0.2, 2 layers: the scArches
  tutorial's reference settings) query training (``plan_kwargs={'weight_decay': 0.0}``, as in
  the tutorial) learns the new batch's encoder / decoder columns.
* ``train_seconds`` = reference ``train()`` only; ``epoch_seconds`` = mean wall time of a
  training epoch measured by a Lightning callback; ``query_seconds`` saved separately.

scvi-tools defaults worth knowing (SCVI 1.4.2): n_latent 10, n_hidden 128, n_layers 1,
dropout 0.1, gene_likelihood 'zinb', dispersion 'gene', latent_distribution 'normal',
use_observed_lib_size True, batch norm in encoder and decoder, encode_covariates False;
training: Adam lr 1e-3, weight_decay 1e-6, eps 0.01, batch_size 128, train_size 0.9,
max_epochs = min(round(20000 / n_cells * 400), 400), KL warm-up over 400 epochs
(n_epochs_kl_warmup=400; short runs never reach full KL weight), no early stopping.
"""

from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np
import scipy.sparse as sp

from common import common_parser, write_result


def parse_args(argv=None):
    p = common_parser(__doc__.split("\n\n")[0], epochs=400)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--arch", choices=["default", "scarches"], default="default")
    p.add_argument("--train-size", type=float, default=1.0)
    p.add_argument("--query-epochs", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import anndata as ad
    import torch
    import scvi
    from lightning.pytorch.callbacks import Callback

    scvi.settings.seed = args.seed  # seeds python, numpy, torch (lightning seed_everything)
    scvi.settings.num_threads = max(1, args.threads)
    torch.set_num_threads(max(1, args.threads))
    scvi.settings.dl_num_workers = 0

    class EpochTimer(Callback):
        def __init__(self):
            self.times = []
            self._t0 = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if self._t0 is not None:
                self.times.append(time.perf_counter() - self._t0)

    adata = ad.read_h5ad(args.input)
    X = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(X, dtype=np.float32)
    adata.layers["counts"] = adata.X.copy()
    for key in (args.label_key, args.batch_key):
        adata.obs[key] = adata.obs[key].astype(str)
    split = adata.obs["split"].astype(str).to_numpy()
    is_train, is_test = split == "train", split == "test"
    if not (is_train | is_test).all():
        raise ValueError("obs['split'] must be 'train' or 'test'")
    train = adata[is_train].copy()
    test = adata[is_test].copy()
    test.obs[args.label_key] = "__unknown__"  # labels of test cells are never available

    arch = {}
    if args.arch == "scarches":
        arch = dict(use_layer_norm="both", use_batch_norm="none", encode_covariates=True,
                    dropout_rate=0.2, n_layers=2)
    scvi.model.SCVI.setup_anndata(train, layer="counts", batch_key=args.batch_key)
    model = scvi.model.SCVI(train, n_latent=args.n_latent, **arch)
    timer = EpochTimer()
    t0 = time.perf_counter()
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, train_size=args.train_size,
                accelerator="cpu", devices=1, callbacks=[timer], enable_progress_bar=False)
    train_seconds = time.perf_counter() - t0
    n_epochs_done = len(timer.times)
    epoch_seconds = float(np.mean(timer.times)) if timer.times else train_seconds / max(1, args.epochs)

    latent = np.zeros((adata.n_obs, args.n_latent), dtype=np.float32)
    latent[is_train] = model.get_latent_representation(train)

    query_seconds = 0.0
    new_batches = sorted(set(test.obs[args.batch_key]) - set(train.obs[args.batch_key]))
    if test.n_obs:
        t1 = time.perf_counter()
        scvi.model.SCVI.prepare_query_anndata(test, model)
        query = scvi.model.SCVI.load_query_data(test, model, accelerator="cpu")
        if args.query_epochs > 0:
            query.train(max_epochs=args.query_epochs, batch_size=args.batch_size,
                        train_size=1.0, plan_kwargs={"weight_decay": 0.0},
                        accelerator="cpu", devices=1, enable_progress_bar=False)
        else:
            query.is_trained = True  # no query training: use the reference weights as they are
        latent[is_test] = query.get_latent_representation(test)
        query_seconds = time.perf_counter() - t1

    notes = (
        f"scvi-tools {version('scvi-tools')} SCVI ({args.arch} architecture{' ' + str(arch) if arch else ''}); "
        f"torch {torch.__version__}; lightning {version('lightning')}. Reference trained on "
        f"{int(is_train.sum())} train cells (batch_key '{args.batch_key}', counts layer, labels "
        f"unused) for {n_epochs_done} epochs, batch {args.batch_size}, train_size "
        f"{args.train_size}, other settings scvi defaults. {int(is_test.sum())} test cells "
        f"(new batches: {new_batches}) mapped with scArches prepare_query_anndata / "
        f"load_query_data, "
        + (f"{args.query_epochs} query epochs (weight_decay 0)" if args.query_epochs > 0
           else "no query training")
        + f"; latent = posterior means ({args.n_latent} dims). Seed {args.seed}, torch threads "
        f"{torch.get_num_threads()}."
    )
    write_result(args.output, latent, adata.obs_names, train_seconds, epoch_seconds,
                 n_epochs_done, notes, query_seconds=float(query_seconds))


if __name__ == "__main__":
    main()
