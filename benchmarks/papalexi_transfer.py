"""Transfer to held-out CRISPR knock-outs on real screens: VAE vs iVAE vs sVAE+.

Data (``--dataset``), read from ``$CAUSALCELL_DATA_DIR`` or ``../shared/data`` beside the
repository; in both ``obs["perturbation"]`` is ``control`` (non-targeting guides),
``unassigned`` (no confident guide call) or the targeted gene / element:

``papalexi`` (default)
    ``papalexi2021_eccite_thp1_sceptre.h5ad``: ECCITE-seq knock-outs in THP-1 cells, 299 genes,
    ``obs["bio_rep"]`` (3 replicates) as domain;
``schraivogel``
    ``schraivogel2020_tapseq_k562_crispat.h5ad``: TAP-seq CRISPRi of promoters and enhancers in
    K562 cells, a 72-gene panel, ``obs["lane"]`` (2) as domain; the enhancers come in groups of
    four elements of one locus (``GATA1-A`` .. ``GATA1-D``, ``HS2-*``, ``MYC-*``, ``ZFPM2-*``).

Protocol, for each seed of ``--seeds`` (the held-out knock-outs, the test cells and the fits
all follow the seed):

1. drop ``unassigned`` cells; hold out every cell of ``--n-held-out`` knock-outs drawn among
   knock-outs with >= ``--min-cells`` cells (or the ``--held-out`` list);
2. of the remaining (training) knock-outs keep ``--seen-test-fraction`` (10%) of each one's
   cells aside as a "seen perturbations" test set; controls all stay in training;
3. per model (``SparseShiftVAE`` with ``sparsity`` = vae / ivae / svae / svae+, package
   defaults otherwise): fit on the training cells; for ivae / svae / svae+ learn the held-out
   knock-outs' parameters on their cells with :func:`~pyro_causalcell.transfer` (networks and
   known perturbations frozen); the VAE has nothing to transfer, its prior ignores
   perturbations;
4. score both test sets by the mean importance-weighted ELBO per cell (a log-likelihood
   estimate, nats; higher is better; the held-out cells are the ones transfer trained on,
   as in the sVAE study's protocol).

    python benchmarks/papalexi_transfer.py --quick            # end to end in about a minute
    python benchmarks/papalexi_transfer.py                    # 100 + 100 epochs per model
    python benchmarks/papalexi_transfer.py --dataset schraivogel --seeds 0,1,2 --out t.csv
    python benchmarks/papalexi_transfer.py --held-out IRF1,JAK2,CD86 --out table.csv

Prints a markdown table per seed (model | held-out KO IWELBO/cell | seen-perturbation test
IWELBO/cell | fit s | transfer s | mean number of latents with target probability > 0.5 per
knock-out), over several seeds the mean and range of each model's scores, and for sVAE /
sVAE+ the most probable targets of each held-out knock-out and the latents that knock-outs of
one group (pathway or locus, :data:`GROUPS`) share as targets.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from pyro_causalcell import CellData, SparseShiftVAE, fit, target_probabilities, transfer
from pyro_causalcell.infer import mean_importance_weighted_elbo

REPO_ROOT = Path(__file__).resolve().parents[1]
PERTURBATION, CONTROL, UNASSIGNED = "perturbation", "control", "unassigned"
MODELS = ("vae", "ivae", "svae", "svae+")  # SparseShiftVAE(sparsity=...)
#: dataset -> (file, domain column, default --min-cells for drawing held-out knock-outs)
DATASETS = {
    "papalexi": ("papalexi2021_eccite_thp1_sceptre.h5ad", "bio_rep", 300),
    "schraivogel": ("schraivogel2020_tapseq_k562_crispat.h5ad", "lane", 150),
}
#: dataset -> group name -> knock-outs expected to act through the same pathway or locus.
#: Papalexi: the IFN-gamma receptor - JAK - STAT1 - IRF1 axis that induces PD-L1 in THP-1
#: cells (the screen's design); Schraivogel: the four elements targeted per enhancer locus.
GROUPS = {
    "papalexi": {"IFNG-JAK-STAT": ["IFNGR1", "IFNGR2", "JAK2", "STAT1", "IRF1"]},
    "schraivogel": {locus: [f"{locus}-{x}" for x in "ABCD"]
                    for locus in ("GATA1", "HS2", "MYC", "ZFPM2")},
}

#: settings that --quick and the full run differ in (an explicit flag overrides either)
FULL = dict(n_held_out=5, epochs=100, transfer_epochs=100, n_importance_samples=100,
            n_cells=None, threads=None)
QUICK = dict(n_held_out=3, epochs=5, transfer_epochs=3, n_importance_samples=5, n_cells=3000,
             threads=1)


# ---------------------------------------------------------------------- data
def data_path(dataset: str) -> Path:
    folder = Path(os.environ.get("CAUSALCELL_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    name = DATASETS[dataset][0]
    path = folder / name
    if not path.is_file():
        raise SystemExit(f"{path} not found. Put {name} there or point CAUSALCELL_DATA_DIR at "
                         "the folder that holds it.")
    return path


def load_assigned_cells(path: Path) -> ad.AnnData:
    """The file's cells with a confident guide call (a copy; ``unassigned`` dropped)."""
    adata = ad.read_h5ad(path)
    return adata[adata.obs[PERTURBATION].astype(str).to_numpy() != UNASSIGNED].copy()


