"""Run the published biolord (Piran, Cohen, Hoshen & Nitzan 2024, Nat. Biotechnol.; PyPI
``biolord``, nitzanlab/biolord) for the benchmark, in its own virtual environment:
counterfactual IFN-beta response of a held-out cell type. Never imports pyro_causalcell.

Environment (recreate exactly). The registry serves biolord 0.0.3 as its newest release; it
declares unpinned ``scvi-tools``, ``torch``, ``anndata``, ``scanpy`` and runs on the newest
scvi-tools the registry serves (1.4.2, lightning 2.6) with the local torch 2.13 CPU build, so a
plain install (torch pinned) works; no ``--no-deps`` needed:

    python3 -m venv /work/bench_envs/biolord
    /work/bench_envs/biolord/bin/pip install torch==2.13.0      # CPU build; never plain `pip install torch`
    /work/bench_envs/biolord/bin/pip install torch==2.13.0 biolord==0.0.3
    # resolved: biolord 0.0.3, scvi-tools 1.4.2, lightning / pytorch-lightning 2.6.6,
    #           torchmetrics 1.9.0, torch 2.13.0+cpu, anndata 0.12.19, scanpy 1.11.5,
    #           pandas 2.3.3, numpy 2.4.6, scipy 1.17.1, scikit-learn 1.9.1, pyro-ppl 1.9.2
    # logs: /work/bench_envs/biolord_torch.log, /work/bench_envs/biolord_pkg.log
    # `pip check`: no broken requirements.

Usage:

    /work/bench_envs/biolord/bin/python benchmarks/external/run_biolord.py \
        --input data.h5ad --perturbation-key condition --control ctrl \
        --covariate-key cell_type --held-out-type "CD14+ Monocytes" \
        --epochs 500 --seed 0 --output biolord.npz [--threads 2]

Input: ``X`` = raw integer counts (CSR); ``obs`` has the perturbation column (control value
``--control``, one other value, e.g. 'stim'), the covariate column (cell type) and ``split``
("train" / "held_out"; held_out = the perturbed cells of the held-out type).

Protocol (what the script does, and why):

* Only ``split == "train"`` cells are given to biolord (the held-out cells are dropped before
  the package sees anything). biolord has no Kang / IFN-beta tutorial; its documented route to
  an unseen (cell type, perturbation) combination is the one of its perturbation experiments
  (biolord_reproducibility scripts/biolord/sciplex3: predictions for 'ood' drug / cell-line
  pairs start from control cells): take CONTROL cells of the target context, change the
  perturbation attribute, decode; its basic pipeline tutorial
  (docs/tutorials/biolord_pipeline.ipynb, Plasmodium liver-stage atlas, log-normalised X,
  ``split_key="split_random"``) does the same with ``compute_prediction_adata(adata,
  adata_source, target_attributes=["status_control"])``. Settings are that tutorial's
  (``module_params``, ``trainer_params``, ``model.train(...)`` as in its 0.0.2+ version;
  ``n_latent=32``):
* Data: ``--gene-likelihood normal`` (default, as in the tutorials, whose AnnData are
  log-normalised): X = log1p(counts / total * 1e4) of the training cells, dense float32, and
  biolord's Gaussian decoder (loss = Gaussian NLL + 1e2 * MSE on that scale).
  ``--gene-likelihood nb``: raw counts in a ``counts`` layer (``setup_anndata(layer=...)``,
  scvi's ``DecoderSCVI``: softmax scale times the cell's observed library size, gene-wise
  dispersion); note biolord still adds ``reconstruction_penalty`` (1e2) * MSE between the NB
  means and the raw counts to the NB likelihood.
* ``Biolord.setup_anndata(train, ordered_attributes_keys=None,
  categorical_attributes_keys=[<cell type>, <perturbation>])``.
  ``Biolord(train, n_latent=32, module_params=MODULE_PARAMS, split_key=<split>,
  train_split="train", valid_split="test", test_split="ood")``. biolord is an auto-decoder:
  every training cell's "unknown attributes" latent is a free embedding (``nn.Embedding``
  indexed by the cell's row, Gaussian noise ``unknown_attribute_noise_param`` added in
  training, L2 penalty ``unknown_attribute_penalty``), the known attributes are learned
  category embeddings, and the decoder sees [cell latent, cell-type embedding, perturbation
  embedding]. Cells in biolord's validation split never get their embedding trained (no
  optimiser step on them), so the validation split (``--val-fraction``, default 0.1, random;
  the tutorial's data come with a random split column) is drawn only among training cells
  that are NOT the held-out type's control cells: those are the cells the counterfactual
  starts from.
* ``model.train(max_epochs=--epochs (tutorial 500), batch_size=512, plan_kwargs=
  TRAINER_PARAMS, early_stopping=True, early_stopping_patience=20, check_val_every_n_epoch=10,
  enable_checkpointing=False)`` as in the tutorial (its ``num_workers=1`` is replaced by 0:
  loading in the main process, same batches). Early stopping (scvi-tools' LoudEarlyStopping)
  monitors ``val_biolord_metric`` (mean of the validation R2 of per-group gene means and
  variances; higher is better); patience counts validation checks (20 checks x 10 epochs);
  it does not restore earlier weights: the last epoch's are used. Module seed = ``--seed``
  (tutorial 42) and ``scvi.settings.seed = --seed``. Package behaviour worth knowing: the
  learning-rate scheduler is stepped only every ``step_size_lr`` (45) epochs, so with
  ``cosine_scheduler`` (T_max = scheduler_max_epochs = 1000 steps) the learning rates stay
  essentially constant over 500 epochs.
* Counterfactual (the package's ``compute_prediction_adata``): ``adata_source`` = the
  held-out type's CONTROL training cells (their own learned latents and cell-type embedding),
  target attribute = the perturbation; biolord decodes each source cell under every
  perturbation category (a category's embedding is taken from the training cells that carry
  it). ``predicted`` = the block for the non-control perturbation, rows in the source cells'
  obs order (checked by name). With the Gaussian likelihood it is the decoder mean on the
  log1p CP10k scale, NOT renormalised per cell and possibly < 0 (left as is; ``notes`` says
  how many entries); with ``nb`` it is the NB mean (expected counts at the cell's own library
  size), which the script normalises to 1e4 per cell and log1p's (as run_cpa.py does).
  ``predicted_ctrl`` = the same cells decoded under the control label (reconstruction).
* Smoke test (shared/data kang2018_ifnb_muscat_example.h5ad, 1,556 x 1,267; split 'held_out'
  for the 200 stim CD14+ Monocytes; 2 threads): ``--epochs 10`` (normal and nb), ``100`` and
  ``500`` run, ``predicted`` (200, 1267); identical output on reruns with the same seed.
  ``--epochs 500`` (the tutorial's settings) ran 480 epochs (early stopping: best
  val_biolord_metric 0.773 at epoch index 279, 0.713 at the end), 573 s of training with
  another job on the 2 cores (epochs took 0.3 s when the machine was idle, up to 4 s when
  not). Held-out CD14+ monocytes, log1p CP10k: ISG15 mean observed 0.46 (ctrl) / 6.12 (stim),
  biolord 3.54; R2 (squared Pearson r) of per-gene means, predicted vs observed stim, 0.28
  (observed ctrl vs stim: 0.52). The reconstruction of the same cells under 'ctrl' is nearly
  exact (R2 of means 0.999), but the predicted shift captures mainly generic ISGs (ISG15 +3.1
  vs observed +5.7) and not the monocyte-specific ones (CXCL10 observed +4.8, biolord 0.0);
  13% of the predicted entries are < 0 (min -1.37). Same seed, other settings (ISG15 / R2):
  normal 10 epochs 2.30 / 0.40, 100 epochs 3.23 / 0.21; nb 10 epochs 4.26 / 0.52, 100
  epochs 4.89 / 0.59, 500 (stopped at 470; best val_biolord_metric 0.838 at epoch 269)
  3.65 / 0.22: longer training fits the training cells better and transfers the response
  worse. With nb every entry is > 0 (log1p of expected CP10k, so genes that are mostly zero
  sit above the observed mean of log1p values).
* biolord 0.0.3 defaults worth knowing (what the tutorial overrides): ``Biolord(n_latent=128)``
  (module default 32); module: n_latent_attribute_categorical 4, n_latent_attribute_ordered
  16, gene_likelihood 'normal', reconstruction_penalty 1e2, unknown_attribute_penalty 1e1,
  unknown_attribute_noise_param 1e-1, decoder 4 x 512 with ReLU, batch norm on, layer norm
  off, no decoder dropout (scvi's ``Decoder`` hard-codes 0; ``attribute_dropout_rate`` only
  acts on ordered-attribute networks, of which there are none here), ordered-attribute nets
  2 x 256; plan: Adam per block, latent / decoder / categorical-embedding lr 1e-4 and wd
  1e-4, ordered nets lr = latent_lr, StepLR(45) (or CosineAnnealingLR(T_max 1000) if
  ``cosine_scheduler``), stepped only every ``step_size_lr`` epochs; ``train``: max_epochs
  min(round(20000 / n_cells * 400), 400), batch 128, train_size 0.9, no early stopping,
  validation every epoch, checkpoints every 20 epochs under ./biolord_log/.
* ``train_seconds`` = wall time of ``model.train``; ``epoch_seconds`` = mean wall time of one
  training epoch measured by a lightning callback (includes the validation pass on epochs
  that run one).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from importlib.metadata import version

from common import (epoch_timer, held_out_response_input, limit_threads, log1p_cp10k,
                    response_parser, seed_everything)


def parse_args(argv=None):
    p = response_parser(__doc__.split("\n\n")[0], 500, "max_epochs (tutorial: 500)")
    p.add_argument("--batch-size", type=int, default=512, help="tutorial: 512")
    p.add_argument("--n-latent", type=int, default=32, help="tutorial: 32")
    p.add_argument("--gene-likelihood", choices=["normal", "nb"], default="normal",
                   help="normal on log1p CP10k (tutorial) or nb on raw counts")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training cells used as biolord's validation split")
    p.add_argument("--check-val-every", type=int, default=10, help="tutorial: 10")
    p.add_argument("--early-stopping-patience", type=int, default=20, help="tutorial: 20")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="train exactly --epochs epochs (the tutorial uses early stopping)")
    return p.parse_args(argv)


# The package's basic-pipeline tutorial settings (docs/tutorials/biolord_pipeline.ipynb),
# seed replaced by --seed and gene_likelihood by --gene-likelihood.
MODULE_PARAMS = {
    "decoder_width": 1024,
    "decoder_depth": 4,
    "attribute_nn_width": 512,
    "attribute_nn_depth": 2,
    "n_latent_attribute_categorical": 4,
    "gene_likelihood": "normal",
    "reconstruction_penalty": 1e2,
    "unknown_attribute_penalty": 1e1,
    "unknown_attribute_noise_param": 1e-1,
    "attribute_dropout_rate": 0.1,
    "use_batch_norm": False,
    "use_layer_norm": False,
}
TRAINER_PARAMS = {
    "n_epochs_warmup": 0,
    "latent_lr": 1e-4,
    "latent_wd": 1e-4,
    "decoder_lr": 1e-4,
    "decoder_wd": 1e-4,
    "attribute_nn_lr": 1e-2,
    "attribute_nn_wd": 4e-8,
    "step_size_lr": 45,
    "cosine_scheduler": True,
    "scheduler_final_lr": 1e-5,
}



def main(argv=None):
    args = parse_args(argv)
    n_threads = limit_threads(args.threads)

    import numpy as np
    import scipy.sparse as sp
    import torch

    seed_everything(args.seed, n_threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import biolord
        import scvi
        from lightning.pytorch.callbacks import Callback

    scvi.settings.seed = args.seed  # lightning's seed_everything
    scvi.settings.dl_num_workers = 0
    logdir = tempfile.mkdtemp(prefix="biolord_logs_")
    scvi.settings.logging_dir = logdir

    train, target, others, query_mask = held_out_response_input(args, np.float64)
    pk, ck = args.perturbation_key, args.covariate_key

    # biolord's own train / validation split, random, never among the source (query) cells.
    rng = np.random.default_rng(args.seed)
    n = train.n_obs
    pool = np.flatnonzero(~query_mask)
    n_val = int(round(args.val_fraction * n))
    bs = args.batch_size
    # a 1-cell batch breaks biolord's squeeze() of the latents
    while n_val > 0 and ((n - n_val) % bs == 1 or n_val % bs == 1):
        n_val += 1
    if n_val < 3 or n_val > len(pool):
        raise ValueError("validation split impossible: change --val-fraction")
    val_idx = rng.choice(pool, n_val, replace=False)
    bl_split = np.full(n, "train", dtype=object)
    bl_split[val_idx] = "test"
    train.obs["_biolord_split"] = bl_split

    module_params = dict(MODULE_PARAMS, gene_likelihood=args.gene_likelihood, seed=args.seed)
    counts = train.X.tocsr().astype(np.float32)
    if args.gene_likelihood == "normal":
        tot = np.asarray(counts.sum(axis=1)).ravel()
        Xn = (sp.diags(1e4 / np.maximum(tot, 1e-12)) @ counts.astype(np.float64)).tocsr()
        Xn.data = np.log1p(Xn.data)
        train.X = np.asarray(Xn.todense(), dtype=np.float32)
        layer = None
    else:
        train.layers["counts"] = np.asarray(counts.todense(), dtype=np.float32)
        train.X = train.layers["counts"].copy()
        layer = "counts"

    biolord.Biolord.setup_anndata(
        train,
        ordered_attributes_keys=None,
        categorical_attributes_keys=[ck, pk],
        layer=layer,
    )
    model = biolord.Biolord(
        adata=train,
        n_latent=args.n_latent,
        model_name="benchmark",
        module_params=module_params,
        train_classifiers=False,
        split_key="_biolord_split",
        train_split="train",
        valid_split="test",
        test_split="ood",
    )

    timer = epoch_timer(Callback, "val_biolord_metric")
    early = not args.no_early_stopping
    check_every = max(1, min(args.check_val_every, args.epochs))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=args.epochs,
            batch_size=bs,
            plan_kwargs=dict(TRAINER_PARAMS),
            early_stopping=early,
            early_stopping_patience=args.early_stopping_patience,
            check_val_every_n_epoch=check_every,
            num_workers=0,
            enable_checkpointing=False,
            accelerator="cpu",
            device=1,
            callbacks=[timer],
            enable_progress_bar=args.progress,
            default_root_dir=logdir,
        )
    train_seconds = time.perf_counter() - t0
    n_epochs_done = len(timer.times)
    epoch_seconds = float(np.mean(timer.times)) if timer.times else train_seconds / max(1, args.epochs)
    model.module.eval()

    # Counterfactual: the held-out type's control cells, decoded under every perturbation.
    query = train[query_mask].copy()
    query_names = np.asarray(query.obs_names).astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = model.compute_prediction_adata(train, query, target_attributes=[pk])
    out = {}
    for label, name in ((target, "predicted"), (args.control, "predicted_ctrl")):
        block = preds[(preds.obs[pk].astype(str) == label).to_numpy()]
        expected = np.array([f"{o}_{label}" for o in query_names])
        if not np.array_equal(np.asarray(block.obs_names).astype(str), expected):
            raise RuntimeError(f"unexpected prediction rows for {label!r}")
        mu = np.asarray(block.X.toarray() if sp.issparse(block.X) else block.X, dtype=np.float64)
        if args.gene_likelihood == "nb":
            out[name] = log1p_cp10k(mu)
            if name == "predicted":
                out["predicted_nb_mean_counts_total"] = mu.sum(1).astype(np.float32)
        else:
            out[name] = mu.astype(np.float32)
    n_neg = int((out["predicted"] < 0).sum())

    hist = model.training_plan.epoch_history
    val_hist = [(int(e), float(v)) for e, m, v in
                zip(hist["epoch"], hist["mode"], hist["biolord_metric"]) if m == "valid"]
    if args.gene_likelihood == "nb":
        scale_note = ("NB means (expected counts at the cell's own library size) normalised to "
                      "1e4 per cell, log1p")
    else:
        scale_note = (f"Gaussian decoder means on the log1p CP10k scale it was trained on, not "
                      f"renormalised, {n_neg} entries < 0 left as they are")
    notes = (
        f"biolord {version('biolord')}, scvi-tools {scvi.__version__}, lightning "
        f"{version('lightning')}, torch {torch.__version__}, anndata {version('anndata')}. "
        f"Fitted on {n - n_val} train cells + {n_val} validation cells (random {args.val_fraction:g} "
        f"of split=='train', never the '{args.held_out_type}' {args.control} source cells; "
        f"held-out cells never given to the package); X = "
        + ("log1p(counts / total * 1e4)" if args.gene_likelihood == "normal" else "raw counts (layer)")
        + f". categorical attributes ['{ck}', '{pk}'], n_latent {args.n_latent}, module "
        f"{module_params}; plan {TRAINER_PARAMS}; batch {bs}, max_epochs {args.epochs}, "
        f"early_stopping {early} (patience {args.early_stopping_patience} checks on "
        f"val_biolord_metric, validation every {check_every} epochs). Ran {n_epochs_done} epochs "
        f"(last epoch's weights); last validation biolord_metric "
        f"{val_hist[-1][1] if val_hist else float('nan'):.4f}. predicted = "
        f"compute_prediction_adata for the {len(query_names)} '{args.held_out_type}' "
        f"{args.control} training cells with '{pk}' set to '{target}': {scale_note}. "
        f"predicted_ctrl = same cells under '{args.control}'. Torch threads "
        f"{torch.get_num_threads()}."
    )
    extra = {}
    if "predicted_nb_mean_counts_total" in out:
        extra["predicted_nb_mean_counts_total"] = out["predicted_nb_mean_counts_total"]
    np.savez(
        args.output,
        predicted=out["predicted"],
        predicted_ctrl=out["predicted_ctrl"],
        obs_names=query_names,
        var_names=np.asarray(train.var_names).astype(str),
        train_seconds=float(train_seconds),
        epoch_seconds=float(epoch_seconds),
        epoch_seconds_all=np.asarray(timer.times, dtype=float),
        n_epochs=int(n_epochs_done),
        val_biolord_metric=np.asarray(val_hist, dtype=float).reshape(-1, 2),
        perturbation=str(target),
        gene_likelihood=str(args.gene_likelihood),
        notes=notes,
        **extra,
    )
    shutil.rmtree(logdir, ignore_errors=True)
    print(notes)
    print(f"wrote {args.output}: predicted {out['predicted'].shape} (biolord, log1p CP10k scale, "
          f"for '{args.held_out_type}' {args.control} cells under '{target}'), "
          f"{n_epochs_done} epochs, train {train_seconds:.2f}s, {epoch_seconds:.3f}s/epoch")


if __name__ == "__main__":
    sys.exit(main())
