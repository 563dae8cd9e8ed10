"""Resumable fits: a fit killed mid-run (SIGKILL, in a subprocess) and resumed from its
checkpoint ends where an uninterrupted fit ends; settings must match; KeyboardInterrupt keeps
the last complete epoch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_causalcell import VAE, CellData, fit
from pyro_causalcell.infer.checkpoint import CheckpointMismatchError
from pyro_causalcell.simulate import cell_types

ROOT = Path(__file__).resolve().parents[2]
FIT = dict(progress=False, device="cpu", seed=3, batch_size=64)


@pytest.fixture(scope="module")
def data() -> CellData:
    return CellData.from_anndata(cell_types(n_cells=300, n_genes=30, seed=0), domain_key="batch")


def new_model(data) -> VAE:
    torch.manual_seed(0)
    return VAE(data.schema, n_latent=3, n_hidden=16)


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_resumed_fit_ends_where_an_uninterrupted_fit_ends(data, tmp_path):
    whole = new_model(data)
    reference = fit(whole, data, max_epochs=6, **FIT)
    path = tmp_path / "fit.ckpt"
    model = new_model(data)
    first = fit(model, data, max_epochs=4, checkpoint=path, **FIT)
    assert path.exists() and first.n_epochs == 4
    model = new_model(data)  # a fresh process would start from new weights
    trained = []
    history = fit(model, data, max_epochs=6, checkpoint=path,  # continues the fit
                  monitor=lambda *args: trained.append(1) or 0.0, **FIT)
    assert history.n_epochs == 6 and len(trained) == 2  # only epochs 4 and 5 ran
    torch.testing.assert_close(torch.tensor(history.train_elbo),
                               torch.tensor(reference.train_elbo), rtol=1e-5, atol=1e-4)
    assert_same_parameters(model.state_dict(), whole.state_dict())
    again = new_model(data)
    assert fit(again, data, max_epochs=6, checkpoint=path, **FIT).n_epochs == 6  # done: no-op
    assert_same_parameters(again.state_dict(), whole.state_dict())


def test_a_checkpoint_of_other_settings_is_refused(data, tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(new_model(data), data, max_epochs=1, checkpoint=path, **FIT)
    with pytest.raises(CheckpointMismatchError, match=r"batch_size: 64 then, 32 now"):
        fit(new_model(data), data, max_epochs=2, checkpoint=path,
            **{**FIT, "batch_size": 32})
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        fit(new_model(data), data, max_epochs=2, checkpoint=path, checkpoint_every=0, **FIT)


def test_keyboard_interrupt_keeps_the_last_complete_epoch(data):
    calls = []

    def interrupt_in_epoch_three(model, cells, index):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 0.0

    model = new_model(data)
    with pytest.warns(UserWarning, match="interrupted during epoch 2"):
        history = fit(model, data, max_epochs=6, monitor=interrupt_in_epoch_three, **FIT)
    assert history.interrupted and history.n_epochs == 2 and len(history.validation_elbo) == 2
    two = new_model(data)
    fit(two, data, max_epochs=2, **FIT)
    assert_same_parameters(model.state_dict(), two.state_dict())


CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from pyro_causalcell import VAE, CellData, fit
    from pyro_causalcell.simulate import cell_types

    checkpoint, out, kill_in_epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = CellData.from_anndata(cell_types(n_cells=300, n_genes=30, seed=0), domain_key="batch")
    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=3, n_hidden=16, dropout=0.1)
    epochs = []

    def monitor(model, cells, index):  # called once per epoch, after its validation
        epochs.append(1)
        if len(epochs) == kill_in_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0.0

    history = fit(model, data, max_epochs=7, progress=False, device="cpu", seed=3,
                  batch_size=64, checkpoint=checkpoint or None, monitor=monitor)
    torch.save({"state": model.state_dict(), "elbo": history.train_elbo, "ran": len(epochs)},
               out)
""")


def test_a_fit_killed_mid_run_resumes_to_the_same_end(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path, killed, resumed, whole = (tmp_path / name for name in
                                    ("fit.ckpt", "killed.pt", "resumed.pt", "whole.pt"))

    def run(*args):
        # the package of this checkout, whatever is installed
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])) }
        return subprocess.run([sys.executable, str(script), *map(str, args)],
                              capture_output=True, text=True, timeout=600, env=env)

    died = run(path, killed, 4)  # SIGKILL in epoch 4 (index 3): epochs 0-2 checkpointed
    assert died.returncode == -9, died.stderr
    assert path.exists() and not killed.exists()
    done = run(path, resumed, 0)
    assert done.returncode == 0, done.stderr
    uninterrupted = run("", whole, 0)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    a, b = torch.load(resumed), torch.load(whole)
    assert len(a["elbo"]) == len(b["elbo"]) == 7
    assert (a["ran"], b["ran"]) == (4, 7)  # the resumed fit ran epochs 3-6 only
    torch.testing.assert_close(torch.tensor(a["elbo"]), torch.tensor(b["elbo"]), rtol=1e-6,
                               atol=1e-5)
    assert_same_parameters(a["state"], b["state"])