def knockout_sizes(adata: ad.AnnData) -> pd.Series:
    """Cells per knock-out (controls excluded), largest first."""
    values = adata.obs[PERTURBATION].astype(str)
    return values[values != CONTROL].value_counts()


def choose_held_out(sizes: pd.Series, spec: str | None, n: int, min_cells: int,
                    seed: int) -> list[str]:
    """Knock-outs named in ``spec`` (comma list), or ``n`` drawn among those >= ``min_cells``."""
    if spec:
        names = [s.strip() for s in spec.split(",") if s.strip()]
        unknown = [s for s in names if s not in sizes.index]
        if unknown:
            raise SystemExit(f"--held-out {unknown} are not knock-outs of the data; choose among "
                             f"{sorted(sizes.index)}")
        return sorted(set(names))
    eligible = sorted(sizes.index[sizes >= min_cells])
    if len(eligible) < n:
        raise SystemExit(f"only {len(eligible)} knock-outs have >= {min_cells} cells; lower "
                         "--min-cells or --n-held-out")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eligible, size=n, replace=False).tolist())


def subsample(adata: ad.AnnData, n_cells: int | None, seed: int) -> ad.AnnData:
    if n_cells is None or n_cells >= adata.n_obs:
        return adata
    rng = np.random.default_rng(seed)
    return adata[np.sort(rng.choice(adata.n_obs, size=n_cells, replace=False))].copy()


def split_cells(adata: ad.AnnData, held_names: list[str], test_fraction: float, seed: int
                ) -> tuple[ad.AnnData, ad.AnnData, ad.AnnData]:
    """``(train, held_out_knockouts, seen_test)``, each a copy.

    ``seen_test`` holds ``floor(test_fraction * n)`` random cells of each training knock-out.
    """
    values = adata.obs[PERTURBATION].astype(str).to_numpy()
    held = np.isin(values, held_names)
    seen_test = np.zeros(adata.n_obs, dtype=bool)
    rng = np.random.default_rng(seed)
    for knockout in sorted(set(values[~held]) - {CONTROL}):
        cells = np.flatnonzero(values == knockout)
        seen_test[rng.choice(cells, size=int(test_fraction * len(cells)), replace=False)] = True
    train = ~held & ~seen_test
    return adata[train].copy(), adata[held].copy(), adata[seen_test].copy()


