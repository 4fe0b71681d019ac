"""`irdiff demo` in real headless Chromium (Debian's /usr/bin/chromium driven by the playwright package; never
`playwright install`). Skips where either is missing. The screenshot goes to $IRDIFF_ARTIFACTS (CI sets it)
or the test's tmp folder; the path is printed."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from test_demo import smooth_image, tiny_model_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """`irdiff demo` on a free loopback port with two tiny diffusion models (SR3 and RDDM). One test uses it:
    under pytest-xdist a second test could land on another worker and start a second demo and browser."""
    root = tmp_path_factory.mktemp("browser_models")
    models = [tiny_model_dir(root, "sr3"), tiny_model_dir(root, "rddm")]
    cmd = [sys.executable, "-m", "irdiff.cli", "demo", "--port", "0"]
    for m in models:
        cmd += ["--model", str(m)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # "irdiff demo: serving http://127.0.0.1:PORT/ ..." once it listens
        match = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        assert match, f"the demo did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
        print(f"\ndemo started in {time.perf_counter() - t0:.1f} s: {line.strip()}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def artifacts(tmp_path):
    folder = Path(os.environ.get("IRDIFF_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test artifacts: {folder}")
    return folder


def test_restore_in_the_browser(browser, demo_url, artifacts, tmp_path):
    host = urlsplit(demo_url).netloc
    clean = smooth_image(40, 48)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    (tmp_path / "notes.txt").write_text("not a picture\n")

    page = browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
    requests, console = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: console.append(m.text))
    page.goto(demo_url)
    page.wait_for_selector("body[data-state=ready]", state="attached")

    # upload a noisy image; model A: tiny SR3, 2 DDIM steps; model B: tiny RDDM, 2 steps, on the same input
    page.set_input_files("#file", str(tmp_path / "noisy.png"))
    page.select_option("#model-a", "m0")
    page.fill("#steps-a", "2")
    page.select_option("#model-b", "m1")
    page.fill("#steps-b", "2")
    t0 = time.perf_counter()
    page.click("#run")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached", timeout=60_000)
    seconds = time.perf_counter() - t0
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#error")
    print(f"2-step restores with 2 models, upload to both results shown: {seconds:.2f} s")
    assert page.eval_on_selector("#progress-a", "p => p.value") == 1
    assert page.eval_on_selector("#progress-b", "p => p.value") == 1
    for img in ("#img-a", "#img-b", "#img-input", "#compare-after"):
        assert page.eval_on_selector(img, "i => [i.naturalWidth, i.naturalHeight]") == [48, 40], img
    assert "tiny_sr3" in page.text_content("#cap-a") and "tiny_rddm" in page.text_content("#cap-b")
    page.fill("#compare-range", "30")
    page.dispatch_event("#compare-range", "input")
    assert "inset(0px 0px 0px 30%)" in page.eval_on_selector("#compare-after", "i => i.style.clipPath")

    with page.expect_download() as info:
        page.click("#download-a")
    saved = tmp_path / "restored.png"
    info.value.save_as(saved)
    out = np.asarray(Image.open(saved))
    assert out.shape == noisy.shape and np.abs(out.astype(int) - noisy).mean() > 1
    page.screenshot(path=str(artifacts / "demo_browser.png"), full_page=True)

    # a file that is not an image: the server's one-line error is shown on the page
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.select_option("#model-b", "")
    page.click("#run")
    page.wait_for_selector("body[data-state=error]", state="attached", timeout=30_000)
    assert page.is_visible("#error")
    assert page.text_content("#error") == "notes.txt: not an image (unrecognised format)"
    page.screenshot(path=str(artifacts / "demo_browser_error.png"))

    # a bundled sample, degraded first (sigma-25 noise), so that PSNR / SSIM against it are shown
    page.set_input_files("#file", [])
    page.select_option("#sample", "sample_clean")
    page.check("#degrade")
    page.fill("#noise", "25")
    page.select_option("#model-a", "m1")
    page.fill("#steps-a", "2")
    page.click("#run")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached", timeout=60_000)
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#error")
    assert page.is_visible("#fig-clean") and not page.is_visible("#error")
    # about 20.2 dB before restoring (clipping at 0 / 255 lowers the noise a little)
    psnr_in = float(re.search(r"PSNR ([\d.]+) dB", page.text_content("#cap-input")).group(1))
    assert 20 < psnr_in < 21.5
    assert re.search(r"PSNR [\d.]+ dB, SSIM 0\.\d{4}", page.text_content("#cap-a"))

    outside = [u for u in requests if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).netloc != host]
    assert requests and not outside, f"requests that left {host}: {outside}"
    assert not [m for m in console if "Content Security Policy" in m], console  # the page's own CSP holds
    page.close()
