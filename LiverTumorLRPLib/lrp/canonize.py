"""Canonisation: the network as the LRP engines need it, shared by both (:mod:`.engine`, :mod:`.reference`).

A copy of the network in eval mode is traced once (which leaf module produced which tensor, in which
order); an eval-mode BatchNorm is folded into the convolution or linear layer it follows (as zennit's
canonizers); an InstanceNorm is removed and handed to the rule layer of the convolution it follows, which
folds it per forward pass with that input's statistics; a softmax or sigmoid at the very end is dropped (the
logits are explained).  Canonisation must not change what the network computes (:func:`check_unchanged`).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .core import LRPError
from .types import BATCHNORM_TYPES, GRADIENT_TYPES, HEAD_TYPES, INSTANCE_NORM_TYPES, LINEAR_TYPES, TRANSPOSED_TYPES


@dataclass
class LayerInfo:
    """A rule-bearing layer of the network, in execution order."""

    name: str
    module: nn.Module
    index: int
    is_input: bool
    is_output: bool


def leaf_modules(model: nn.Module):
    """``[(name, module)]`` of the modules without children."""
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def set_module(root: nn.Module, name: str, new: nn.Module):
    """Replace the module registered as ``name`` under *every* name it is registered as (nnU-Net's
    ConvDropoutNormReLU registers its conv and norm twice: as attributes and inside ``all_modules``)."""
    old = root.get_submodule(name)
    names = [n for n, m in root.named_modules(remove_duplicate=False) if m is old] or [name]
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, new)


def prepared_copy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode, on ``x``'s device and dtype, its parameters frozen."""
    model = copy.deepcopy(model).eval().to(device=x.device, dtype=x.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor):
    """One plain forward pass with hooks: which leaf module produced each tensor, in which order.

    Returns ``(y, calls, id(x), id(y), keep)``: ``calls`` ``[(name, input ids, output id)]``, ``keep`` the
    tensors (so that their ids stay unique)."""
    calls, keep, handles = [], [], []
    for name, m in leaf_modules(model):
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


def drop_head(model: nn.Module, name: str, module: nn.Module, out, y_id, keep) -> torch.Tensor:
    """Replace the final softmax / sigmoid ``name`` by the identity; returns the logits it was given."""
    if out != y_id:
        raise LRPError(f"{type(module).__name__} layer {name!r} is not the network's last operation; "
                       "LRP has no rule for it")
    set_module(model, name, nn.Identity())
    return next(inp for inp, o in keep if id(o) == y_id)[0]  # the logits are explained


def fold_batchnorm(conv: nn.Module, bn: nn.Module):
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


def canonize(model: nn.Module, x: torch.Tensor):
    """Canonise ``model`` (a :func:`prepared_copy`) in place for inputs like ``x``.

    Returns ``(y_ref, layers, instance_norms)``: the original network's logits, the linear layers in execution
    order (:class:`LayerInfo`) and, per linear layer followed by an InstanceNorm, that norm."""
    y_ref, calls, x_id, y_id, keep = trace(model, x)
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
                fold_batchnorm(modules[src_name], m)
            set_module(model, name, nn.Identity())
        elif isinstance(m, HEAD_TYPES):
            y_ref = drop_head(model, name, m, out, y_id, keep)
        elif not isinstance(m, LINEAR_TYPES + INSTANCE_NORM_TYPES + GRADIENT_TYPES):
            raise LRPError(f"LRP has no rule for layer {name!r} ({type(m).__name__})")
        if isinstance(m, LINEAR_TYPES) and name not in seen:
            order.append((name, x_id in ins, out == y_id))
        seen.add(name)
    for name, m in leaf_modules(model):
        if name not in seen and list(m.parameters(recurse=False)):
            warnings.warn(f"layer {name!r} was not used in the forward pass", stacklevel=3)
    if not order:
        raise LRPError("the network has no convolution or linear layer")
    if not any(o for _, _, o in order):  # a head softmax may follow the last linear layer
        order[-1] = (order[-1][0], order[-1][1], True)
    layers = [LayerInfo(n, modules[n], i, inp, out) for i, (n, inp, out) in enumerate(order)]
    return y_ref, layers, instance_norms


def check_unchanged(y: torch.Tensor, y_ref: torch.Tensor, dtype, what: str, hint: str = ""):
    """Raise unless the modified network's output ``y`` equals the original's ``y_ref`` (relative maximum
    error 1e-3 in single or half precision, 1e-8 in double)."""
    tol = 1e-3 if dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8
    err = float((y - y_ref).abs().max()) / max(float(y_ref.abs().max()), 1e-12)
    if err > tol:
        raise LRPError(f"{what} differs from the original (relative error {err:.2e}){hint}")
