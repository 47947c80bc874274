"""LRP rules for linear layers (Conv, ConvTranspose, Linear), written as modified forward passes.

A rule is a list of *groups*, each a stabilised denominator ``D_g = sum_k (W_k in_k(a) + b_k)`` over its
*parts* (input modifier, modified weight and bias), a coefficient ``c_g`` and optionally the sign of the
output ``z`` it applies to.  For a layer with input ``a`` and output ``z`` the rule's relevance is

    R_in = sum_g c_g sum_{k in g} in_k(a) * W_k^T (mask_g(z) z / stab(D_g) * R_out / z)

which is zennit's ``BasicHook`` (input_modifiers, param_modifiers, gradient_mapper, reducer) with the terms
that share a denominator summed.  :mod:`.layer` turns this into a forward pass whose value is
``z`` and whose derivative carries the rule -- one convolution for all groups and parts (inputs stacked on
the channel axis, weights in blocks) -- so that relevance is a gradient (vjp) and per-voxel relevance sums
are a forward-mode derivative (jvp).

Formulas and defaults follow zennit 0.5.1, so that the numbers agree:
Epsilon, Gamma (generalised, sign-aware), ZPlus (= alpha1-beta0), AlphaBeta, ZBox
(z^B with per-channel bounds), Flat and WSquare.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch


def stabilize(t: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``t + epsilon * sign(t)`` with sign(0) = +1 (zennit's stabiliser)."""
    return torch.where(t >= 0, t + epsilon, t - epsilon)


@dataclass
class Part:
    """One summand of a denominator: input modifier and modified weight and bias."""

    input: str    # "a" (layer input), "pos", "neg" (its clamped parts), "ones", "a-high", "high-low" (z^B bounds)
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None


@dataclass
class Group:
    """Parts sharing one stabilised denominator; ``coef`` scales their relevance; ``where``: "pos" / "neg"
    applies the group only to outputs ``z > 0`` / ``z < 0`` (None: to all)."""

    parts: list = field(default_factory=list)
    coef: float = 1.0
    where: Optional[str] = None


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _neg(t):
    return None if t is None else t.clamp(max=0)


def _zero_bias(b, zero: bool):
    return None if (b is None or zero) else b


