"""Save and load fitted models: state, constructor arguments, schema, package version and a
checksum of all of it.

Loading never imports what a file names: the class is looked up in the model registry
(:func:`~pyro_causalcell.models.register_model`) or among the classes the caller passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .._fs import current_umask
from .._version import __version__
from ..data import CellData, CellSchema
from ..models.registry import class_path, registered_models, registered_name
from .protocol import non_finite_parameters

FORMAT = 2
_REQUIRED = ("format", "class", "init_args", "schema", "state_dict")
_RESAVE = "Save the model again with pyro_causalcell.save(model, path)"


class ModelSchemaMismatchError(ValueError):
    """The data given to :func:`load` was not encoded like the data the model was fitted on."""


class ModelFileError(ValueError):
    """A file cannot be loaded as a model: unreadable, foreign, corrupted or of an unknown class.

    The message names the file and what to do.
    """


def checksum(payload: dict) -> str:
    """SHA-256 of everything :func:`save` writes except the checksum itself."""
    digest = hashlib.sha256()
    header = {key: payload.get(key) for key in ("format", "class", "init_args", "schema",
                                                "version")}
    digest.update(json.dumps(header, sort_keys=True, default=repr).encode())
    for name, tensor in payload["state_dict"].items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(model, path: str | os.PathLike) -> Path:
    """Write a fitted model to ``path`` atomically (a crash never leaves a half-written file).

    The model must expose ``schema`` (a :class:`CellSchema`) and ``init_args`` (the keyword
    arguments of its constructor besides the schema), as the package's models do. The file
    follows the umask like any other output.

    Raises
    ------
    ValueError
        A parameter or buffer holds NaN or infinite values (a diverged fit): nothing is written.
    """
    for attribute in ("schema", "init_args"):
        if not hasattr(model, attribute):
            raise TypeError(f"save needs model.{attribute}; set it in the model's __init__ "
                            "(see pyro_causalcell.models.VAE for an example)")
    path = Path(path)
    broken = non_finite_parameters(model)
    if broken:
        raise ValueError(f"refusing to save a broken model to {path}: {len(broken)} parameters "
                         f"hold NaN or infinite values (e.g. {broken[:3]}). Refit it (lower lr, "
                         "use kl_warmup_epochs) or reload a good copy.")
    payload = {
        "format": FORMAT,
        "class": registered_name(type(model)) or class_path(type(model)),
        "init_args": dict(model.init_args),
        "schema": model.schema.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "version": __version__,
    }
    payload["checksum"] = checksum(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a file written by "
                                "pyro_causalcell.save")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; pass the path of a file written by "
                             "pyro_causalcell.save (e.g. results/model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to read it means the file is not a model file
        raise ModelFileError(
            f"{path} cannot be read as a model file: it is empty, truncated or not written by "
            f"pyro_causalcell.save ({type(error).__name__}: {str(error)[:200]}). "
            f"{_RESAVE}.") from error
    missing = [key for key in _REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ModelFileError(f"{path} is a PyTorch file but not one written by "
                             f"pyro_causalcell.save (no {missing}). {_RESAVE}.")
    if "checksum" not in payload:
        warnings.warn(f"{path} has no checksum (written by an older pyro_causalcell); its "
                      "integrity cannot be checked. Save it again to add one.", stacklevel=3)
    elif checksum(payload) != payload["checksum"]:
        raise ModelFileError(f"{path} is corrupted: its contents do not match the checksum "
                             "written when it was saved (the file was damaged or edited). "
                             f"Restore it from a backup or refit. {_RESAVE}.")
    return payload


def _model_class(path: Path, recorded: str, model_classes) -> type:
    candidates = {**registered_models(), **{cls.__name__: cls for cls in model_classes},
                  **{class_path(cls): cls for cls in model_classes}}
    # files of format 1 record "module:QualName"; match registered classes by that path too
    candidates.update({class_path(cls): cls for cls in registered_models().values()})
    if recorded in candidates:
        return candidates[recorded]
    raise ModelFileError(
        f"{path} holds a model of class {recorded!r}, which is not a registered model "
        f"(registered: {sorted(registered_models())}). Nothing was imported. If you wrote that "
        "class and trust the file, import it and pass load(path, model_classes=[YourModel]), or "
        "decorate the class with @pyro_causalcell.register_model.")


def load(path: str | os.PathLike, data: CellData | None = None, *,
         device: str | torch.device = "cpu", model_classes=()):
    """Rebuild a model written by :func:`save`.

    Parameters
    ----------
    path : path-like
    data : CellData, optional
        Data the model will be used on; refused unless it was encoded with the saved schema.
    device : str or torch.device
    model_classes : sequence of type
        Your own model classes this file may hold, besides the registered ones.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ModelFileError
        The file is empty, truncated, foreign, corrupted (checksum), holds non-finite
        parameters, or names a class that is neither registered nor in ``model_classes``.
    ModelSchemaMismatchError
        ``data.schema`` differs from the schema saved with the model.
    """
    path = Path(path)
    payload = _read(path)
    if payload.get("version") != __version__:
        warnings.warn(f"{path} was saved by pyro_causalcell {payload.get('version')}; this is "
                      f"{__version__}. Check its latents before relying on them.", stacklevel=2)
    cls = _model_class(path, str(payload["class"]), model_classes)
    try:
        schema = CellSchema.from_dict(payload["schema"])
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path} holds an unreadable schema ({error}). {_RESAVE}.") from error
    if data is not None and data.schema != schema:
        diff = "; ".join(schema.differences(data.schema))
        raise ModelSchemaMismatchError(
            f"the data does not match the schema saved with {path} ({diff}). Encode it with the "
            "model's schema: CellData.from_anndata(adata, schema=<saved schema>), e.g. "
            "load(path).schema")
    model = cls(schema, **payload["init_args"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ModelFileError(f"{path} does not fit {registered_name(cls) or class_path(cls)} built from its own "
                             f"arguments ({str(error)[:300]}). {_RESAVE}.") from error
    broken = non_finite_parameters(model)
    if broken:
        raise ModelFileError(f"{path} holds NaN or infinite parameters (e.g. {broken[:3]}); it "
                             "was saved from a diverged fit. Refit the model.")
    return model.to(device)
