"""The main job on built-in data: a small CRISPR-like screen simulated with known targets, sVAE+
and a VAE fitted to it, and one counterfactual checked against the simulator's own.

What it shows a new user, in order: which latents each perturbation hits (recovered targets
against the true ones), how well the latents themselves are recovered (sVAE+ against a VAE that
ignores the perturbations), and what the control cells would look like had they been perturbed
(the model's counterfactual against the simulator replayed on the same cells with the same
noise).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .data import CellData
from .infer import TrainingHistory, counterfactual, fit, latent, save
from .metrics import (match_latents, mean_correlation_coefficient, target_auroc,
                      target_precision_recall_f1)
from .models import SparseShiftVAE, target_probabilities
from .simulate.sparse_shift import CONTROL, sparse_shift

#: obsm keys of the two models' latents in ``demo.h5ad``
LATENT_KEYS = {"svae+": "X_svae_plus", "vae": "X_vae"}


@dataclass
class DemoSettings:
    """Size of the simulated screen and of the fits (defaults: about a minute on 2 CPU cores).

    The defaults were chosen on simulation seeds 1, 2 and 3 (the demo reports seed 0): 6 latents,
    30 perturbations of 80 cells each hitting one or two of them, lambda 50 (a true target's
    probability settles near n / (n + lambda), about 0.6; lambda 30 recovered less), learning
    rate 3e-3 over 100 epochs with 30 of KL warm-up (1e-2 with 50 varied more between seeds).
    """

    n_latent: int = 6
    n_perturbations: int = 30
    n_cells_per_perturbation: int = 80
    n_control_cells: int = 300
    n_genes: int = 60
    max_targets: int = 2
    max_epochs: int = 100
    kl_warmup_epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 128
    n_hidden: int = 64
    sparsity_weight: float = 50.0
    n_counterfactual_samples: int = 10
    fit_vae: bool = True
    seed: int = 0
    device: str = "auto"
    progress: bool = True


@dataclass
class DemoResult:
    """Everything the demo computed; :func:`write_demo` turns it into files."""

    adata: ad.AnnData
    model: SparseShiftVAE
    histories: dict[str, TrainingHistory]
    targets: pd.DataFrame
    true_targets: pd.DataFrame
    assignment: np.ndarray
    predicted_lfc: np.ndarray
    true_lfc: np.ndarray
    metrics: dict


def composition(counts) -> np.ndarray:
    """Mean over cells of each cell's gene proportions, ``(n_genes,)``."""
    counts = np.asarray(counts, dtype=float)
    return (counts / counts.sum(1, keepdims=True)).mean(0)


