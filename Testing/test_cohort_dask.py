"""Cohorts lose no patient, and run on Dask distributed (127.0.0.1): same CSV as in-process, a killed worker
loses nothing, a bad case is reported, a re-run recomputes nothing."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import threading
import time

import pytest

from LiverTumorLRPLib.case_io import write_text
from LiverTumorLRPLib.cli import main
from LiverTumorLRPLib.phantom import generate_case, write_case
from pipeline_fixtures import make_model

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # the Dask tests skip (the cluster fixture); the in-process one runs
    WorkerPlugin = object

FAST = ["--device", "cpu", "--max-components", "0"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three cases, the third without its T1 15 min file; the in-process run of them (the reference)."""
    root = tmp_path_factory.mktemp("dask_cohort")
    for i in range(3):
        write_case(generate_case(100 + i, shape=(8, 32, 32), spacing=(8.0, 12.0, 12.0)), str(root / f"cases/case_{i}"))
    model = make_model(str(root / "model" / "tiny.safetensors"), str(root / "cases" / "case_0"))
    os.remove(str(root / "cases" / "case_2" / "T1_15min.nii.gz"))
    return root, model


@pytest.fixture(scope="module")
def local_run(cohort):
    root, model = cohort
    out = str(root / "local")
    with contextlib.redirect_stdout(io.StringIO()) as text:
        code = main(["cohort", str(root / "cases"), "--out", out, "--model", model, *FAST])
    return out, code, text.getvalue()


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    from LiverTumorLRPLib.cohort import local_cluster

    with local_cluster(2, "cpu") as c:
        yield c


def rows(out):
    with open(os.path.join(out, "cohort.csv"), newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def assert_same_results(out, reference):
    got, want = rows(out), rows(reference)
    assert sorted(got) == sorted(want)
    for name, r in want.items():
        assert got[name]["status"] == r["status"] and got[name]["reason"] == r["reason"]
        if r["status"] == "ok":
            a = json.load(open(os.path.join(out, name, "result.json")))["relevance"]
            b = json.load(open(os.path.join(reference, name, "result.json")))["relevance"]
            assert a == pytest.approx(b, abs=1e-6)


def stamps(out):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(out) for f in files if os.path.relpath(d, out) != "."}


def test_case_without_t1_15min_is_reported_not_dropped(local_run):
    out, code, text = local_run
    assert code == 1
    assert "2 done, 1 failed" in text and "FAILED case_2" in text and "missing sequence(s) T1_15min" in text
    assert "T1_15min" in open(os.path.join(out, "case_2", "error.txt")).read()
    table = rows(out)
    assert table["case_2"]["status"] == "failed" and "T1_15min" in table["case_2"]["reason"]
    assert [table[n]["status"] for n in ("case_0", "case_1")] == ["ok", "ok"]
    report = open(os.path.join(out, "report.html")).read()
    assert "2 cases analysed, 1 failed" in report and "missing sequence(s) T1_15min" in report


def test_two_dask_workers_give_the_local_csv(cohort, local_run, cluster, capsys):
    root, model = cohort
    out = str(root / "dask")
    code = main(["cohort", str(root / "cases"), "--out", out, "--model", model, *FAST,
                 "--scheduler", cluster.scheduler_address])
    assert code == 1
    assert "2 done, 1 failed (0 already finished), 2 worker(s)" in capsys.readouterr().out
    assert_same_results(out, local_run[0])
    assert os.path.getsize(os.path.join(out, "cohort_relevance.png")) > 1000

    # resume on a fresh LocalCluster (--workers): nothing finished is rewritten, the broken case fails again
    before = stamps(out)
    code = main(["cohort", str(root / "cases"), "--out", out, "--model", model, *FAST, "--workers", "2"])
    assert code == 1
    assert "2 done, 1 failed (2 already finished)" in capsys.readouterr().out
    after = stamps(out)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert changed == [os.path.join(out, "case_2", "error.txt")]
    assert_same_results(out, local_run[0])


class SlowFirstAttempt(WorkerPlugin):
    """Worker plugin (a test hook): the first attempt at case ``case`` writes ``marker`` (its pid) once its
    segmentation is written, and waits there to be killed."""

    def __init__(self, case, marker):
        self.case, self.marker = case, marker

    def setup(self, worker):
        from LiverTumorLRPLib import pipeline

        original, case, marker = pipeline.write_segmentation_files, self.case, self.marker

        def write_segmentation_files(seg, out, *args, **kwargs):
            summary = original(seg, out, *args, **kwargs)
            if seg.prepared.case.name == case and not os.path.exists(marker):
                write_text(str(os.getpid()), marker)
                time.sleep(300)
            return summary

        self.original, pipeline.write_segmentation_files = original, write_segmentation_files

    def teardown(self, worker):
        from LiverTumorLRPLib import pipeline

        pipeline.write_segmentation_files = self.original


