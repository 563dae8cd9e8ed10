"""register_module: pyro.module everywhere except inside engine_holds_parameters."""

from __future__ import annotations

import pyro
import pytest
from torch import nn

from pyro_causalcell.handlers import engine_holds_parameters, register_module

pytestmark = pytest.mark.usefixtures("seeded")  # an empty param store before and after


def test_register_module_fills_the_param_store_outside_the_engine_only():
    module = nn.Linear(3, 2)
    with engine_holds_parameters():
        assert register_module("net", module) is module
        assert len(pyro.get_param_store()) == 0
        with engine_holds_parameters():  # nested blocks: still off
            register_module("net", module)
        register_module("net", module)  # the inner block's exit left it off
        assert len(pyro.get_param_store()) == 0
    register_module("net", module)
    assert set(pyro.get_param_store().keys()) == {"net$$$weight", "net$$$bias"}
    assert pyro.get_param_store()["net$$$weight"] is module.weight


def test_registration_resumes_after_an_error_inside_the_block():
    with pytest.raises(RuntimeError, match="boom"):
        with engine_holds_parameters():
            raise RuntimeError("boom")
    register_module("net", nn.Linear(2, 1))
    assert len(pyro.get_param_store()) == 2
