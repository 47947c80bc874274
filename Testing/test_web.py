"""The browser page (``liver-lrp web``) end to end: a real server on 127.0.0.1 and a real headless Chromium.

The server is the command itself (a subprocess); Playwright drives Debian's chromium.  The page's numbers are
compared with the library called directly on the same case and model (explain.sequence_relevance /
region_relevance), so the page and the library cannot drift apart.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile

import numpy as np
import pytest
import torch

from LiverTumorLRPLib.explain import region_relevance
from LiverTumorLRPLib.intensity import normalise_image
from LiverTumorLRPLib.models import load_model
from LiverTumorLRPLib.phantom import generate_case, write_case
from LiverTumorLRPLib.sequences import SEQUENCE_KEYS
from LiverTumorLRPLib.models import save_model
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHANTOM_SHAPE = (8, 32, 32)
SPACING = (4.0, 3.0, 3.0)          # add_phantom_case's default spacing
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT_MS = 240_000


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:   # CI installs it (scripts/setup.sh); try the same script here before giving up
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "install_chromium.sh")], check=False)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is absent and scripts/install_chromium.sh could not install it "
                    "(needs root and apt-get)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files():
    """A tiny seeded u-net (fast LRP), a model file that does not load, a good and a broken case folder."""
    root = tempfile.mkdtemp(prefix="liver-lrp-web-test-")
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    with torch.no_grad():                      # about 5 % predicted tumor on the page's phantom
        d = net(torch.from_numpy(phantom_image()[0])[None])[0]
        net.head.bias[1] -= float(torch.quantile((d[1] - d[0]).flatten(), 0.95))
    tiny = save_model(net, os.path.join(root, "tiny.safetensors"))
    broken_model = os.path.join(root, "broken.safetensors")
    with open(broken_model, "wb") as fh:
        fh.write(b"this is not a safetensors file")
    shutil.copy(str(tiny).replace(".safetensors", ".json"), broken_model.replace(".safetensors", ".json"))
    case = generate_case(1, shape=(16, 48, 48))
    good = write_case(case, os.path.join(root, "case_good"))
    broken = write_case(case, os.path.join(root, "case_no_t2"))
    os.remove(os.path.join(broken, "T2.nii.gz"))
    yield {"root": root, "tiny": str(tiny), "broken_model": broken_model, "good": good, "broken": broken,
           "out": os.path.join(root, "out"), "shots": os.path.join(root, "screenshots")}
    if not os.environ.get("LIVER_LRP_KEEP_TEST_FILES"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(files):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    log = open(os.path.join(files["root"], "server.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "LiverTumorLRPLib", "web", "--host", "127.0.0.1", "--port",
                             str(port), "--phantom-shape", *map(str, PHANTOM_SHAPE), "--output", files["out"]],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=files["root"])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("the web server did not start:\n" + open(log.name).read()[-3000:])
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(server, files):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(dir=files["root"]), executable_path=chromium,
                                                   args=CHROMIUM_ARGS, headless=True,
                                                   viewport={"width": 1280, "height": 860})
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(server)
        pg.wait_for_selector("img.image-display-area")   # the first frame of a Slicer view
        yield pg
        ctx.close()


def shot(page, files, name):
    os.makedirs(files["shots"], exist_ok=True)
    path = os.path.join(files["shots"], name)
    page.screenshot(path=path)
    assert os.path.getsize(path) > 10_000
    return path


def error_text(page) -> str:
    return page.inner_text("#error") if page.is_visible("#error") else ""


def wait_idle(page, timeout=JOB_TIMEOUT_MS):
    page.wait_for_function("!document.querySelector('#status').textContent.includes('running')", timeout=timeout)


def counter(page, name) -> int:
    return int(page.get_attribute("#status", f"data-{name}"))


def click(page, button):
    """Click a button and wait until the server has handled it (its counter of handled buttons moves on)."""
    before = counter(page, "actions")
    page.click(f"#{button}")
    page.wait_for_function(f"Number(document.querySelector('#status').dataset.actions) > {before}")


def run_job(page, button):
    """Click a job button; wait until that job has finished (the page's job counter moves on)."""
    before = counter(page, "finished")
    click(page, button)
    assert error_text(page) == ""
    page.wait_for_function(f"Number(document.querySelector('#status').dataset.finished) > {before}",
                           timeout=JOB_TIMEOUT_MS)
    wait_idle(page)
    assert error_text(page) == ""


def load_phantom(page):
    click(page, "load-phantom")
    page.wait_for_function("document.querySelector('#case-name').textContent.includes('phantom') && "
                           "document.querySelector('#info').textContent.includes('loaded')")
    assert error_text(page) == ""


def set_model(page, path):
    page.fill("#model", path)
    page.wait_for_timeout(300)   # the field is two-way bound: let the value reach the server


def shares(page):
    rows = page.eval_on_selector_all("#shares tr.share-row",
                                     "els => els.map(e => [e.dataset.key, Number(e.dataset.share)])")
    return [k for k, _ in rows], np.array([v for _, v in rows])


def phantom_image():
    case = generate_case(0, shape=PHANTOM_SHAPE, spacing=SPACING)
    return normalise_image(np.stack([case.images[k] for k in SEQUENCE_KEYS]).astype(np.float32)), case


def test_segment_and_sequence_relevance_match_the_library(page, files):
    load_phantom(page)
    views = page.query_selector_all("img.image-display-area")
    assert len(views) == 3                                     # axial, coronal, sagittal
    set_model(page, files["tiny"])
    run_job(page, "segment")
    assert "predicted tumor voxels" in page.inner_text("#info")
    run_job(page, "sequence-relevance")
    page.wait_for_selector("#shares tr.share-row")
    keys, got = shares(page)
    assert keys == list(SEQUENCE_KEYS)
    assert abs(got.sum() - 1.0) < 1e-6
    # the default method (Shapley values of Sec. 2.3's f, necessity beside it), as the MRML task computes it
    from LiverTumorLRPLib import slicer_logic as sl

    with sl.headless_scene():
        nodes = sl.add_phantom_case(seed=0, shape=PHANTOM_SHAPE)
        expected = np.asarray(sl.analyze_sequences(nodes, files["tiny"], device="cpu").shares)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the bar chart shows the same numbers, and the shown sequence is the most relevant one
    shown = page.eval_on_selector_all("#shares .share-value", "els => els.map(e => Number(e.textContent))")
    np.testing.assert_allclose(shown, expected, atol=5e-5)
    assert page.is_visible("#legend")
    # the sequence selector: T2 as background with its own relevance overlay
    page.click(".v-field__input:has(#show-sequence)")
    page.click(".v-overlay .v-list-item:has-text('T2')")
    page.wait_for_function("document.querySelector('#shown').textContent.includes('Phantom T2')")
    assert page.inner_text("#shown") == "background: Phantom T2; overlay: Sequence relevance: T2"
    # the download: six relevance volumes and the shares, the same numbers
    link = page.get_attribute("#downloads a[href*='relevance']", "href")
    data = page.request.get(urllib.parse.urljoin(page.url, link)).body()
    zpath = os.path.join(files["root"], "relevance.zip")
    open(zpath, "wb").write(data)
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        assert {f"relevance_{k}.nii.gz" for k in SEQUENCE_KEYS} <= names
        np.testing.assert_allclose(json.loads(zf.read("relevance.json"))["shares"], expected, atol=1e-6)
    page.wait_for_timeout(800)
    shot(page, files, "sequence_relevance.png")


def test_explain_a_clicked_point(page, files):
    load_phantom(page)
    set_model(page, files["tiny"])
    click(page, "place-point")
    box = page.query_selector_all("img.image-display-area")[0].bounding_box()   # the axial view
    page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
    page.wait_for_function("document.querySelector('#point').textContent.includes('voxel')")
    text = page.inner_text("#point")
    k, j, i = (int(v) for v in text.split("voxel (")[1].split(")")[0].split(","))
    run_job(page, "explain")
    assert "point" in page.inner_text("#info")
    keys, got = shares(page)
    assert keys == list(SEQUENCE_KEYS)
    image, _ = phantom_image()
    region = np.zeros(PHANTOM_SHAPE, bool)
    region[k, j, i] = True
    expected = region_relevance(load_model(files["tiny"]), image, region, "tumor", "recommended", "cpu")
    np.testing.assert_allclose(got, expected.sequence_shares, atol=1e-6)
    shot(page, files, "explain_point.png")


def test_explain_a_segment_painted_in_the_page(page, files):
    load_phantom(page)
    set_model(page, files["tiny"])
    click(page, "draw-segment")                                # Slicer's segment editor, Paint effect
    box = page.query_selector_all("img.image-display-area")[0].bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(10):
        page.mouse.move(x0 + 4 * step, y0 + 2 * step)
        page.wait_for_timeout(50)
    page.mouse.up()
    click(page, "draw-segment")                                # stop drawing
    run_job(page, "explain")
    assert page.inner_text("#info").startswith("Relevance of segment Region for tumor")
    keys, got = shares(page)
    assert keys == list(SEQUENCE_KEYS) and abs(got.sum() - 1.0) < 1e-6
    assert page.is_disabled("#cancel") and not page.is_disabled("#explain")


def test_cancel_leaves_no_result_and_the_page_works(page, files):
    page.fill("#case-dir", files["good"])
    click(page, "load-case")
    page.wait_for_function("document.querySelector('#case-name').textContent === 'case_good'")
    assert error_text(page) == ""
    set_model(page, "bundled")
    page.click("#sequence-relevance")
    page.wait_for_function("document.querySelector('#status').textContent.includes('running')")
    page.click("#cancel")
    wait_idle(page, timeout=30_000)
    page.wait_for_function("document.querySelector('#log').textContent.includes('cancelled')")
    page.wait_for_timeout(1000)
    assert page.query_selector_all("#shares tr.share-row") == []
    assert page.get_attribute("#progress", "data-value") == "0"
    assert not any("relevance" in n for n in os.listdir(files["out"]) if n.startswith("case_good"))
    # the page works afterwards
    load_phantom(page)
    set_model(page, files["tiny"])
    run_job(page, "segment")
    assert "predicted tumor voxels" in page.inner_text("#info")


def test_bad_input_shows_one_line_and_the_page_keeps_working(page, files):
    load_phantom(page)
    # a case folder lacking a sequence: named in the banner, nothing of it loaded
    page.fill("#case-dir", files["broken"])
    click(page, "load-case")
    page.wait_for_selector("#error", state="visible")
    msg = error_text(page)
    assert "missing sequence(s) T2" in msg and files["broken"] in msg and "Traceback" not in msg
    assert "phantom" in page.inner_text("#case-name")
    shot(page, files, "broken_case.png")
    # a folder that does not exist
    page.fill("#case-dir", os.path.join(files["root"], "no_such_case"))
    click(page, "load-case")
    page.wait_for_function("document.querySelector('#error').textContent.includes('does not exist')")
    # a model file that does not load: the job fails with a message naming it, nothing is written
    before = sorted(os.listdir(files["out"])) if os.path.isdir(files["out"]) else []
    set_model(page, files["broken_model"])
    click(page, "segment")
    page.wait_for_function("document.querySelector('#error').textContent.includes('could not be loaded')")
    msg = error_text(page)
    assert f"model file {files['broken_model']} could not be loaded" in msg and "Traceback" not in msg, msg
    assert (sorted(os.listdir(files["out"])) if os.path.isdir(files["out"]) else []) == before
    # and the page still works
    set_model(page, files["tiny"])
    run_job(page, "segment")
    assert "predicted tumor voxels" in page.inner_text("#info")
