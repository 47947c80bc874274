"""What the sequence relevance methods and the necessity cost in ``liver-lrp analyze`` (issue 22, item 4).

Two cases: 48 x 128 x 128 at the model's spacing (4 x 3 x 3 mm), and 72 x 320 x 260 at 3 x 1.2 x 1.2 mm
(resampled to the model's grid, 54 x 128 x 104).  Each variant runs as its own process on the CPU, the variants
interleaved (A B C D, A B C D, ...) ``--repeats`` times; the median wall time of each and its ratio to the
analysis before issue 22 (the paper's Sec. 2.3 alone, ``--method paper --necessity none``) are printed:

* ``paper only``: ``--method paper --necessity none`` (Sec. 2.3 with 10 draws of B; the baseline);
* ``default``: the default (``contribution``: 64 forward passes give the Shapley values of f and of Dice, one
  reference-based LRP pass gives the maps);
* ``paper + necessity``: ``--method paper`` (Sec. 2.3 and the 64 passes of the necessity);
* ``contribution, no necessity``: ``--necessity none`` (the same passes; only the Dice is not reported).

    .venv/bin/python bench/bench_analyze_cost.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

VARIANTS = {"paper only": ["--method", "paper", "--necessity", "none"], "default": [],
            "paper + necessity": ["--method", "paper"], "contribution, no necessity": ["--necessity", "none"]}
CASES = {"48 x 128 x 128": ((48, 128, 128), (4.0, 3.0, 3.0)), "72 x 320 x 260": ((72, 320, 260), (3.0, 1.2, 1.2))}


def wall(args, threads) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "LiverTumorLRPLib", *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"liver-lrp {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main():
    from LiverTumorLRPLib.phantom import generate_case, write_case

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_analyze_cost_") as work:
        for label, (shape, spacing) in CASES.items():
            case = os.path.join(work, label.replace(" ", ""))
            write_case(generate_case(7, shape=shape, spacing=spacing), case)
            times = {name: [] for name in VARIANTS}
            for _ in range(a.repeats):
                for name, extra in VARIANTS.items():
                    out = os.path.join(work, "out")
                    times[name].append(wall(["analyze", case, "--out", out, "--device", "cpu", *extra], a.threads))
            base = float(np.median(times["paper only"]))
            print(f"{label} ({a.threads} threads, median of {a.repeats}):")
            for name, t in times.items():
                print(f"  {name:28s} {np.median(t):7.1f} s  (min {min(t):.1f}, max {max(t):.1f})  "
                      f"x{np.median(t) / base:.2f} of paper only")
    print(f"command: .venv/bin/python bench/bench_analyze_cost.py --threads {a.threads} --repeats {a.repeats}")


if __name__ == "__main__":
    main()
