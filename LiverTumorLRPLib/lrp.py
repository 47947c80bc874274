"""The LRP engine: a modified forward pass whose derivative carries the LRP rules.

Every linear layer (Conv, ConvTranspose, Linear) is replaced by a layer whose
*value* is the original output ``z`` and whose *derivative* is the rule's
redistribution (see :mod:`LiverTumorLRPLib.rules`).  Then, with a probe ``s = 1``
multiplying the input (``x * s``) and ``y~`` the modified network:

* Eq. 1: ``M_a = d y~_a / d s`` -- one backward pass (vjp) gives the input relevance of any
  output relevance ``seed * y`` (the seeded relevance is the model output, as in the paper);
* ``S_a = sum(M_a) = (d y~ / d s) 1`` -- one forward-mode pass (jvp) gives the relevance sum of
  *every* output voxel at once.  That is what makes Eq. 2 cheap (see :mod:`.explain`).

Layers: BatchNorm is folded into the convolution it follows (canonisation, as zennit);
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
:class:`LRPError` naming it; the engine never silently falls back to the gradient.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .rules import Epsilon, Gamma, Rule, make_rule, stabilize


class LRPError(ValueError):
    """The network contains a layer or operation the engine has no rule for, or a rule is misused."""


CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR_TYPES = CONV_TYPES + TRANSPOSED_TYPES + (nn.Linear,)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORM_TYPES = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
HEAD_TYPES = (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)
GRADIENT_TYPES = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Upsample, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ZeroPad2d,
)

# Tensor operations allowed on the relevance path outside rule layers: the plain gradient is the right LRP
# rule for them (they are positively homogeneous or linear without bias).
_ALLOWED_FUNCTIONS = {
    "cat", "concat", "concatenate", "stack",
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
    "neg", "__neg__", "sum", "mean",
    "relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "threshold", "threshold_",
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "interpolate", "upsample", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d",
    "pad", "_pad", "constant_pad_nd", "replication_pad1d", "replication_pad2d", "replication_pad3d",
    "__getitem__", "narrow", "index_select", "split", "chunk", "unbind", "select",
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "contiguous",
    "clone", "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "movedim",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
    "to", "float", "double", "half", "type", "type_as", "cpu", "cuda",
}
# Allowed when at most one operand depends on the input (scaling by a constant is linear).
_SCALING_FUNCTIONS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__",
                      "__itruediv__"}


@dataclass
class LayerInfo:
    """A rule-bearing layer of the network, in execution order."""

    name: str
    module: nn.Module
    index: int
    is_input: bool
    is_output: bool


class _State:
    """What the rule layers of one LRP object share during a modified forward pass."""

    def __init__(self):
        self.depth = 0           # > 0 inside a rule layer (its own operations are not checked)
        self.probe = None        # the probe s (shape of x), for input-layer rules
        self.low = None          # per-channel bounds for z^B, shape (C,)
        self.high = None
        self.layer_sums = None   # dict name -> relevance sum at the layer's input, when recording

    @contextlib.contextmanager
    def inside(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


def _apply_linear(module: nn.Module, x, weight, bias, groups: Optional[int] = None):
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


def _channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (like.dim() - 2)).to(like)


def _dense_weight(module: nn.Module, w: torch.Tensor) -> torch.Tensor:
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


def _linear_input_grad(module: nn.Module, g: torch.Tensor, weight: torch.Tensor, x_shape) -> torch.Tensor:
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
class _Fused:
    """What the backward / forward-mode derivative of one rule layer needs."""

    module: nn.Module
    weight: torch.Tensor       # block weight: all groups' parts, inputs stacked on the channel axis
    n_groups: int
    cdim: int                  # channel axis (1; -1 for nn.Linear)
    z: list                    # [the layer's output], handed to forward and dropped there
    signed: bool = False       # two groups for z > 0 and z < 0: one ratio tensor R and the mask z > 0


def _split(t: torch.Tensor, spec: _Fused):
    """(..., G*C, ...) -> (..., G, C, ...) and the axis of G."""
    return t.unflatten(spec.cdim, (spec.n_groups, -1)), (1 if spec.cdim == 1 else -2)


class _RuleFunction(torch.autograd.Function):
    """Value: the layer's output ``z``.  Derivative: ``sum_g R_g * d(W_g X)`` with ``X`` the stacked rule
    inputs, ``W_g`` the group's block weights and ``R_g = c_g mask_g z / stab(D_g)`` (detached ratios) -- one
    linear operation (vjp: its transpose, jvp: itself); only ``R`` is kept for the backward pass."""

    @staticmethod
    def forward(ctx, X, R, mask, spec):
        fast = _is_fast(spec.module)
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
            Rs, axis = _split(R, spec)
            gO = (Rs * g.unsqueeze(axis)).flatten(*sorted((axis, axis + 1)))
        if ctx.fast:
            return _linear_input_grad(spec.module, gO, spec.weight, ctx.x_shape), None, None, None
        with torch.enable_grad():
            Xr = X.detach().requires_grad_(True)
            (gX,) = torch.autograd.grad(_apply_linear(spec.module, Xr, spec.weight, None, 1), Xr, gO)
        return gX, None, None, None

    @staticmethod
    def jvp(ctx, tX, tR, tmask, tspec):
        R, mask = ctx.saved_tensors
        spec = ctx.spec
        with torch.no_grad():
            t = _apply_linear(spec.module, tX, spec.weight, None, 1)
            if spec.signed:
                ts, axis = _split(t, spec)
                return torch.where(mask, *ts.unbind(axis)) * R
            t = t * R
            if spec.n_groups > 1:
                ts, axis = _split(t, spec)
                t = ts.sum(axis)
        return t


def _is_fast(module: nn.Module) -> bool:
    """The layer's input derivative is its adjoint operation (no padding modes, no string padding)."""
    return isinstance(module, (nn.Linear,) + TRANSPOSED_TYPES) or (
        module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _along(v: torch.Tensor, like: torch.Tensor, cdim: int) -> torch.Tensor:
    """A per-channel vector broadcast along the channel axis ``cdim`` of ``like``."""
    return v.to(like) if cdim == -1 else _channel_view(v, like)


@dataclass
class _GammaSpec:
    module: nn.Module
    weight: torch.Tensor       # W (dense), the layer's own
    abs_weight: torch.Tensor   # |W|, cached by the layer
    stacked: Optional[torch.Tensor]  # [W; |W|] stacked on the output axis (inputs >= 0: one operation each way)
    scale: Optional[torch.Tensor]  # per output channel: a folded InstanceNorm's 1/sigma (times its weight)
    cdim: int
    gamma: float
    z: Optional[torch.Tensor]  # the layer's output, handed to forward and dropped there
    x_shape: tuple


def _gamma_layer(a, a0, module, rule: Gamma, w, abs_w, b, z, scale, cdim, stacked_weight=None):
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
                z = _apply_linear(module, a0, w, b, 1)
            D = _apply_linear(module, a0 if sign is None else a0.abs(), abs_w, None, 1)  # |W| |a|
        else:  # one operation for W a + b and |W| a
            stacked = stacked_weight()
            n = w.shape[out_dim]
            O = _apply_linear(module, a0, stacked, None if b is None else torch.cat([b, torch.zeros_like(b)]), 1)
            z, D = O.narrow(cdim, 0, n), O.narrow(cdim, n, n)
        if scale is not None:
            D.mul_(_along(scale.abs(), D, cdim))
        mask = z > 0
        D.mul_(_plus_minus(mask)).mul_(0.5 * g)
        D.add_(z if b is None else z - _along(b, z, cdim), alpha=1.0 + 0.5 * g)  # (1 + g/2) Z0 +- g/2 |W||a|
        if b is not None and rule._keeps_bias(b):
            D.add_(torch.where(mask, _along(b + g * b.clamp(min=0), z, cdim), _along(b + g * b.clamp(max=0), z, cdim)))
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
    """Value: the layer's output.  Derivative: the gamma rule's (see :func:`_gamma_layer`); keeps only the
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
            return _linear_input_grad(spec.module, both, spec.stacked, spec.x_shape), None, None, None, None
        if spec.scale is not None:
            gR.mul_(_along(spec.scale, gR, spec.cdim))
        u = _linear_input_grad(spec.module, gR, spec.weight, spec.x_shape)
        gR.mul_(_plus_minus(mask))
        if spec.scale is not None:
            gR.mul_(_along(spec.scale.sign(), gR, spec.cdim))  # |c| g = sign(c) * (c g)
        v = _linear_input_grad(spec.module, gR, spec.abs_weight, spec.x_shape)
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
            out = _apply_linear(spec.module, t1, spec.weight, None, 1).mul_(1.0 + 0.5 * spec.gamma)
            q = _apply_linear(spec.module, t2, spec.abs_weight, None, 1)
            q.mul_(_plus_minus(mask)).mul_(0.5 * spec.gamma)
            if spec.scale is not None:
                out.mul_(_along(spec.scale, out, spec.cdim))
                q.mul_(_along(spec.scale.abs(), q, spec.cdim))
            return out.add_(q).mul_(R)


class RuleLayer(nn.Module):
    """A linear layer whose forward value is unchanged and whose derivative applies an LRP rule."""

    def __init__(self, module: nn.Module, rule: Rule, name: str, state: _State, is_input: bool,
                 instance_norm: Optional[nn.Module] = None):
        super().__init__()
        if rule.needs_probe and not is_input:
            raise LRPError(f"rule {rule!r} replaces the input by constants and is only valid on the input layer, "
                           f"but was assigned to {name!r}")
        self.module, self.rule, self.layer_name, self._state, self.is_input = module, rule, name, state, is_input
        self.instance_norm = instance_norm

    def _fold_instance_norm(self, a, w, b):
        """This layer followed by its InstanceNorm, with this input's statistics: the per-output-channel
        scale, the folded bias and the normalised output itself (the layer's one convolution, reused by the
        rules); the folded weights are ``scale * W``."""
        out = _apply_linear(self.module, a.detach(), w, b)
        if out.shape[0] != 1:
            raise LRPError("LRP with InstanceNorm explains one case at a time (batch size 1)")
        norm = self.instance_norm
        dims = tuple(range(2, out.dim()))
        var, mean = torch.var_mean(out, dim=dims, unbiased=False)
        mean, var = mean[0], var[0]
        scale = 1.0 / torch.sqrt(var + norm.eps)
        if norm.affine:
            scale = scale * norm.weight.detach()
        shift = (norm.bias.detach() if norm.affine else 0.0) - mean * scale
        z = out.mul_(_channel_view(scale, out)).add_(_channel_view(shift, out))
        return scale, (b if b is not None else 0.0) * scale + shift, z

    def _cached(self, name: str, w: torch.Tensor, make):
        """``make(w)``, computed once per weight tensor (the model's weights do not change)."""
        key = (w.data_ptr(), w.dtype, w.device, w._version)
        cache = self.__dict__.setdefault("_weight_cache", {})
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, make(w))
        return cache[name][1]

    def _abs_weight(self, w: torch.Tensor) -> torch.Tensor:
        return self._cached("abs", w, torch.abs)

    def _stacked_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``[W; |W|]`` stacked on the output axis."""
        out_dim = 1 if isinstance(self.module, TRANSPOSED_TYPES) else 0
        return self._cached("stacked", w, lambda t: torch.cat([t, self._abs_weight(t)], out_dim))

    def _term_input(self, kind: str, a: torch.Tensor, nonneg: bool = False, neg_channels=None):
        """The input of a rule part; ``nonneg``: ``a >= 0``; ``neg_channels``: the only input channels with
        negative values."""
        st = self._state
        if kind == "a" or (kind == "pos" and nonneg):
            return a
        if kind == "pos":
            return a.clamp(min=0)
        if kind == "neg":
            if neg_channels is not None:
                a = a.index_select(-1 if isinstance(self.module, nn.Linear) else 1, neg_channels)
            return a.clamp(max=0)
        if st.probe is None or st.probe.shape != a.shape:
            raise LRPError(f"rule {self.rule!r} on {self.layer_name!r} needs the network input as this layer's input")
        if kind == "ones":
            return st.probe
        low, high = (getattr(self.rule, k, None) for k in ("low", "high"))
        low, high = (st.low if low is None else low), (st.high if high is None else high)  # default: from the data
        if low is None or high is None:
            raise LRPError(f"z^B rule on {self.layer_name!r}: no input bounds given")
        low, high = (_channel_view(torch.as_tensor(v, dtype=a.dtype, device=a.device).reshape(-1), a)
                     for v in (low, high))
        if kind == "a-high":
            return a - high * st.probe
        if kind == "high-low":
            return (high - low) * st.probe
        raise LRPError(f"unknown rule input {kind!r}")

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        st = self._state
        with st.inside():
            if st.layer_sums is not None and a.requires_grad:
                a.register_hook(lambda g, a=a.detach(), n=self.layer_name, sums=st.layer_sums: sums.__setitem__(
                    n, float((a * g).sum())))
            module = self.module
            w = module.weight.detach()
            b = None if module.bias is None else module.bias.detach()
            z_known = scale = None
            if self.instance_norm is not None:
                scale, b, z_known = self._fold_instance_norm(a, w, b)
            w = _dense_weight(module, w)
            linear = isinstance(module, nn.Linear)
            cdim = -1 if linear else 1
            in_dim, out_dim = (0, 1) if isinstance(module, TRANSPOSED_TYPES) else (1, 0)
            a0 = a.detach()  # also drops a forward-mode tangent
            if isinstance(self.rule, Gamma) and _is_fast(module):
                return _gamma_layer(a, a0, module, self.rule, w, self._abs_weight(w), b, z_known, scale, cdim,
                                    lambda: self._stacked_weight(w))
            # epsilon keeps the layer's own weights: a folded InstanceNorm's scale goes into the ratio R
            out_scale = scale if isinstance(self.rule, Epsilon) and self.rule._keeps_bias(b) else None
            if scale is not None and out_scale is None:  # other rules see the folded weights scale * W
                w = w * scale.reshape([-1 if d == out_dim else 1 for d in range(w.dim())])
            groups = self.rule.groups(w, b)
            kinds = list(dict.fromkeys(p.input for g in groups for p in g.parts))
            # after a ReLU the negative part of the input is zero: leave it out, for every channel where it is
            nonneg, neg_channels = False, None
            if "neg" in kinds:
                has_neg = a0.amin(dim=[d for d in range(a.dim()) if d != a.dim() + cdim and d != cdim]) < 0
                if not bool(has_neg.any()):
                    nonneg = True
                    kinds.remove("neg")
                elif not bool(has_neg.all()):
                    neg_channels = has_neg.nonzero()[:, 0]
            inputs = [self._term_input(k, a, nonneg, neg_channels) for k in kinds]
            X = torch.cat(inputs, cdim) if len(inputs) > 1 else inputs[0]
            rows, biases = [], []
            for g in groups:
                cols = []
                for k, x_k in zip(kinds, inputs):
                    ws = [p.weight for p in g.parts if p.input == k]
                    if not ws:
                        size = list(w.shape)
                        size[in_dim] = x_k.shape[cdim]
                        cols.append(w.new_zeros(size))
                        continue
                    w_k = sum(ws[1:], ws[0])
                    cols.append(w_k if k != "neg" or neg_channels is None else w_k.index_select(in_dim, neg_channels))
                rows.append(torch.cat(cols, in_dim) if len(cols) > 1 else cols[0])
                bs = [p.bias for p in g.parts if p.bias is not None]
                biases.append(sum(bs[1:], bs[0]) if bs else None)
            weight = torch.cat(rows, out_dim) if len(rows) > 1 else rows[0]
            bias = None
            if any(x is not None for x in biases):
                n_out = w.shape[out_dim]
                bias = torch.cat([x if x is not None else w.new_zeros(n_out) for x in biases])
            with torch.no_grad():
                z_stacked = None
                if out_scale is not None:
                    O = z_known  # epsilon's one denominator is the (normalised) output itself
                elif (z_known is None and X is a and type(self.rule).output_from_groups is Rule.output_from_groups
                      and fwAD.unpack_dual(a).tangent is None):
                    # the rule cannot recover z from its denominators and its input is the layer's input:
                    # z comes out of the same operation, its weights stacked before the rule's (not under
                    # forward-mode AD, which wants a custom function's output to be no view)
                    n, n_out = weight.shape[out_dim], w.shape[out_dim]
                    both = None if bias is None and b is None else torch.cat([
                        b if b is not None else w.new_zeros(n_out), bias if bias is not None else w.new_zeros(n)])
                    O2 = _apply_linear(module, X.detach(), torch.cat([w, weight], out_dim), both, 1)
                    z_stacked, O = O2.narrow(cdim, 0, n_out), O2.narrow(cdim, n_out, n)
                else:
                    O = _apply_linear(module, X.detach(), weight, bias, 1)
                spec = _Fused(module, weight, len(groups), cdim, [])
                Os, axis = _split(O, spec)
                D = Os.unbind(axis) if len(groups) > 1 else [O]
                z = self.rule.output_from_groups(D, b)
                if z is None:
                    z = z_stacked if z_stacked is not None else z_known
                if z is None:
                    z = _apply_linear(module, a0, w, b, 1)
                eps, mask = self.rule.stabilizer, None
                spec.signed = [g.where for g in groups] == ["pos", "neg"]
                if spec.signed:  # R = c_g z / stab(D_g) of the group that applies (0 where z = 0)
                    mask = z > 0
                    R = torch.div(z, stabilize(torch.where(mask, *D), eps))
                    if (groups[0].coef, groups[1].coef) != (1.0, 1.0):
                        R.mul_(torch.where(mask, groups[0].coef, groups[1].coef).to(R))
                elif len(groups) == 1 and z is D[0]:  # epsilon: z / (z + eps sign z) = |z| / (|z| + eps)
                    R = z.abs()
                    R.div_(R + eps)
                    if groups[0].coef != 1.0:
                        R.mul_(groups[0].coef)
                else:
                    R = torch.empty_like(O)
                    Rs = _split(R, spec)[0].unbind(axis) if len(groups) > 1 else [R]
                    for g, d, r in zip(groups, D, Rs):
                        torch.div(z, stabilize(d, eps), out=r)
                        if g.where is not None:
                            r.masked_fill_(z <= 0 if g.where == "pos" else z >= 0, 0.0)
                        if g.coef != 1.0:
                            r.mul_(g.coef)
                if out_scale is not None:
                    R.mul_(_along(out_scale, R, cdim))
            if not (X.requires_grad or fwAD.unpack_dual(X).tangent is not None):
                return z
            spec.z.append(z)
            return _RuleFunction.apply(X, R, mask, spec)


class _Guard(TorchFunctionMode):
    """Raise on tensor operations on the relevance path that have no LRP rule."""

    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.state.depth == 0 and _on_relevance_path(out):
            name = getattr(func, "__name__", repr(func))
            if name in _SCALING_FUNCTIONS:
                if sum(_on_relevance_path(t) for t in (*args, *kwargs.values())) > 1:
                    raise LRPError(f"operation {name!r} multiplies two input-dependent tensors (e.g. an attention "
                                   "gate); LRP has no rule for it here")
            elif name not in _ALLOWED_FUNCTIONS:
                hint = " Explain the logits: drop the final activation." if name in (
                    "softmax", "sigmoid", "log_softmax", "_softmax") else ""
                raise LRPError(f"tensor operation {name!r} on the relevance path has no LRP rule.{hint}")
        return out


def _on_relevance_path(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad and obj.is_floating_point()
    if isinstance(obj, (tuple, list)):
        return any(_on_relevance_path(o) for o in obj)
    return False


def _leaf_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _set_module(root: nn.Module, name: str, new: nn.Module):
    """Replace the module registered as ``name`` under *every* name it is registered as (nnU-Net's
    ConvDropoutNormReLU registers its conv and norm twice: as attributes and inside ``all_modules``)."""
    old = root.get_submodule(name)
    names = [n for n, m in root.named_modules(remove_duplicate=False) if m is old] or [name]
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, new)


@torch.no_grad()
def _trace(model: nn.Module, x: torch.Tensor):
    """One plain forward pass with hooks: which leaf module produced each tensor, in which order."""
    calls, keep, handles = [], [], []
    for name, m in _leaf_modules(model):
        def hook(mod, inp, out, name=name):
            keep.append((inp, out))
            calls.append((name, [id(t) for t in inp if isinstance(t, torch.Tensor)],
                          id(out) if isinstance(out, torch.Tensor) else None))
        handles.append(m.register_forward_hook(hook))
    try:
        y = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(y, torch.Tensor):
        raise LRPError(f"the model returns {type(y).__name__}; LRP needs a single tensor of class logits")
    return y, calls, id(x), id(y), keep


def _fold_batchnorm(conv: nn.Module, bn: nn.Module):
    """Fold an eval-mode BatchNorm into the preceding linear layer (in place)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    w = conv.weight.detach()
    out_dim = 1 if isinstance(conv, TRANSPOSED_TYPES) else 0
    shape = [1] * w.dim()
    shape[out_dim] = -1
    if isinstance(conv, TRANSPOSED_TYPES) and conv.groups != 1:
        raise LRPError("cannot fold BatchNorm into a grouped transposed convolution")
    conv.weight = nn.Parameter(w * scale.reshape(shape))
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter(b * scale + shift)


Selector = "str | type"
RuleSpec = "Rule | str | tuple"


class LRP:
    """LRP for a segmentation network.

    ``preset``: a name from :data:`LiverTumorLRPLib.presets.PRESETS` or a function ``(layers) -> {name: rule}``.
    ``overrides``: ``[(selector, rule), ...]``, first match wins; a selector is a layer name or glob
    (``"decoders.*"``), ``"input"``, ``"output"``, or a layer type (``nn.ConvTranspose3d``).
    ``bounds``: z^B input bounds ``(low, high)``, per channel; default: per-channel min and max of the input.
    The network is copied, put in eval mode and canonised on the first call; the original is not changed.
    """

    def __init__(self, model: nn.Module, preset="recommended", overrides=None):
        if isinstance(model, LRP):
            raise TypeError("model is already an LRP object")
        self.source = model
        self.preset = preset
        self.overrides = list(overrides or [])
        self.state = _State()
        self.model: Optional[nn.Module] = None
        self.layers: list[LayerInfo] = []
        self.rules: dict[str, Rule] = {}

    # ---- building -------------------------------------------------------------------------------------------
    def build(self, x: torch.Tensor) -> "LRP":
        """Canonise a copy of the network for inputs like ``x`` and assign a rule to every linear layer."""
        model = copy.deepcopy(self.source).eval().to(device=x.device, dtype=x.dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        y_ref, calls, x_id, y_id, keep = _trace(model, x)
        produced_by = {out: name for name, _, out in calls if out is not None}
        modules = dict(model.named_modules())
        order, seen, instance_norms = [], set(), {}
        for name, ins, out in calls:
            m = modules[name]
            if isinstance(m, INSTANCE_NORM_TYPES + BATCHNORM_TYPES):
                src = {produced_by.get(i) for i in ins}
                src_name = next(iter(src)) if len(src) == 1 else None
                if src_name is None or not isinstance(modules[src_name], LINEAR_TYPES):
                    kind = "InstanceNorm" if isinstance(m, INSTANCE_NORM_TYPES) else "BatchNorm"
                    raise LRPError(f"{kind} layer {name!r} does not directly follow a convolution or linear layer;"
                                   " it cannot be folded")
                if isinstance(m, INSTANCE_NORM_TYPES):  # folded per forward pass, with that input's statistics
                    instance_norms[src_name] = m
                elif name not in seen:
                    _fold_batchnorm(modules[src_name], m)
                _set_module(model, name, nn.Identity())
            elif isinstance(m, HEAD_TYPES):
                if out != y_id:
                    raise LRPError(f"{type(m).__name__} layer {name!r} is not the network's last operation; "
                                   "LRP has no rule for it")
                y_ref = next(inp for inp, out in keep if id(out) == y_id)[0]  # the logits are explained
                _set_module(model, name, nn.Identity())
            elif not isinstance(m, LINEAR_TYPES + INSTANCE_NORM_TYPES + GRADIENT_TYPES):
                raise LRPError(f"LRP has no rule for layer {name!r} ({type(m).__name__})")
            if isinstance(m, LINEAR_TYPES) and name not in seen:
                order.append((name, x_id in ins, out == y_id))
            seen.add(name)
        for name, m in _leaf_modules(model):
            if name not in seen and list(m.parameters(recurse=False)):
                warnings.warn(f"layer {name!r} was not used in the forward pass", stacklevel=2)
        if not order:
            raise LRPError("the network has no convolution or linear layer")
        # a head softmax may follow the last linear layer
        if not any(o for _, _, o in order):
            last = order[-1]
            order[-1] = (last[0], last[1], True)
        self.layers = [LayerInfo(n, modules[n], i, inp, out) for i, (n, inp, out) in enumerate(order)]
        self.rules = self._assign_rules()
        for info in self.layers:
            _set_module(model, info.name, RuleLayer(modules[info.name], self.rules[info.name], info.name,
                                                    self.state, info.is_input, instance_norms.get(info.name)))
        self.model = model
        # canonisation must not change what the network computes
        with torch.no_grad():
            y = self._forward(x, torch.ones_like(x), None)
        tol = 1e-3 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8
        err = float((y - y_ref).abs().max()) / max(float(y_ref.abs().max()), 1e-12)
        if err > tol:
            raise LRPError(f"canonised network differs from the original (relative error {err:.2e}); "
                           "a BatchNorm may be folded into a layer whose output is also used elsewhere")
        return self

    def _assign_rules(self) -> dict[str, Rule]:
        from .presets import get_preset

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
        if self.model is None:
            self.build(x)
        p = next(self.model.parameters(), None)
        if p is not None and (p.device != x.device or p.dtype != x.dtype):
            self.model.to(device=x.device, dtype=x.dtype)

    def _bounds(self, x, bounds):
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
            with _Guard(st):
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
    if isinstance(selector, type):
        return isinstance(info.module, selector)
    if selector == "input":
        return info.is_input
    if selector == "output":
        return info.is_output
    return fnmatch.fnmatchcase(info.name, selector)


def as_lrp(model, preset="recommended", overrides=None) -> LRP:
    """An :class:`LRP` for ``model`` (returned unchanged if it already is one)."""
    if isinstance(model, LRP):
        return model
    if isinstance(preset, str) and preset.startswith("reference-"):  # DeepLIFT-rescale (issue 15)
        from .reference_lrp import reference_lrp

        return reference_lrp(model, preset)
    return LRP(model, preset, overrides)
