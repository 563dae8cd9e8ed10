"""Names of the plates and sites every model shares (the model protocol's contract).

One training engine, one latent reader and one counterfactual engine serve every model because
models name their plates and sites alike. Use these constants instead of string literals, as
scvi-tools' ``REGISTRY_KEYS`` are used there.
"""

from __future__ import annotations

#: plate over cells: ``pyro.plate(CELLS, n_cells, subsample=batch.index)``
CELLS = "cells"
#: plate over perturbations, for per-perturbation globals (shifts, target probabilities)
PERTURBATIONS = "perturbations"
#: plate over domains, for per-domain globals
DOMAINS = "domains"

#: observed raw counts, ``(cells, genes)``
COUNTS = "counts"
#: deterministic expected counts at the observed library size, ``(cells, genes)``
EXPRESSION = "expression"
#: the per-cell latent of single-block models; blocks are ``latent_site(block)``
Z = "z"

#: observed covariates that can be intervened on with ``pyro.do``
PERTURBATION = "perturbation"
DOMAIN = "domain"
LABEL = "label"
DOSE = "dose"
COVARIATES = (PERTURBATION, DOMAIN, LABEL, DOSE)

#: outputs a counterfactual query can read
OUTPUTS = (EXPRESSION, COUNTS)


def latent_site(block: str) -> str:
    """Site name of a latent block: ``latent_site("inv") == "z_inv"``."""
    return f"{Z}_{block}"
