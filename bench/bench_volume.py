"""Whole-patient figures: ``segment`` and ``analyze`` on a 72 x 320 x 260 case at 3 x 1.2 x 1.2 mm.

The bundled model was trained at 4 x 3 x 3 mm: the case is resampled to it (54 x 128 x 104 voxels), run
with the model's patch as a voxel budget (here: one seamless window), and every output is mapped back to
the case grid.  Each command runs in its own process; wall time and peak resident memory (``getrusage``
of the child) are printed, and the sequence shares are compared with the same analysis in one
whole-volume window (``--patch 0 0 0``).  ``--large`` adds a 96 x 400 x 340 case (72 x 160 x 136 on the
model's grid: eight windows of the patch) to show what the seams cost.

    .venv/bin/python bench/bench_volume.py [--threads 2] [--large] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run(args, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    pid = subprocess.Popen([sys.executable, "-m", "LiverTumorLRPLib", *args], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(pid.pid, 0)
    wall = time.perf_counter() - t0
    err = pid.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"liver-lrp {' '.join(args)} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 2**20  # KiB -> GiB


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", default=None, help="folder for the case and outputs (default: a temporary one)")
    p.add_argument("--large", action="store_true", help="also a 96 x 400 x 340 case that needs eight windows")
    a = p.parse_args()

    work = a.keep or tempfile.mkdtemp(prefix="bench_volume_")
    for shape in [(72, 320, 260)] + ([(96, 400, 340)] if a.large else []):
        bench_case(work, shape, a.threads)
    print(f"command: .venv/bin/python bench/bench_volume.py --threads {a.threads}" + (" --large" if a.large else ""))


def bench_case(work, shape, threads):
    from LiverTumorLRPLib.phantom import generate_case, write_case

    label = " x ".join(map(str, shape))
    case = os.path.join(work, "case_" + "x".join(map(str, shape)))
    if not os.path.exists(os.path.join(case, "T1_15min.nii.gz")):
        write_case(generate_case(7, shape=shape, spacing=(3.0, 1.2, 1.2)), case)
    rows = []
    for name, extra in (("segment", []), ("analyze", []), ("analyze, one whole-volume window", ["--patch", "0", "0", "0"])):
        cmd = name.split(",")[0]
        out = case + "_" + name.replace(" ", "_").replace(",", "")
        wall, rss = run([cmd, case, "--out", out, "--device", "cpu", *extra], threads)
        rows.append((name, wall, rss, out))
    with open(os.path.join(rows[1][3], "result.json")) as f:
        res = json.load(f)
    def dims(v):
        return " x ".join(map(str, v))

    windows = f"{res['windows']} of {dims(res['window_shape'])} on {dims(res['network_grid'])}"
    print(f"case {label} at 3 x 1.2 x 1.2 mm, bundled model (4 x 3 x 3 mm), {threads} threads, windows: {windows}")
    print(f"{'command':36s} {'wall s':>8s} {'peak GiB':>9s}")
    for name, wall, rss, _ in rows:
        print(f"{name:36s} {wall:8.1f} {rss:9.2f}")
    summaries = [json.load(open(os.path.join(r[3], "sequence_relevance.json"))) for r in rows[1:]]
    for key, what in (("relevance", "one draw of B"), ("relevance_expected", "exact expectation over B")):
        if all(s.get(key) for s in summaries):
            diff = max(abs(x - y) for x, y in zip(*(s[key] for s in summaries)))
            print(f"largest share difference, model's windows vs one whole-volume window ({what}): {diff:.4f}")


if __name__ == "__main__":
    main()
