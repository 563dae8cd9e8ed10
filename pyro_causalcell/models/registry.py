"""The model registry: the classes :func:`~pyro_causalcell.load` may rebuild, by name.

A saved model records its class's registered name; loading looks the name up here and never
imports a module a file names. The package's models register themselves; register your own
with the decorator (or pass them to ``load(..., model_classes=[...])``).
"""

from __future__ import annotations

_MODELS: dict[str, type] = {}


def register_model(cls: type | None = None, *, name: str | None = None):
    """Class decorator making a model class loadable by name (default: the class name).

    Examples
    --------
    >>> @register_model
    ... class MyVAE(torch.nn.Module): ...

    Raises
    ------
    ValueError
        Another class is already registered under that name.
    """
    def register(model_cls: type) -> type:
        key = name or model_cls.__name__
        known = _MODELS.get(key)
        if known is not None and class_path(known) != class_path(model_cls):
            raise ValueError(f"a model class named {key!r} is already registered "
                             f"({class_path(known)}); register {class_path(model_cls)} with "
                             "another name: register_model(name=...)")
        _MODELS[key] = model_cls
        return model_cls

    return register if cls is None else register(cls)


def model_variants() -> dict[str, tuple[type, dict]]:
    """Command-line name -> (class, constructor keywords) of every registered model.

    A class lists its variants in a ``variants`` class attribute (``{"svae+": {"sparsity":
    "svae+"}, ...}``); without one it is offered under its lower-case class name.
    ``causalcell fit --model NAME`` accepts exactly these names.
    """
    out = {}
    for cls in _MODELS.values():
        for name, kwargs in getattr(cls, "variants", {cls.__name__.lower(): {}}).items():
            out[name] = (cls, dict(kwargs))
    return out


def registered_models() -> dict[str, type]:
    """Name -> class of every registered model (a copy)."""
    return dict(_MODELS)


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under, or ``None``."""
    return next((key for key, known in _MODELS.items() if known is cls), None)


def class_path(cls: type) -> str:
    """``"module:QualName"`` of a class."""
    return f"{cls.__module__}:{cls.__qualname__}"
