"""Benchmark of the LRP engine at the real case size, measured side by side in one run.

    python bench/bench_lrp.py [--small] [--threads 2] [--repeats 3] [--no-memory]

Bundled model, input 6 x 48 x 128 x 128 (the size it was trained on; ``--small``: 6 x 16 x 32 x 32), CPU.
Rows: forward, gradient pass (forward + backward of the original network), our LRP pass (Eq. 1) with the
presets ``recommended`` / ``paper`` / ``epsilon`` / ``epsilon-gamma-box``, zennit 0.5.1's EpsilonGammaBox
with its BatchNorm merge canonizer, and Eq. 2 (``explain.region_relevance``, a 2,048-voxel region,
``recommended``: one forward carrying the tangent and keeping the graph, one backward).  Times: one warm-up,
then ``--repeats`` rounds interleaving all rows, median per row.  Peak memory: the increase of the
maximum resident set size (``getrusage``) of a fresh process over one pass of that row alone (after loading the
model, building on a small input and making the input), so it counts everything torch allocates on the CPU.
Row ``floor``: the gradient pass of the canonised copy (BatchNorm folded) in which every layer that
``recommended`` gives gamma or z^B is run twice (once with |W|), i.e. the convolutions those rules need at the
least: an estimate of the cheapest possible ``recommended`` pass (for the 1.3x target).
Targets (issue 17): ``recommended`` <= 1.3 gradient passes; EpsilonGammaBox <= 2.5 gradient passes and >= 2x
faster than zennit; Eq. 2 <= 1.8 LRP passes; peak memory of an LRP pass <= 1.5x a gradient pass.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from LiverTumorLRPLib.explain import region_relevance
from LiverTumorLRPLib.lrp import LRP
from LiverTumorLRPLib.models import load_model

REAL, SMALL = (48, 128, 128), (16, 32, 32)
REGION = (8, 16, 16)  # 2,048 voxels
FLOOR = "floor: gradient pass, recommended's two-convolution layers doubled"
ROWS = ["forward", "gradient pass", FLOOR, "LRP pass, recommended", "LRP pass, paper", "LRP pass, epsilon",
        "LRP pass, EpsilonGammaBox", "zennit EpsilonGammaBox + BN merge", "Eq. 2 region_relevance"]
PRESET_ROWS = {"LRP pass, recommended": "recommended", "LRP pass, paper": "paper", "LRP pass, epsilon": "epsilon",
               "LRP pass, EpsilonGammaBox": "epsilon-gamma-box"}


class Doubled(torch.nn.Module):
    """A convolution run twice (once with |W|), both on the gradient path: the cost of a layer whose LRP
    rule needs two linear operations forward and two backward (gamma, z^B)."""

    def __init__(self, conv):
        import copy

        super().__init__()
        self.conv, self.twin = conv, copy.deepcopy(conv)
        with torch.no_grad():
            self.twin.weight.abs_()
        self.twin.requires_grad_(False)

    def forward(self, x):
        return self.conv(x) + self.twin(x)


def floor_model(model, small):
    """The canonised network (BatchNorm folded, as LRP runs it) with every layer that ``recommended`` gives a
    two-operation rule (gamma, z^B) doubled: its gradient pass is what the rules' convolutions alone cost,
    the floor of an LRP pass."""
    import copy

    from LiverTumorLRPLib.lrp.canonize import set_module
    from LiverTumorLRPLib.lrp.rules import Gamma, ZBox

    lrp = LRP(model, "recommended").build(small)
    floor = copy.deepcopy(lrp.model)
    for info in lrp.layers:
        conv = floor.get_submodule(info.name).module  # the RuleLayer's plain (folded) layer
        set_module(floor, info.name, Doubled(conv) if isinstance(lrp.rules[info.name], (Gamma, ZBox)) else conv)
    floor.requires_grad_(False)
    return floor.eval()


def setup(shape):
    model = load_model("bundled").eval()
    x = torch.randn((1, 6) + tuple(shape), generator=torch.Generator().manual_seed(1))
    small = torch.randn((1, 6) + SMALL, generator=torch.Generator().manual_seed(2))
    return model, x, small


def make_row(name, model, x, small):
    """The callable timed for row ``name`` (its set-up -- building the LRP copy on a small input -- done here)."""
    seed = torch.zeros((1, 2) + tuple(x.shape[2:]))
    seed[(0, 1) + tuple(n // 2 for n in x.shape[2:])] = 1.0
    if name == "forward":
        def run():
            with torch.no_grad():
                model(x)
        return run
    if name in ("gradient pass", FLOOR):
        net = model if name == "gradient pass" else floor_model(model, small)

        def run():
            inp = x.clone().requires_grad_(True)
            torch.autograd.grad(net(inp), inp, seed)
        return run
    if name in PRESET_ROWS:
        lrp = LRP(model, PRESET_ROWS[name]).build(small)
        return lambda: lrp.relevance(x, seed)
    if name.startswith("zennit"):
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
    if name.startswith("Eq. 2"):
        lrp = LRP(model, "recommended").build(small)
        image = x[0].numpy()
        region = np.zeros(image.shape[1:], bool)
        region[tuple(slice(n // 2 - r // 2, n // 2 - r // 2 + r) for n, r in zip(image.shape[1:], REGION))] = True
        return lambda: region_relevance(lrp, image, region, cls=1, device="cpu")
    raise KeyError(name)


def memory_of(name, args) -> float:
    """Peak RSS increase (MiB) of a fresh process running one pass of row ``name``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-row", name, "--threads", str(args.threads)]
    out = subprocess.run(cmd + (["--small"] if args.small else []), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(args):
    model, x, small = setup(SMALL if args.small else REAL)
    run = make_row(args.memory_row, model, x, small)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)  # KiB on Linux


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help=f"input 6 x {' x '.join(map(str, SMALL))} (fast)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_row:
        return _memory_child(args)
    try:
        import zennit  # noqa: F401
        rows = ROWS
    except ImportError:
        rows = [r for r in ROWS if not r.startswith("zennit")]
    # memory first: a child's max RSS starts at its parent's (Linux keeps it across exec), so keep this one small
    mem = {} if args.no_memory else {name: memory_of(name, args) for name in rows}
    shape = SMALL if args.small else REAL
    model, x, small = setup(shape)
    fns = {name: make_row(name, model, x, small) for name in rows}
    load = os.getloadavg()
    print(f"# bench_lrp: bundled model, input 6 x {' x '.join(map(str, shape))}, CPU, {args.threads} threads, "
          f"torch {torch.__version__}; load average at start {load[0]:.1f} ({os.cpu_count()} cores)")
    print(f"# command: python bench/bench_lrp.py{' --small' if args.small else ''} --threads {args.threads} "
          f"--repeats {args.repeats}")
    for fn in fns.values():  # warm-up
        fn()
    times = {name: [] for name in fns}
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits all rows alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    if mem and mem["gradient pass"] <= 0:  # at the small size the set-up's own peak can hide the passes
        print(f"# peak memory not measurable here: {mem}")
        mem = {}
    grad, rec = med["gradient pass"], med["LRP pass, recommended"]
    print(f"# load average at end {os.getloadavg()[0]:.1f}; peak memory: max-RSS increase of a fresh process "
          "over one pass (getrusage)")
    print("| pass | seconds | x gradient | peak MiB | x gradient memory |")
    print("|---|---|---|---|---|")
    for name in rows:
        note = f" ({med[name] / rec:.2f} LRP passes)" if name.startswith("Eq. 2") else ""
        m = f"{mem[name]:.0f} | {mem[name] / mem['gradient pass']:.2f}" if mem else "- | -"
        print(f"| {name} | {med[name]:.2f} | {med[name] / grad:.2f}{note} | {m} |")
    egb = med["LRP pass, EpsilonGammaBox"]
    print(f"# floor of `recommended` (its gamma and z^B layers need two convolutions each way): "
          f"{med[FLOOR] / grad:.2f} gradient passes; our pass is {rec / med[FLOOR]:.2f}x that floor")
    checks = [("recommended pass / gradient pass", rec / grad, "<= 1.3", rec / grad <= 1.3),
              ("EpsilonGammaBox pass / gradient pass", egb / grad, "<= 2.5", egb / grad <= 2.5),
              ("Eq. 2 / recommended pass", med["Eq. 2 region_relevance"] / rec, "<= 1.8",
               med["Eq. 2 region_relevance"] / rec <= 1.8)]
    if "zennit EpsilonGammaBox + BN merge" in med:
        r = med["zennit EpsilonGammaBox + BN merge"] / egb
        checks.append(("zennit / our EpsilonGammaBox pass", r, ">= 2", r >= 2))
    if mem:
        for name in PRESET_ROWS:
            r = mem[name] / mem["gradient pass"]
            checks.append((f"peak memory {name} / gradient pass", r, "<= 1.5", r <= 1.5))
    print("# ratios (target, met)")
    for label, value, target, ok in checks:
        print(f"{label}: {value:.2f} (target {target}: {'met' if ok else 'NOT met'})")


if __name__ == "__main__":
    main()
