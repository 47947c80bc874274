"""The core of the LRP engine: autograd functions whose value is a layer's output and whose derivative is an
LRP rule's redistribution.

For a linear layer with input ``a``, output ``z`` and a rule with groups ``g`` (see :mod:`.rules`), the
function's value is ``z`` and its derivative is ``sum_g R_g * d(W_g X)``: ``X`` the rule's inputs stacked on
the channel axis, ``W_g`` the group's block weights and ``R_g = c_g mask_g z / stab(D_g)`` detached ratios.
The derivative is linear in the incoming relevance, so one backward pass (vjp) is Eq. 1 for any seed and
one forward-mode pass (jvp) gives every output neuron's relevance sum at once (the basis of Eq. 2's cost).
The gamma rule has a two-operation form (:func:`gamma_layer`).  :class:`.layer.RuleLayer` builds the inputs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from .rules import Gamma
from .types import CONV_TYPES, TRANSPOSED_TYPES


class LRPError(ValueError):
    """The network contains a layer or operation the engine has no rule for, or a rule is misused."""


class State:
    """What the rule layers of one LRP object share during a modified forward pass."""

    def __init__(self):
        self.depth = 0           # > 0 inside a rule layer (its own operations are not checked)
        self.probe = None        # the probe s (shape of x), for input-layer rules
        self.low = None          # per-channel bounds for z^B, shape (C,)
        self.high = None
        self.layer_sums = None   # dict name -> relevance sum at the layer's input, when recording

    @contextlib.contextmanager
    def inside(self):
        """While a rule layer computes: the guard does not check its operations."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


def apply_linear(module: nn.Module, x, weight, bias, groups: Optional[int] = None):
    """The layer's linear operation with other weights (and ``groups``, default the layer's)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    groups = module.groups if groups is None else groups
    if isinstance(module, CONV_TYPES):
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(module.stride)]
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            return fn(x, weight, bias, module.stride, 0, module.dilation, groups)
        return fn(x, weight, bias, module.stride, module.padding, module.dilation, groups)
    if isinstance(module, TRANSPOSED_TYPES):
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(module.stride)]
        return fn(x, weight, bias, module.stride, module.padding, module.output_padding, groups,
                  module.dilation)
    raise LRPError(f"no linear operation for {type(module).__name__}")


def channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over ``like`` (N, C, ...)."""
    return v.reshape((1, -1) + (1,) * (like.dim() - 2)).to(like)