class Rule:
    """Base class. ``needs_probe``: the rule replaces the input by constants (bounds, ones), so it is only
    valid on the network's input layer.  ``data_independent``: the rule's input relevance does not depend on the
    input values (Flat, w^2), so per-sequence relevance measured with it is meaningless.  ``stabilizer``: the
    epsilon of the denominators."""

    name = "rule"
    needs_probe = False
    data_independent = False
    stabilizer = 1e-6

    def __init__(self, zero_bias: bool = False):
        self.zero_bias = zero_bias

    def groups(self, weight, bias) -> list[Group]:
        raise NotImplementedError

    def output_from_groups(self, denominators: Sequence[torch.Tensor], bias) -> Optional[torch.Tensor]:
        """The layer's output ``z = W a + bias`` recovered from the (unstabilised) denominators, saving a
        convolution; None if not possible."""
        return None

    def keeps_bias(self, bias) -> bool:
        """The layer's bias enters the denominators (it absorbs relevance) unless the rule zeroes it."""
        return bias is None or not self.zero_bias

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Epsilon(Rule):
    """LRP-epsilon: ``R_i = a_i w_ij / (z_j + eps sign z_j) R_j``; ``epsilon=0`` is LRP-0 (then only zero
    denominators are shifted, by 1e-12)."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.epsilon = float(epsilon)

    @property
    def stabilizer(self):
        return self.epsilon or 1e-12

    def groups(self, weight, bias):
        return [Group([Part("a", weight, _zero_bias(bias, self.zero_bias))])]

    def output_from_groups(self, denominators, bias):
        return denominators[0] if self.keeps_bias(bias) else None


class ZPlus(Rule):
    """z+ (= alpha1-beta0): only positive contributions ``a+ w+`` and ``a- w-`` (with the positive bias)."""

    name = "zplus"

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.stabilizer = float(stabilizer)

    def groups(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        return [Group([Part("pos", _pos(weight), _pos(b)), Part("neg", _neg(weight))])]


class AlphaBeta(Rule):
    """alpha-beta: ``alpha * positive - beta * negative`` contributions, ``alpha - beta = 1``."""

    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1 (got {alpha}, {beta})")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def groups(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        return [Group([Part("pos", _pos(weight), _pos(b)), Part("neg", _neg(weight))], self.alpha),
                Group([Part("pos", _neg(weight), _neg(b)), Part("neg", _pos(weight))], -self.beta)]

    def output_from_groups(self, denominators, bias):
        # (W+ a+ + W- a- + b+) + (W- a+ + W+ a- + b-) = W a + b
        return denominators[0] + denominators[1] if self.keeps_bias(bias) else None


class Gamma(Rule):
    """Generalised gamma rule (sign-aware, as zennit): for positive outputs favour ``w + gamma w+`` on ``a+``
    and ``w + gamma w-`` on ``a-``; for negative outputs the converse."""

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def groups(self, weight, bias):
        g = self.gamma
        b = _zero_bias(bias, self.zero_bias)
        wp, wn = weight + g * _pos(weight), weight + g * _neg(weight)
        bp = None if b is None else b + g * _pos(b)
        bn = None if b is None else b + g * _neg(b)
        return [Group([Part("pos", wp, bp), Part("neg", wn)], where="pos"),
                Group([Part("pos", wn, bn), Part("neg", wp)], where="neg")]

    def output_from_groups(self, denominators, bias):
        # (w + g w+) + (w + g w-) = (2 + g) w, the same for the biases
        return (denominators[0] + denominators[1]) / (2.0 + self.gamma) if self.keeps_bias(bias) else None


class ZBox(Rule):
    """z^B for a bounded input box ``low <= x <= high`` (Montavon et al. 2017), bounds per channel.

    ``low``/``high``: numbers or per-channel sequences/tensors; ``None`` takes them from the data (per-channel
    minimum and maximum of the volume being explained).  Input layer only."""

    name = "zbox"
    needs_probe = True

    def __init__(self, low=None, high=None, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def groups(self, weight, bias):
        # zennit's denominator W a - W+ low - W- high (the biases cancel) as W (a - high) + W+ (high - low):
        # two inputs instead of three
        return [Group([Part("a-high", weight), Part("high-low", _pos(weight))])]


class WSquare(Rule):
    """w^2 rule: ``R_i = w_ij^2 / sum_i w_ij^2 R_j`` (input values ignored).  Input layer only; gives
    sequence shares fixed by the first-layer weights."""

    name = "wsquare"
    needs_probe = True
    data_independent = True

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.stabilizer = float(stabilizer)

    def groups(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        return [Group([Part("ones", weight ** 2, None if b is None else b ** 2)])]


class Flat(Rule):
    """Flat rule: relevance spread uniformly over the receptive field.  Input layer only; gives every sequence
    the same share whatever the input."""

    name = "flat"
    needs_probe = True
    data_independent = True

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(zero_bias=True)
        self.stabilizer = float(stabilizer)

    def groups(self, weight, bias):
        return [Group([Part("ones", torch.ones_like(weight))])]


RULES: dict[str, Callable[..., Rule]] = {
    "epsilon": Epsilon, "lrp0": lambda **kw: Epsilon(0.0, **kw), "gamma": Gamma, "zplus": ZPlus,
    "alphabeta": AlphaBeta, "alpha2beta1": lambda **kw: AlphaBeta(2.0, 1.0, **kw),
    "alpha1beta0": lambda **kw: AlphaBeta(1.0, 0.0, **kw), "zbox": ZBox, "flat": Flat, "wsquare": WSquare,
}


def make_rule(spec) -> Rule:
    """A rule from a Rule, a name (``"gamma"``) or ``(name, kwargs)``."""
    if isinstance(spec, Rule):
        return spec
    name, kwargs = (spec, {}) if isinstance(spec, str) else spec
    try:
        return RULES[name.lower()](**kwargs)
    except KeyError:
        raise ValueError(f"unknown LRP rule {name!r}; known rules: {', '.join(RULES)}") from None
