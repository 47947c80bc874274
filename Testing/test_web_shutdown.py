"""``liver-lrp web`` stops cleanly: a real server on 127.0.0.1 (the command itself), a job run from a real headless
Chromium, then SIGTERM or Ctrl-C (SIGINT): exit status 0, no C++ abort ("terminate called without an active
exception"), and its temporary results folder (``liver-lrp-web-*``) removed; a folder given with --output stays."""
import glob
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULTS_PREFIX = "liver-lrp-web-"


def start_server(tmp_path, *extra):
    """The command in its own temporary folder (TMPDIR), so its results folder can be found and checked."""
    pytest.importorskip("trame_slicer")
    import web_server

    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    try:
        proc, url, log = web_server.start(["--phantom-shape", 16, 48, 48, *extra], tmp_path,
                                          tmp_path / "server.log", env=dict(os.environ, TMPDIR=str(temp)))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return proc, url, temp, log


def stop(proc, log, sig, timeout=60):
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the server did not stop within {timeout} s of signal {sig}")
    log.close()
    return code, open(log.name).read()


def run_job(url, tmp_path, wait=True):
    """Load the phantom and, from the page as a user would, segment it with the bundled model (``wait``: until
    done) or start its sequence relevance (not ``wait``: returns while it runs)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is absent (scripts/install_chromium.sh)")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(dir=tmp_path), executable_path=chromium,
                                                   args=CHROMIUM_ARGS, headless=True)
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_selector("img.image-display-area")

        def counter(name):
            return int(page.get_attribute("#status", f"data-{name}"))

        actions = counter("actions")
        page.click("#load-phantom")
        page.wait_for_function(f"Number(document.querySelector('#status').dataset.actions) > {actions}")
        finished = counter("finished")
        page.click("#segment" if wait else "#sequence-relevance")
        if wait:
            page.wait_for_function(f"Number(document.querySelector('#status').dataset.finished) > {finished}",
                                   timeout=240_000)
        else:
            page.wait_for_function("document.querySelector('#status').textContent.includes('running')")
            assert counter("finished") == finished
        info = page.inner_text("#info")
        error = page.inner_text("#error") if page.is_visible("#error") else ""
        ctx.close()
    assert error == "" and (not wait or "tumor" in info), (error, info)


@pytest.mark.parametrize("sig, moment", [(signal.SIGTERM, "after a job"), (signal.SIGTERM, "while a job runs"),
                                        (signal.SIGINT, "after a job")],
                         ids=["SIGTERM-after-job", "SIGTERM-job-running", "SIGINT-after-job"])
def test_stops_cleanly(tmp_path, sig, moment):
    proc, url, temp, log = start_server(tmp_path)
    try:
        results = glob.glob(str(temp / f"{RESULTS_PREFIX}*"))
        assert len(results) == 1 and os.path.isdir(results[0])
        run_job(url, tmp_path, wait=moment == "after a job")
        if moment == "after a job":
            assert os.listdir(results[0]), "the job wrote no downloadable result"
    except BaseException:
        proc.kill()
        raise
    code, output = stop(proc, log, sig)
    assert "terminate called" not in output and "Aborted" not in output and "Traceback" not in output, output[-3000:]
    assert code == 0, output[-3000:]
    assert "liver-lrp web: stopped" in output
    assert not os.path.exists(results[0]) and not glob.glob(str(temp / f"{RESULTS_PREFIX}*"))


def test_stop_keeps_a_given_output_folder(tmp_path):
    out = tmp_path / "results"
    proc, _, temp, log = start_server(tmp_path, "--output", str(out))
    code, output = stop(proc, log, signal.SIGTERM)
    assert code == 0, output[-3000:]
    assert out.is_dir() and not glob.glob(str(temp / f"{RESULTS_PREFIX}*"))
