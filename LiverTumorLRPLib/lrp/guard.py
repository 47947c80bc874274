"""The guard: tensor operations on the relevance path outside rule layers must have an LRP rule.

The engines explain a network by the derivative of a modified forward pass, so any operation they do not
replace gets the plain gradient.  That is the right rule for the operations listed here (positively
homogeneous, or linear without bias: gradient x input passes relevance through or splits it in proportion
to the contributions, LRP-0); any other raises :class:`.core.LRPError` naming it, never silently falling
back to the gradient.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from .core import LRPError, State

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


class Guard(TorchFunctionMode):
    """Raise on tensor operations on the relevance path that have no LRP rule."""

    def __init__(self, state: State):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.state.depth == 0 and on_relevance_path(out):
            name = getattr(func, "__name__", repr(func))
            if name in _SCALING_FUNCTIONS:
                if sum(on_relevance_path(t) for t in (*args, *kwargs.values())) > 1:
                    raise LRPError(f"operation {name!r} multiplies two input-dependent tensors (e.g. an attention "
                                   "gate); LRP has no rule for it here")
            elif name not in _ALLOWED_FUNCTIONS:
                hint = " Explain the logits: drop the final activation." if name in (
                    "softmax", "sigmoid", "log_softmax", "_softmax") else ""
                raise LRPError(f"tensor operation {name!r} on the relevance path has no LRP rule.{hint}")
        return out


def on_relevance_path(obj) -> bool:
    """``obj`` (a tensor, or a tuple or list of them) depends on the input: it carries relevance."""
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad and obj.is_floating_point()
    if isinstance(obj, (tuple, list)):
        return any(on_relevance_path(o) for o in obj)
    return False

