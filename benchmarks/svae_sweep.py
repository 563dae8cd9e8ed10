"""sVAE+ against VAE and iVAE across sparse-shift simulation designs and seeds.

The sVAE study reports one design (15 latents, 100 perturbations x 250 cells, 100 genes). This
sweep runs :class:`~pyro_causalcell.benchmarks.sparse_shift.SparseShiftBenchmark` (the same
protocol: fit on 80% of the perturbations, transfer to the other 20%, score latents, targets
and held-out IWELBO) on four designs, each over seeds that were not used to choose any setting
(seed 0 was), with the package's defaults and the benchmark's "auto" epochs and batch size
(batch 256 and 300 epochs on ``study`` and ``controls_pairs``, 469 on ``nb_genes``; 750 epochs
of 128 on ``small``: every fit makes the optimiser steps of 300 epochs of 256 on the study's
20,000 training cells):

``study``
    15 latents, 100 perturbations x 250 cells, 100 genes (Poisson counts, rates softmaxed over
    cells, the study's simulator);
``small``
    10 latents, 50 perturbations x 100 cells, 200 genes;
``nb_genes``
    20 latents, 200 perturbations x 80 cells, 300 genes, negative-binomial counts
    (inverse dispersion 5), rates softmaxed over genes with 3,000 counts per cell;
``controls_pairs``
    the study's design plus 2,000 control cells and 50 pairwise combinations of 250 cells.

With each design and seed the sweep also records the **ceiling** (a pseudo-model, default on):
a network trained with the true latents as labels on 70% of the training cells, scored on 15%
it never saw (:func:`~pyro_causalcell.benchmarks.supervised_ceiling`); its mean correlation
over latents stands in the MCC column, the most that the counts of that design allow.

``--options`` passes further :class:`~pyro_causalcell.models.SparseShiftVAE` arguments to every
model (a variant of the defaults); its rows record them and stand apart in the table, as
``sVAE+ (dropout=0)``.

Every fit is appended to ``<out>/runs.csv`` as soon as it ends, and a run that finds a row
already there skips it, so an interrupted sweep resumes. The summary (mean and range over
seeds) is printed and written as an reStructuredText table with ``--table``::

    python benchmarks/svae_sweep.py --out sweep --table docs/svae_sweep_table.rst
    python benchmarks/svae_sweep.py --out sweep --designs small --seeds 1 --models sVAE+
    python benchmarks/svae_sweep.py --out sweep --designs small --models sVAE+ --options dropout=0
    python benchmarks/svae_sweep.py --out sweep --models sVAE+ --realign --step-share 0.5
    python benchmarks/svae_sweep.py --out sweep --report-only --table t.rst  # no fitting
    python benchmarks/svae_sweep.py --out /tmp/q --quick     # the set-up in about a minute
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from pyro_causalcell.benchmarks import supervised_ceiling
from pyro_causalcell.benchmarks.sparse_shift import (MODELS, SparseShiftBenchmark,
                                                     can_realign, format_options)

#: design name -> SparseShiftBenchmark settings (n_held_out: 20% of the perturbations)
DESIGNS: dict[str, dict] = {
    "study": dict(n_latent=15, n_perturbations=100, n_cells_per_perturbation=250, n_genes=100,
                  n_held_out=20),
    "small": dict(n_latent=10, n_perturbations=50, n_cells_per_perturbation=100, n_genes=200,
                  n_held_out=10),
    "nb_genes": dict(n_latent=20, n_perturbations=200, n_cells_per_perturbation=80,
                     n_genes=300, n_held_out=40,
                     simulation=dict(inverse_dispersion=5.0, softmax="genes",
                                     count_scale=3000.0)),
    "controls_pairs": dict(n_latent=15, n_perturbations=100, n_cells_per_perturbation=250,
                           n_genes=100, n_held_out=20,
                           simulation=dict(n_control_cells=2000, n_combinations=50)),
}
#: a small design and short fits that check the set-up
QUICK = dict(n_latent=5, n_perturbations=12, n_cells_per_perturbation=60, n_genes=40,
             n_held_out=3, max_epochs=4, transfer_epochs=2, kl_warmup_epochs=2,
             n_importance_samples=4)
QUICK_SIMULATION = dict(n_control_cells=100, n_combinations=5)
#: reported columns: (runs.csv column, table heading)
METRICS = (("mcc_pearson", "MCC"), ("target_f1_abs", "F1 (abs)"), ("target_f1", "F1 (signed)"),
           ("target_auroc_abs", "AUROC (abs)"), ("target_auroc", "AUROC (signed)"),
           ("heldout_iwelbo", "held-out IWELBO"), ("fit_seconds", "fit s"))
KEYS = ["design", "seed", "model", "restarts", "options", "realign", "step_share", "free_bits"]
#: pseudo-model: a network trained on the true latents (:func:`supervised_ceiling`), the MCC
#: that the counts allow at best
CEILING = "ceiling"


#: the value of each setting in rows written before it existed (a single fit with the defaults,
#: not realigned, of all the steps, on the ELBO)
SETTING_DEFAULTS = {"restarts": 1, "options": "", "realign": False, "step_share": 1.0,
                    "free_bits": 0.0}


def with_setting_defaults(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with every column of :data:`SETTING_DEFAULTS` present, its gaps filled and its
    type the default's."""
    filled = {}
    for name, default in SETTING_DEFAULTS.items():
        column = runs.get(name, pd.Series(default, index=runs.index))
        filled[name] = (column.eq(True) if isinstance(default, bool)
                        else column.fillna(default).astype(type(default)))
    return runs.assign(**filled)


