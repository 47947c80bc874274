"""Our LRP rules give zennit's numbers (zennit 0.5.1 is the reference implementation).

For every rule and every preset expressible in zennit, on u-nets with batch norm
(folded by zennit's canonizer / by us), transposed convolution (or trilinear
up-sampling) and skip concatenation: same input relevance within 1e-5 of the map's
largest magnitude, in float64.  BatchNorm eps is 0 in these nets: zennit's canonizer leaves
each merged BatchNorm computing x / sqrt(1 + eps), which would otherwise differ from an
exact fold by eps/2 per layer (float32 nets with eps = 1e-5 are compared at 1e-4).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

zennit = pytest.importorskip("zennit", reason="zennit is a test dependency: pip install -e '.[test]'")
from zennit import rules as zr  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import NameMapComposite  # noqa: E402

from LiverTumorLRPLib.lrp import rules as ours  # noqa: E402
from LiverTumorLRPLib.lrp import LRP  # noqa: E402
from LiverTumorLRPLib.lrp import PRESETS  # noqa: E402
from lrp_models import random_input, random_unet  # noqa: E402


def to_zennit(rule: ours.Rule, x: torch.Tensor):
    """The zennit rule with the same parameters."""
    zp = ["bias"] if rule.zero_bias and not isinstance(rule, ours.Flat) else None
    if isinstance(rule, ours.Epsilon):
        return zr.Epsilon(epsilon=rule.epsilon, zero_params=zp)
    if isinstance(rule, ours.Gamma):
        return zr.Gamma(gamma=rule.gamma, stabilizer=rule.stabilizer, zero_params=zp)
    if isinstance(rule, ours.ZPlus):
        return zr.ZPlus(stabilizer=rule.stabilizer, zero_params=zp)
    if isinstance(rule, ours.AlphaBeta):
        return zr.AlphaBeta(alpha=rule.alpha, beta=rule.beta, stabilizer=rule.stabilizer, zero_params=zp)
    if isinstance(rule, ours.ZBox):
        dims = [0, 2, 3, 4]
        low = x.amin(dim=dims).view(1, -1, 1, 1, 1) if rule.low is None else rule.low
        high = x.amax(dim=dims).view(1, -1, 1, 1, 1) if rule.high is None else rule.high
        return zr.ZBox(low=low, high=high, stabilizer=rule.stabilizer, zero_params=zp)
    if isinstance(rule, ours.Flat):
        return zr.Flat(stabilizer=rule.stabilizer)
    if isinstance(rule, ours.WSquare):
        return zr.WSquare(stabilizer=rule.stabilizer, zero_params=zp)
    raise AssertionError(rule)


def zennit_relevance(model: nn.Module, rule_map: dict, x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Input relevance from zennit, seeded with relevance ``seed * y`` at the output."""
    name_map = [((name,), to_zennit(rule, x)) for name, rule in rule_map.items()]
    # zennit's default composites also pass relevance through activations and normalise average pooling /
    # up-sampling with its Norm rule; here the u-net's up-sampling gets Norm explicitly.
    name_map += [((n,), zr.Norm()) for n, m in model.named_modules() if isinstance(m, nn.Upsample)]
    name_map += [((n,), zr.Pass()) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    composite = NameMapComposite(name_map=name_map, canonizers=[SequentialMergeBatchNorm()])
    inp = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        y = modified(inp)
        (rel,) = torch.autograd.grad(y, inp, grad_outputs=seed * y)
    return rel


def our_relevance(model, preset, x, seed, overrides=None):
    lrp = LRP(model, preset=preset, overrides=overrides)
    return lrp.relevance(x, seed), lrp


def random_seed_map(model, x, seed=3):
    with torch.no_grad():
        y = model(x)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(y.shape, generator=g) * (torch.rand(y.shape, generator=g) < 0.05)).to(x)


def assert_close_to_zennit(ours_map, ref):
    scale = float(ref.abs().max())
    assert scale > 0
    err = float((ours_map - ref).abs().max())
    assert err <= 1e-5 * scale, f"max |ours - zennit| = {err:.3e}, scale {scale:.3e}"


