"""The ``causalcell`` command: ``causalcell demo`` and ``causalcell fit``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .infer.device import DeviceUnavailableError

MODELS = ("vae", "ivae", "svae", "svae+")

DESCRIPTION = """\
Causal and disentangled representation learning for single-cell counts.

  causalcell demo --out causalcell_demo
      simulate cell types in two batches, fit a VAE, write figures, metrics and latents.
  causalcell fit --model vae DATA.h5ad --out results --domain-key batch
      fit a model to your raw counts (AnnData .h5ad) and write the same outputs.
  causalcell fit --model svae+ DATA.h5ad --out results --perturbation-key guide --control NT
      sparse mechanism shift VAE: also writes each perturbation's target probabilities.
  causalcell benchmark sparse-shift --out bench
      the sVAE study's simulation benchmark (VAE, beta-VAE, iVAE, sVAE, sVAE+).

Run `causalcell <command> --help` for every option.
"""


def _add_training_options(parser: argparse.ArgumentParser, max_epochs: int) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--max-epochs", type=int, default=max_epochs, help="default: %(default)s")
    group.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate "
                       "(default: %(default)s)")
    group.add_argument("--kl-warmup-epochs", type=int, default=10,
                       help="epochs over which the KL weight rises to 1 (default: %(default)s)")
    group.add_argument("--validation-fraction", type=float, default=0.1,
                       help="cells held out for the validation ELBO (default: %(default)s)")
    group.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=False,
                       help="stop when the validation ELBO stops improving; keep the best epoch")
    group.add_argument("--patience", type=int, default=10, help="default: %(default)s")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    group.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--n-latent", type=int, default=10, help="default: %(default)s")
    group.add_argument("--n-hidden", type=int, default=128, help="default: %(default)s")
    group.add_argument("--n-layers", type=int, default=1, help="default: %(default)s")
    group.add_argument("--beta", type=float, default=1.0,
                       help="KL weight; > 1 gives a beta-VAE (default: %(default)s)")
    group.add_argument("--likelihood", choices=("nb", "zinb", "poisson"), default="nb",
                       help="count likelihood (default: %(default)s)")
    group.add_argument("--sparsity-weight", type=float, default=50.0,
                       help="svae / svae+ only: lambda, the L0 penalty (svae) or the "
                            "Beta(1, lambda) prior on target probabilities (svae+) "
                            "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causalcell", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{demo,fit,benchmark}")

    demo = commands.add_parser(
        "demo", help="fit a VAE to built-in simulated data and write a report",
        description="Simulate cells of several types in two technical batches (ground truth "
                    "known), fit a VAE that conditions on batch, and write elbo.png, latent.png, "
                    "metrics.json (ELBO, recovery of the true latents), history.csv, model.pt "
                    "and demo.h5ad (latents in obsm['X_vae']).")
    demo.add_argument("--out", type=Path, default=Path("causalcell_demo"),
                      help="output folder (default: %(default)s)")
    demo.add_argument("--n-cells", type=int, default=5000, help="default: %(default)s")
    demo.add_argument("--n-genes", type=int, default=300, help="default: %(default)s")
    _add_model_options(demo)
    _add_training_options(demo, max_epochs=100)
    demo.set_defaults(n_latent=5, early_stopping=True)

    fit = commands.add_parser(
        "fit", help="fit a model to an .h5ad file of raw counts",
        description="Fit a model to raw counts in an AnnData file and write model.pt, "
                    "history.csv, elbo.png, latent.png, metrics.json and <name>_<model>.h5ad (a copy of "
                    "the input with latents in obsm['X_<model>']). The input file is not "
                    "modified.")
    fit.add_argument("data", type=Path, help="AnnData .h5ad file with raw counts")
    fit.add_argument("--model", choices=MODELS, default="vae", help="default: %(default)s")
    fit.add_argument("--out", type=Path, required=True, help="output folder")
    keys = fit.add_argument_group("data keys (adata.obs columns)")
    keys.add_argument("--layer", help="layer with raw counts (default: X)")
    keys.add_argument("--perturbation-key", help="column with perturbations ('A+B' = both)")
    keys.add_argument("--control", help="value of --perturbation-key for control cells")
    keys.add_argument("--domain-key", help="column with technical domains (batch, donor)")
    keys.add_argument("--label-key", help="column with biological labels (cell type)")
    keys.add_argument("--dose-key", help="numeric column with doses")
    keys.add_argument("--library-key", help="numeric column with library sizes "
                      "(default: total counts)")
    _add_model_options(fit)
    _add_training_options(fit, max_epochs=100)
    _add_benchmark_parser(commands)
    return parser


def _add_benchmark_parser(commands) -> None:
    from .benchmarks.sparse_shift import MODELS as BENCHMARK_MODELS

    bench = commands.add_parser("benchmark", help="reproduce a published evaluation",
                                description="Reproduce a published evaluation end to end.")
    kinds = bench.add_subparsers(dest="benchmark", metavar="{sparse-shift}", required=True)
    sparse = kinds.add_parser(
        "sparse-shift", help="the sVAE study's simulation benchmark",
        description="Simulate the sVAE study's design (15 latents, 100 perturbations x 250 "
                    "cells, 100 genes), train on 80 perturbations, hold out 20, and for each "
                    "model write MCC, linear R^2, target precision / recall / F1 / AUROC, "
                    "held-out IWELBO after transfer and timings to table.csv and table.md, "
                    "with targets.png (learned vs true targets of the last sparse model) and "
                    "fitted.npz (each model's training-cell latents and target scores).")
    sparse.add_argument("--out", type=Path, default=Path("sparse_shift_benchmark"),
                        help="output folder (default: %(default)s)")
    sparse.add_argument("--models", default=",".join(BENCHMARK_MODELS),
                        help="comma-separated subset of %(default)s")
    sparse.add_argument("--max-epochs", type=int, default=300, help="default: %(default)s")
    sparse.add_argument("--transfer-epochs", type=int, default=100, help="default: %(default)s")
    sparse.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    sparse.add_argument("--lr", type=float, default=1e-2, help="default: %(default)s")
    sparse.add_argument("--kl-warmup-epochs", type=int, default=50, help="default: %(default)s")
    sparse.add_argument("--n-importance-samples", type=int, default=100,
                        help="importance samples per held-out cell (default: %(default)s)")
    sparse.add_argument("--quick", action="store_true",
                        help="a small simulation (6 latents, 20 perturbations x 100 cells) "
                             "that runs in about a minute, to check the set-up")
    sparse.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    sparse.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    sparse.add_argument("--quiet", action="store_true", help="no progress bars")


QUICK_SPARSE_SHIFT = dict(n_latent=6, n_perturbations=20, n_cells_per_perturbation=100,
                          n_genes=60, n_held_out=4, max_epochs=40, transfer_epochs=20,
                          kl_warmup_epochs=10, n_importance_samples=20)


def markdown_table(table) -> str:
    """A pandas DataFrame as a GitHub markdown table (3 significant digits)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(index)] + cells) + " |")
    return "\n".join(lines) + "\n"


