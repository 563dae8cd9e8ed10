"""One process of a distributed fit, launched by ``torchrun`` from ``test_distributed.py``.

    torchrun --standalone --nproc_per_node 2 ddp_worker.py OUT_DIR MODEL BATCH_SIZE EPOCHS

Each process fits the same simulated data with ``strategy="ddp"`` and writes its history and
final parameters to ``OUT_DIR/rank<r>.pt``.
"""

import sys

import torch

from pyro_causalcell.data import CellData
from pyro_causalcell.infer import fit
from pyro_causalcell.models import SparseShiftVAE, VAE
from pyro_causalcell.simulate import sparse_shift


def simulated_data() -> CellData:
    adata = sparse_shift(n_latent=4, n_perturbations=6, n_cells_per_perturbation=100,
                         n_genes=40, n_control_cells=200, seed=5)
    return CellData.from_anndata(adata, perturbation_key="perturbation", control="control")


def build(name: str, data: CellData):
    torch.manual_seed(0)
    if name == "vae":
        return VAE(data.schema, n_latent=4, n_hidden=32)
    return SparseShiftVAE(data.schema, n_latent=4, n_hidden=32)


def main(out_dir: str, name: str, batch_size: int, epochs: int) -> None:
    torch.set_num_threads(1)
    data = simulated_data()
    model = build(name, data)
    history = fit(model, data, max_epochs=epochs, batch_size=batch_size, lr=3e-3,
                  progress=False, seed=0, strategy="ddp")
    rank = torch.distributed.get_rank()
    torch.save({"history": history.to_dataframe().to_dict("list"),
                "state": model.state_dict()}, f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