SINGLE_RULES = {
    "epsilon": ours.Epsilon(1e-6),
    "epsilon-0.25": ours.Epsilon(0.25),
    "epsilon-zero-bias": ours.Epsilon(0.1, zero_bias=True),
    "gamma": ours.Gamma(0.25),
    "zplus": ours.ZPlus(),
    "alpha2beta1": ours.AlphaBeta(2.0, 1.0),
    "alpha1beta0": ours.AlphaBeta(1.0, 0.0),
}
INPUT_RULES = {"zbox": ours.ZBox(), "zbox-fixed": ours.ZBox(low=-3.0, high=3.0), "flat": ours.Flat(),
               "wsquare": ours.WSquare()}
NETS = {"batchnorm-transpose": dict(norm="batch", upsampling="transpose"),
        "batchnorm-trilinear": dict(norm="batch", upsampling="trilinear"),
        "nonorm-depth3": dict(norm="none", depth=3)}


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("rule", list(SINGLE_RULES))
def test_single_rule_equals_zennit(net, rule):
    model = random_unet(seed=1, bn_eps=0.0, **NETS[net])
    x = random_input(seed=2)
    seed = random_seed_map(model, x)
    ours_map, lrp = our_relevance(model, None, x, seed, overrides=[("*", SINGLE_RULES[rule])])
    ref = zennit_relevance(model, lrp.rules, x, seed)
    assert_close_to_zennit(ours_map, ref)


@pytest.mark.parametrize("rule", list(INPUT_RULES))
def test_input_layer_rule_equals_zennit(rule):
    model = random_unet(seed=4, bn_eps=0.0)
    x = random_input(seed=5)
    seed = random_seed_map(model, x)
    ours_map, lrp = our_relevance(model, None, x, seed,
                                  overrides=[("input", INPUT_RULES[rule]), ("*", ours.Epsilon(0.01))])
    assert isinstance(lrp.rules["encoders.0.0"], type(INPUT_RULES[rule]))
    ref = zennit_relevance(model, lrp.rules, x, seed)
    assert_close_to_zennit(ours_map, ref)


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.startswith("reference-")])  # rule maps
@pytest.mark.parametrize("net", ["batchnorm-transpose", "batchnorm-trilinear"])
def test_preset_equals_zennit(preset, net):
    model = random_unet(seed=6, bn_eps=0.0, **NETS[net])
    x = random_input(seed=7)
    seed = random_seed_map(model, x, seed=8)
    ours_map, lrp = our_relevance(model, preset, x, seed)
    ref = zennit_relevance(model, lrp.rules, x, seed)
    assert_close_to_zennit(ours_map, ref)


def test_zennit_builtin_composite_epsilon_gamma_box():
    """Our 'epsilon-gamma-box' preset is zennit's own EpsilonGammaBox composite."""
    from zennit.composites import EpsilonGammaBox

    model = random_unet(seed=9, bn_eps=0.0)
    x = random_input(seed=10)
    seed = random_seed_map(model, x)
    low = x.amin(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)
    high = x.amax(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)
    composite = EpsilonGammaBox(low=low, high=high, canonizers=[SequentialMergeBatchNorm()])
    inp = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        y = modified(inp)
        (ref,) = torch.autograd.grad(y, inp, grad_outputs=seed * y)
    ours_map, _ = our_relevance(model, "epsilon-gamma-box", x, seed)
    assert_close_to_zennit(ours_map, ref)


def test_float32_close_to_zennit():
    model = random_unet(seed=11, dtype=torch.float32)
    x = random_input(seed=12, dtype=torch.float32)
    seed = random_seed_map(model, x)
    ours_map, lrp = our_relevance(model, "epsilon", x, seed)
    ref = zennit_relevance(model, lrp.rules, x, seed)
    err = float((ours_map - ref).abs().max()) / float(ref.abs().max())
    assert err < 1e-4
