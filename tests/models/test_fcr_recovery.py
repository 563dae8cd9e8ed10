"""FCR on simulated ground truth (``simulate.factorized``): blocks, their independences, and a
treatment's counterfactual in a context where it was never measured.

Settings were chosen on seed 1 of the same design; the tests use seeds 2 and 4. The first
test's assertions were re-chosen on training seeds 0-11 of its design (``block_scores``)
after three of them failed on other training seeds than the test's.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_causalcell import FCR, VAE, CellData, counterfactual, fit, latent
from pyro_causalcell.infer.protocol import model_device
from pyro_causalcell.metrics import (conditional_independence_test, kmeans,
                                     mean_correlation_coefficient,
                                     normalized_mutual_information)
from pyro_causalcell.simulate import factorized

BLOCKS = ("z_x", "z_t", "z_tx")
DESIGN = dict(n_genes=100, n_covariates=6, n_treatments=5, dose_levels=None)


def encode(adata) -> CellData:
    return CellData.from_anndata(adata, perturbation_key="treatment", control="control",
                                 domain_key="covariate")


def fitted(make, data, seed: int):
    torch.manual_seed(seed)
    model = make()
    fit(model, data, max_epochs=120, lr=3e-3, batch_size=256, progress=False, device="cpu",
        seed=seed)
    return model


def block_scores(seed: int) -> dict:
    """FCR with and without discriminators and a VAE of 12 latents, fitted from ``seed`` on one
    design (its data seed stays 2): per-block MCC, NMI of k-means clusters of z_x / z_t with
    the covariate and the treatment, and tests of z_tx against z_x and z_t given (x, t)."""
    n = 3000
    adata = factorized(n_cells=n, seed=2, **DESIGN)
    data = encode(adata)
    small = dict(n_latent_x=4, n_latent_t=4, n_latent_tx=4)
    fcr = fitted(lambda: FCR(data.schema, **small), data, seed)
    plain = fitted(lambda: FCR(data.schema, discriminator_weight=0.0, **small), data, seed)
    vae = fitted(lambda: VAE(data.schema, n_latent=12, use_domain=False), data, seed)

    learned = {site: latent(fcr, data, site=site) for site in BLOCKS}
    z_vae = latent(vae, data)
    scores = {"mcc": [mean_correlation_coefficient(adata.obsm[s], learned[s]) for s in BLOCKS],
              "mcc vae": [mean_correlation_coefficient(adata.obsm[s], z_vae) for s in BLOCKS]}

    x = adata.obs["covariate"].astype(str).to_numpy()
    t = adata.obs["treatment"].astype(str).to_numpy()
    for site in ("z_x", "z_t"):
        for name, labels in [("x", x), ("t", t)]:
            clusters = kmeans(learned[site], len(np.unique(labels)), seed=0)[0]
            scores["nmi", site, name] = normalized_mutual_information(clusters, labels)

    # z_tx indep. z_x and z_t given the (x, t) group, on posterior samples: what the
    # discriminators are for
    groups = np.char.add(np.char.add(x, "|"), t)
    cells = np.random.default_rng(0).choice(n, 800, replace=False)
    for name, model in [("with", fcr), ("without", plain)]:
        torch.manual_seed(0)
        with torch.no_grad():
            model.eval()
            batch = data.batch(torch.arange(n)).to(model_device(model))
            z = {k: v.cpu().numpy()[cells] for k, v in model.guide(batch).items()}
        scores["independence", name] = [
            conditional_independence_test(z["z_tx"], z[other], groups[cells], n_permutations=200)
            for other in ("z_x", "z_t")]
    return scores


def test_blocks_recover_their_truth_and_the_discriminators_make_z_tx_independent():
    """What held on every one of the training seeds 0-11 (seed 2 is the test's), with margin:

    - the covariate block matches its truth better than a VAE of 12 latents does (by
      0.055-0.21); the treatment block was not 0.05 better on three seeds (worse on two), and
      the interaction block was worse on most;
    - k-means clusters of z_x find the covariate (NMI 0.44-0.97) and of z_t the treatment
      (0.74-0.95), and neither finds the other label (NMI under 0.01);
    - the discriminators raise the p-values of the conditional independence test of z_tx
      against z_x and z_t (mean of the two higher by 0.10-0.90). Without them the test rejected
      for one pair or both on 11 of the 12 seeds; with them for one pair on one seed (p 0.015).
    """
    scores = block_scores(seed=2)
    print(f"FCR blocks: {scores}")
    ours, theirs = scores["mcc"], scores["mcc vae"]
    assert ours[0] > theirs[0] + 0.03, scores  # the covariate block
    assert scores["nmi", "z_x", "x"] > 0.35 and scores["nmi", "z_x", "t"] < 0.05, scores
    assert scores["nmi", "z_t", "t"] > 0.5 and scores["nmi", "z_t", "x"] < 0.05, scores
    with_ = [test.pvalue for test in scores["independence", "with"]]
    without = [test.pvalue for test in scores["independence", "without"]]
    assert np.mean(with_) > np.mean(without) + 0.05, scores


def test_counterfactual_of_a_pair_never_seen_matches_the_simulator(unseen_pair):
    """covariate_0 was never given treatment_1 in training: do(perturbation=treatment_1) on its
    control cells, against the simulator's own program rerun under pyro.do (same noise)."""
    seed = 4
    truth = unseen_pair(seed, 3000, interaction_strength=0.5, **DESIGN)
    data = encode(truth.adata[~truth.held_out].copy())
    model = fitted(lambda: FCR(data.schema, n_latent_x=4, n_latent_t=4, n_latent_tx=4), data,
                   seed)
    controls = CellData.from_anndata(truth.adata[truth.controls], schema=data.schema)
    predicted = counterfactual(model, controls, {"perturbation": "treatment_1"}, n_samples=5)
    reconstructed = counterfactual(model, controls, {"perturbation": "control"}, n_samples=5)
    libraries = controls.library.numpy()[:, None]
    predicted_lfc = truth.lfc(predicted.X / libraries, reconstructed.X / libraries)
    correlation = np.corrcoef(predicted_lfc, truth.true_lfc)[0, 1]
    slope = np.polyfit(truth.true_lfc, predicted_lfc, 1)[0]
    print(f"unseen pair: counterfactual LFC vs simulator r = {correlation:.3f}, "
          f"slope = {slope:.2f}")
    assert correlation > 0.8, correlation
    assert 0.5 < slope < 1.5, slope
