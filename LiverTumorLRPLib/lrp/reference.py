"""Reference-based LRP (DeepLIFT-rescale): relevance of ``f(x) - f(x_ref)`` propagated with activation differences.

The input ``x`` and a reference ``x_ref`` run together through the network as a batch of two.  Linear layers
(convolutions, transposed convolutions, eval-mode BatchNorm, pooling by averaging, up-sampling) are left as they
are: on differences they are LRP-0, and their biases cancel.  Each elementwise nonlinearity ``g`` (ReLU,
LeakyReLU, PReLU, ELU) keeps its value and gets the secant ``(g(a) - g(a_ref)) / (a - a_ref)`` as its derivative
(the derivative ``g'(a)`` where ``|a - a_ref| < 1e-12``, i.e. where the difference is zero anyway).  Max-pooling
takes the maxima at ``x``'s argmax positions for both (a gather, hence linear); InstanceNorm normalises both with
``x``'s statistics (constants of the pass).  The modified network is linear in the seeded relevance, so Eq. 2 and
Sec. 2.3 keep their constant number of passes in :mod:`LiverTumorLRPLib.explain`; with probe ``s`` the input is
``x_ref + s (x - x_ref)``, and

* ``M = d y(x) / d s`` (vjp) is the DeepLIFT-rescale attribution ``(x - x_ref) * multipliers``;
* ``S = (d y / d s) 1`` (jvp) is ``y(x) - y~(x_ref)`` for every output voxel exactly (completeness).

``y~(x_ref)`` is the reference's output through the modified network: it equals ``f(x_ref)`` when the network
has no max-pooling or InstanceNorm (then sum M = f(x) - f(x_ref) exactly, biases included), or when the
reference's maxima lie at ``x``'s argmax positions and (for InstanceNorm) its statistics equal ``x``'s;
otherwise completeness holds with respect to ``y~(x_ref)`` (reported by :meth:`ReferenceLRP.outputs`).

References (``reference=``): ``"blur"`` (default; Gaussian, ``sigma`` voxels, or ``sigma_mm`` millimetres at the
network's spacing from :func:`LiverTumorLRPLib.model_info.model_info`; computed per patch, like
``necessity.reference_image``'s blurred baseline), ``"mean"`` (each sequence's normalised foreground mean, i.e. 0
after :mod:`LiverTumorLRPLib.intensity`'s z-scoring), or per-sequence values (e.g. :func:`liver_means`: each
sequence's liver-parenchyma mean).  Presets: ``reference-blur`` and ``reference-mean``, registered on import.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .canonize import check_unchanged, drop_head, prepared_copy, set_module, trace
from .core import LRPError
from .engine import LRP
from .guard import Guard, on_relevance_path
from .presets import register_preset
from .types import HEAD_TYPES, INSTANCE_NORM_TYPES

SECANT_TYPES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU)
MAXPOOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_NONLINEAR_FUNCTIONS = {"relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "threshold",
                        "threshold_", "elu", "elu_", "max_pool1d", "max_pool2d", "max_pool3d",
                        "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
                        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "_max_pool1d",
                        "_max_pool2d", "_max_pool3d"}
# linear in the activations (eval mode): on differences the plain gradient is LRP-0 and biases cancel
_LINEAR_FUNCTIONS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                     "linear", "batch_norm"}
REFERENCE_PRESETS = {"reference-blur": {"reference": "blur"}, "reference-mean": {"reference": "mean"}}


def liver_means(image: np.ndarray, liver: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-sequence reference values: the mean of each sequence over the liver mask, or over the foreground
    (every voxel not darker than the sequence's minimum, i.e. not air after clipping) without one."""
    image = np.asarray(image)
    if liver is not None:
        liver = np.asarray(liver, bool)
        if liver.shape != image.shape[1:] or not liver.any():
            raise ValueError(f"liver mask of shape {liver.shape} must match the image {image.shape[1:]} and be "
                             "non-empty")
        return image[:, liver].mean(axis=1)
    return np.array([c[c > c.min()].mean() if (c > c.min()).any() else c.mean() for c in image])


