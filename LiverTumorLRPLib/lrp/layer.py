"""The rule layer: a linear layer (Conv, ConvTranspose, Linear) whose forward value is unchanged and whose
derivative applies an LRP rule (see :mod:`.rules` for the rule's groups and :mod:`.core` for the autograd
functions).

All of a rule's groups and parts run as one linear operation: the inputs ``in_k(a)`` stacked on the channel
axis and the weights in blocks (rows: groups, columns: inputs), so the denominators
``D_g = sum_k W_k in_k(a) + b_k`` come out of one convolution and the ratios ``R_g = c_g mask_g z / stab(D_g)``
are kept for the derivative.  A folded InstanceNorm (this input's statistics) scales the layer's output.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from .core import (Fused, LRPError, RuleFunction, State, along, apply_linear, channel_view, dense_weight,
                   gamma_layer, is_fast, split_groups)
from .rules import Epsilon, Gamma, Rule, stabilize
from .types import TRANSPOSED_TYPES


class RuleLayer(nn.Module):
    """A linear layer whose forward value is unchanged and whose derivative applies an LRP rule."""

    def __init__(self, module: nn.Module, rule: Rule, name: str, state: State, is_input: bool,
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
        out = apply_linear(self.module, a.detach(), w, b)
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
        z = out.mul_(channel_view(scale, out)).add_(channel_view(shift, out))
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
        low, high = (channel_view(torch.as_tensor(v, dtype=a.dtype, device=a.device).reshape(-1), a)
                     for v in (low, high))
        if kind == "a-high":
            return a - high * st.probe
        if kind == "high-low":
            return (high - low) * st.probe
        raise LRPError(f"unknown rule input {kind!r}")

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Value: the layer's output ``z``; derivative: the rule's redistribution of relevance to ``a``."""
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
            w = dense_weight(module, w)
            cdim = -1 if isinstance(module, nn.Linear) else 1
            a0 = a.detach()  # also drops a forward-mode tangent
            if isinstance(self.rule, Gamma) and is_fast(module):
                return gamma_layer(a, a0, module, self.rule, w, self._abs_weight(w), b, z_known, scale, cdim,
                                   lambda: self._stacked_weight(w))
            # epsilon keeps the layer's own weights: a folded InstanceNorm's scale goes into the ratio R
            out_scale = scale if isinstance(self.rule, Epsilon) and self.rule.keeps_bias(b) else None
            if scale is not None and out_scale is None:  # other rules see the folded weights scale * W
                out_dim = 1 if isinstance(module, TRANSPOSED_TYPES) else 0
                w = w * scale.reshape([-1 if d == out_dim else 1 for d in range(w.dim())])
            groups = self.rule.groups(w, b)
            X, weight, bias = self._stack(groups, a, a0, w, cdim)
            with torch.no_grad():
                spec = Fused(module, weight, len(groups), cdim, [], [g.where for g in groups] == ["pos", "neg"])
                z, O, D = self._outputs(X, a, a0, w, b, weight, bias, z_known, out_scale, spec)
                R, mask = _ratios(groups, z, O, D, spec, self.rule.stabilizer, out_scale)
            if not (X.requires_grad or fwAD.unpack_dual(X).tangent is not None):
                return z
            spec.z.append(z)
            return RuleFunction.apply(X, R, mask, spec)

    def _stack(self, groups, a, a0, w, cdim):
        """``(X, weight, bias)``: the rule's inputs ``in_k(a)`` stacked on the channel axis and its weights and
        biases in blocks, so that one linear operation gives every group's denominator."""
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
        return (X, *self._block_weights(groups, kinds, inputs, w, cdim, neg_channels))

    def _block_weights(self, groups, kinds, inputs, w, cdim, neg_channels):
        """Rows (output axis): the groups; columns (input axis): the stacked inputs, each the sum of the group's
        parts on that input (zeros where it has none); the bias: the groups' summed part biases."""
        in_dim, out_dim = (0, 1) if isinstance(self.module, TRANSPOSED_TYPES) else (1, 0)
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
        return weight, bias

    def _outputs(self, X, a, a0, w, b, weight, bias, z_known, out_scale, spec: Fused):
        """``(z, O, D)``: the layer's output, the groups' stacked denominators and their list (unstabilised), with
        as few linear operations as the rule allows."""
        module, cdim = self.module, spec.cdim
        z_stacked = None
        if out_scale is not None:
            O = z_known  # epsilon's one denominator is the (normalised) output itself
        elif (z_known is None and X is a and type(self.rule).output_from_groups is Rule.output_from_groups
              and fwAD.unpack_dual(a).tangent is None):
            # the rule cannot recover z from its denominators and its input is the layer's input:
            # z comes out of the same operation, its weights stacked before the rule's (not under
            # forward-mode AD, which wants a custom function's output to be no view)
            out_dim = 1 if isinstance(module, TRANSPOSED_TYPES) else 0
            n, n_out = weight.shape[out_dim], w.shape[out_dim]
            both = None if bias is None and b is None else torch.cat([
                b if b is not None else w.new_zeros(n_out), bias if bias is not None else w.new_zeros(n)])
            O2 = apply_linear(module, X.detach(), torch.cat([w, weight], out_dim), both, 1)
            z_stacked, O = O2.narrow(cdim, 0, n_out), O2.narrow(cdim, n_out, n)
        else:
            O = apply_linear(module, X.detach(), weight, bias, 1)
        Os, axis = split_groups(O, spec)
        D = Os.unbind(axis) if spec.n_groups > 1 else [O]
        z = self.rule.output_from_groups(D, b)
        if z is None:
            z = z_stacked if z_stacked is not None else z_known
        if z is None:
            z = apply_linear(module, a0, w, b, 1)
        return z, O, D


def _ratios(groups, z, O, D, spec: Fused, eps: float, out_scale):
    """``(R, mask)``: the ratios ``R_g = c_g mask_g z / stab(D_g)``, stacked like ``O``; for groups that apply to
    ``z > 0`` and ``z < 0`` one ratio tensor and the mask ``z > 0`` (0 where ``z = 0``)."""
    mask = None
    if spec.signed:  # R = c_g z / stab(D_g) of the group that applies
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
        Rs, axis = split_groups(R, spec)
        Rs = Rs.unbind(axis) if len(groups) > 1 else [R]
        for g, d, r in zip(groups, D, Rs):
            torch.div(z, stabilize(d, eps), out=r)
            if g.where is not None:
                r.masked_fill_(z <= 0 if g.where == "pos" else z >= 0, 0.0)
            if g.coef != 1.0:
                r.mul_(g.coef)
    if out_scale is not None:
        R.mul_(along(out_scale, R, spec.cdim))
    return R, mask
