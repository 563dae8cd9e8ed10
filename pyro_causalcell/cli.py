"""The ``causalcell`` command: ``causalcell demo`` and ``causalcell fit``."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from ._version import __version__
from .models.registry import model_variants
from .output_folder import OutputFolderError, output_folder



class CommandLineError(ValueError):
    """A command-line input that cannot be used; the message says which and how to fix it."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def or_auto(kind):
    """argparse type: ``auto`` or a value of argparse type ``kind`` (named ``<kind>_or_auto``
    in argparse's messages)."""
    def parse(text: str):
        return "auto" if text == "auto" else kind(text)

    parse.__name__ = f"{kind.__name__}_or_auto"
    return parse


positive_float_or_auto = or_auto(positive_float)
non_negative_float_or_auto = or_auto(non_negative_float)
positive_int_or_auto = or_auto(positive_int)
non_negative_int_or_auto = or_auto(non_negative_int)


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value

DESCRIPTION = """\
Causal and disentangled representation learning for single-cell counts.

  causalcell demo --out causalcell_demo
      simulate a small CRISPR screen with known targets, fit sVAE+ and a VAE, write the
      recovered targets, latents and a counterfactual checked against the simulator's own.
  causalcell fit --model vae DATA.h5ad --out results --domain-key batch
      fit a model to your raw counts (AnnData .h5ad) and write the same outputs.
  causalcell fit --model svae+ DATA.h5ad --out results --perturbation-key guide --control NT
      sparse mechanism shift VAE: also writes each perturbation's target probabilities.
  causalcell benchmark sparse-shift --out bench
      the sVAE study's simulation benchmark (VAE, beta-VAE, iVAE, sVAE, sVAE+).

Run `causalcell <command> --help` for every option. An output folder must be new or empty;
--overwrite replaces a previous run's folder. Outputs appear together when a run succeeds.
"""


#: ``causalcell fit``'s training settings left at "auto", for models without a schedule of
#: their own (a model's ``default_schedule(n_cells)``: the sparse-shift models')
GENERIC_SCHEDULE = dict(max_epochs=100, batch_size=128, lr=1e-3, kl_warmup_epochs=10,
                        free_bits=0.0)
SCHEDULE_HELP = ("'auto': the model's schedule for the number of cells (svae, svae+, ivae: "
                 "pyro_causalcell.sparse_shift_schedule, e.g. 300 epochs of 256 on 20,000 cells "
                 "and 750 of 128 on 4,000, lr 0.01, warm-up 50, free bits 0.5; other models: "
                 "{})")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "training", SCHEDULE_HELP.format(", ".join(f"{k} {v}" for k, v in
                                                   GENERIC_SCHEDULE.items())))
    group.add_argument("--max-epochs", type=positive_int_or_auto, default="auto",
                       help="default: %(default)s")
    group.add_argument("--batch-size", type=positive_int_or_auto, default="auto",
                       help="default: %(default)s")
    group.add_argument("--lr", type=positive_float_or_auto, default="auto",
                       help="Adam learning rate (default: %(default)s)")
    group.add_argument("--kl-warmup-epochs", type=non_negative_int_or_auto, default="auto",
                       help="epochs over which the KL weight rises to 1 (default: %(default)s)")
    group.add_argument("--free-bits", type=non_negative_float_or_auto, default="auto",
                       help="nats per cell of each latent coordinate's KL term left free, so "
                            "none is switched off (FreeBitsELBO; 0: the ELBO itself; default: "
                            "%(default)s)")
    group.add_argument("--realign", action="store_true",
                       help="svae / svae+ only: search the latents' linear alignment after 2/3 "
                            "of the epochs and fit the rest (fit_with_realignment)")
    group.add_argument("--checkpoint", type=Path, help="checkpoint the fit to this file every "
                       "epoch; run the same command again to resume after a crash or a kill")
    _add_run_options(group)


def _add_run_options(group) -> None:
    group.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    group.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the outputs of a previous run in --out")


