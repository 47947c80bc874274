"""Cost of explaining a planner-sized nnU-Net PlainConvUNet, measured side by side in one run.

    python bench/bench_nnunet.py [--patch 32 64 64] [--threads 2] [--repeats 2]

The network is what nnU-Net's planner gives a liver MRI dataset (6 stages, 32..320 features, strides
(1,1,1) (1,2,2) (2,2,2) (2,2,2) (2,2,2) (1,2,2) = total (8, 32, 32), InstanceNorm3d(affine), LeakyReLU), built
by nnU-Net's ``get_network_from_plans`` with random weights (no training needed), 6 input channels, 2 classes.
The default patch (32, 64, 64) is a quarter of a typical plans patch (64, 128, 128) per axis pair, because
the full patch needs about 8 GiB for one LRP pass on CPU; pass ``--patch 64 128 128`` for it.
Prints time and peak memory of: a forward pass, a gradient pass (forward + backward of the original
network), one LRP pass (preset ``recommended``, Eq. 1), and ``sequence_relevance`` (Sec. 2.3) with its
number of modified forward passes and its time in LRP passes.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from LiverTumorLRPLib import explain
from LiverTumorLRPLib.lrp import LRP
from LiverTumorLRPLib.model_info import ModelInfo


def peak_memory(fn, device) -> float:
    """Peak memory (MiB) allocated by torch while ``fn`` runs: CUDA's counter, or the CPU profiler's
    allocation events summed in time order."""
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]


def planner_net():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    kw = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
          "conv_op": "torch.nn.modules.conv.Conv3d",
          "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5, "strides": STRIDES,
          "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
          "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", kw,
                                     ["conv_op", "norm_op", "dropout_op", "nonlin"], 6, 2, deep_supervision=False)
    for i in range(len(net.decoder.seg_layers) - 1):  # deep-supervision heads, never run (as load_nnunet does)
        net.decoder.seg_layers[i] = torch.nn.Identity()
    net.model_info = ModelInfo(strides=tuple(int(np.prod(s)) for s in zip(*STRIDES)), padding="zero")
    return net.eval()


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = planner_net()
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn((1, 6) + tuple(args.patch), generator=torch.Generator().manual_seed(1))
    lrp = LRP(net, "recommended").build(x)
    with torch.no_grad():
        y0 = net(x)
    seed = torch.zeros_like(y0)
    seed[(0, 1) + tuple(p // 2 for p in args.patch)] = 1.0

    def forward():
        with torch.no_grad():
            net(x)

    def gradient():
        inp = x.clone().requires_grad_(True)
        torch.autograd.grad(net(inp), inp, seed)

    def lrp_pass():
        lrp.relevance(x, seed)

    calls = {"n": 0}
    original = LRP._forward

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    def seq_rel():
        LRP._forward = counting
        try:
            explain.sequence_relevance(lrp, x[0].numpy(), device="cpu")
        finally:
            LRP._forward = original

    rows = []
    for name, fn in (("forward", forward), ("gradient pass", gradient), ("LRP pass (recommended)", lrp_pass),
                     ("sequence_relevance", seq_rel)):
        t = timed(fn, args.repeats if name != "sequence_relevance" else 1)
        rows.append((name, t, peak_memory(fn, "cpu")))
    n_forward = calls["n"] // 2  # seq_rel ran twice: timed once, then under the memory profiler
    print(f"PlainConvUNet 32..320, 6 stages, {n_params / 1e6:.1f} M parameters; input 6 x "
          f"{' x '.join(map(str, args.patch))}; {args.threads} CPU threads")
    grad_t, grad_m = rows[1][1], rows[1][2]
    lrp_t = rows[2][1]
    print(f"{'':24s} {'time s':>8s} {'x grad':>7s} {'peak MiB':>9s} {'x grad':>7s}")
    for name, t, m in rows:
        print(f"{name:24s} {t:8.2f} {t / grad_t:7.2f} {m:9.0f} {m / grad_m:7.2f}")
    print(f"sequence_relevance: {n_forward} modified forward passes, {rows[3][1] / lrp_t:.2f} LRP passes of time")


if __name__ == "__main__":
    main()