def run_demo(settings: DemoSettings | None = None) -> DemoResult:
    """Simulate, fit sVAE+ (and a VAE), score targets and latents, and ask one counterfactual."""
    settings = settings or DemoSettings()
    s = settings
    adata, world, _ = sparse_shift(
        n_latent=s.n_latent, n_perturbations=s.n_perturbations,
        n_cells_per_perturbation=s.n_cells_per_perturbation, n_genes=s.n_genes,
        n_control_cells=s.n_control_cells, max_targets=s.max_targets, seed=s.seed,
        return_world=True)
    data = CellData.from_anndata(adata, perturbation_key="perturbation", control=CONTROL)
    z_true = np.asarray(adata.obsm["z_true"])
    names = list(adata.uns["perturbation_names"])
    order = [list(data.schema.perturbations).index(p) for p in names]

    histories, latents, seconds, model = {}, {}, {}, None
    for name, sparsity in (("svae+", "svae+"), ("vae", "vae")):
        if name == "vae" and not s.fit_vae:
            continue
        torch.manual_seed(s.seed)
        fitted = SparseShiftVAE(data.schema, n_latent=s.n_latent, n_hidden=s.n_hidden,
                                sparsity=sparsity, sparsity_weight=s.sparsity_weight)
        start = time.perf_counter()
        histories[name] = fit(fitted, data, max_epochs=s.max_epochs, batch_size=s.batch_size,
                              lr=s.lr, kl_warmup_epochs=s.kl_warmup_epochs, device=s.device,
                              seed=s.seed, progress=s.progress)
        seconds[name] = time.perf_counter() - start
        latents[name] = latent(fitted, data)
        model = fitted if name == "svae+" else model

    probabilities = target_probabilities(model)
    targets = probabilities.iloc[order]
    truth = pd.DataFrame(np.asarray(adata.uns["true_targets"], dtype=bool), index=names,
                         columns=[f"true z{k}" for k in range(s.n_latent)])
    assignment = match_latents(z_true, latents["svae+"], signed=False)
    prf = target_precision_recall_f1(truth.to_numpy(), targets.to_numpy() > 0.5, assignment)

    # the counterfactual: control cells under the perturbation with the most targets
    perturbation = names[int(np.argmax(truth.to_numpy().sum(1)))]
    control = adata[adata.obs["perturbation"] == CONTROL].copy()
    factual = counterfactual(model, control, {"perturbation": CONTROL},
                             n_samples=s.n_counterfactual_samples, seed=s.seed)
    predicted = counterfactual(model, control, {"perturbation": perturbation},
                               n_samples=s.n_counterfactual_samples, seed=s.seed)
    frozen = world.frozen(torch.as_tensor(z_true))
    z_control = torch.as_tensor(control.obsm["z_true"])
    shift = world.shifts[names.index(perturbation)]
    with torch.no_grad():
        true_lfc = np.log(composition(frozen.rates(z_control + shift).numpy())
                          / composition(frozen.rates(z_control).numpy()))
    predicted_lfc = np.log(composition(predicted.X) / composition(factual.X))

    metrics = {
        "simulation": {k: v for k, v in asdict(s).items()
                       if k in ("n_latent", "n_perturbations", "n_cells_per_perturbation",
                                "n_control_cells", "n_genes", "max_targets", "seed")},
        "n_cells": data.n_cells,
        "models": {},
        "targets": {
            "true_edges": int(truth.to_numpy().sum()),
            "recovered_edges": int(round(prf.recall * truth.to_numpy().sum())),
            "precision": prf.precision, "recall": prf.recall, "f1": prf.f1,
            "auroc": target_auroc(truth.to_numpy(), targets.to_numpy(), assignment),
            "latent_matching": "absolute correlation",
        },
        "counterfactual": {
            "cells": "control",
            "do": {"perturbation": perturbation},
            "lfc_correlation_with_simulator": float(np.corrcoef(predicted_lfc, true_lfc)[0, 1]),
            "n_samples": s.n_counterfactual_samples,
        },
    }
    for name, history in histories.items():
        metrics["models"][name] = {
            "mcc_pearson": mean_correlation_coefficient(z_true, latents[name]),
            "mcc_spearman": mean_correlation_coefficient(z_true, latents[name], "spearman"),
            "epochs": history.n_epochs,
            "train_elbo_per_cell": history.train_elbo[-1],
            "validation_elbo_per_cell": (history.validation_elbo[-1]
                                         if history.validation_elbo else None),
            "training_seconds": round(seconds[name], 2),
        }

    result = adata.copy()
    for name, z in latents.items():
        result.obsm[LATENT_KEYS[name]] = z
    return DemoResult(adata=result, model=model, histories=histories, targets=targets,
                      true_targets=truth, assignment=assignment, predicted_lfc=predicted_lfc,
                      true_lfc=true_lfc, metrics=metrics)


def write_demo(result: DemoResult, out: Path) -> None:
    """Write the demo's figures, tables, model and cells into the existing folder ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot_elbo, plot_fold_change_agreement, plot_latent, plot_targets

    out = Path(out)
    figure, axes = plt.subplots(1, len(result.histories), figsize=(5 * len(result.histories), 3.5),
                                squeeze=False)
    for ax, (name, history) in zip(axes[0], result.histories.items()):
        plot_elbo(history, ax=ax)
        ax.set_title(name)
    figure.tight_layout()
    figure.savefig(out / "elbo.png", dpi=120)
    plt.close(figure)

    figure = plot_latent(result.adata.obsm[LATENT_KEYS["svae+"]],
                         {"perturbation": result.adata.obs["perturbation"]},
                         title="sVAE+ latents")
    figure.savefig(out / "latent.png", dpi=120)
    plt.close(figure)

    figure = plot_targets(result.targets, result.true_targets, assignment=result.assignment,
                          title="sVAE+ target probability")
    figure.savefig(out / "targets.png", dpi=120)
    plt.close(figure)

    do = result.metrics["counterfactual"]["do"]["perturbation"]
    figure = plot_fold_change_agreement(
        result.predicted_lfc, result.true_lfc, genes=list(result.adata.var_names),
        labels=("sVAE+ counterfactual", "simulator's counterfactual"),
        title=f"control cells had they received {do}: log fold change of each gene's share")
    figure.savefig(out / "counterfactual.png", dpi=120)
    plt.close(figure)

    result.targets.to_csv(out / "target_probabilities.csv")
    pd.concat([h.to_dataframe().assign(model=name) for name, h in result.histories.items()]
              ).to_csv(out / "history.csv", index=False)
    save(result.model, out / "model.pt")
    result.adata.write_h5ad(out / "demo.h5ad")
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