def dense_weight(module: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """A grouped convolution's weight as the equivalent dense (groups = 1) weight."""
    n = 1 if isinstance(module, nn.Linear) else module.groups
    if n == 1:
        return w
    # Conv (out, in/n, k) and ConvTranspose (in, out/n, k): blocks along dim 0, each with its own dim-1 slice
    step, width = w.shape[0] // n, w.shape[1]
    dense = w.new_zeros((w.shape[0], width * n) + tuple(w.shape[2:]))
    for j in range(n):
        dense[j * step:(j + 1) * step, j * width:(j + 1) * width] = w[j * step:(j + 1) * step]
    return dense


def linear_input_grad(module: nn.Module, g: torch.Tensor, weight: torch.Tensor, x_shape) -> torch.Tensor:
    """``W^T g``: the derivative of the layer's linear operation (groups 1) w.r.t. its input (of shape
    ``x_shape``), as the adjoint operation (transposed convolution of a convolution and vice versa)."""
    if isinstance(module, nn.Linear):
        return g @ weight
    n = len(module.stride)
    if isinstance(module, TRANSPOSED_TYPES):
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        return fn(g, weight, None, module.stride, module.padding, module.dilation, 1)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    extra = [x_shape[2 + i] - ((g.shape[2 + i] - 1) * module.stride[i] - 2 * module.padding[i]
                               + module.dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in range(n)]
    return fn(g, weight, None, module.stride, module.padding, extra, 1, module.dilation)


@dataclass
class Fused:
    """What the backward / forward-mode derivative of one rule layer needs."""

    module: nn.Module
    weight: torch.Tensor       # block weight: all groups' parts, inputs stacked on the channel axis
    n_groups: int
    cdim: int                  # channel axis (1; -1 for nn.Linear)
    z: list                    # [the layer's output], handed to forward and dropped there
    signed: bool = False       # two groups for z > 0 and z < 0: one ratio tensor R and the mask z > 0


def split_groups(t: torch.Tensor, spec: Fused):
    """(..., G*C, ...) -> (..., G, C, ...) and the axis of G."""
    return t.unflatten(spec.cdim, (spec.n_groups, -1)), (1 if spec.cdim == 1 else -2)


class RuleFunction(torch.autograd.Function):
    """Value: the layer's output ``z``.  Derivative: ``sum_g R_g * d(W_g X)`` with ``X`` the stacked rule
    inputs, ``W_g`` the group's block weights and ``R_g = c_g mask_g z / stab(D_g)`` (detached ratios) -- one
    linear operation (vjp: its transpose, jvp: itself); only ``R`` is kept for the backward pass."""

    @staticmethod
    def forward(ctx, X, R, mask, spec):
        fast = is_fast(spec.module)
        ctx.spec, ctx.x_shape, ctx.fast = spec, X.shape, fast
        ctx.save_for_backward(R, mask, None if fast else X.detach())
        ctx.save_for_forward(R, mask)
        return spec.z.pop()

    @staticmethod
    def backward(ctx, g):
        R, mask, X = ctx.saved_tensors
        spec = ctx.spec
        if spec.n_groups == 1:
            gO = g * R
        elif spec.signed:
            gR = g * R
            gO = torch.cat([gR.masked_fill(~mask, 0.0), gR.masked_fill_(mask, 0.0)], spec.cdim)
        else:
            Rs, axis = split_groups(R, spec)
            gO = (Rs * g.unsqueeze(axis)).flatten(*sorted((axis, axis + 1)))
        if ctx.fast:
            return linear_input_grad(spec.module, gO, spec.weight, ctx.x_shape), None, None, None
        with torch.enable_grad():
            Xr = X.detach().requires_grad_(True)
            (gX,) = torch.autograd.grad(apply_linear(spec.module, Xr, spec.weight, None, 1), Xr, gO)
        return gX, None, None, None

    @staticmethod
    def jvp(ctx, tX, tR, tmask, tspec):
        R, mask = ctx.saved_tensors
        spec = ctx.spec
        with torch.no_grad():
            t = apply_linear(spec.module, tX, spec.weight, None, 1)
            if spec.signed:
                ts, axis = split_groups(t, spec)
                return torch.where(mask, *ts.unbind(axis)) * R
            t = t * R
            if spec.n_groups > 1:
                ts, axis = split_groups(t, spec)
                t = ts.sum(axis)
        return t


def is_fast(module: nn.Module) -> bool:
    """The layer's input derivative is its adjoint operation (no padding modes, no string padding)."""
    return isinstance(module, (nn.Linear,) + TRANSPOSED_TYPES) or (
        module.padding_mode == "zeros" and not isinstance(module.padding, str))


def along(v: torch.Tensor, like: torch.Tensor, cdim: int) -> torch.Tensor:
    """A per-channel vector broadcast along the channel axis ``cdim`` of ``like``."""
    return v.to(like) if cdim == -1 else channel_view(v, like)


@dataclass
class _GammaSpec:
    """What the derivative of one gamma layer needs."""

    module: nn.Module
    weight: torch.Tensor       # W (dense), the layer's own
    abs_weight: torch.Tensor   # |W|, cached by the layer
    stacked: Optional[torch.Tensor]  # [W; |W|] stacked on the output axis (inputs >= 0: one operation each way)
    scale: Optional[torch.Tensor]  # per output channel: a folded InstanceNorm's 1/sigma (times its weight)
    cdim: int
    gamma: float
    z: Optional[torch.Tensor]  # the layer's output, handed to forward and dropped there
    x_shape: tuple


def gamma_layer(a, a0, module, rule: Gamma, w, abs_w, b, z, scale, cdim, stacked_weight=None):
    """The generalised gamma rule with two linear operations instead of four.

    With ``P = W+ a+ + W- a-`` and ``N = W- a+ + W+ a-`` (zennit's terms) and ``Z0 = W a``:
    ``P + N = Z0`` and ``P - N = |W| |a|``, so both denominators ``D_+ = Z0 + g P + b_+`` (z > 0) and
    ``D_- = Z0 + g N + b_-`` (z < 0) need only ``Z0`` (the layer's own output) and ``|W| |a|``; the
    derivative likewise is ``(1 + g/2) W^T (R g_out) + g/2 sign(a) |W|^T (sign(z) R g_out)``.  Equal to the
    rule's four-part form (Testing/test_lrp_zennit.py), including its derivative at ``a = 0``.
    A folded InstanceNorm (weights ``scale * W``, bias ``b``: already folded) enters as a per-channel factor
    of the outputs and of the incoming gradient, so no scaled copy of the weights is made.
    For inputs ``a >= 0`` (after a ReLU) ``W`` and ``|W|`` run as one operation with the weights
    ``stacked_weight()`` (``[W; |W|]``).
    """
    g = rule.gamma
    out_dim = 1 if isinstance(module, TRANSPOSED_TYPES) else 0
    with torch.no_grad():
        red = [d for d in range(a0.dim()) if d != a0.dim() + cdim and d != cdim]
        has_neg = a0.amin(dim=red) < 0  # per input channel
        sign = None
        if bool(has_neg.any()):  # sign(a) where a channel has negatives, 1 elsewhere (int8)
            sign = (a0 > 0).to(torch.int8).sub_((a0 < 0).to(torch.int8))
            if not bool(has_neg.all()):
                shape = (1, -1) + (1,) * (a0.dim() - 2) if cdim != -1 else (-1,)
                sign.masked_fill_(~has_neg.reshape(shape), 1)
        stacked = None
        if sign is not None or z is not None or stacked_weight is None or fwAD.unpack_dual(a).tangent is not None:
            if z is None:
                z = apply_linear(module, a0, w, b, 1)
            D = apply_linear(module, a0 if sign is None else a0.abs(), abs_w, None, 1)  # |W| |a|
        else:  # one operation for W a + b and |W| a
            stacked = stacked_weight()
            n = w.shape[out_dim]
            O = apply_linear(module, a0, stacked, None if b is None else torch.cat([b, torch.zeros_like(b)]), 1)
            z, D = O.narrow(cdim, 0, n), O.narrow(cdim, n, n)
        if scale is not None:
            D.mul_(along(scale.abs(), D, cdim))
        mask = z > 0
        D.mul_(_plus_minus(mask)).mul_(0.5 * g)
        D.add_(z if b is None else z - along(b, z, cdim), alpha=1.0 + 0.5 * g)  # (1 + g/2) Z0 +- g/2 |W||a|
        if b is not None and rule.keeps_bias(b):
            D.add_(torch.where(mask, along(b + g * b.clamp(min=0), z, cdim), along(b + g * b.clamp(max=0), z, cdim)))
        D.add_(_plus_minus(D >= 0), alpha=rule.stabilizer)  # stabilised
        R = torch.div(z, D, out=None if stacked is not None else D)  # not a view of the stacked output
        del D
    if not (a.requires_grad or fwAD.unpack_dual(a).tangent is not None):
        return z
    spec = _GammaSpec(module, w, abs_w, stacked, scale, cdim, g, z, tuple(a0.shape))
    return _GammaFunction.apply(a, R, mask, sign, spec)


def _plus_minus(mask: torch.Tensor) -> torch.Tensor:
    """+1 where ``mask``, -1 elsewhere, as int8 (a quarter of a float32 tensor)."""
    return mask.to(torch.int8).mul_(2).sub_(1)


class _GammaFunction(torch.autograd.Function):
    """Value: the layer's output.  Derivative: the gamma rule's (see :func:`gamma_layer`); keeps only the
    ratio ``R``, the mask ``z > 0`` and (for inputs with negatives) ``sign(a)`` as int8."""

    @staticmethod
    def forward(ctx, a, R, mask, sign, spec):
        ctx.spec = spec
        ctx.save_for_backward(R, mask, sign)
        ctx.save_for_forward(R, mask, sign)
        z, spec.z = spec.z, None
        return z

    @staticmethod
    def backward(ctx, gout):
        R, mask, sign = ctx.saved_tensors
        spec = ctx.spec
        gR = gout * R
        if spec.stacked is not None:  # [(1 + g/2) gR; g/2 sign(z) gR] through [W; |W|]^T: one operation
            both = torch.cat([gR, gR], spec.cdim)
            n = gR.shape[spec.cdim]
            both.narrow(spec.cdim, 0, n).mul_(1.0 + 0.5 * spec.gamma)
            both.narrow(spec.cdim, n, n).mul_(_plus_minus(mask)).mul_(0.5 * spec.gamma)
            del gR
            return linear_input_grad(spec.module, both, spec.stacked, spec.x_shape), None, None, None, None
        if spec.scale is not None:
            gR.mul_(along(spec.scale, gR, spec.cdim))
        u = linear_input_grad(spec.module, gR, spec.weight, spec.x_shape)
        gR.mul_(_plus_minus(mask))
        if spec.scale is not None:
            gR.mul_(along(spec.scale.sign(), gR, spec.cdim))  # |c| g = sign(c) * (c g)
        v = linear_input_grad(spec.module, gR, spec.abs_weight, spec.x_shape)
        del gR
        u.mul_(1.0 + 0.5 * spec.gamma)
        if sign is not None:
            u.mul_(2 - sign.abs())  # a = 0: both clamped parts pass the gradient, as the four-part form
            v.mul_(sign)
        return u.add_(v, alpha=0.5 * spec.gamma), None, None, None, None

    @staticmethod
    def jvp(ctx, ta, tR, tmask, tsign, tspec):
        R, mask, sign = ctx.saved_tensors
        spec = ctx.spec
        with torch.no_grad():
            t1 = ta if sign is None else ta * (2 - sign.abs())
            t2 = ta if sign is None else ta * sign
            out = apply_linear(spec.module, t1, spec.weight, None, 1).mul_(1.0 + 0.5 * spec.gamma)
            q = apply_linear(spec.module, t2, spec.abs_weight, None, 1)
            q.mul_(_plus_minus(mask)).mul_(0.5 * spec.gamma)
            if spec.scale is not None:
                out.mul_(along(spec.scale, out, spec.cdim))
                q.mul_(along(spec.scale.abs(), q, spec.cdim))
            return out.add_(q).mul_(R)
