"""Speed benchmark: ``fit(VAE)`` against a hand-written PyTorch loop of the same work.

Both train the same network (encoder 2000-128-2x10, decoder 10-128-2000, per-gene inverse
dispersion), with the same negative binomial likelihood, the same single-sample Monte Carlo
ELBO, the same Adam optimiser, batch size, train/validation split and per-epoch validation
ELBO, on the same synthetic counts, in the same run. Each contender runs in its own fresh
process (so peak memory is its own), alternating, ``--repeats`` times; the fastest time of each
is compared.

    python benchmarks/vae_speed.py                      # 20,000 cells x 2,000 genes, CPU
    python benchmarks/vae_speed.py --device cuda
    python benchmarks/vae_speed.py --sparse             # CellData keeps CSR, densifies batches

Prints both times, the ratio fit / hand-written (target <= 1.15) and peak memory.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import time

import numpy as np
import torch

N_LATENT, N_HIDDEN = 10, 128


def synthetic_counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    """Low-rank negative binomial counts, ``(n_cells, n_genes)`` float32."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_cells, 8))
    logits = z @ rng.normal(size=(8, n_genes)) * 0.5 + rng.normal(size=n_genes)
    rates = np.exp(logits - logits.max(1, keepdims=True))
    rates /= rates.sum(1, keepdims=True)
    library = rng.lognormal(np.log(3000), 0.3, size=(n_cells, 1))
    mean = rates * library
    theta = 5.0
    return rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_package(args, queue):
    import anndata as ad
    import scipy.sparse as sp

    from pyro_causalcell import VAE, CellData, fit

    counts = synthetic_counts(args.n_cells, args.n_genes)
    adata = ad.AnnData(sp.csr_matrix(counts) if args.sparse else counts)
    data = CellData.from_anndata(adata)
    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=N_LATENT, n_hidden=N_HIDDEN)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # one warm-up epoch outside the timing (allocator, first-call costs), as for the loop
    fit(model, data, max_epochs=1, batch_size=args.batch_size, device=args.device,
        progress=False, validation_fraction=0.1, seed=1)
    start = time.perf_counter()
    history = fit(model, data, max_epochs=args.epochs, batch_size=args.batch_size,
                  device=args.device, progress=False, validation_fraction=0.1, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    queue.put(dict(seconds=time.perf_counter() - start, memory=peak_memory_mb(device),
                   elbo=history.validation_elbo[-1]))


class HandWrittenVAE(torch.nn.Module):
    def __init__(self, n_genes: int):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(n_genes, N_HIDDEN), torch.nn.ReLU(),
                                           torch.nn.Linear(N_HIDDEN, 2 * N_LATENT))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(N_LATENT, N_HIDDEN), torch.nn.ReLU(),
                                           torch.nn.Linear(N_HIDDEN, n_genes))
        self.log_theta = torch.nn.Parameter(torch.zeros(n_genes))

    def loss(self, x: torch.Tensor, n_total: int) -> torch.Tensor:
        """Negative single-sample ELBO of the minibatch, scaled to ``n_total`` cells."""
        library = x.sum(1, keepdim=True)
        loc, raw = self.encoder(torch.log1p(x)).split(N_LATENT, -1)
        scale = torch.nn.functional.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum(-1)
        log_p = (-0.5 * z ** 2).sum(-1)
        mu = torch.softmax(self.decoder(z), -1) * library
        theta = self.log_theta.exp()
        log_theta_mu = torch.log(theta + mu)
        log_lik = (theta * (self.log_theta - log_theta_mu) + x * (torch.log(mu) - log_theta_mu)
                   + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)).sum(-1)
        return -(log_lik + log_p - log_q).sum() * (n_total / len(x))


def run_loop(args, queue):
    device = torch.device(args.device)
    counts = torch.as_tensor(synthetic_counts(args.n_cells, args.n_genes)).to(device)
    torch.manual_seed(0)
    model = HandWrittenVAE(args.n_genes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=0.01, fused=True)  # as fit
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(args.n_cells, generator=generator)
    n_val = round(0.1 * args.n_cells)
    train, val = order[n_val:].to(device), order[:n_val].to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def epoch():
        shuffled = train[torch.randperm(len(train), generator=generator).to(device)]
        for start in range(0, len(shuffled), args.batch_size):
            loss = model.loss(counts[shuffled[start:start + args.batch_size]], len(train))
            if not math.isfinite(loss.item()):
                raise FloatingPointError("NaN loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            total = sum(model.loss(counts[val[s:s + 1024]], len(val)).item() * len(val[s:s + 1024])
                        for s in range(0, len(val), 1024))
        return -total / len(val) ** 2

    epoch()  # warm-up epoch, not timed
    start = time.perf_counter()
    for _ in range(args.epochs):
        elbo = epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    queue.put(dict(seconds=time.perf_counter() - start, memory=peak_memory_mb(device), elbo=elbo))


def in_fresh_process(target, args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=20_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparse", action="store_true", help="give CellData CSR counts")
    args = parser.parse_args()

    results = {"fit(VAE)": [], "hand-written loop": []}
    for repeat in range(args.repeats):
        for name, target in (("hand-written loop", run_loop), ("fit(VAE)", run_package)):
            results[name].append(in_fresh_process(target, args))
            r = results[name][-1]
            print(f"  repeat {repeat}: {name:18s} {r['seconds']:7.2f} s  "
                  f"peak {r['memory']:7.0f} MiB  validation ELBO/cell {r['elbo']:.1f}")
    best = {name: min(r["seconds"] for r in runs) for name, runs in results.items()}
    memory = {name: max(r["memory"] for r in runs) for name, runs in results.items()}
    kind = "GPU allocated" if args.device.startswith("cuda") else "process RSS"
    print(f"\n{args.n_cells} cells x {args.n_genes} genes ({'CSR' if args.sparse else 'dense'}), "
          f"batch {args.batch_size}, {args.epochs} epochs, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    for name in results:
        print(f"{name:18s} best of {args.repeats}: {best[name]:7.2f} s   "
              f"peak memory ({kind}): {memory[name]:.0f} MiB")
    print(f"ratio fit / hand-written: {best['fit(VAE)'] / best['hand-written loop']:.3f} "
          "(target <= 1.15)")


if __name__ == "__main__":
    main()
