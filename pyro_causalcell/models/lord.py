r"""LORD-style class / content disentanglement (Gabbay and Hoshen, ICLR 2020; biolord's idea).

Each cell :math:`n` has a **class** :math:`y_n` (its label, domain, perturbation or a named
categorical covariate: ``class_key``) and a **content** code :math:`z_n`. The class is
represented by an embedding :math:`e(y)` shared by every cell of the class; the content is
everything else about the cell. The generator reads both:

.. math::
    z_n \sim \mathcal{N}(0, s^2 I), \qquad
    x_n \sim \mathrm{NB}\big(l_n\,\mathrm{softmax}\,f(e(y_n), z_n),\ \theta\big).

**Stage one** optimises the content codes directly, as latents (no encoder): the guide is a point
mass at each training cell's code :math:`c_n` (a row of the table ``codes``), blurred by LORD's
fixed Gaussian noise, :math:`q(z_n) = \mathcal{N}(c_n, \sigma^2 I)` (``content_noise=0``: the
plain ``Delta``). The ELBO is then LORD's objective: reconstruction from the noisy content, and
the prior's L2 penalty :math:`\lVert z_n \rVert^2 / 2s^2` (``content_penalty`` is
:math:`1 / 2s^2`), up to a constant. Class embeddings pay nothing while content pays for every
bit it carries, so what all cells of a class share goes to the class embedding.

**Stage two** trains an amortised content encoder :math:`E(x)` on the stage-one codes:
``fit(model, data, parameters=model.start_stage_two())``. The guide becomes
:math:`\mathcal{N}(E(x_n), \sigma^2 I)`, and the model adds the factor ``"content_match"``,
:math:`-\lVert E(x_n) - c_n \rVert^2 / 2\sigma^2` for the cells stage one coded (the code
observed with the content noise), beside the ELBO of the frozen generator. Afterwards the model
follows the model protocol on any cells: :func:`~pyro_causalcell.latent` reads the content,
:func:`~pyro_causalcell.counterfactual` with ``do={class_key: ...}`` swaps the class.
"""

from __future__ import annotations

import uuid

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .. import sites
from ..data import CellBatch, CellData, CellSchema
from ..handlers import register_module
from ..nn import MLP, CountDecoder
from .components import cells_plate, emit_counts, feature_width, features, observe_all
from .registry import register_model

__all__ = ["LORD"]

#: the stage-two factor site: the encoder's content against the stage-one codes
CONTENT_MATCH = "content_match"
CONTENT = sites.latent_site("content")


