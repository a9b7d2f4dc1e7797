"""Screenshots of the web view for the README (docs/web.png, docs/web-camera.png).

Runs the demo's pipeline (`mlink run scripts/demo.yaml --web`: the default zoo, a looped
sample clip, the `ours` policy at 33%), waits in headless Chromium (tests/browser.py:
Debian's chromium through Selenium) until the page shows a frame with executed AND
derived outputs, takes the grid and the camera page, and writes them as small PNGs
(256-colour palette).

    .venv/bin/python scripts/web_screenshot.py [--config scripts/demo.yaml] [--out docs]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser import chromium_available, start_chromium, wait_js

# A tile that shows at least one executed and one derived output with something in it (a count > 0 or a label).
BOTH = """
const lis = [...document.querySelectorAll(arguments[0])];
const full = (li) => { const v = li.querySelector('.value').textContent; return v && v !== '-' && !/^0( |$)/.test(v); };
return lis.some(li => li.classList.contains('o-executed') && full(li)) && lis.some(li => (li.classList.contains('o-linked') || li.classList.contains('o-held')) && full(li));
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_png(png: bytes, path: Path, width: int) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB, {img.width}x{img.height})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "scripts" / "demo.yaml"))
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--camera", default="bikes")
    ap.add_argument("--width", type=int, default=1100, help="width of the PNGs")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    why = chromium_available(install=True)
    if why:
        print(f"web_screenshot: {why}", file=sys.stderr)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlink = Path(sys.executable).parent / "mlink"
    run = subprocess.Popen([str(mlink), "run", a.config, "--web", f"127.0.0.1:{port}", "--quiet"], env={**os.environ})
    driver = None
    try:
        deadline = time.monotonic() + a.timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/api/cameras", timeout=5) as resp:
                    if any(c["frame"] is not None for c in json.loads(resp.read())["cameras"]):
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if run.poll() is not None or time.monotonic() > deadline:
                print("web_screenshot: the pipeline did not show a frame", file=sys.stderr)
                return 1
            time.sleep(1)
        driver = start_chromium(1280, 860)
        driver.get(base + "/")
        left = deadline - time.monotonic()
        wait_js(driver, "return [...document.querySelectorAll('.stats .phase')].some(p => p.textContent === 'budgeted')", "the budgeted phase",
                timeout=left)
        try:  # let the governor's window leave the cold start behind: budget used within its limit
            wait_js(driver, "return document.querySelector('.budget .fill') && !document.querySelector('.budget .fill.over')",
                    "the budget within its limit", timeout=90)
        except AssertionError as exc:
            print(f"web_screenshot: {str(exc).splitlines()[0]}; taking it anyway", file=sys.stderr)
        wait_js(driver, BOTH.replace("arguments[0]", json.dumps(".tile .models li")), "executed and derived outputs in a tile",
                timeout=max(30.0, deadline - time.monotonic()))
        time.sleep(0.6)  # the frame that goes with them
        small_png(driver.get_screenshot_as_png(), a.out / "web.png", a.width)
        driver.set_window_size(1280, 1000)
        driver.get(f"{base}/camera/{a.camera}")
        wait_js(driver, "return +(document.getElementById('strip').dataset.frames || 0) >= 60", "a full schedule strip", timeout=120)
        wait_js(driver, BOTH.replace("arguments[0]", json.dumps("#values tbody tr")),
                "executed and derived outputs in the table", timeout=max(30.0, deadline - time.monotonic()))
        time.sleep(0.6)
        small_png(driver.get_screenshot_as_png(), a.out / "web-camera.png", a.width)
    finally:
        if driver is not None:
            driver.quit()
        run.send_signal(signal.SIGINT)
        run.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
