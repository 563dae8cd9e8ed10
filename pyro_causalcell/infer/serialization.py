"""Save and load fitted models: state, constructor arguments, schema and package version."""

from __future__ import annotations

import importlib
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .._version import __version__
from ..data import CellData, CellSchema


class ModelSchemaMismatchError(ValueError):
    """The data given to :func:`load` was not encoded like the data the model was fitted on."""


def _class_path(model) -> str:
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def save(model, path: str | os.PathLike) -> Path:
    """Write a fitted model to ``path`` atomically (a crash never leaves a half-written file).

    The model must expose ``schema`` (a :class:`CellSchema`) and ``init_args`` (the keyword
    arguments of its constructor besides the schema), as the package's models do.
    """
    for attribute in ("schema", "init_args"):
        if not hasattr(model, attribute):
            raise TypeError(f"save needs model.{attribute}; set it in the model's __init__ "
                            "(see pyro_causalcell.models.VAE for an example)")
    payload = {
        "format": 1,
        "class": _class_path(model),
        "init_args": dict(model.init_args),
        "schema": model.schema.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "version": __version__,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, data: CellData | None = None, *,
         device: str | torch.device = "cpu"):
    """Rebuild a model written by :func:`save`.

    Parameters
    ----------
    path : path-like
    data : CellData, optional
        Data the model will be used on; refused unless it was encoded with the saved schema.
    device : str or torch.device

    Raises
    ------
    ModelSchemaMismatchError
        ``data.schema`` differs from the schema saved with the model.
    """
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    if payload.get("version") != __version__:
        warnings.warn(f"{path} was saved by pyro_causalcell {payload.get('version')}; this is "
                      f"{__version__}. Check its latents before relying on them.", stacklevel=2)
    schema = CellSchema.from_dict(payload["schema"])
    if data is not None and data.schema != schema:
        diff = "; ".join(schema.differences(data.schema))
        raise ModelSchemaMismatchError(
            f"the data does not match the schema saved with {path} ({diff}). Encode it with the "
            "model's schema: CellData.from_anndata(adata, schema=<saved schema>), e.g. "
            "load(path).schema")
    module_name, qualname = payload["class"].split(":")
    cls = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    model = cls(schema, **payload["init_args"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device)