def drop_unexpressed_genes(train: ad.AnnData, *others: ad.AnnData) -> list[ad.AnnData]:
    """Keep genes with counts in ``train`` (needed on subsamples), then drop empty cells."""
    keep = np.asarray(train.X.sum(0)).ravel() > 0
    if keep.all():
        return [train, *others]
    print(f"dropping {int((~keep).sum())} genes without counts in the training cells")
    subsets = []
    for adata in (train, *others):
        adata = adata[:, keep]
        subsets.append(adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy())
    return subsets


# ---------------------------------------------------------------------- models
def fit_model(sparsity: str, data: CellData, args) -> tuple[SparseShiftVAE, float]:
    torch.manual_seed(args.seed)
    weight = {} if args.sparsity_weight is None else {"sparsity_weight": args.sparsity_weight}
    model = SparseShiftVAE(data.schema, n_latent=args.n_latent, sparsity=sparsity, **weight)
    start = time.perf_counter()
    fit(model, data, max_epochs=args.epochs, batch_size=128, lr=1e-3,
        kl_warmup_epochs=min(20, args.epochs // 3), device=args.device, seed=args.seed,
        progress=False)
    return model, time.perf_counter() - start


def extend_to_held_out(model: SparseShiftVAE, held: ad.AnnData, held_names: list[str], args
                       ) -> tuple[SparseShiftVAE, CellData, float]:
    """The model knowing the held-out knock-outs, their encoded cells, and the seconds taken.

    For the VAE there is nothing to learn: a copy with room for the new knock-outs.
    """
    start = time.perf_counter()
    if model.sparsity == "vae":
        extended = copy.deepcopy(model)
        extended.add_perturbations(held_names)
        return extended, CellData.from_anndata(held, schema=extended.schema), float("nan")
    extended, held_data, _ = transfer(model, held, held_names, max_epochs=args.transfer_epochs,
                                      lr=5e-3, device=args.device, seed=args.seed,
                                      progress=False)
    return extended, held_data, time.perf_counter() - start


def targets_per_knockout(model: SparseShiftVAE, names: list[str]) -> float:
    """Mean number of latents with target probability > 1/2 over ``names`` (NaN for the VAE)."""
    if model.sparsity == "vae" or not names:
        return float("nan")
    return float((target_probabilities(model).loc[names] > 0.5).sum(1).mean())


def top_targets(model: SparseShiftVAE, names: list[str], k: int) -> list[str]:
    """One line per knock-out: its ``k`` most probable targets with probability and shift."""
    probabilities = target_probabilities(model)
    shifts = pd.DataFrame(model.shift_loc.detach().cpu().numpy(),
                          index=list(model.schema.perturbations), columns=probabilities.columns)
    lines = []
    for name in names:
        row = probabilities.loc[name].sort_values(ascending=False)
        parts = [f"{z} p={p:.2f} shift={shifts.loc[name, z]:+.2f}" for z, p in row[:k].items()]
        lines.append(f"  {name:10s} {int((row > 0.5).sum())} > 0.5 | " + ", ".join(parts))
    return lines


def shared_targets(model: SparseShiftVAE, groups: dict[str, list[str]]) -> list[str]:
    """One line per group: the latents that two or more of its knock-outs target (p > 1/2),
    each with those knock-outs and the signs of their shifts."""
    probabilities = target_probabilities(model)
    shifts = pd.DataFrame(model.shift_loc.detach().cpu().numpy(),
                          index=probabilities.index, columns=probabilities.columns)
    lines = []
    for group, members in groups.items():
        members = [m for m in members if m in probabilities.index]
        hits = probabilities.loc[members] > 0.5
        shared = [f"{z} ({', '.join(f'{m}{shifts.loc[m, z]:+.1f}' for m in hits.index[hits[z]])})"
                  for z in hits.columns if hits[z].sum() >= 2]
        targeted = int(hits.any(axis=1).sum())
        lines.append(f"  {group:14s} {targeted}/{len(members)} knock-outs with a target; shared: "
                     + ("; ".join(shared) if shared else "none"))
    return lines


def run_model(sparsity: str, data: CellData, held: ad.AnnData, seen: ad.AnnData,
              held_names: list[str], args) -> tuple[dict, SparseShiftVAE]:
    model, fit_seconds = fit_model(sparsity, data, args)
    extended, held_data, transfer_seconds = extend_to_held_out(model, held, held_names, args)
    score = dict(n_samples=args.n_importance_samples, seed=args.seed)
    row = {
        "model": sparsity,
        "heldout_ko_iwelbo": mean_importance_weighted_elbo(extended, held_data, **score),
        "seen_test_iwelbo": mean_importance_weighted_elbo(
            model, CellData.from_anndata(seen, schema=model.schema), **score),
        "fit_seconds": fit_seconds,
        "transfer_seconds": transfer_seconds,
        "targets_per_heldout_ko": targets_per_knockout(extended, held_names),
        "targets_per_seen_ko": targets_per_knockout(model, list(model.schema.perturbations)),
    }
    return row, extended


# ---------------------------------------------------------------------- report
COLUMNS = {
    "model": "model",
    "heldout_ko_iwelbo": "held-out KO IWELBO/cell",
    "seen_test_iwelbo": "seen-perturbation test IWELBO/cell",
    "fit_seconds": "fit s",
    "transfer_seconds": "transfer s",
    "targets_per_heldout_ko": "latents p>0.5 per held-out KO",
    "targets_per_seen_ko": "latents p>0.5 per seen KO",
}


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, str):
            return value
        return "—" if not np.isfinite(value) else f"{value:.2f}" if abs(value) < 100 \
            else f"{value:.1f}"
    lines = ["| " + " | ".join(COLUMNS.values()) + " |",
             "|" + "|".join("---" if c == "model" else "---:" for c in COLUMNS) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def summary_table(table: pd.DataFrame) -> str:
    """Mean [min, max] over seeds of each model's scores, as markdown."""
    columns = [c for c in COLUMNS if c != "model"]
    lines = ["| model | seeds | " + " | ".join(COLUMNS[c] for c in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for model, rows in table.groupby("model", sort=False):
        cells = []
        for c in columns:
            values = rows[c].to_numpy(dtype=float)
            cells.append("—" if not np.isfinite(values).any() else
                         f"{np.nanmean(values):.2f} [{np.nanmin(values):.2f}, "
                         f"{np.nanmax(values):.2f}]")
        lines.append(f"| {model} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="papalexi", choices=sorted(DATASETS))
    parser.add_argument("--models", default="vae,ivae,svae+",
                        help=f"comma list among {','.join(MODELS)}")
    parser.add_argument("--held-out", default=None,
                        help="comma list of knock-outs to hold out (default: drawn per seed)")
    parser.add_argument("--n-held-out", type=int, default=None,
                        help=f"knock-outs to draw when --held-out is not given "
                             f"({FULL['n_held_out']}; --quick {QUICK['n_held_out']})")
    parser.add_argument("--min-cells", type=int, default=None,
                        help="draw held-out knock-outs among those with at least this many cells "
                             f"({', '.join(f'{k} {v[2]}' for k, v in DATASETS.items())})")
    parser.add_argument("--seen-test-fraction", type=float, default=0.1,
                        help="fraction of each training knock-out's cells kept aside for testing")
    parser.add_argument("--library-key", default=None,
                        help="obs column with library sizes, e.g. n_umis_whole_transcriptome "
                             "(default: each cell's total over the file's genes)")
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--sparsity-weight", type=float, default=None,
                        help="lambda: Beta(1, lambda) prior (svae+) or L0 penalty (svae) "
                             "(default: the package's 'auto', from the cells per knock-out)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"fit epochs ({FULL['epochs']}; --quick {QUICK['epochs']})")
    parser.add_argument("--transfer-epochs", type=int, default=None,
                        help=f"transfer epochs ({FULL['transfer_epochs']}; "
                             f"--quick {QUICK['transfer_epochs']})")
    parser.add_argument("--n-importance-samples", type=int, default=None,
                        help=f"IWELBO samples per cell ({FULL['n_importance_samples']}; "
                             f"--quick {QUICK['n_importance_samples']})")
    parser.add_argument("--n-cells", type=int, default=None,
                        help=f"random subsample of assigned cells (all; --quick "
                             f"{QUICK['n_cells']})")
    parser.add_argument("--top-targets", type=int, default=3,
                        help="targets printed per held-out knock-out (svae, svae+)")
    parser.add_argument("--seeds", default="0",
                        help="comma list: one held-out split and set of fits per seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (torch's default; --quick 1). These networks are "
                             "small: on a busy machine 1 thread can be many times faster")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write every seed's rows as CSV")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 knock-outs, 5 + 3 epochs, 5 importance samples, "
                             "3000 cells, 1 thread")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.min_cells is None:
        args.min_cells = DATASETS[args.dataset][2]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose among {list(MODELS)}")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds: give comma-separated integers, got {args.seeds!r}")
    return args


def run_seed(adata: ad.AnnData, seed: int, args) -> tuple[pd.DataFrame, dict]:
    """Split, fit and score every model for one seed; returns the rows and the sparse models'
    printed target lines."""
    args.seed = seed
    held_names = choose_held_out(knockout_sizes(adata), args.held_out, args.n_held_out,
                                 args.min_cells, seed)
    adata = subsample(adata, args.n_cells, seed)
    train, held, seen = split_cells(adata, held_names, args.seen_test_fraction, seed)
    train, held, seen = drop_unexpressed_genes(train, held, seen)
    data = CellData.from_anndata(train, perturbation_key=PERTURBATION, control=CONTROL,
                                 domain_key=DATASETS[args.dataset][1],
                                 library_key=args.library_key)
    print(f"seed {seed}: held-out knock-outs {held_names} ({held.n_obs} cells); training "
          f"{data.n_cells} cells ({data.schema.n_perturbations} knock-outs + control); "
          f"seen-perturbation test {seen.n_obs} cells", flush=True)
    rows, targets = [], {}
    for sparsity in args.models:
        row, extended = run_model(sparsity, data, held, seen, held_names, args)
        row["seed"] = seed
        rows.append(row)
        print(f"  {sparsity}: held-out {row['heldout_ko_iwelbo']:.2f}, seen test "
              f"{row['seen_test_iwelbo']:.2f} nats/cell ({row['fit_seconds']:.0f} s fit, "
              f"sparsity_weight {extended.sparsity_weight})", flush=True)
        if extended.has_targets:
            targets[sparsity] = (top_targets(extended, held_names, args.top_targets)
                                 + shared_targets(extended, GROUPS[args.dataset]))
    return pd.DataFrame(rows), targets


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    path = data_path(args.dataset)
    adata = load_assigned_cells(path)
    print(f"{path.name}: {adata.n_obs} assigned cells x {adata.n_vars} genes; n_latent "
          f"{args.n_latent}, sparsity_weight {args.sparsity_weight or 'auto'}, {args.epochs} fit "
          f"+ {args.transfer_epochs} transfer epochs, {args.n_importance_samples} importance "
          f"samples, seeds {args.seeds}, {torch.get_num_threads()} threads\n")
    tables = []
    for seed in args.seeds:
        table, targets = run_seed(adata, seed, args)
        tables.append(table)
        print(f"\nseed {seed}. IWELBO: mean importance-weighted ELBO per cell (nats, higher is "
              "better)\n")
        print(markdown_table(table))
        for sparsity, lines in targets.items():
            print(f"\n{sparsity}: top targets of each held-out knock-out (posterior mean p, "
                  "shift), then targets shared within groups")
            print("\n".join(lines))
        print(flush=True)
        if args.out is not None:
            pd.concat(tables).to_csv(args.out, index=False)
    if len(args.seeds) > 1:
        print(f"\nmean [min, max] over seeds {args.seeds}\n")
        print(summary_table(pd.concat(tables)))
    if args.out is not None:
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
