"""Make docs/demo.png: a screenshot of `irdiff demo` in headless Chromium (the README's "Web demo" section).

    python docs/make_demo_screenshot.py [--data ../shared/data]

Starts the demo with the bundled models on a free loopback port, uploads a 256-px crop of Kodak24's
kodim23 (released by Kodak for unrestricted use), degrades it with AWGN sigma 25 and restores it with
the bundled `denoise` model. Needs Debian's /usr/bin/chromium and the playwright package. Prints the
demo's start-up time and the time of the restore as the page saw it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("IRDIFF_DATA", str(HERE.parents[1] / "shared" / "data")))
    ap.add_argument("--out", default=str(HERE / "demo.png"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    Image.open(Path(args.data) / "Kodak24" / "kodim23.png").crop((250, 60, 506, 316)).save(tmp / "kodim23_crop.png")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "irdiff.cli", "demo", "--port", "0"], cwd=HERE.parent,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"serving (http://\S+/)", line).group(1)
        print(f"start-up: {time.perf_counter() - t0:.1f} s to listening ({line.strip()})")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]", state="attached")
            page.set_input_files("#file", str(tmp / "kodim23_crop.png"))
            page.check("#degrade")
            page.fill("#noise", "25")
            page.select_option("#model-a", label="denoise (regression)")
            t1 = time.perf_counter()
            page.click("#run")
            page.wait_for_selector("body[data-state=done]", state="attached", timeout=120_000)
            print(f"restore: {time.perf_counter() - t1:.2f} s from the click to the results shown; "
                  f"{page.text_content('#state-a')}")
            page.fill("#compare-range", "45")
            page.dispatch_event("#compare-range", "input")
            shot = tmp / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        Image.open(shot).convert("RGB").save(args.out, optimize=True)  # lossless: the restored pixels stay as they are
        outside = [u for u in requests if not u.startswith(url) and not u.startswith(("blob:", "data:"))]
        print(f"{len(requests)} requests, {len(outside)} outside {url}: {outside}")
        print(f"wrote {args.out}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
