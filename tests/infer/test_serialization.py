"""``save`` / ``load`` integrity: checksums, refused files, the model registry, permissions."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from torch import nn

import pyro_causalcell as pcc
from pyro_causalcell import VAE, CellData, load, register_model, save
from pyro_causalcell.infer import ModelFileError
from pyro_causalcell.models import registered_models
from pyro_causalcell.simulate import cell_types


@pytest.fixture(scope="module")
def data():
    return CellData.from_anndata(cell_types(n_cells=60, n_genes=12, seed=3), domain_key="batch")


@pytest.fixture
def model(data):
    torch.manual_seed(0)
    return VAE(data.schema, n_latent=2, n_hidden=8)


@pytest.fixture
def saved(model, tmp_path):
    return save(model, tmp_path / "vae.pt")


def test_round_trip_keeps_every_number(model, saved, data):
    restored = load(saved, data)
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name


def test_corrupted_tensor_bytes_are_detected(saved):
    payload = torch.load(saved, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(payload, saved)
    with pytest.raises(ModelFileError, match=rf"{saved} is corrupted: its contents do not match "
                                             "the checksum"):
        load(saved)


def test_flipped_bytes_on_disk_are_detected(saved):
    raw = bytearray(saved.read_bytes())
    start = raw.index(b"data/0") + 200  # inside the stored tensor bytes of the zip archive
    raw[start:start + 8] = bytes(8)
    saved.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=str(saved)):
        load(saved)


@pytest.mark.parametrize("content", [b"", b"not a model\n", None], ids=["empty", "text",
                                                                         "truncated"])
def test_empty_truncated_or_foreign_files_name_the_file(saved, content):
    saved.write_bytes(saved.read_bytes()[:300] if content is None else content)
    with pytest.raises(ModelFileError, match=rf"{saved} cannot be read as a model file: it is "
                                             r"empty, truncated or not written by"):
        load(saved)


def test_a_foreign_torch_file_names_what_is_missing(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ModelFileError, match=r"is a PyTorch file but not one written by "
                                             r"pyro_causalcell\.save \(no \['format'"):
        load(path)


def test_a_missing_file_or_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        load(tmp_path / "nope.pt")
    with pytest.raises(ModelFileError, match="is a directory"):
        load(tmp_path)


def test_a_file_naming_an_unregistered_module_imports_nothing(saved, monkeypatch):
    import sys

    payload = torch.load(saved, weights_only=True)
    payload["class"] = "antigravity:Anything"  # importing it would open a web browser
    from pyro_causalcell.infer.serialization import checksum
    payload["checksum"] = checksum(payload)
    torch.save(payload, saved)
    monkeypatch.delitem(sys.modules, "antigravity", raising=False)
    with pytest.raises(ModelFileError, match=r"class 'antigravity:Anything', which is not a "
                                             r"registered model .*Nothing was imported"):
        load(saved)
    assert "antigravity" not in sys.modules


class TinyUserModel(nn.Module):
    """A user's model: schema, init_args, one parameter."""

    def __init__(self, schema, width: int = 3):
        super().__init__()
        self.schema, self.init_args = schema, dict(width=width)
        self.weight = nn.Parameter(torch.arange(float(width)))


def test_user_models_load_when_allowed_explicitly(data, tmp_path):
    path = save(TinyUserModel(data.schema, width=4), tmp_path / "mine.pt")
    with pytest.raises(ModelFileError, match="TinyUserModel'.*model_classes=\\[YourModel\\]"):
        load(path)
    restored = load(path, data, model_classes=[TinyUserModel])
    assert type(restored) is TinyUserModel and restored.weight.tolist() == [0, 1, 2, 3]


def test_registered_user_models_load_by_name(data, tmp_path):
    @register_model(name="TinyForTests")
    class Registered(TinyUserModel):
        pass

    try:
        path = save(Registered(data.schema), tmp_path / "mine.pt")
        assert torch.load(path, weights_only=True)["class"] == "TinyForTests"
        assert type(load(path)) is Registered
        with pytest.raises(ValueError, match="'TinyForTests' is already registered"):
            register_model(name="TinyForTests")(TinyUserModel)
    finally:
        from pyro_causalcell.models import registry
        registry._MODELS.pop("TinyForTests")


def test_the_package_models_are_registered():
    assert {"VAE", "SparseShiftVAE"} <= set(registered_models())
    assert pcc.register_model is register_model


def test_save_refuses_non_finite_parameters_and_writes_nothing(model, tmp_path):
    with torch.no_grad():
        model.decoder.net.layers[0].bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"refusing to save a broken model to .*broken\.pt: 1 "
                                         r"parameters hold NaN or infinite values \(e\.g\. "
                                         r"\['decoder\.net\.layers\.0\.bias'\]\)"):
        save(model, tmp_path / "broken.pt")
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_non_finite_parameters_saved_without_checks(saved):
    from pyro_causalcell.infer.serialization import checksum

    payload = torch.load(saved, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name].view(-1)[0] = float("nan")
    payload["checksum"] = checksum(payload)
    torch.save(payload, saved)
    with pytest.raises(ModelFileError, match="holds NaN or infinite parameters"):
        load(saved)


def test_save_follows_the_umask(model, tmp_path):
    previous = os.umask(0o022)
    try:
        path = save(model, tmp_path / "vae.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_files_without_checksum_load_with_a_warning(saved, data):
    payload = torch.load(saved, weights_only=True)
    payload.pop("checksum")
    payload["format"], payload["class"] = 1, "pyro_causalcell.models.vae:VAE"  # as format 1
    torch.save(payload, saved)
    with pytest.warns(UserWarning, match="has no checksum"):
        assert type(load(saved, data)) is VAE


def test_files_from_before_the_latent_block_still_load(model, saved, data):
    """The VAE's encoder was ``encoder.*`` before ``"z"`` became a latent block."""
    from pyro_causalcell.infer.serialization import checksum

    payload = torch.load(saved, weights_only=True)
    assert any(k.startswith("latent.encoder.") for k in payload["state_dict"])
    payload["state_dict"] = {k.removeprefix("latent."): v
                             for k, v in payload["state_dict"].items()}
    payload["checksum"] = checksum(payload)
    torch.save(payload, saved)
    restored = load(saved, data)
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