def _add_validation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validation")
    group.add_argument("--validation-fraction", type=fraction, default=0.1,
                       help="cells held out for the validation ELBO (default: %(default)s)")
    group.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=False,
                       help="stop when the validation ELBO stops improving; keep the best epoch")
    group.add_argument("--patience", type=positive_int, default=10, help="default: %(default)s")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--n-latent", type=positive_int,
                       help="latent size (invae: of the invariant block; multigroupvi: of the shared "
                            "block; fcr: of the treatment block; lord: of the content block) "
                            "(default: the model's own, as in Python: 10 for vae, 15 for svae+)")
    group.add_argument("--n-hidden", type=positive_int,
                       help="hidden units per layer (default: the model's own, 128)")
    group.add_argument("--n-layers", type=positive_int,
                       help="hidden layers (default: the model's own: 2 for svae, svae+ and ivae "
                            "as in the sVAE study, else 1)")
    group.add_argument("--beta", type=positive_float, default=1.0,
                       help="KL weight; > 1 gives a beta-VAE (default: %(default)s)")
    group.add_argument("--likelihood", choices=("nb", "zinb", "poisson", "gaussian"),
                       default="nb", help="count likelihood, or gaussian on log-normalised "
                       "expression (default: %(default)s)")
    group.add_argument("--class-key", choices=("label", "domain", "perturbation"),
                       default="label", help="lord only: the covariate that is the class; "
                       "the content latent is written (default: %(default)s)")
    group.add_argument("--encoder-epochs", type=positive_int, default=50,
                       help="lord only: epochs of stage two, the content encoder fitted to the "
                            "stage-one codes (stage one runs --max-epochs on every cell) "
                            "(default: %(default)s)")
    group.add_argument("--nuisance-latent", type=non_negative_int, default=0,
                       help="hsicvae only: width of a second latent block 'z_nuisance' that z "
                            "is made independent of (default: %(default)s, none)")
    group.add_argument("--sparsity-weight", type=positive_float_or_auto, default="auto",
                       help="svae / svae+ only: lambda, the L0 penalty (svae) or the "
                            "Beta(1, lambda) prior on target probabilities (svae+); 'auto' "
                            "sets it from the training cells per perturbation "
                            "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causalcell", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"causalcell (pyro_causalcell) {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{demo,fit,benchmark}")
    _add_demo_parser(commands)

    fit = commands.add_parser(
        "fit", help="fit a model to an .h5ad file of raw counts",
        description="Fit a model to raw counts in an AnnData file and write model.pt, "
                    "history.csv, elbo.png, latent.png, metrics.json and <name>_<model>.h5ad (a copy of "
                    "the input with latents in obsm['X_<model>']). The input file is not "
                    "modified. lord runs two stages (the codes of every cell, then the "
                    "content encoder) and also writes history_stage_one.csv.")
    fit.add_argument("data", type=Path, help="AnnData .h5ad file with raw counts")
    fit.add_argument("--model", choices=sorted(model_variants()), default="vae",
                     help="a registered model (default: %(default)s)")
    fit.add_argument("--out", type=Path, required=True, help="output folder")
    keys = fit.add_argument_group("data keys (adata.obs columns)")
    keys.add_argument("--layer", help="layer with raw counts (default: X)")
    keys.add_argument("--on-disk", action="store_true",
                      help="leave the counts in DATA.h5ad and read each minibatch's rows from "
                      "it (data larger than memory; counts in X, stored as CSR or dense); the "
                      "result .h5ad then holds obs, var and the latents, not the counts")
    keys.add_argument("--perturbation-key", help="column with perturbations ('A+B' = both)")
    keys.add_argument("--control", help="value of --perturbation-key for control cells")
    keys.add_argument("--domain-key", help="column with technical domains (batch, donor)")
    keys.add_argument("--label-key", help="column with biological labels (cell type)")
    keys.add_argument("--dose-key", help="numeric column with doses")
    keys.add_argument("--library-key", help="numeric column with library sizes "
                      "(default: total counts)")
    _add_model_options(fit)
    _add_training_options(fit)
    _add_validation_options(fit)
    _add_benchmark_parser(commands)
    return parser


