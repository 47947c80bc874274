"""The LRP engine as a package, one concept per module (in the manner of zennit):

* :mod:`.types`: the layer types, grouped by how relevance passes them;
* :mod:`.rules`: the LRP rules (epsilon, gamma, z+, alpha-beta, z^B, flat, w^2) as groups of parts;
* :mod:`.core`: the autograd functions whose value is a layer's output and whose derivative is a rule's
  redistribution (Eq. 1 as one vjp; every output neuron's relevance sum, the basis of Eq. 2, as one jvp);
* :mod:`.layer`: the rule layer that replaces each linear layer;
* :mod:`.guard`: the check that every other operation on the relevance path has a rule;
* :mod:`.canonize`: tracing, BatchNorm folding, module replacement (shared by both engines);
* :mod:`.presets`: the registry of named presets (which rule each layer gets);
* :mod:`.engine`: :class:`LRP` and :func:`as_lrp`;
* :mod:`.reference`: reference-based LRP (DeepLIFT-rescale), which registers its presets on import.

    from LiverTumorLRPLib.lrp import LRP, as_lrp, rules
"""
from . import rules
from .canonize import LayerInfo
from .core import LRPError
from .engine import LRP, as_lrp
from .layer import RuleLayer
from .presets import DEFAULT_PRESET, PRESETS, get_preset, register_preset
from .reference import REFERENCE_PRESETS, ReferenceLRP, liver_means, reference_lrp
from .rules import RULES, AlphaBeta, Epsilon, Flat, Gamma, Rule, WSquare, ZBox, ZPlus, make_rule
from .types import (BATCHNORM_TYPES, CONV_TYPES, GRADIENT_TYPES, HEAD_TYPES, INSTANCE_NORM_TYPES, LINEAR_TYPES,
                    TRANSPOSED_TYPES)

__all__ = [
    "LRP", "as_lrp", "LRPError", "LayerInfo", "RuleLayer",
    "rules", "Rule", "Epsilon", "Gamma", "ZPlus", "AlphaBeta", "ZBox", "Flat", "WSquare", "RULES", "make_rule",
    "PRESETS", "DEFAULT_PRESET", "get_preset", "register_preset",
    "ReferenceLRP", "REFERENCE_PRESETS", "reference_lrp", "liver_means",
    "CONV_TYPES", "TRANSPOSED_TYPES", "LINEAR_TYPES", "BATCHNORM_TYPES", "INSTANCE_NORM_TYPES", "HEAD_TYPES",
    "GRADIENT_TYPES",
]
