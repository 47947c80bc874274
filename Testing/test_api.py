"""The public API: what the README shows imports, one option order across the explanation functions, and the
renamed options and names still work for one release with a DeprecationWarning and the same numbers."""
import inspect
import re
import warnings

import numpy as np
import pytest
import torch

import LiverTumorLRPLib
from LiverTumorLRPLib import explain
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

ROOT = __file__.rsplit("/Testing/", 1)[0]
FUNCTIONS = ("relevance", "region_relevance", "region_relevance_loop", "weighted_relevance", "sequence_relevance",
             "sequence_relevance_interval")
ORDER = ("cls", "preset", "device", "seed", "background", "max_voxels", "resamples", "regions", "threshold",
         "bounds", "patch_size", "overlap", "progress", "cancel")


def test_every_public_name_imports():
    for name in LiverTumorLRPLib.__all__:
        assert getattr(LiverTumorLRPLib, name) is not None, name


def test_the_readme_imports_work():
    text = open(f"{ROOT}/README.md", encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    lines = [m.group(0) for b in blocks
             for m in re.finditer(r"^from LiverTumorLRPLib[\w.]* import (\([^)]*\)|[^\n]*)", b, re.M)]
    assert len(lines) >= 2
    for line in lines:
        exec(line, {})


def test_options_are_keyword_only_in_one_order():
    for name in FUNCTIONS:
        params = inspect.signature(getattr(explain, name)).parameters.values()
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        assert positional[:2] == ["model", "x"] and len(positional) <= 3, (name, positional)
        assert "seed" not in positional, name           # seed is always the random seed, never the output
        assert keywords == [k for k in ORDER if k in keywords], (name, keywords)
        assert set(keywords) <= set(ORDER), (name, set(keywords) - set(ORDER))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    x = np.random.default_rng(0).normal(size=(6, 8, 16, 16)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None])[0]
        net.head.bias[1] -= float(torch.quantile((y[1] - y[0]).flatten(), 0.9))
    return net, x


def test_old_calls_warn_and_give_the_same_numbers(tiny):
    net, x = tiny
    region = np.zeros(x.shape[1:], bool)
    region[3:5, 6:9, 6:9] = True
    new = explain.region_relevance(net, x, region, cls="tumor", preset="epsilon", device="cpu")
    with pytest.warns(DeprecationWarning, match="by keyword"):
        old = explain.region_relevance(net, x, region, "tumor", "epsilon", "cpu")
    np.testing.assert_array_equal(old.maps, new.maps)
    with pytest.warns(DeprecationWarning, match="use .shares"):
        np.testing.assert_array_equal(old.sequence_shares, new.shares)
    assert np.allclose(new.positive + new.negative, new.shares) and np.isclose(new.shares.sum(), 1.0)
    with pytest.warns(DeprecationWarning, match="seed= is deprecated; use output="):
        m_old = explain.relevance(net, x, seed=(1, 4, 8, 8), device="cpu")
    np.testing.assert_array_equal(m_old, explain.relevance(net, x, (1, 4, 8, 8), device="cpu"))
    with pytest.raises(TypeError, match="multiple values for cls"):
        explain.region_relevance(net, x, region, "tumor", cls="tumor")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the new calls raise no warning
        s = explain.sequence_relevance(net, x, preset="epsilon", device="cpu", seed=3)
        iv = explain.sequence_relevance_interval(net, x, preset="epsilon", device="cpu", seed=3, resamples=2)
    np.testing.assert_allclose(iv.shares, s.shares)
    assert isinstance(s, explain.Relevance) and isinstance(new, explain.Relevance)


def test_moved_names_warn():
    import LiverTumorLRPLib.models as models
    import LiverTumorLRPLib.unet as unet

    with pytest.warns(DeprecationWarning, match="models.save_model"):
        assert unet.save_model is models.save_model
    with pytest.warns(DeprecationWarning, match="models.load_unet"):
        assert unet.load_unet is models.load_unet
    from LiverTumorLRPLib import slicer_logic

    net = torch.nn.Conv3d(6, 2, 1)
    with pytest.warns(DeprecationWarning, match="cached_model"):
        assert slicer_logic.get_model(net) is net