def _add_demo_parser(commands) -> None:
    from .demo import DemoSettings

    defaults = DemoSettings()
    demo = commands.add_parser(
        "demo", help="the causal story on built-in simulated data (about a minute)",
        description="Simulate a small CRISPR screen in which each perturbation shifts a few "
                    "latent variables (true targets known), fit sVAE+ and a VAE that ignores "
                    "the perturbations, and write: targets.png (learned vs true targets), "
                    "latent.png, counterfactual.png (control cells had they been perturbed, "
                    "model vs the simulator's own counterfactual), elbo.png, metrics.json "
                    "(latent MCC of both models, target F1 / AUROC, counterfactual agreement), "
                    "target_probabilities.csv, history.csv, model.pt (sVAE+) and demo.h5ad "
                    "(latents in obsm['X_svae_plus'] and obsm['X_vae']).")
    demo.add_argument("--out", type=Path, default=Path("causalcell_demo"),
                      help="output folder (default: %(default)s)")
    groups = {
        "simulated screen": (("n_latent", positive_int), ("n_perturbations", positive_int),
                             ("n_cells_per_perturbation", positive_int),
                             ("n_control_cells", positive_int), ("n_genes", positive_int),
                             ("max_targets", positive_int)),
        "training": (("max_epochs", positive_int), ("kl_warmup_epochs", non_negative_int),
                     ("lr", positive_float), ("batch_size", positive_int),
                     ("n_hidden", positive_int), ("sparsity_weight", positive_float)),
    }
    for title, options in groups.items():
        group = demo.add_argument_group(title)
        for name, kind in options:  # --n-latent etc., defaults from DemoSettings
            group.add_argument("--" + name.replace("_", "-"), type=kind,
                               default=getattr(defaults, name), help="default: %(default)s")
    training = group
    training.add_argument("--vae", action=argparse.BooleanOptionalAction, default=True,
                          help="also fit the VAE baseline (default: on)")
    _add_run_options(training)


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
    sparse.add_argument("--max-epochs", type=positive_int_or_auto, default="auto",
                        help="'auto': pyro_causalcell.sparse_shift_schedule's, 300 on this "
                             "design (default: %(default)s)")
    sparse.add_argument("--transfer-epochs", type=positive_int, default=100, help="default: %(default)s")
    sparse.add_argument("--batch-size", type=positive_int_or_auto, default="auto",
                        help="'auto': the schedule's, 256 on this design (default: "
                             "%(default)s)")
    sparse.add_argument("--lr", type=positive_float, default=1e-2, help="default: %(default)s")
    sparse.add_argument("--kl-warmup-epochs", type=non_negative_int, default=50, help="default: %(default)s")
    sparse.add_argument("--restarts", type=positive_int, default=1,
                        help="fits of each model from different initial weights; the best "
                             "validation ELBO is kept (default: %(default)s)")
    sparse.add_argument("--realign", action="store_true",
                        help="fit sVAE / sVAE+ with a search for the latents' linear alignment "
                             "after 2/3 of the epochs (fit_with_realignment)")
    sparse.add_argument("--free-bits", type=non_negative_float, default=0.0,
                        help="train every model on FreeBitsELBO with this many free nats per "
                             "cell and latent coordinate (0: the ELBO; default: %(default)s)")
    sparse.add_argument("--n-importance-samples", type=positive_int, default=100,
                        help="importance samples per held-out cell (default: %(default)s)")
    sparse.add_argument("--quick", action="store_true",
                        help="a small simulation (6 latents, 20 perturbations x 100 cells) "
                             "that runs in about a minute, to check the set-up")
    _add_run_options(sparse)


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


def run_benchmark(args, out: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .benchmarks.sparse_shift import MODELS as BENCHMARK_MODELS
    from .benchmarks.sparse_shift import SparseShiftBenchmark
    from .plotting import plot_targets

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in BENCHMARK_MODELS]
    if unknown or not models:
        raise CommandLineError(f"--models: unknown models {unknown}; choose among "
                               f"{','.join(BENCHMARK_MODELS)}")
    settings = dict(models=models,
                    max_epochs=args.max_epochs, transfer_epochs=args.transfer_epochs,
                    batch_size=args.batch_size, lr=args.lr,
                    kl_warmup_epochs=args.kl_warmup_epochs, restarts=args.restarts,
                    realign=args.realign, free_bits=args.free_bits,
                    n_importance_samples=args.n_importance_samples,
                    seed=args.seed, device=args.device, progress=not args.quiet)
    if args.quick:
        settings.update(QUICK_SPARSE_SHIFT)
    benchmark = SparseShiftBenchmark(**settings)
    table = benchmark.run(log=lambda line: print(line, file=sys.stderr, flush=True))
    table.to_csv(out / "table.csv")
    (out / "table.md").write_text(markdown_table(table))
    (out / "settings.json").write_text(json.dumps(
        {k: v for k, v in settings.items() if k != "progress"}, indent=2) + "\n")
    np.savez_compressed(out / "fitted.npz", **{
        f"{name}__{key}": np.asarray(value) for name, fitted in benchmark.fitted.items()
        for key, value in (("latent", fitted["latent"]), ("targets", fitted["scores"]))})
    sparse = [name for name in table.index if name in ("sVAE", "sVAE+")]
    if sparse:
        fitted = benchmark.fitted[sparse[-1]]
        figure = plot_targets(fitted["scores"], benchmark.true_targets,
                              assignment=fitted["assignment"],
                              title=f"{sparse[-1]} target probability")
        figure.savefig(out / "targets.png", dpi=120)
        plt.close(figure)
    return {"table": json.loads(table.to_json(orient="index"))}


