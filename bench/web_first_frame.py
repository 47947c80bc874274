"""Start-to-first-frame time of ``liver-lrp web`` in headless Chromium, and the README's screenshot.

    python bench/web_first_frame.py [--shot docs/web_page.png] [--shape 24 64 64]

Prints: server start until it answers HTTP, page load until the first Slicer view frame arrives, the sum
(command start to first frame), then Load phantom, Segment and Sequence relevance (bundled model) times.
The screenshot (after sequence relevance) is quantised to 256 colours to stay small.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _test_web():
    """Testing/test_web.py (its browser helpers), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_web", os.path.join(ROOT, "Testing", "test_web.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    from playwright.sync_api import sync_playwright

    test_web = _test_web()
    CHROMIUM_ARGS, load_phantom, run_job = test_web.CHROMIUM_ARGS, test_web.load_phantom, test_web.run_job

    ap = argparse.ArgumentParser()
    ap.add_argument("--shot", default=None)
    ap.add_argument("--shape", type=int, nargs=3, default=(24, 64, 64))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "LiverTumorLRPLib", "web", "--port", str(port),
                             "--phantom-shape", *map(str, args.shape), "--output", os.path.join(tmp, "out")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        t_http = time.monotonic() - t0
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(os.path.join(tmp, "profile"),
                                                       executable_path=shutil.which("chromium"),
                                                       args=CHROMIUM_ARGS, headless=True,
                                                       viewport={"width": 1280, "height": 860})
            page = ctx.new_page()
            page.set_default_timeout(600_000)
            t1 = time.monotonic()
            page.goto(url)
            page.wait_for_selector("img.image-display-area")
            t_frame = time.monotonic() - t1
            print(f"server start -> HTTP: {t_http:.1f} s; page open -> first frame: {t_frame:.1f} s; "
                  f"command start -> first frame (browser launch included): {time.monotonic() - t0:.1f} s")
            for label, action in (("Load phantom", lambda: load_phantom(page)),
                                  ("Segment", lambda: run_job(page, "segment")),
                                  ("Sequence relevance", lambda: run_job(page, "sequence-relevance"))):
                t = time.monotonic()
                action()
                print(f"{label} ({'x'.join(map(str, args.shape))}, bundled model): {time.monotonic() - t:.1f} s")
            page.wait_for_timeout(3000)   # the views' full-quality frames
            if args.shot:
                raw = os.path.join(tmp, "shot.png")
                page.screenshot(path=raw)
                from PIL import Image

                Image.open(raw).convert("RGB").quantize(256).save(args.shot, optimize=True)
                print(f"screenshot: {args.shot} ({os.path.getsize(args.shot) // 1024} KB)")
            ctx.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
