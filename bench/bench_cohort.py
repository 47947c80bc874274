"""Cohort throughput: cases per minute in this process, and on a Dask LocalCluster of 1 and 2 workers.

    .venv/bin/python bench/bench_cohort.py [--cases 6] [--shape 16 48 48] [--model bundled] [--device cpu]

Every variant runs the same phantom cases into its own output folder, side by side in one run; the time
includes each worker's first-case start-up (imports, model load), not the cluster start (printed apart).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

from LiverTumorLRPLib.cohort import local_cluster, run_cohort
from LiverTumorLRPLib.phantom import generate_case, write_case


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--shape", type=int, nargs=3, default=(16, 48, 48))
    p.add_argument("--model", default="bundled")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--work", default=None, help="folder for cases and outputs (default: a temporary one)")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="bench_cohort_")
    root = os.path.join(work, "cases")
    for i in range(a.cases):
        if not os.path.isdir(os.path.join(root, f"case_{i:03d}")):
            write_case(generate_case(200 + i, shape=tuple(a.shape), spacing=(4.0, 3.0, 3.0)),
                       os.path.join(root, f"case_{i:03d}"))
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"{a.cases} phantom cases of shape {tuple(a.shape)}, model {a.model}, device {a.device}, "
          f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}")

    def run(label, out, scheduler=None):
        t = time.perf_counter()
        res = run_cohort(root, os.path.join(work, out), a.model, device=a.device, max_components=1,
                         scheduler=scheduler)
        dt = time.perf_counter() - t
        assert not res["failures"] and len(res["results"]) == a.cases, res["failures"]
        return label, dt

    rows = [run("in this process (no Dask)", "local")]
    for n in (1, 2):
        t = time.perf_counter()
        with local_cluster(n, a.device) as cluster:
            start = time.perf_counter() - t
            label, dt = run(f"LocalCluster, {n} worker(s)", f"dask{n}", cluster.scheduler_address)
        rows.append((f"{label} (cluster start {start:.1f} s)", dt))
    base = rows[0][1]
    print(f"{'variant':<50} {'seconds':>8} {'cases/min':>10} {'speed-up':>9}")
    for label, dt in rows:
        print(f"{label:<50} {dt:8.1f} {60 * a.cases / dt:10.2f} {base / dt:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
