"""LRP rules for linear layers (Conv, ConvTranspose, Linear), written as modified forward passes.

A rule is a list of *terms* ``(input modifier, weight/bias modifier, coefficient)`` and
the *multipliers* that divide the upper relevance by the rule's stabilised
denominators.  For a layer with input ``a`` and output ``z`` the rule's relevance is

    R_in = sum_k coef_k * in_k(a) * W_k^T (m_k * R_out)

exactly as zennit's ``BasicHook`` (input_modifiers, param_modifiers, gradient_mapper,
reducer).  :mod:`LiverTumorLRPLib.lrp` turns this into a forward pass whose value is
``z`` and whose derivative carries the rule, so that relevance is a gradient
(vjp) and per-voxel relevance sums are a forward-mode derivative (jvp).

Formulas and defaults follow zennit 0.5.1, so that the numbers agree:
Epsilon, Gamma (generalised, sign-aware), ZPlus (= alpha1-beta0), AlphaBeta, ZBox
(z^B with per-channel bounds), Flat and WSquare.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch


def stabilize(t: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``t + epsilon * sign(t)`` with sign(0) = +1 (zennit's stabiliser)."""
    sign = (t == 0).to(t) + t.sign()
    return t + sign * epsilon


@dataclass
class Term:
    """One summand of a rule: input modifier, modified weight and bias, and its coefficient."""

    input: str                    # "a" (layer input), "pos", "neg" (its clamped parts), "ones", "low", "high"
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    coef: float = 1.0


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _neg(t):
    return None if t is None else t.clamp(max=0)


def _zero_bias(b, zero: bool):
    return None if (b is None or zero) else b


class Rule:
    """Base class. ``needs_probe``: the rule replaces the input by constants (bounds, ones), so it is only
    valid on the network's input layer.  ``data_independent``: the rule's input relevance does not depend on the
    input values (Flat, w^2), so per-sequence relevance measured with it is meaningless."""

    name = "rule"
    needs_probe = False
    data_independent = False

    def __init__(self, zero_bias: bool = False):
        self.zero_bias = zero_bias

    def terms(self, weight, bias) -> list[Term]:
        raise NotImplementedError

    def multipliers(self, outputs: Sequence[torch.Tensor], z: torch.Tensor) -> list[torch.Tensor]:
        """Per-term factors ``m_k`` (detached) applied to the upper relevance; ``outputs`` are the term outputs
        (with their biases), ``z`` the layer's true output."""
        raise NotImplementedError

    def output_from_terms(self, outputs) -> Optional[torch.Tensor]:
        """The layer's output recovered from the term outputs when the input is non-negative (the terms on
        its negative part are then skipped, ``None``), saving one convolution; None if not possible."""
        return None

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

    def terms(self, weight, bias):
        return [Term("a", weight, _zero_bias(bias, self.zero_bias))]

    def multipliers(self, outputs, z):
        return [1.0 / stabilize(outputs[0], self.epsilon or 1e-12)]


class ZPlus(Rule):
    """z+ (= alpha1-beta0): only positive contributions ``a+ w+`` and ``a- w-`` (with the positive bias)."""

    name = "zplus"

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.stabilizer = float(stabilizer)

    def terms(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        return [Term("pos", _pos(weight), _pos(b)), Term("neg", _neg(weight), None)]

    def multipliers(self, outputs, z):
        m = 1.0 / stabilize(outputs[0] + outputs[1], self.stabilizer)
        return [m, m]


class AlphaBeta(Rule):
    """alpha-beta: ``alpha * positive - beta * negative`` contributions, ``alpha - beta = 1``."""

    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1 (got {alpha}, {beta})")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def terms(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        return [Term("pos", _pos(weight), _pos(b), self.alpha), Term("neg", _neg(weight), None, self.alpha),
                Term("pos", _neg(weight), _neg(b), -self.beta), Term("neg", _pos(weight), None, -self.beta)]

    def multipliers(self, outputs, z):
        mp = 1.0 / stabilize(outputs[0] + outputs[1], self.stabilizer)
        mn = 1.0 / stabilize(outputs[2] + outputs[3], self.stabilizer)
        return [mp, mp, mn, mn]

    def output_from_terms(self, outputs):
        # a >= 0: (W+ a + b+) + (W- a + b-) = W a + b
        return outputs[0] + outputs[2] if outputs[1] is None and outputs[3] is None else None


class Gamma(Rule):
    """Generalised gamma rule (sign-aware, as zennit): for positive outputs favour ``w + gamma w+`` on ``a+``
    and ``w + gamma w-`` on ``a-``; for negative outputs the converse."""

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def terms(self, weight, bias):
        g = self.gamma
        b = _zero_bias(bias, self.zero_bias)
        wp, wn = weight + g * _pos(weight), weight + g * _neg(weight)
        bp = None if b is None else b + g * _pos(b)
        bn = None if b is None else b + g * _neg(b)
        return [Term("pos", wp, bp), Term("neg", wn, None), Term("pos", wn, bn), Term("neg", wp, None)]

    def multipliers(self, outputs, z):
        mp = (z > 0).to(z) / stabilize(outputs[0] + outputs[1], self.stabilizer)
        mn = (z < 0).to(z) / stabilize(outputs[2] + outputs[3], self.stabilizer)
        return [mp, mp, mn, mn]

    def output_from_terms(self, outputs):
        # a >= 0: (w + g w+) a + (b + g b+) + (w + g w-) a + (b + g b-) = (2 + g) (w a + b)
        return (outputs[0] + outputs[2]) / (2.0 + self.gamma) if outputs[1] is None and outputs[3] is None else None


class ZBox(Rule):
    """z^B for a bounded input box ``low <= x <= high`` (Montavon et al. 2017), bounds per channel.

    ``low``/``high``: numbers or per-channel sequences/tensors; ``None`` takes them from the data (per-channel
    minimum and maximum of the volume being explained).  Input layer only."""

    name = "zbox"
    needs_probe = True

    def __init__(self, low=None, high=None, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def terms(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        # biases enter all three terms, so they cancel in the denominator (as in zennit)
        return [Term("a", weight, b), Term("low", _pos(weight), _pos(b), -1.0),
                Term("high", _neg(weight), _neg(b), -1.0)]

    def multipliers(self, outputs, z):
        m = 1.0 / stabilize(outputs[0] - outputs[1] - outputs[2], self.stabilizer)
        return [m, m, m]


class WSquare(Rule):
    """w^2 rule: ``R_i = w_ij^2 / sum_i w_ij^2 R_j`` (input values ignored).  Input layer only; gives
    sequence shares fixed by the first-layer weights."""

    name = "wsquare"
    needs_probe = True
    data_independent = True

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(zero_bias)
        self.stabilizer = float(stabilizer)

    def terms(self, weight, bias):
        b = _zero_bias(bias, self.zero_bias)
        return [Term("ones", weight ** 2, None if b is None else b ** 2)]

    def multipliers(self, outputs, z):
        return [1.0 / stabilize(outputs[0], self.stabilizer)]


class Flat(Rule):
    """Flat rule: relevance spread uniformly over the receptive field.  Input layer only; gives every sequence
    the same share whatever the input."""

    name = "flat"
    needs_probe = True
    data_independent = True

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(zero_bias=True)
        self.stabilizer = float(stabilizer)

    def terms(self, weight, bias):
        return [Term("ones", torch.ones_like(weight), None)]

    def multipliers(self, outputs, z):
        return [1.0 / stabilize(outputs[0], self.stabilizer)]


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