def test_worker_killed_mid_case_loses_nothing(cohort, local_run, cluster, tmp_path):
    from distributed import Client

    root, model = cohort
    for name in ("case_0", "case_2"):
        shutil.copytree(str(root / "cases" / name), str(tmp_path / "cases" / name))
    out, marker = str(tmp_path / "out"), str(tmp_path / "worker_pid")
    with Client(cluster) as client:
        client.register_plugin(SlowFirstAttempt("case_0", marker), name="slow-first-attempt")
        try:
            codes = []
            run = threading.Thread(target=lambda: codes.append(main(
                ["cohort", str(tmp_path / "cases"), "--out", out, "--model", model, *FAST,
                 "--scheduler", cluster.scheduler_address])))
            run.start()
            deadline = time.time() + 300
            while not os.path.exists(marker) and time.time() < deadline and run.is_alive():
                time.sleep(0.1)
            pid = int(open(marker).read())
            assert os.path.exists(os.path.join(out, "case_0", "tumor_segmentation.nii.gz"))
            assert not os.path.exists(os.path.join(out, "case_0", "result.json"))  # mid-case
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            run.join(600)
            assert codes == [1]  # only the broken case failed
            assert pid not in client.run(os.getpid).values()  # the worker was replaced
        finally:
            client.unregister_worker_plugin("slow-first-attempt")
    assert os.path.getmtime(os.path.join(out, "case_0", "tumor_segmentation.nii.gz")) > killed_at  # redone
    table = rows(out)
    assert table["case_0"]["status"] == "ok" and table["case_2"]["status"] == "failed"
    assert table["case_0"] == rows(local_run[0])["case_0"]


class DiesOn(WorkerPlugin):
    """Worker plugin (a test hook): the worker process dies whenever it starts case ``case``."""

    def __init__(self, case):
        self.case = case

    def setup(self, worker):
        from LiverTumorLRPLib import cohort

        original, case = cohort.as_case, self.case

        def as_case(path, *args, **kwargs):
            if os.path.basename(path) == case:
                os._exit(1)
            return original(path, *args, **kwargs)

        self.original, cohort.as_case = original, as_case

    def teardown(self, worker):
        from LiverTumorLRPLib import cohort

        cohort.as_case = self.original


def test_case_killing_its_worker_is_retried_twice_then_reported(cohort, cluster, tmp_path, capsys):
    from distributed import Client

    root, model = cohort
    shutil.copytree(str(root / "cases" / "case_1"), str(tmp_path / "cases" / "doomed"))
    with Client(cluster) as client:
        client.register_plugin(DiesOn("doomed"), name="dies-on")
        try:
            code = main(["cohort", str(tmp_path / "cases"), "--out", str(tmp_path / "out"), "--model", model,
                         *FAST, "--scheduler", cluster.scheduler_address])
        finally:
            client.unregister_worker_plugin("dies-on")
    assert code == 1
    assert "FAILED doomed: the worker died while running this case, 3 times" in capsys.readouterr().out
    assert rows(str(tmp_path / "out"))["doomed"]["status"] == "failed"


def test_ctrl_c_cancels_every_task(cohort, cluster, tmp_path):
    from LiverTumorLRPLib.cohort import run_cohort

    root, model = cohort
    for name in ("case_0", "case_2"):  # the broken case fails at once: "Ctrl-C" then, while case_0 runs
        shutil.copytree(str(root / "cases" / name), str(tmp_path / "cases" / name))

    def progress(done, total, name, error):
        if name is not None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cohort(str(tmp_path / "cases"), str(tmp_path / "out"), model, device="cpu", max_components=0,
                   progress=progress, scheduler=cluster.scheduler_address)
    deadline = time.time() + 30
    while cluster.scheduler.tasks and time.time() < deadline:
        time.sleep(0.1)
    assert not cluster.scheduler.tasks  # cancelled: the scheduler holds no task
    assert not os.path.exists(str(tmp_path / "out" / "cohort.csv"))


def test_scheduler_and_workers_exclude_each_other(cohort, capsys):
    root, model = cohort
    assert main(["cohort", str(root / "cases"), "--out", str(root / "x"), "--model", model,
                 "--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"]) == 1
    assert "use either --scheduler" in capsys.readouterr().err
