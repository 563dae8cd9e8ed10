"""The model registry: names for load, and the variants `causalcell fit --model` offers."""

from __future__ import annotations

import pytest
from torch import nn

from pyro_causalcell.cli import build_parser
from pyro_causalcell.models import SparseShiftVAE, VAE, model_variants, register_model
from pyro_causalcell.models import registry


def test_the_package_variants_are_offered_by_the_cli():
    variants = model_variants()
    assert variants["vae"] == (VAE, {})
    assert variants["svae+"] == (SparseShiftVAE, {"sparsity": "svae+"})
    fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
    choices = next(a.choices for a in fit_parser._actions if a.dest == "model")
    assert choices == sorted(variants)


def test_a_registered_model_joins_the_cli_without_editing_it():
    @register_model(name="MyTestModel")
    class MyModel(nn.Module):
        variants = {"my-model": {"width": 3}}

    try:
        assert model_variants()["my-model"] == (MyModel, {"width": 3})
        fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
        assert "my-model" in next(a.choices for a in fit_parser._actions if a.dest == "model")
    finally:
        registry._MODELS.pop("MyTestModel")
    assert "my-model" not in model_variants()


def test_a_class_without_variants_is_offered_by_its_lower_case_name():
    @register_model
    class Plain(nn.Module):
        pass

    try:
        assert model_variants()["plain"] == (Plain, {})
    finally:
        registry._MODELS.pop("Plain")
    with pytest.raises(KeyError):
        model_variants()["plain"]