def read_runs(path: Path) -> pd.DataFrame:
    """The rows of ``runs.csv``, older rows given :data:`SETTING_DEFAULTS`."""
    return with_setting_defaults(pd.read_csv(path))


def run_sweep(out: Path, designs, seeds, models, quick: bool = False, device: str = "auto",
              restarts: int = 1, options: dict | None = None, realign: bool = False,
              step_share: float = 1.0, free_bits: float = 0.0, log=print) -> pd.DataFrame:
    """Fit every (design, seed, model, restarts, options, realign, step_share, free_bits) not
    yet in ``out/runs.csv``; returns all rows. ``options``: further ``SparseShiftVAE`` arguments of
    every model (:attr:`SparseShiftBenchmark.model_options`); ``realign``: sVAE / sVAE+ fitted
    with a realignment (:attr:`SparseShiftBenchmark.realign`; the other models as usual);
    ``step_share``, ``free_bits``: :attr:`SparseShiftBenchmark.step_share`,
    :attr:`SparseShiftBenchmark.free_bits`. The pseudo-model :data:`CEILING`
    is one row per (design, seed), restarts 1, no options."""
    options = options or {}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    runs = read_runs(path) if path.exists() else pd.DataFrame(columns=KEYS)
    done = set(map(tuple, runs[KEYS].astype(str).to_numpy()))
    for design in designs:
        for seed in seeds:
            todo = [m for m in models
                    if _key(design, seed, m, restarts, options, realign, step_share,
                            free_bits) not in done]
            if not todo:
                continue
            settings = {**DESIGNS[design], **(QUICK if quick else {})}
            if quick:
                settings["simulation"] = {k: QUICK_SIMULATION.get(k, v)
                                          for k, v in settings.get("simulation", {}).items()}
            log(f"{design}, seed {seed}: {', '.join(todo)}")
            benchmark = SparseShiftBenchmark(models=[m for m in todo if m != CEILING],
                                             seed=seed, device=device, restarts=restarts,
                                             model_options=options, realign=realign,
                                             step_share=step_share, free_bits=free_bits,
                                             **settings)
            tables = [ceiling_row(benchmark, epochs=5 if quick else 100)] \
                if CEILING in todo else []
            if benchmark.models:
                tables.append(benchmark.run(log=lambda line: log("  " + line)).reset_index())
            rows = pd.concat(tables, ignore_index=True).assign(design=design, seed=seed)
            rows = rows[KEYS + [c for c in rows if c not in KEYS]]
            runs = rows if runs.empty else pd.concat([runs, rows], ignore_index=True)
            runs.to_csv(path, index=False)
    return runs


def _key(design: str, seed: int, model: str, restarts: int, options: dict,
         realign: bool, step_share: float, free_bits: float) -> tuple[str, ...]:
    """A run's :data:`KEYS` as the strings of ``runs.csv``."""
    if model == CEILING:
        return (design, str(seed), model, "1", "", "False", "1.0", "0.0")
    realigned = realign and can_realign(model)
    return (design, str(seed), model, str(restarts), format_options(options), str(realigned),
            str(float(step_share)), str(float(free_bits)))