class _Wrapped(nn.Module):
    """A network layer replaced for the batch (x, x_ref); its own operations are not checked by the guard."""

    def __init__(self, module: nn.Module, state):
        super().__init__()
        self.module, self._state = module, state


class _Secant(_Wrapped):
    """Elementwise ``g`` with value ``g(a)`` and derivative ``(g(a) - g(a_ref)) / (a - a_ref)`` (batch item 0)."""

    def forward(self, a):
        with self._state.inside():
            out = self.module(a.detach())
            a0, a1 = a[:1], a[1:].detach()
            d = a0.detach() - a1
            tiny = d.abs() < 1e-12
            if isinstance(self.module, nn.ReLU):
                slope = (a0.detach() > 0).to(d)
            elif bool(tiny.any()):  # g'(a) where a == a_ref
                with torch.enable_grad():
                    probe = a0.detach().clone().requires_grad_(True)
                    (slope,) = torch.autograd.grad(self.module(probe).sum(), probe)
            else:
                slope = torch.zeros_like(d)
            m = torch.where(tiny, slope, (out[:1] - out[1:]) / torch.where(tiny, torch.ones_like(d), d))
            return torch.cat([out[:1] + m * (a0 - a0.detach()), out[1:]])


class _ArgmaxPool(_Wrapped):
    """Max-pooling at ``x``'s argmax positions for both batch items (linear)."""

    def forward(self, a):
        m = self.module
        with self._state.inside():
            fn = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}[a.dim()]
            out, idx = fn(a[:1].detach(), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
            idx = idx.flatten(2).expand(a.shape[0], -1, -1)
            return a.flatten(2).gather(2, idx).reshape((a.shape[0],) + out.shape[1:])


class _FixedNorm(_Wrapped):
    """InstanceNorm with ``x``'s (batch item 0) statistics for both items, as constants of the pass."""

    def forward(self, a):
        n = self.module
        with self._state.inside():
            dims = tuple(range(2, a.dim()))
            ref = a[:1].detach()
            mean, var = ref.mean(dim=dims, keepdim=True), ref.var(dim=dims, unbiased=False, keepdim=True)
            out = (a - mean) / torch.sqrt(var + n.eps)
            if n.affine:
                shape = (1, -1) + (1,) * len(dims)
                out = out * n.weight.detach().reshape(shape) + n.bias.detach().reshape(shape)
            return out


class _ReferenceGuard(Guard):
    """The LRP guard, with linear layers allowed as plain operations, and nonlinear functions that are not
    modules refused (they would get the gradient, not the secant)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.state.depth == 0 and name in _NONLINEAR_FUNCTIONS and on_relevance_path(args):
            raise LRPError(f"reference-based LRP needs nonlinearity {name!r} as a module (nn.ReLU, nn.MaxPool3d, "
                           "...); as a function call it would get the gradient instead of the secant")
        if name in _LINEAR_FUNCTIONS:
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


class ReferenceLRP(LRP):
    """DeepLIFT-rescale as an :class:`LRP` engine: the same ``forward`` / ``forward_with_sums`` / ``relevance``,
    usable wherever an LRP object is (``preset="reference-blur"`` / ``"reference-mean"`` in
    :mod:`LiverTumorLRPLib.explain`).

    ``reference``: ``"blur"``, ``"mean"`` or per-sequence values (C,); ``sigma`` (voxels) or ``sigma_mm`` for the
    blur."""

    def __init__(self, model: nn.Module, reference="blur", sigma: float = 3.0, sigma_mm: Optional[float] = None,
                 preset: Optional[str] = None):
        super().__init__(model, preset or "reference")
        if isinstance(reference, str) and reference not in ("blur", "mean"):
            raise ValueError(f"unknown reference {reference!r}; use 'blur', 'mean' or per-sequence values")
        self.reference, self.sigma, self.sigma_mm = reference, float(sigma), sigma_mm

    @classmethod
    def from_preset(cls, model, preset: str) -> "ReferenceLRP":
        return cls(model, preset=preset, **REFERENCE_PRESETS[preset])

    def _sigmas(self, ndim: int):
        if self.sigma_mm is None:
            return (self.sigma,) * ndim
        from ..model_info import model_info

        spacing = model_info(self.source).spacing
        if spacing is None:
            raise LRPError("sigma_mm needs the network's voxel spacing (model_info); give sigma in voxels")
        return tuple(self.sigma_mm / float(s) for s in spacing)

    def reference_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x_ref`` for a (1, C, ...) input."""
        if isinstance(self.reference, str) and self.reference == "mean":
            return torch.zeros_like(x)
        if isinstance(self.reference, str):
            from scipy import ndimage

            a = x.detach().cpu().double().numpy()[0]
            sig = self._sigmas(a.ndim - 1)
            ref = np.stack([ndimage.gaussian_filter(c, sig) for c in a])
            return torch.from_numpy(ref)[None].to(x)
        v = torch.as_tensor(np.asarray(self.reference, dtype=np.float64)).reshape((1, -1) + (1,) * (x.dim() - 2))
        if v.shape[1] != x.shape[1]:
            raise ValueError(f"{v.shape[1]} reference values for {x.shape[1]} sequences")
        return v.to(x).expand_as(x)

    def build(self, x: torch.Tensor) -> "ReferenceLRP":
        """A copy of the network with secant nonlinearities, argmax pooling and fixed InstanceNorm statistics."""
        model = prepared_copy(self.source, x)
        y_ref, calls, _, y_id, keep = trace(model, x)
        modules = dict(model.named_modules())
        for name, _, out in calls:
            m = modules[name]
            if isinstance(m, HEAD_TYPES):
                y_ref = drop_head(model, name, m, out, y_id, keep)
            elif isinstance(m, SECANT_TYPES):
                if getattr(m, "inplace", False):    # e.g. nnU-Net's LeakyReLU(inplace=True): x and x_ref both needed
                    m.inplace = False
                set_module(model, name, _Secant(m, self.state))
            elif isinstance(m, MAXPOOL_TYPES):
                set_module(model, name, _ArgmaxPool(m, self.state))
            elif isinstance(m, INSTANCE_NORM_TYPES):
                set_module(model, name, _FixedNorm(m, self.state))
        self.model, self.layers, self.rules = model, [], {}
        y = self._forward(x, torch.ones_like(x, requires_grad=True), None).detach()  # the guard needs the graph
        check_unchanged(y, y_ref, x.dtype, "the modified network")
        return self

    def check_sequence_relevance(self):
        """Every sequence's relevance depends on its values (x - x_ref): nothing to refuse."""

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y(x), y~(x_ref))``: the two batch items' outputs of the modified network (completeness:
        ``sum M_a = y_a(x) - y~_a(x_ref)``)."""
        self._ensure(x)
        with torch.no_grad():
            return self._forward(x, torch.ones_like(x), None, both=True)

    def _forward(self, x, probe, bounds, layer_sums=None, expand=None, both: bool = False):
        if layer_sums is not None:
            raise LRPError("per-layer relevance sums are not recorded by reference-based LRP")
        expand = expand or (lambda t: t)
        ref = self.reference_input(x.detach())
        batch = torch.cat([expand(ref + probe * (x - ref)), expand(ref)])
        with _ReferenceGuard(self.state):
            y = self.model(batch)
        return y if both else y[:1]


def reference_lrp(model, preset: str) -> ReferenceLRP:
    """The engine of a reference preset (``reference-blur``, ``reference-mean``)."""
    return ReferenceLRP.from_preset(model, preset)


def _not_a_rule_map(layers):
    """The rule-map slot of a reference preset: there is none."""
    raise ValueError("reference presets are not rule maps; build them with LiverTumorLRPLib.lrp.as_lrp")


register_preset("reference-blur", _not_a_rule_map, engine=reference_lrp)
register_preset("reference-mean", _not_a_rule_map, engine=reference_lrp)


__all__ = ["ReferenceLRP", "REFERENCE_PRESETS", "liver_means", "reference_lrp"]