def constructor_arguments(cls: type) -> set[str]:
    """Names of the keyword arguments ``cls(...)`` accepts, following ``**kwargs`` into the
    base classes it is passed on to (HSICVAE hands ``n_hidden`` to VAE)."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def training_schedule(model, n_cells: int, args) -> dict:
    """``max_epochs``, ``batch_size``, ``lr``, ``kl_warmup_epochs`` and ``free_bits`` of a
    fit: the given values, and for those left at "auto" the model's
    ``default_schedule(n_cells)`` (else, or where it has no such key, :data:`GENERIC_SCHEDULE`).
    Checks ``--realign`` and ``--checkpoint`` against the model."""
    own = getattr(model, "default_schedule", None)
    defaults = {**GENERIC_SCHEDULE, **(own(n_cells) if own is not None else {})}
    schedule = {key: defaults[key] if getattr(args, key) == "auto" else getattr(args, key)
                for key in GENERIC_SCHEDULE}
    if args.realign:
        if not getattr(model, "has_targets", False):
            raise CommandLineError(f"--realign: --model {args.model} has no sparse perturbation "
                                   "targets to align the latents with; use svae or svae+, or "
                                   "drop --realign")
        if schedule["max_epochs"] < 2:
            raise CommandLineError("--realign fits in two parts: give --max-epochs of at least 2")
        if args.checkpoint is not None:
            raise CommandLineError("--realign fits in two parts, which one --checkpoint file "
                                   "cannot hold: drop --checkpoint or --realign")
    return schedule


def _fit_and_report(adata, data, args, out: Path, name: str, colors: dict) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyro

    from .infer import fit, fit_with_realignment, latent, save
    from .infer.schedule import realign_after
    from .metrics import ACTIVITY_THRESHOLD, inactive_latents, latent_activity
    from .models import target_probabilities
    from .plotting import plot_elbo, plot_latent

    pyro.set_rng_seed(args.seed)  # the initial weights too: the same seed gives the same run
    cls, variant = model_variants()[name]
    options = dict(n_latent=args.n_latent, n_hidden=args.n_hidden, n_layers=args.n_layers,
                   beta=args.beta, likelihood=args.likelihood,
                   sparsity_weight=args.sparsity_weight, class_key=args.class_key,
                   nuisance_latent=args.nuisance_latent)
    accepted = constructor_arguments(cls)
    if "n_latent" not in accepted:  # a block model: --n-latent sizes the block latent() reads
        site = getattr(cls, "default_latent_site", "")  # z_inv, z_shared, z_t
        options["n_latent_" + site.removeprefix("z_")] = options.pop("n_latent")
    try:
        model = cls(data.schema, **{k: v for k, v in options.items()
                                    if k in accepted and v is not None}, **variant)
    except ValueError as error:  # settings the data cannot support, named by the model
        raise CommandLineError(f"--model {name}: {error}") from None
    schedule = training_schedule(model, data.n_cells, args)
    max_epochs = schedule["max_epochs"]
    settings = dict(batch_size=schedule["batch_size"], lr=schedule["lr"],
                    kl_warmup_epochs=schedule["kl_warmup_epochs"],
                    free_bits=schedule["free_bits"], device=args.device,
                    seed=args.seed, progress=not args.quiet)
    validation = dict(validation_fraction=args.validation_fraction,
                      early_stopping=args.early_stopping, patience=args.patience)
    checkpoint = args.checkpoint
    if hasattr(model, "start_stage_two"):  # LORD: codes of every cell, then the encoder
        first = None if checkpoint is None else checkpoint.with_name(checkpoint.name + ".stage1")
        stage_one = fit(model, data, max_epochs=max_epochs, validation_fraction=0.0,
                        checkpoint=first, **settings)
        stage_one.to_dataframe().to_csv(out / "history_stage_one.csv", index=False)
        history = fit(model, data, max_epochs=args.encoder_epochs,
                      parameters=model.start_stage_two(), checkpoint=checkpoint, **validation,
                      **settings)
    elif args.realign:
        history = fit_with_realignment(model, data, max_epochs=max_epochs,
                                       realign_after=realign_after(max_epochs),
                                       **validation, **settings)
    else:
        history = fit(model, data, max_epochs=max_epochs, checkpoint=checkpoint,
                      **validation, **settings)
    z = latent(model, data)
    save(model, out / "model.pt")
    if getattr(model, "sparsity", "vae") != "vae":
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

    if getattr(adata, "isbacked", False):  # the counts stay in the input file
        result = type(adata)(obs=adata.obs.copy(), var=adata.var.copy())
    else:
        result = adata.copy()
    result.obsm[f"X_{name}"] = z
    result.uns[f"{name}_history"] = history.to_dataframe().to_dict(orient="list")
    result.write_h5ad(out / f"{args.output_name}.h5ad")

    report = {
        "model": name,
        "n_cells": data.n_cells,
        "n_genes": data.schema.n_genes,
        "epochs": history.n_epochs,
        "schedule": {**schedule, "realign": args.realign},
        "train_elbo_per_cell": history.train_elbo[-1],
        "validation_elbo_per_cell": history.validation_elbo[-1] if history.validation_elbo
        else None,
        "best_epoch": history.best_epoch,
        "training_seconds": round(history.seconds, 2),
        "latent_activity": [round(float(v), 4) for v in latent_activity(z)],
        "inactive_latents": (inactive := inactive_latents(z)),
    }
    if inactive:
        print(f"causalcell fit: {len(inactive)} of {z.shape[1]} latents are inactive (their "
              f"posterior means vary across cells by a variance under {ACTIVITY_THRESHOLD}): "
              f"{inactive}; the model describes the cells with the other "
              f"{z.shape[1] - len(inactive)}", file=sys.stderr)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_demo(args, out: Path) -> dict:
    from .demo import DemoSettings, run_demo as simulate_and_fit, write_demo

    fields = DemoSettings.__dataclass_fields__
    settings = DemoSettings(**{name: getattr(args, name) for name in fields
                               if hasattr(args, name)},
                            fit_vae=args.vae, progress=not args.quiet)
    result = simulate_and_fit(settings)
    write_demo(result, out)
    return result.metrics


def read_h5ad(path: Path, backed: bool = False):
    """The AnnData at ``path`` (``backed``: its X left on disk); a :class:`CommandLineError`
    naming the file if it is not one."""
    import anndata as ad

    if not path.exists():
        raise CommandLineError(f"{path} does not exist; pass the path of an .h5ad file")
    if path.is_dir():
        raise CommandLineError(f"{path} is a directory; pass the path of an .h5ad file")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # h5py / anndata raise many types for a file that is not h5ad
        raise CommandLineError(f"{path} cannot be read as an AnnData .h5ad file "
                               f"({type(error).__name__}: {str(error)[:200]}); pass an .h5ad "
                               "file written by anndata (adata.write_h5ad)") from error


def run_fit(args, out: Path) -> dict:
    from .data import CellData

    if args.out.resolve() in args.data.resolve().parents:
        raise CommandLineError(f"{args.data} lies inside --out {args.out}, which this run would "
                               "replace; write the outputs to another folder")
    if args.on_disk and args.layer is not None:
        raise CommandLineError("--on-disk reads the counts from X; drop --layer, or write the "
                               "raw counts to X")
    adata = read_h5ad(args.data, backed=args.on_disk)
    data = CellData.from_anndata(
        adata, layer=args.layer, perturbation_key=args.perturbation_key, control=args.control,
        domain_key=args.domain_key, label_key=args.label_key, dose_key=args.dose_key,
        library_key=args.library_key)
    args.output_name = f"{args.data.stem}_{args.model}"
    colors = {key: adata.obs[key] for key in (args.label_key, args.domain_key,
                                              args.perturbation_key) if key}
    return _fit_and_report(adata, data, args, out, args.model, colors)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: reported in one line with exit code 2."""
    from .data import DataValidationError
    from .infer import CheckpointMismatchError, ModelFileError, TrainingDivergedError
    from .infer.device import DeviceUnavailableError

    return (CommandLineError, OutputFolderError, DataValidationError, DeviceUnavailableError,
            TrainingDivergedError, ModelFileError, CheckpointMismatchError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input, with a one-line message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    from .infer import resolve_device

    start = time.perf_counter()
    run = {"demo": run_demo, "fit": run_fit, "benchmark": run_benchmark}[args.command]
    provenance = {"command": ["causalcell", *(sys.argv[1:] if argv is None else argv)],
                  "version": __version__}
    try:
        resolve_device(args.device)
        with output_folder(args.out, overwrite=args.overwrite, provenance=provenance) as staging:
            report = run(args, staging)
    except user_errors() as error:
        print(f"causalcell {args.command}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/ in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
