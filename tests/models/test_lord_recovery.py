"""LORD on simulated ground truth (``simulate.invariant_spurious``, class = the label): the
content holds no class, the class embedding all of it, and stage two's encoder reproduces the
codes and generalises to new cells of the same world.

Settings (content noise 0.1, L2 0.5, learning rates) were chosen on seed 0; the test uses
seed 1 (``lord_scores(seed)`` gives the numbers of any seed).
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_causalcell import LORD, CellData, fit, latent
from pyro_causalcell.infer import train_classifier
from pyro_causalcell.infer.protocol import model_device
from pyro_causalcell.simulate import invariant_spurious


def held_out_accuracy(features: np.ndarray, classes: np.ndarray, kind: str) -> float:
    """Accuracy on the second half of the cells of a classifier trained on the first half."""
    x = torch.as_tensor(np.array(features), dtype=torch.float32)
    y = torch.as_tensor(np.array(classes), dtype=torch.long)
    half = len(y) // 2
    network = train_classifier(x[:half], y[:half], int(y.max()) + 1, kind=kind)
    return float((network(x[half:]).argmax(-1) == y[half:]).float().mean())


def out_of_sample_r2(train_x, train_y, test_x, test_y) -> float:
    """Mean R^2 over the columns of ``test_y`` of the least-squares map fitted on train."""
    design = np.column_stack([train_x, np.ones(len(train_x))])
    coef, *_ = np.linalg.lstsq(design, train_y, rcond=None)
    residual = test_y - np.column_stack([test_x, np.ones(len(test_x))]) @ coef
    return float(np.mean(1 - residual.var(0) / test_y.var(0)))


def within_class_truth(adata, labels: np.ndarray) -> np.ndarray:
    """The true latents a class-free content should hold: z_inv minus its class mean, z_spur."""
    z_inv = np.asarray(adata.obsm["z_inv"])
    centred = z_inv - np.stack([z_inv[labels == c].mean(0) for c in labels])
    return np.column_stack([centred, adata.obsm["z_spur"]])


def lord_scores(seed: int) -> dict:
    adata = invariant_spurious(n_cells=2000, n_genes=100, seed=seed)
    data = CellData.from_anndata(adata, label_key="label", domain_key="domain")
    torch.manual_seed(seed)
    model = LORD(data.schema, n_latent_class=4, n_latent_content=8)
    fit(model, data, max_epochs=200, lr=3e-2, validation_fraction=0.0, progress=False,
        device="cpu", seed=seed)
    codes = model.codes.detach().cpu().numpy().copy()
    labels = data.label.numpy()
    scores = {"chance": np.bincount(labels).max() / len(labels)}
    for kind in ("linear", "mlp"):
        scores[f"content {kind}"] = held_out_accuracy(codes, labels, kind)
    embedding = model.class_embeddings(data.label.to(model_device(model))).detach().cpu().numpy()
    scores["class embedding mlp"] = held_out_accuracy(embedding, labels, "mlp")
    fit(model, data, max_epochs=100, lr=3e-3, progress=False, device="cpu", seed=seed,
        parameters=model.start_stage_two())
    encoded = latent(model, data)
    scores["encoder vs codes r"] = float(np.mean(
        [np.corrcoef(encoded[:, k], codes[:, k])[0, 1] for k in range(codes.shape[1])]))
    new = invariant_spurious(n_cells=1000, n_genes=100, seed=seed + 100, world_seed=seed)
    new_data = CellData.from_anndata(new, schema=data.schema)
    truth = within_class_truth(adata, labels)
    new_truth = within_class_truth(new, new_data.label.numpy())
    scores["truth R2 training cells"] = out_of_sample_r2(encoded, truth, encoded, truth)
    scores["truth R2 new cells"] = out_of_sample_r2(encoded, truth, latent(model, new_data),
                                                    new_truth)
    scores["new cells content mlp"] = held_out_accuracy(latent(model, new_data),
                                                        new_data.label.numpy(), "mlp")
    return scores


def test_content_is_class_free_and_stage_two_generalises():
    """A linear classifier finds no class in the content; an MLP finds some (0.41 on this seed,
    chance 0.34; 0.39 and 0.51 on seeds 2 and 3): noise and L2 remove the class means from the
    content, not every nonlinear trace of the class. It is printed, not asserted."""
    plain = lord_scores(seed=1)
    print("LORD:", {k: round(v, 3) for k, v in plain.items()})
    chance = plain["chance"]
    assert plain["content linear"] < chance + 0.1, plain
    assert plain["class embedding mlp"] > 0.95, plain
    assert plain["encoder vs codes r"] > 0.9, plain
    assert plain["truth R2 new cells"] > plain["truth R2 training cells"] - 0.15, plain
    assert plain["truth R2 new cells"] > 0.6, plain
