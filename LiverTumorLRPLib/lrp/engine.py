"""The LRP engine: a modified forward pass whose derivative carries the LRP rules.

Every linear layer (Conv, ConvTranspose, Linear) is replaced by a :class:`.layer.RuleLayer` whose *value* is
the original output ``z`` and whose *derivative* is the rule's redistribution (see :mod:`.rules`).  Then,
with a probe ``s = 1`` multiplying the input (``x * s``) and ``y~`` the modified network:

* Eq. 1: ``M_a = d y~_a / d s`` -- one backward pass (vjp) gives the input relevance of any
  output relevance ``seed * y`` (the seeded relevance is the model output, as in the paper);
* ``S_a = sum(M_a) = (d y~ / d s) 1`` -- one forward-mode pass (jvp) gives the relevance sum of
  *every* output voxel at once.  That is what makes Eq. 2 cheap (see :mod:`LiverTumorLRPLib.explain`).

Layers (:mod:`.canonize`): BatchNorm is folded into the convolution it follows (canonisation, as zennit);
InstanceNorm is folded the same way, with this input's per-channel mean and variance as
constants of the forward pass (so its centring shift acts as a bias: it absorbs relevance
unless biases are zeroed in the rule -- passing relevance through it unchanged instead
divides by the un-normalised activations, which is conservative but numerically
unstable); ReLU, LeakyReLU, PReLU, max-pooling, concatenation,
cropping and padding use the plain gradient, which in this gradient-times-input form
passes relevance through; average pooling, linear up-sampling and residual addition
use the plain gradient too, which here *is* LRP-0 (relevance split in proportion to
the contributions).  A softmax or sigmoid at the very end is dropped (the logits are
explained).  Any other layer or tensor operation on the relevance path raises
:class:`.core.LRPError` naming it (:mod:`.guard`); the engine never silently falls back to the gradient.
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from .canonize import LayerInfo, canonize, check_unchanged, prepared_copy, set_module
from .core import LRPError, State
from .guard import Guard
from .layer import RuleLayer
from .presets import DEFAULT_PRESET, get_preset, preset_engine
from .rules import Rule, make_rule

Selector = "str | type"
RuleSpec = "Rule | str | tuple"


class LRP:
    """LRP for a segmentation network.

    ``preset``: a name from :data:`.presets.PRESETS` or a function ``(layers) -> {name: rule}``.
    ``overrides``: ``[(selector, rule), ...]``, first match wins; a selector is a layer name or glob
    (``"decoders.*"``), ``"input"``, ``"output"``, or a layer type (``nn.ConvTranspose3d``).
    ``bounds``: z^B input bounds ``(low, high)``, per channel; default: per-channel min and max of the input.
    The network is copied, put in eval mode and canonised on the first call; the original is not changed.
    """

    def __init__(self, model: nn.Module, preset=DEFAULT_PRESET, overrides=None):
        if isinstance(model, LRP):
            raise TypeError("model is already an LRP object")
        self.source = model
        self.preset = preset
        self.overrides = list(overrides or [])
        self.state = State()
        self.model: Optional[nn.Module] = None
        self.layers: list[LayerInfo] = []
        self.rules: dict[str, Rule] = {}

    # ---- building -------------------------------------------------------------------------------------------
    def build(self, x: torch.Tensor) -> "LRP":
        """Canonise a copy of the network for inputs like ``x`` and assign a rule to every linear layer."""
        model = prepared_copy(self.source, x)
        y_ref, self.layers, instance_norms = canonize(model, x)
        self.rules = self._assign_rules()
        for info in self.layers:
            set_module(model, info.name, RuleLayer(info.module, self.rules[info.name], info.name, self.state,
                                                   info.is_input, instance_norms.get(info.name)))
        self.model = model
        with torch.no_grad():  # canonisation must not change what the network computes
            y = self._forward(x, torch.ones_like(x), None)
        check_unchanged(y, y_ref, x.dtype, "canonised network",
                        "; a BatchNorm may be folded into a layer whose output is also used elsewhere")
        return self

    def _assign_rules(self) -> dict[str, Rule]:
        """The preset's rules, replaced by the first matching override."""
        base = get_preset(self.preset)(self.layers) if self.preset is not None else {}
        rules = {}
        for info in self.layers:
            rule = None
            for selector, spec in self.overrides:
                if _matches(selector, info):
                    rule = make_rule(spec)
                    break
            if rule is None:
                rule = base.get(info.name)
            if rule is None:
                raise LRPError(f"no LRP rule for layer {info.name!r} ({type(info.module).__name__})")
            rules[info.name] = rule
        return rules

    @property
    def input_rules(self) -> list[Rule]:
        """The rules of the layers that read the network input."""
        return [self.rules[i.name] for i in self.layers if i.is_input]

    def check_sequence_relevance(self):
        """Refuse rules that make per-sequence relevance meaningless (Flat, w^2 on the input layer)."""
        bad = [r for r in self.input_rules if r.data_independent]
        if bad:
            raise LRPError(f"input-layer rule {bad[0]!r} ignores the input values: it gives every sequence a share "
                           "fixed by the weights, so sequence relevance would be meaningless; use z^B, epsilon, "
                           "gamma or z+ on the first layer")

    # ---- modified forward passes ----------------------------------------------------------------------------
    def _ensure(self, x):
        """Build on first use; follow ``x`` to another device or dtype."""
        if self.model is None:
            self.build(x)
        p = next(self.model.parameters(), None)
        if p is not None and (p.device != x.device or p.dtype != x.dtype):
            self.model.to(device=x.device, dtype=x.dtype)

    def _bounds(self, x, bounds):
        """z^B's per-channel bounds: given, or the per-channel minimum and maximum of ``x``."""
        if bounds is None:
            dims = [0] + list(range(2, x.dim()))
            return x.detach().amin(dim=dims), x.detach().amax(dim=dims)
        low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device).reshape(-1) for b in bounds)
        return low, high

    def _forward(self, x, probe, bounds, layer_sums=None, expand=None):
        """The modified network on ``expand(x * probe)``; ``expand`` (default: identity) builds the network
        input from ``x``, e.g. a padded sliding window gathered from the unpadded volume, so the probe's
        derivative folds relevance that reaches padding back onto the voxels it copies."""
        st = self.state
        expand = expand or (lambda t: t)
        st.probe = expand(probe)
        st.low, st.high = self._bounds(x, bounds)
        st.layer_sums = layer_sums
        inp = expand(x * probe)
        try:
            with Guard(st):
                return self.model(inp)
        finally:
            st.probe = st.low = st.high = None
            st.layer_sums = None

    def forward(self, x: torch.Tensor, bounds=None, layer_sums=None, expand=None):
        """Modified forward: ``(y, s)``; ``y`` equals the network output, ``d y / d s`` is LRP."""
        x = x.detach()
        self._ensure(expand(x) if expand else x)
        s = torch.ones_like(x, requires_grad=True)
        return self._forward(x, s, bounds, layer_sums, expand), s

    def forward_with_sums(self, x: torch.Tensor, bounds=None, keep_graph: bool = True, expand=None):
        """``(y, S, s)``: output, per-output relevance sums ``S = sum(M_a)`` for every output neuron (jvp), and
        the probe for a following backward pass (only when ``keep_graph``)."""
        x = x.detach()
        self._ensure(expand(x) if expand else x)
        s = torch.ones_like(x, requires_grad=keep_graph)
        with contextlib.ExitStack() as stack:
            if not keep_graph:
                stack.enter_context(torch.no_grad())
            with fwAD.dual_level():
                y_dual = self._forward(x, fwAD.make_dual(s, torch.ones_like(x)), bounds, None, expand)
                y, S = fwAD.unpack_dual(y_dual)
        if S is None:
            raise LRPError("the output does not depend on the input")
        return y, S.detach(), s

    def relevance(self, x: torch.Tensor, seed: torch.Tensor, bounds=None, layer_sums: bool = False, expand=None):
        """Eq. 1: input relevance of output relevance ``seed * y`` (``seed`` one-hot: one output neuron)."""
        sums = {} if layer_sums else None
        y, s = self.forward(x, bounds, sums, expand)
        (m,) = torch.autograd.grad(y, s, seed.to(y))
        return (m, sums) if layer_sums else m


def _matches(selector, info: LayerInfo) -> bool:
    """An override's selector: a layer type, ``"input"``, ``"output"``, or a layer name or glob."""
    if isinstance(selector, type):
        return isinstance(info.module, selector)
    if selector == "input":
        return info.is_input
    if selector == "output":
        return info.is_output
    return fnmatch.fnmatchcase(info.name, selector)


def as_lrp(model, preset=DEFAULT_PRESET, overrides=None) -> LRP:
    """An :class:`LRP` for ``model`` (returned unchanged if it already is one)."""
    if isinstance(model, LRP):
        return model
    engine = preset_engine(preset)  # e.g. reference-based LRP (DeepLIFT-rescale, issue 15)
    if engine is not None:
        return engine(model, preset)
    return LRP(model, preset, overrides)