@register_model
class LORD(nn.Module):
    """Class embeddings and per-cell content codes, then amortised content encoders.

    Parameters
    ----------
    schema : CellSchema
    n_latent_class : int
        Width of the class embedding.
    n_latent_content : int
        Width of the content latent ``"z_content"``.
    class_key : str
        The covariate site that is the class: ``"label"``, ``"domain"``, ``"perturbation"``
        (multi-hot; a combination's embedding is the sum of its members') or a named
        categorical covariate.
    content_noise : float
        :math:`\\sigma`, the standard deviation of the Gaussian noise on the content (LORD's
        regulariser); 0 gives point-mass guides. With 0.5 or 1, an MLP recovered the class
        from the content of our simulation at 0.78-0.93 (chance 0.35), with 0.1 at 0.40
        (seed 0, used only for this choice).
    content_penalty : float
        :math:`\\lambda`, the L2 penalty :math:`\\lambda \\lVert z \\rVert^2` per cell: the prior
        is :math:`\\mathcal{N}(0, I / 2\\lambda)` (0.5: the standard normal).
    n_hidden, n_layers, likelihood, dispersion, dropout, norm
        As in :class:`~pyro_causalcell.models.VAE` (decoder and content encoder).

    Notes
    -----
    Sites: the covariates the data carries (observed; ``class_key`` sets the class embedding),
    ``"z_content"`` (``(cells, n_latent_content)``), ``"expression"``, ``"counts"``, and in
    stage two the factor ``"content_match"``. Stage one knows only the cells it was fitted on
    (the rows of ``codes``, by position in the data); stage two encodes any cells.
    """

    variants = {"lord": {}}
    default_latent_site = CONTENT

    def __init__(self, schema: CellSchema, n_latent_class: int = 8, n_latent_content: int = 16,
                 class_key: str = sites.LABEL, content_noise: float = 0.1,
                 content_penalty: float = 0.5, n_hidden: int = 128, n_layers: int = 1,
                 likelihood: str = "nb", dispersion: str = "gene", dropout: float = 0.0,
                 norm: str | None = None):
        super().__init__()
        _check_class_key(schema, class_key)
        if not content_noise >= 0:
            raise ValueError(f"content_noise must be >= 0, got {content_noise}")
        if not content_penalty > 0:
            raise ValueError(f"content_penalty must be > 0 (the prior's precision), got "
                             f"{content_penalty}")
        self.init_args = dict(n_latent_class=n_latent_class, n_latent_content=n_latent_content,
                              class_key=class_key, content_noise=content_noise,
                              content_penalty=content_penalty, n_hidden=n_hidden,
                              n_layers=n_layers, likelihood=likelihood, dispersion=dispersion,
                              dropout=dropout, norm=norm)
        self.schema, self.class_key = schema, class_key
        self.n_latent_content = n_latent_content
        self.content_noise = content_noise
        self.content_scale = (2.0 * content_penalty) ** -0.5
        hidden = [n_hidden] * n_layers
        # a bias: the embedding of no perturbation (controls) when the class is multi-hot
        self.class_embedding = nn.Linear(feature_width([class_key], schema), n_latent_class,
                                         bias=class_key == sites.PERTURBATION)
        self.decoder = CountDecoder(n_latent_class + n_latent_content, schema.n_genes, hidden,
                                    likelihood=likelihood, dispersion=dispersion,
                                    n_domains=schema.n_domains, dropout=dropout, norm=norm)
        self.content_encoder = MLP(schema.n_genes, n_latent_content, hidden, dropout=dropout,
                                   norm=norm)
        #: stage-one content codes, one row per cell of the data stage one was fitted on
        self.codes = nn.Parameter(torch.zeros(0, n_latent_content))
        self.register_buffer("coded", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("amortised", torch.tensor(False))
        self._stage = 1  # the buffer's value, kept on the host so steps never read the device
        self.pyro_name = f"lord_{uuid.uuid4().hex[:8]}"
        self._register_load_state_dict_pre_hook(_resize_codes, with_module=True)

    # ------------------------------------------------------------------ stages
    @property
    def stage(self) -> int:
        """1 while the content codes are optimised, 2 once the encoder gives the content."""
        return self._stage

    def prepare_fit(self, data: CellData, train_index: torch.Tensor) -> None:
        """Called by :func:`~pyro_causalcell.fit` before training: stage one makes one code per
        cell of ``data`` (kept when refitting data of the same size); stage two checks that
        ``data`` is the data stage one coded.

        Raises
        ------
        ValueError
            Stage one with held-out cells (they would have no code), or stage two on data other
            than stage one's.
        """
        n_cells = data.n_cells
        if self.stage == 1 and len(train_index) < n_cells:
            raise ValueError(
                f"LORD's stage one optimises a content code for every training cell and has "
                f"none for the {n_cells - len(train_index)} held-out cells: fit stage one with "
                "validation_fraction=0 (stage two, the encoder, can hold cells out)")
        if self.stage == 2:
            if n_cells != len(self.codes):
                raise ValueError(
                    f"stage two fits the content encoder to the stage-one codes of the "
                    f"{len(self.codes)} cells stage one was fitted on, but this data has "
                    f"{n_cells} cells: pass the data of stage one")
            return
        if len(self.codes) != n_cells:
            self._make_codes(0.1 * torch.randn(n_cells, self.n_latent_content))

    def _make_codes(self, initial: torch.Tensor) -> None:
        """A new code table holding ``initial`` (on the model's device), no cell coded yet."""
        like = self.decoder.log_inverse_dispersion
        self.codes = nn.Parameter(initial.to(like))
        self.coded = torch.zeros(len(initial), dtype=torch.bool, device=like.device)

    def start_stage_two(self) -> list[nn.Parameter]:
        """Switch to the amortised content encoder; returns its parameters, the ones to train:
        ``fit(model, data, parameters=model.start_stage_two())``.

        Raises
        ------
        RuntimeError
            Stage one has not coded any cell yet.
        """
        if not bool(self.coded.any()):
            raise RuntimeError("stage one has not been fitted: fit(model, data) first, then "
                               "fit(model, data, parameters=model.start_stage_two())")
        self.amortised.fill_(True)
        self._stage = 2
        return list(self.content_encoder.parameters())

    # ------------------------------------------------------------------ pieces
    def class_embeddings(self, value: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` class indices (``(batch, n_perturbations)`` multi-hot) ->
        ``(batch, n_latent_class)`` embeddings."""
        return self.class_embedding(self.class_features(value))

    def class_features(self, value: torch.Tensor) -> torch.Tensor:
        """``(batch, n_classes)`` one-hot (multi-hot for perturbations) class features."""
        return features({self.class_key: value}, [self.class_key], self.schema)

    def encoded_content(self, counts: torch.Tensor) -> torch.Tensor:
        """The stage-two encoder: ``(batch, n_genes)`` counts -> ``(batch, n_latent_content)``."""
        return self.content_encoder(torch.log1p(counts))

    def _codes_of(self, batch: CellBatch) -> torch.Tensor:
        if self.training:
            self.coded[batch.index] = True
        elif not self._coded(batch.index):
            raise ValueError(
                "LORD in stage one knows the content of the cells it was fitted on only (by "
                "their position in that data), and some of these cells have no code. Fit stage "
                "two (fit(model, data, parameters=model.start_stage_two())) to encode other "
                "cells.")
        return self.codes[batch.index]

    def _coded(self, index: torch.Tensor) -> bool:
        """Whether stage one coded every cell at these positions."""
        return int(index.max()) < len(self.coded) and bool(self.coded[index].all())

    def _content_distribution(self, loc: torch.Tensor) -> dist.Distribution:
        if self.content_noise == 0:
            return dist.Delta(loc, event_dim=1)
        return dist.Normal(loc, self.content_noise).to_event(1)

    # ------------------------------------------------------------------ protocol
    def model(self, batch: CellBatch) -> torch.Tensor:
        """Generative program; returns the ``(batch, n_genes)`` expected expression."""
        register_module(self.pyro_name, self)
        with cells_plate(batch):
            observed = observe_all(batch, self.schema)
            embedding = self.class_embeddings(observed[self.class_key])
            zeros = batch.library.new_zeros(len(batch), self.n_latent_content)
            content = pyro.sample(CONTENT, dist.Normal(zeros, self.content_scale).to_event(1))
            expression = emit_counts(self.decoder, torch.cat([embedding, content], -1), batch,
                                     domain=observed.get(sites.DOMAIN))
            if self.training and self.stage == 2:
                self._content_match(batch)
        return expression

    def guide(self, batch: CellBatch) -> torch.Tensor:
        """Stage one: the cell's code; stage two: the encoder's content (with the noise)."""
        register_module(self.pyro_name, self)
        with cells_plate(batch):
            loc = self.encoded_content(batch.counts) if self.stage == 2 else self._codes_of(batch)
            return pyro.sample(CONTENT, self._content_distribution(loc))

    def _content_match(self, batch: CellBatch) -> None:
        """Per cell: the log density of the stage-one code under ``N(E(x), sigma^2)`` (up to
        a constant), for the cells stage one coded."""
        coded = self.coded[batch.index].to(batch.library.dtype)
        error = (self.encoded_content(batch.counts) - self.codes[batch.index].detach())
        scale = max(self.content_noise, 1e-2)
        pyro.factor(CONTENT_MATCH, -coded * error.square().sum(-1) / (2.0 * scale ** 2))


def _check_class_key(schema: CellSchema, class_key: str) -> None:
    categorical = (sites.PERTURBATION, sites.DOMAIN, sites.LABEL,
                   *schema.categorical_covariate_keys)
    if class_key not in categorical:
        raise ValueError(f"class_key={class_key!r}: the class must be 'label', 'domain', "
                         "'perturbation' or a named categorical covariate "
                         f"{list(schema.categorical_covariate_keys)}")
    if class_key not in schema.carried:
        raise ValueError(f"class_key={class_key!r}, but the data carries no {class_key}: encode "
                         f"it with CellData.from_anndata(..., {class_key}_key=<the obs column>)")


def _resize_codes(module: LORD, state_dict: dict, prefix: str, *args) -> None:
    """Files hold as many codes as cells were coded: make room before loading them."""
    codes = state_dict.get(prefix + "codes")
    if codes is not None and codes.shape != module.codes.shape:
        module._make_codes(torch.zeros(codes.shape))
    amortised = state_dict.get(prefix + "amortised")
    if amortised is not None:
        module._stage = 2 if bool(amortised) else 1