def ceiling_row(benchmark: SparseShiftBenchmark, epochs: int) -> pd.DataFrame:
    """The :data:`CEILING` row of a design and seed: the mean (``mcc_pearson``) and least
    (``ceiling_min``) per-latent correlation of :func:`supervised_ceiling` on the training
    cells, and its seconds."""
    train, _ = benchmark.simulate()
    start = time.perf_counter()
    r = supervised_ceiling(train.X, train.obsm["z_true"], epochs=epochs, seed=benchmark.seed)
    return pd.DataFrame([{"model": CEILING, "restarts": 1, "options": "", "realign": False,
                          "step_share": 1.0, "free_bits": 0.0,
                          "mcc_pearson": float(r.mean()), "ceiling_min": float(r.min()),
                          "fit_seconds": time.perf_counter() - start}])


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max over seeds of each metric, one row per (design, model, restarts,
    options, realign, step_share, free_bits); a model fitted with restarts is named "<model>,
    best of <restarts>", one with options "<model> (<options>)", a realigned one "<model>,
    realigned", one with a step share other than 1 "<model>, <share> of the steps", one with
    free bits "<model>, free bits <free_bits>"."""
    runs = with_setting_defaults(runs)
    runs = runs.assign(model=[m + (f" ({o})" if o else "") + (", realigned" if a else "")
                              + (f", {f:g} of the steps" if f != 1 else "")
                              + (f", free bits {b:g}" if b else "")
                              + (f", best of {r}" if r != 1 else "")
                              for m, r, o, a, f, b in zip(
                                  runs["model"], runs["restarts"], runs["options"],
                                  runs["realign"], runs["step_share"], runs["free_bits"])])
    runs = runs.reindex(columns=[*runs, *(c for c, _ in METRICS if c not in runs)])  # NaN
    grouped = runs.groupby(["design", "model"], sort=False)
    parts = {}
    for column, _ in METRICS:
        stats = grouped[column].agg(["mean", "min", "max"])
        parts.update({(column, s): stats[s] for s in stats})
    summary = pd.DataFrame(parts)
    summary[("seeds", "list")] = grouped["seed"].apply(lambda s: ",".join(map(str, sorted(s))))
    return summary


def _cell(mean: float, low: float, high: float, column: str) -> str:
    if mean != mean:  # not measured (NaN)
        return "—"
    digits = 0 if column == "fit_seconds" else (2 if column == "heldout_iwelbo" else 3)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def rst_table(summary: pd.DataFrame) -> str:
    """The summary as an reStructuredText list-table: mean [min, max] over seeds."""
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - design", "     - model", "     - seeds"]
    lines += [f"     - {heading}" for _, heading in METRICS]
    for (design, model), row in summary.iterrows():
        lines += [f"   * - {design}", f"     - {model}", f"     - {row[('seeds', 'list')]}"]
        lines += [f"     - {_cell(*(row[(c, s)] for s in ('mean', 'min', 'max')), c)}"
                  for c, _ in METRICS]
    return "\n".join(lines) + "\n"


def _names(text: str, choices, what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise SystemExit(f"--{what}: unknown {unknown}; choose among {','.join(choices)}")
    return names


def _options(text: str) -> dict:
    """``"dropout=0,sparsity_weight=72"`` -> ``{"dropout": 0, "sparsity_weight": 72}``."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise SystemExit(f"--options: {item!r} is not name=value")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain word is a string: norm=layer
    return options


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("svae_sweep"),
                        help="folder of runs.csv (default: %(default)s)")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="default: %(default)s")
    parser.add_argument("--seeds", default="1,2,3", help="default: %(default)s")
    parser.add_argument("--models", default=f"VAE,iVAE,sVAE+,{CEILING}",
                        help=f"default: %(default)s ({CEILING}: a supervised network's "
                             "correlation with the true latents)")
    parser.add_argument("--table", type=Path, help="write the summary here (.rst)")
    parser.add_argument("--report-only", action="store_true",
                        help="fit nothing: summarise the rows already in runs.csv")
    parser.add_argument("--quick", action="store_true",
                        help="a small design with a few epochs, to check the set-up")
    parser.add_argument("--device", default="auto", help="default: %(default)s")
    parser.add_argument("--restarts", type=int, default=1,
                        help="fits per model, the best validation ELBO kept "
                             "(default: %(default)s)")
    parser.add_argument("--options", default="",
                        help="further SparseShiftVAE arguments of every model, e.g. "
                             "'dropout=0,sparsity_weight=72'; rows record them")
    parser.add_argument("--realign", action="store_true",
                        help="fit sVAE / sVAE+ with a realignment of the latents after 2/3 "
                             "of the epochs (fit_with_realignment)")
    parser.add_argument("--step-share", type=float, default=1.0,
                        help="scale the automatic epochs and the KL warm-up, e.g. 0.5 "
                             "(default: %(default)s)")
    parser.add_argument("--free-bits", type=float, default=0.0,
                        help="train every model on FreeBitsELBO with this many free nats per "
                             "latent coordinate (0: the ELBO; default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    designs = _names(args.designs, DESIGNS, "designs")
    models = _names(args.models, [*MODELS, CEILING], "models")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: give comma-separated integers, got {args.seeds!r}")
    options = _options(args.options)
    if args.report_only:
        path = args.out / "runs.csv"
        if not path.exists():
            raise SystemExit(f"--report-only: {path} does not exist; run the sweep first")
        runs = read_runs(path)
    else:
        runs = run_sweep(args.out, designs, seeds, models, quick=args.quick,
                         device=args.device, restarts=args.restarts, options=options,
                         realign=args.realign, step_share=args.step_share,
                         free_bits=args.free_bits,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
    runs = runs[runs["design"].isin(designs) & runs["model"].isin(models)
                & runs["seed"].astype(int).isin(seeds)]
    runs = runs.sort_values(["design", "model", "options", "realign", "step_share",
                             "free_bits", "restarts", "seed"], kind="stable", key=lambda column: (
        column.map({name: i for i, name in enumerate(designs + models)})
        if column.name in ("design", "model") else
        -column if column.name == "step_share" else
        column if column.name in ("options", "realign", "free_bits") else column.astype(int)))
    table = rst_table(summarise(runs))
    print(table)
    if args.table:
        args.table.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
