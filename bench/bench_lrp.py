"""Benchmark of the LRP engine, measured side by side in one run on the same model and input.

    python bench/bench_lrp.py [--shape 16 32 32] [--base 8] [--device cpu] [--repeats 3]

Prints, in "LRP passes" (the time of one Eq. 1 relevance pass: forward + backward):
  (a) Eq. 2 one-pass (forward-mode sums + one backward) vs the per-voxel loop, |A| = 10, 100, 1000;
  (b) one LRP pass vs zennit's pass with the same composite (EpsilonGammaBox, BatchNorm merged), and one
      pass of other presets (gamma has four terms per layer, epsilon one);
  (c) one LRP pass vs one plain gradient pass (forward + backward of the original network);
  and the peak memory torch allocates for each (CUDA: max allocated; CPU: the profiler's allocation events).
Targets: Eq. 2 <= 3 LRP passes whatever |A|; an LRP pass no slower than zennit's and <= 2x a gradient pass.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from LiverTumorLRPLib.explain import region_relevance, region_relevance_loop  # noqa: E402
from LiverTumorLRPLib.lrp import LRP  # noqa: E402
from LiverTumorLRPLib.unet import UNet3D, UNetConfig  # noqa: E402


def setup(args):
    torch.manual_seed(0)
    model = UNet3D(UNetConfig(depth=3, base_channels=args.base)).eval().to(args.device)
    x = torch.randn((1, 6) + tuple(args.shape), generator=torch.Generator().manual_seed(1)).to(args.device)
    return model, x


def zennit_pass(model, x, seed):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox

    low = x.amin(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)
    high = x.amax(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)
    composite = EpsilonGammaBox(low=low, high=high, canonizers=[SequentialMergeBatchNorm()])

    def run():
        inp = x.clone().requires_grad_(True)
        with composite.context(model) as modified:
            y = modified(inp)
            torch.autograd.grad(y, inp, grad_outputs=seed * y)
    return run


def methods(model, x, args):
    """name -> callable, all on the same model and input."""
    lrp = LRP(model, "epsilon-gamma-box").build(x)
    y = model(x).detach()
    seed = torch.zeros_like(y)
    seed[0, 1, args.shape[0] // 2, args.shape[1] // 2, args.shape[2] // 2] = 1.0

    def gradient():
        inp = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inp), inp, seed)

    out = {"gradient pass": gradient, "LRP pass (ours)": lambda: lrp.relevance(x, seed)}
    for preset in args.presets:
        other = LRP(model, preset).build(x)
        out[f"LRP pass (ours, {preset})"] = (lambda o=other: o.relevance(x, seed))
    try:
        import zennit  # noqa: F401
        out["LRP pass (zennit)"] = zennit_pass(model, x, seed)
    except ImportError:
        pass
    image = x[0].cpu().numpy()
    rng = np.random.default_rng(2)
    for n in args.sizes:
        flat = rng.choice(image[0].size, size=n, replace=False)
        region = np.zeros(image[0].size, bool)
        region[flat] = True
        region = region.reshape(image.shape[1:])
        out[f"Eq. 2 one-pass |A|={n}"] = (lambda r=region: region_relevance(lrp, image, r, 1, device=args.device))
        if n <= args.max_loop:
            out[f"Eq. 2 per-voxel loop |A|={n}"] = (lambda r=region: region_relevance_loop(lrp, image, r, 1,
                                                                                          device=args.device))
    return out


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32])
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--max-loop", type=int, default=1000, help="largest |A| timed with the per-voxel loop")
    ap.add_argument("--presets", nargs="*", default=["epsilon", "paper", "recommended"],
                    help="presets also timed for one LRP pass (the main rows use epsilon-gamma-box, as zennit)")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, x = setup(args)
    fns = methods(model, x, args)
    print(f"# bench_lrp: u-net depth 3, base {args.base}, input 6x{'x'.join(map(str, args.shape))}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# command: python bench/bench_lrp.py --shape {' '.join(map(str, args.shape))} --base {args.base} "
          f"--device {args.device}")
    # warm up everything, then interleave the repeats so that load on the machine hits all methods alike
    times = {}
    for name, fn in fns.items():
        if "loop" not in name:
            fn()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            if "loop" not in name:
                times[name] = min(times.get(name, float("inf")), timed_once(fn))
    for name, fn in fns.items():
        if "loop" in name:
            times[name] = timed_once(fn)
    unit = times["LRP pass (ours)"]
    print(f"{'method':34s} {'seconds':>9s} {'LRP passes':>11s} {'peak MiB':>9s}")
    for name, t in times.items():
        mem = "" if args.no_memory or "loop" in name else f"{peak_memory(fns[name], args.device):9.1f}"
        print(f"{name:34s} {t:9.4f} {t / unit:11.2f} {mem:>9s}")
    print("# ratios")
    if "LRP pass (zennit)" in times:
        print(f"LRP pass ours / zennit:        {unit / times['LRP pass (zennit)']:.2f}  (target <= 1)")
    print(f"LRP pass ours / gradient pass: {unit / times['gradient pass']:.2f}  (target <= 2)")
    for preset in args.presets:
        t = times[f"LRP pass (ours, {preset})"]
        print(f"LRP pass ours ({preset}) / gradient pass: {t / times['gradient pass']:.2f}")
    for n in args.sizes:
        fast = times[f"Eq. 2 one-pass |A|={n}"]
        line = f"Eq. 2 |A|={n}: one-pass = {fast / unit:.2f} LRP passes (target <= 3)"
        loop = times.get(f"Eq. 2 per-voxel loop |A|={n}")
        if loop is not None:
            line += f"; per-voxel loop / one-pass = {loop / fast:.1f}x"
        print(line)


def timed_once(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
