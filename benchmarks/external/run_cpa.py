"""Run the published CPA (Compositional Perturbation Autoencoder; Lotfollahi et al. 2023, Mol.
Syst. Biol.; PyPI ``cpa-tools``, import ``cpa``, theislab/cpa) for the benchmark, in its own
virtual environment: counterfactual IFN-beta response of a held-out cell type. Never imports
pyro_causalcell.

Environment (recreate exactly). The registry serves cpa-tools 0.8.1 as its newest release
(0.8.2+ are not there). cpa-tools 0.8.1 declares ``torch<2.0`` and ``scvi-tools>=0.20.3,<1.0``;
torch 1.x would mean a multi-GB CUDA download, so torch stays at the local 2.13 CPU build and
cpa-tools is installed with ``--no-deps`` (it runs on torch 2.13: see "Smoke test" below).
scvi-tools 0.20.3 needs pytorch-lightning 1.9 (CPA's training plan uses the
``training_epoch_end`` hooks that lightning 2 removed), a jax old enough to still have
``jaxlib.xla_extension`` (jax 0.4.23), scipy<1.13 (jax 0.4.23 wraps ``scipy.linalg.tril``),
setuptools<81 (lightning_fabric 1.9 imports ``pkg_resources``) and ``requests``:

    python3 -m venv /work/bench_envs/cpa
    /work/bench_envs/cpa/bin/pip install torch==2.13.0          # CPU build; never plain `pip install torch`
    /work/bench_envs/cpa/bin/pip install torch==2.13.0 scvi-tools==0.20.3 "numpy<2" "anndata<0.10" \
        "scanpy<1.10" "pandas<2.1" adjustText rdkit seaborn
    /work/bench_envs/cpa/bin/pip install --no-deps cpa-tools==0.8.1
    /work/bench_envs/cpa/bin/pip install "setuptools<81" requests
    /work/bench_envs/cpa/bin/pip install torch==2.13.0 "numpy<2" "jax==0.4.23" "jaxlib==0.4.23" \
        "flax<0.8" "optax<0.2" "chex<0.1.86" "numpyro<0.14" "orbax-checkpoint<0.5"
    /work/bench_envs/cpa/bin/pip install torch==2.13.0 "numpy<2" "scipy<1.13"
    # resolved: cpa-tools 0.8.1, scvi-tools 0.20.3, pytorch-lightning 1.9.5, torchmetrics 1.9.0,
    #           torch 2.13.0+cpu, anndata 0.9.2, scanpy 1.9.8, pandas 2.0.3, numpy 1.26.4,
    #           scipy 1.12.0, scikit-learn 1.9.1, jax/jaxlib 0.4.23, flax 0.7.5, optax 0.1.9,
    #           chex 0.1.85, numpyro 0.13.2, pyro-ppl 1.9.2, rdkit 2026.9.1, setuptools 80.10.2
    # `pip check` then reports only cpa-tools' unmet dev/doc requirements (black, flake8,
    # jupyter, pytest, rdkit-pypi -> `rdkit` provides the same module, ...) and torch<2.0.

Usage:

    /work/bench_envs/cpa/bin/python benchmarks/external/run_cpa.py \
        --input data.h5ad --perturbation-key condition --control ctrl \
        --covariate-key cell_type --held-out-type "CD14+ Monocytes" \
        --epochs 100 --seed 0 --output cpa.npz [--threads 2]

Input: ``X`` = raw integer counts (CSR); ``obs`` has the perturbation column (control value
``--control``, one other value, e.g. 'stim'), the covariate column (cell type) and ``split``
("train" / "held_out"; held_out = the perturbed cells of the held-out type).

Protocol (what the script does, and why):

* Only ``split == "train"`` cells are given to CPA (the held-out cells are dropped before the
  package sees anything). A random ``--val-fraction`` (default 0.1) of them becomes CPA's own
  validation split (``split_key`` with train/valid; no 'ood' cells), used by the package for
  its validation metric, early stopping and best-state restore.
* Setup as the package's Kang tutorial (docs/tutorials/Kang.ipynb): ``setup_anndata(
  perturbation_key=..., control_group=..., categorical_covariate_keys=[cell type],
  is_count_data=True, max_comb_len=1)``, dosage 1.0 for every cell; no ``deg_uns_key`` (the
  tutorial passes scanpy DEG lists; they only mask genes in the validation R2 metric).
  cpa-tools 0.8.1's ``setup_anndata`` crashes without a ``smiles_key`` (it looks up
  ``adata.obs[None]`` to build a drug -> SMILES map for rdkit embeddings, which are off);
  the script sets ``CPA.pert_smiles_map = {}`` first so that step is skipped.
  Model: the tutorial's ``model_params`` (n_latent 64, ``recon_loss="nb"`` = negative
  binomial on raw counts, doser 'linear', encoder 2x128 with batch norm, decoder 2x512 with
  layer norm and dropout 0.1, variational False) with ``seed=--seed``; training plan: the
  tutorial's ``trainer_params`` (AE pretraining 30 epochs, adversary warm-up 50 epochs,
  reg_adv 20, pen_adv 5, lr 3e-4, wd 4e-7, grad clip 1, step_size_lr 10, ...), batch 512,
  ``check_val_every_n_epoch=5``, ``early_stopping_patience=5`` (validation checks).
* Package behaviour worth knowing: CPA's ``train`` always adds scvi's ``SaveBestState``
  callback, which stores the weights at train start and at each validation check that
  improves ``cpa_metric``, and LOADS the best stored weights at the end of training. If no
  validation check ran, the untrained weights come back; so the script uses
  ``check_val_every_n_epoch = min(5, --epochs)``. Epochs after the last improving check are
  discarded (``best_val_epoch`` in the output says which epoch's weights are used).
  Early stopping on ``cpa_metric`` (higher is better) may end training before ``--epochs``;
  ``n_epochs`` is what actually ran.
* Counterfactual (the package's own route, as in its tutorials: "set adata.X to control
  cells, keep the perturbation labels, call ``model.predict``"): the held-out type's CONTROL
  cells (split train, covariate == held-out type, perturbation == control; they are in the
  training data, as in the tutorial's context-transfer setting) are copied, their
  perturbation is set to the non-control value (``--perturbation``, default: the single
  non-control value among the training cells) in ``obs`` and in CPA's ``obsm`` encoding
  (``perts`` index, dose 1.0), and ``model.predict`` is called. With the NB loss, ``predict``
  returns the NB means ``px.mu`` (``adata.obsm['CPA_pred']``): expected COUNTS, at the input
  cell's own library size (CPA's library = log of the cell's total counts). As in the
  package's tutorials (``sc.pp.normalize_total(target_sum=1e4)``, ``sc.pp.log1p`` on
  ``CPA_pred``), ``predicted`` = log1p(mu / sum(mu) * 1e4) per cell. CPA's combined category
  column (``CPA_cat`` = cell type + perturbation, used only by the validation metric) is set
  to the held-out type's control category for these cells, because the held-out type's
  perturbed category was never registered; ``predict`` does not read it.
* ``predicted_ctrl``: the same cells predicted under their true (control) label, same
  normalisation: CPA's reconstruction, useful for CPA's predicted log-fold change.
* Smoke test (shared/data kang2018_ifnb_muscat_example.h5ad, 1,556 x 1,267; split = 'held_out'
  for the 200 stim CD14+ Monocytes; 2 threads): ``--epochs 3`` and ``--epochs 30`` run,
  ``predicted`` (200, 1267); identical output on reruns with the same seed. 30 epochs:
  0.185 s/epoch on an idle machine (6.1 s training); with 30 epochs the run is still in the
  AE pre-training phase (adversaries start after epoch 30). Predicted CD14+ monocyte
  log-CP10k mean for ISG15: control 0.46 observed, stim 6.12 observed, CPA 4.32.
* ``train_seconds`` = wall time of ``model.train``; ``epoch_seconds`` = mean wall time of one
  training epoch measured by a lightning callback from train-epoch start to train-epoch end
  (this includes the validation pass on epochs that run one).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from importlib.metadata import version

from common import (epoch_timer, held_out_response_input, limit_threads, log1p_cp10k,
                    response_parser, seed_everything)


def parse_args(argv=None):
    p = response_parser(__doc__.split("\n\n")[0], 2000, "max_epochs (tutorial: 2000)")
    p.add_argument("--batch-size", type=int, default=512, help="tutorial: 512")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training cells used as CPA's validation split")
    p.add_argument("--check-val-every", type=int, default=5, help="tutorial: 5")
    p.add_argument("--early-stopping-patience", type=int, default=5, help="tutorial: 5")
    return p.parse_args(argv)


# The package's Kang tutorial settings (docs/tutorials/Kang.ipynb), seed replaced by --seed.
MODEL_PARAMS = {
    "n_latent": 64,
    "recon_loss": "nb",
    "doser_type": "linear",
    "n_hidden_encoder": 128,
    "n_layers_encoder": 2,
    "n_hidden_decoder": 512,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": True,
    "dropout_rate_encoder": 0.0,
    "dropout_rate_decoder": 0.1,
    "variational": False,
}
TRAINER_PARAMS = {
    "n_epochs_kl_warmup": None,
    "n_epochs_pretrain_ae": 30,
    "n_epochs_adv_warmup": 50,
    "n_epochs_mixup_warmup": 0,
    "mixup_alpha": 0.0,
    "adv_steps": None,
    "n_hidden_adv": 64,
    "n_layers_adv": 3,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.3,
    "reg_adv": 20.0,
    "pen_adv": 5.0,
    "lr": 0.0003,
    "wd": 4e-07,
    "adv_lr": 0.0003,
    "adv_wd": 4e-07,
    "adv_loss": "cce",
    "doser_lr": 0.0003,
    "doser_wd": 4e-07,
    "do_clip_grad": True,
    "gradient_clip_value": 1.0,
    "step_size_lr": 10,
}



def main(argv=None):
    args = parse_args(argv)
    n_threads = limit_threads(args.threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # scvi-tools 0.20 imports jax

    import numpy as np
    import torch

    seed_everything(args.seed, n_threads)

    import cpa
    import scvi
    from pytorch_lightning.callbacks import Callback

    scvi.settings.seed = args.seed  # lightning's seed_everything
    logdir = tempfile.mkdtemp(prefix="cpa_logs_")
    scvi.settings.logging_dir = logdir

    train, target, others, query_mask = held_out_response_input(args, np.float32)
    pk, ck = args.perturbation_key, args.covariate_key

    # CPA's own train / validation split, random, among the training cells only.
    rng = np.random.default_rng(args.seed)
    n = train.n_obs
    n_val = int(round(args.val_fraction * n))
    bs = args.batch_size
    # BatchNorm cannot train on a 1-cell batch; CPA's validation k-NN needs >= 2 cells per batch
    while n_val > 0 and ((n - n_val) % bs == 1 or n_val % bs == 1):
        n_val += 1
    if n_val < 2:
        raise ValueError("validation split too small: raise --val-fraction")
    val_idx = rng.choice(n, n_val, replace=False)
    cpa_split = np.full(n, "train", dtype=object)
    cpa_split[val_idx] = "valid"
    train.obs["_cpa_split"] = cpa_split

    # cpa-tools 0.8.1 bug: setup_anndata with no smiles_key crashes (KeyError: None) while it
    # builds its drug -> SMILES map (only used for rdkit drug embeddings, off here); an empty
    # map set beforehand makes it skip that step, nothing else changes.
    cpa.CPA.pert_smiles_map = {}
    cpa.CPA.setup_anndata(
        train,
        perturbation_key=pk,
        control_group=args.control,
        dosage_key=None,  # -> 'CPA_dose_val' = 1.0 for every cell (the tutorial's 'dose')
        categorical_covariate_keys=[ck],
        is_count_data=True,
        max_comb_len=1,
    )
    model = cpa.CPA(
        adata=train,
        split_key="_cpa_split",
        train_split="train",
        valid_split="valid",
        test_split="ood",
        seed=args.seed,
        **MODEL_PARAMS,
    )

    timer = epoch_timer(Callback, "cpa_metric")
    check_every = max(1, min(args.check_val_every, args.epochs))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        model.train(
            max_epochs=args.epochs,
            use_gpu=False,
            batch_size=bs,
            plan_kwargs=dict(TRAINER_PARAMS),
            early_stopping_patience=args.early_stopping_patience,
            check_val_every_n_epoch=check_every,
            save_path=False,
            callbacks=[timer],
            enable_progress_bar=args.progress,
        )
    train_seconds = time.perf_counter() - t0
    n_epochs_done = len(timer.times)
    epoch_seconds = float(np.mean(timer.times)) if timer.times else train_seconds / max(1, args.epochs)
    # SaveBestState: the first validated epoch (> 0) that improved cpa_metric the most
    best_epoch, best_val = -1, -np.inf
    for ep, val in timer.val:
        if ep > 0 and val > best_val:
            best_epoch, best_val = ep, val

    # Counterfactual: the held-out type's control cells, relabelled as perturbed.
    from cpa._utils import CPA_REGISTRY_KEYS as RK

    query = train[query_mask].copy()
    ctrl_category = f"{args.held_out_type}_{args.control}"
    out = {}
    for label, name in ((target, "predicted"), (args.control, "predicted_ctrl")):
        q = query.copy()
        q.obs[pk] = label
        q.obs[RK.PERTURBATION_DOSAGE_KEY] = "1.0"
        q.obs[RK.CONTROL_KEY] = int(label == args.control)
        q.obs[RK.CATEGORY_KEY] = ctrl_category  # unused by predict; must be a registered category
        q.obsm[RK.PERTURBATIONS] = np.full((q.n_obs, 1), model.pert_encoder[label], dtype=int)
        q.obsm[RK.PERTURBATIONS_DOSAGES] = np.ones((q.n_obs, 1), dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            model.predict(q, batch_size=bs)
        out[name] = log1p_cp10k(q.obsm["CPA_pred"])
        if name == "predicted":
            out["predicted_nb_mean_counts_total"] = np.asarray(q.obsm["CPA_pred"]).sum(1).astype(np.float32)

    notes = (
        f"cpa-tools {version('cpa-tools')} (CPA), scvi-tools {scvi.__version__}, pytorch-lightning "
        f"{version('pytorch-lightning')}, torch {torch.__version__}, anndata {version('anndata')}. "
        f"Fitted on {n - n_val} train cells + {n_val} validation cells (random "
        f"{args.val_fraction:g} of split=='train'; held-out cells never given to the package); "
        f"perturbation '{pk}' (control '{args.control}'), covariate '{ck}', max_comb_len 1, dose "
        f"1.0. Kang-tutorial settings: {MODEL_PARAMS} (seed {args.seed}); plan {TRAINER_PARAMS}; "
        f"batch {bs}, max_epochs {args.epochs}, validation every {check_every} epochs, early "
        f"stopping patience {args.early_stopping_patience} checks on cpa_metric. Ran "
        f"{n_epochs_done} epochs; weights restored by SaveBestState from epoch index {best_epoch} "
        f"(-1 = untrained initial weights). predicted = model.predict on the "
        f"{int(query_mask.sum())} '{args.held_out_type}' {args.control} cells relabelled "
        f"'{target}': NB means (expected counts at the cell's own library size) normalised to "
        f"1e4 per cell, log1p. predicted_ctrl = same cells under '{args.control}'. Torch threads "
        f"{torch.get_num_threads()}."
    )
    np.savez(
        args.output,
        predicted=out["predicted"],
        predicted_ctrl=out["predicted_ctrl"],
        predicted_nb_mean_counts_total=out["predicted_nb_mean_counts_total"],
        obs_names=np.asarray(query.obs_names).astype(str),
        var_names=np.asarray(query.var_names).astype(str),
        train_seconds=float(train_seconds),
        epoch_seconds=float(epoch_seconds),
        epoch_seconds_all=np.asarray(timer.times, dtype=float),
        n_epochs=int(n_epochs_done),
        best_val_epoch=int(best_epoch),
        perturbation=str(target),
        notes=notes,
    )
    shutil.rmtree(logdir, ignore_errors=True)
    print(notes)
    print(f"wrote {args.output}: predicted {out['predicted'].shape} (log1p CP10k of CPA's NB means "
          f"for '{args.held_out_type}' {args.control} cells under '{target}'), "
          f"{n_epochs_done} epochs, train {train_seconds:.2f}s, {epoch_seconds:.3f}s/epoch")


if __name__ == "__main__":
    sys.exit(main())