def run_benchmark(args) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .benchmarks.sparse_shift import SparseShiftBenchmark
    from .plotting import plot_targets

    settings = dict(models=[m.strip() for m in args.models.split(",") if m.strip()],
                    max_epochs=args.max_epochs, transfer_epochs=args.transfer_epochs,
                    batch_size=args.batch_size, lr=args.lr,
                    kl_warmup_epochs=args.kl_warmup_epochs,
                    n_importance_samples=args.n_importance_samples, seed=args.seed,
                    device=args.device, progress=not args.quiet)
    if args.quick:
        settings.update(QUICK_SPARSE_SHIFT)
    benchmark = SparseShiftBenchmark(**settings)
    table = benchmark.run(log=lambda line: print(line, file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "table.csv")
    (args.out / "table.md").write_text(markdown_table(table))
    (args.out / "settings.json").write_text(json.dumps(
        {k: v for k, v in settings.items() if k != "progress"}, indent=2) + "\n")
    np.savez_compressed(args.out / "fitted.npz", **{
        f"{name}__{key}": np.asarray(value) for name, fitted in benchmark.fitted.items()
        for key, value in (("latent", fitted["latent"]), ("targets", fitted["scores"]))})
    sparse = [name for name in table.index if name in ("sVAE", "sVAE+")]
    if sparse:
        fitted = benchmark.fitted[sparse[-1]]
        figure = plot_targets(fitted["scores"], benchmark.true_targets,
                              assignment=fitted["assignment"],
                              title=f"{sparse[-1]} target probability")
        figure.savefig(args.out / "targets.png", dpi=120)
        plt.close(figure)
    return {"table": json.loads(table.to_json(orient="index"))}


def _fit_and_report(adata, data, args, out: Path, name: str, colors: dict,
                    truth: np.ndarray | None = None) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyro

    from . import metrics
    from .infer import fit, latent, save
    from .models import VAE, SparseShiftVAE, target_probabilities
    from .plotting import plot_elbo, plot_latent

    out.mkdir(parents=True, exist_ok=True)
    pyro.set_rng_seed(args.seed)  # the initial weights too: the same seed gives the same run
    sizes = dict(n_latent=args.n_latent, n_hidden=args.n_hidden, n_layers=args.n_layers,
                 beta=args.beta, likelihood=args.likelihood)
    if name == "vae":
        model = VAE(data.schema, **sizes)
    else:
        model = SparseShiftVAE(data.schema, sparsity=name, sparsity_weight=args.sparsity_weight,
                               **sizes)
    history = fit(model, data, max_epochs=args.max_epochs, batch_size=args.batch_size,
                  lr=args.lr, kl_warmup_epochs=args.kl_warmup_epochs,
                  validation_fraction=args.validation_fraction,
                  early_stopping=args.early_stopping, patience=args.patience,
                  device=args.device, seed=args.seed, progress=not args.quiet)
    z = latent(model, data)
    save(model, out / "model.pt")
    if name != "vae":
        target_probabilities(model).to_csv(out / "target_probabilities.csv")
    history.to_dataframe().to_csv(out / "history.csv", index=False)

    ax = plot_elbo(history)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "elbo.png", dpi=120)
    plt.close(ax.figure)
    fig = plot_latent(z, colors or {"cells": np.zeros(len(z), dtype=int)},
                      title=f"{name} latents")
    fig.savefig(out / "latent.png", dpi=120)
    plt.close(fig)

    result = adata.copy()
    result.obsm[f"X_{name}"] = z
    result.uns[f"{name}_history"] = history.to_dataframe().to_dict(orient="list")
    result.write_h5ad(out / f"{args.output_name}.h5ad")

    report = {
        "model": name,
        "n_cells": data.n_cells,
        "n_genes": data.schema.n_genes,
        "epochs": history.n_epochs,
        "train_elbo_per_cell": history.train_elbo[-1],
        "validation_elbo_per_cell": history.validation_elbo[-1] if history.validation_elbo
        else None,
        "best_epoch": history.best_epoch,
        "training_seconds": round(history.seconds, 2),
    }
    if truth is not None:
        report["mcc_pearson"] = metrics.mean_correlation_coefficient(truth, z, "pearson")
        report["mcc_spearman"] = metrics.mean_correlation_coefficient(truth, z, "spearman")
        report["linear_r2"] = metrics.linear_r2(truth, z)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_demo(args) -> dict:
    from .data import CellData
    from .simulate import cell_types

    adata = cell_types(n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    data = CellData.from_anndata(adata, domain_key="batch")
    args.output_name = "demo"
    colors = {"cell type": adata.obs["cell_type"], "batch": adata.obs["batch"]}
    return _fit_and_report(adata, data, args, args.out, "vae", colors,
                           truth=adata.obsm["z_true"])


def run_fit(args) -> dict:
    import anndata as ad

    from .data import CellData

    if not args.data.exists():
        raise FileNotFoundError(f"{args.data} does not exist; pass the path of an .h5ad file")
    adata = ad.read_h5ad(args.data)
    data = CellData.from_anndata(
        adata, layer=args.layer, perturbation_key=args.perturbation_key, control=args.control,
        domain_key=args.domain_key, label_key=args.label_key, dose_key=args.dose_key,
        library_key=args.library_key)
    args.output_name = f"{args.data.stem}_{args.model}"
    colors = {key: adata.obs[key] for key in (args.label_key, args.domain_key,
                                              args.perturbation_key) if key}
    return _fit_and_report(adata, data, args, args.out, args.model, colors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    from .data import DataValidationError
    from .infer import resolve_device

    start = time.perf_counter()
    try:
        resolve_device(args.device)
        run = {"demo": run_demo, "fit": run_fit, "benchmark": run_benchmark}[args.command]
        report = run(args)
    except (DataValidationError, DeviceUnavailableError, FileNotFoundError, ValueError) as error:
        print(f"causalcell {args.command}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/ in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
