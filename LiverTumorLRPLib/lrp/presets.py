"""Named LRP presets, a registry: which rule each linear layer gets.

A preset is a function ``(layers) -> {layer name: rule}`` over the network's linear layers in execution order
(:class:`.canonize.LayerInfo`), registered under a name with :func:`register_preset`.  A preset may also name
the engine that explains with it (the reference-based presets: :mod:`.reference` registers them on import;
the package imports it, so the registry is complete once ``LiverTumorLRPLib.lrp`` is imported).

* ``recommended`` (the default): z^B with per-channel bounds from the data on the input
  layer, gamma (0.25) on the lower half of the remaining layers, epsilon (0.25) on the
  upper half, LRP-epsilon with a tiny epsilon (~LRP-0) on the output layer -- the best
  practice for CNNs (Montavon et al. 2019; Kohlbrenner et al. 2020) with a data-dependent
  first-layer rule, so that per-sequence relevance measures the input.
* ``paper``: what iNNvestigate's PresetA does on a conv-only u-net, the starting point
  recommended for the paper's model: z+ (alpha1-beta0) on every convolution, epsilon (0.1)
  on fully connected layers.
* ``epsilon``: LRP-epsilon (1e-6) everywhere (close to gradient x input).
* ``epsilon-gamma-box``: zennit's EpsilonGammaBox: z^B input, gamma (0.25) on convolutions,
  epsilon (0.25) on fully connected layers.
* ``alpha2-beta1``: alpha2-beta1 on every convolution (zennit's EpsilonAlpha2Beta1).
* ``epsilon-plus-flat``: zennit's EpsilonPlusFlat: flat input rule, z+ elsewhere. Its input rule
  ignores the data, so it is refused for sequence relevance.
* ``reference-blur`` / ``reference-mean`` (registered by :mod:`.reference`): reference-based LRP
  (DeepLIFT-rescale) of ``f(x) - f(x_ref)``, ``x_ref`` a Gaussian-blurred copy (sigma 3 voxels) or each
  sequence's foreground mean; not a rule map: :func:`.engine.as_lrp` builds their engine.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from .rules import AlphaBeta, Epsilon, Flat, Gamma, ZBox, ZPlus

PRESETS: dict[str, Callable] = {}
DEFAULT_PRESET = "recommended"
_ENGINES: dict[str, Callable] = {}


def register_preset(name: str, factory: Callable, engine: Optional[Callable] = None) -> None:
    """Register preset ``name``: ``factory(layers) -> {layer name: rule}``; ``engine(model, name)``, when
    given, builds the object that explains with the preset in place of :class:`.engine.LRP`."""
    PRESETS[name] = factory
    if engine is None:
        _ENGINES.pop(name, None)
    else:
        _ENGINES[name] = engine


def get_preset(preset) -> Callable:
    """A preset function from a name or a callable; ValueError lists the names."""
    if callable(preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown LRP preset {preset!r}; choose one of {', '.join(PRESETS)}") from None


def preset_engine(preset) -> Optional[Callable]:
    """The engine registered with preset ``preset`` (a name), or None: the rule-based :class:`.engine.LRP`."""
    return _ENGINES.get(preset) if isinstance(preset, str) else None


def _per_type(conv_rule, linear_rule, first=None):
    def preset(layers):
        rules = {}
        for info in layers:
            rule = linear_rule() if isinstance(info.module, nn.Linear) else conv_rule()
            if first is not None and info.is_input:
                rule = first()
            rules[info.name] = rule
        return rules
    return preset


def recommended(layers):
    """z^B on the input layer, gamma (0.25) on the lower half of the others, epsilon (0.25) on the upper
    half, epsilon (1e-6) on the output layer."""
    rules = {}
    rest = [i for i in layers if not i.is_input and not i.is_output]
    lower = {i.name for i in rest[: (len(rest) + 1) // 2]}
    for info in layers:
        if info.is_input:
            rules[info.name] = ZBox()
        elif info.is_output:
            rules[info.name] = Epsilon(1e-6)
        elif info.name in lower:
            rules[info.name] = Gamma(0.25)
        else:
            rules[info.name] = Epsilon(0.25)
    return rules


register_preset("recommended", recommended)
register_preset("paper", _per_type(ZPlus, lambda: Epsilon(0.1)))
register_preset("epsilon", _per_type(lambda: Epsilon(1e-6), lambda: Epsilon(1e-6)))
register_preset("epsilon-gamma-box", _per_type(lambda: Gamma(0.25), lambda: Epsilon(0.25), first=ZBox))
register_preset("alpha2-beta1", _per_type(lambda: AlphaBeta(2.0, 1.0), lambda: Epsilon(1e-6)))
register_preset("epsilon-plus-flat", _per_type(ZPlus, lambda: Epsilon(1e-6), first=Flat))
