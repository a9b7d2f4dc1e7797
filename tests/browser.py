"""Headless Chromium for the web view's browser tests: Debian's ``chromium`` driven by
Selenium through Debian's ``chromedriver`` (versions matched by Debian; nothing is
downloaded at run time, Selenium Manager is never asked).

Not a fixture module: tests import it. ``ensure_chromium`` installs the two packages
with ``scripts/install_browser_deps.sh`` when they are missing (root or sudo and apt);
the tests FAIL, never skip, when that is not possible.
"""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_browser_deps.sh"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium_available(install: bool = False) -> str | None:
    """None when Chromium and its driver are there (installed now if ``install``), else why not."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if install:
        p = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
        if p.returncode == 0 and CHROMIUM.exists() and CHROMEDRIVER.exists():
            return None
        return f"{INSTALL_SCRIPT.relative_to(REPO_ROOT)} failed: {(p.stderr or p.stdout).strip()[-500:]}"
    return f"{CHROMIUM} or {CHROMEDRIVER} is missing"


def start_chromium(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium WebDriver (``--no-sandbox``: the tests may run as root)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def wait_js(driver: Any, script: str, what: str, timeout: float = 60.0, poll: float = 0.25) -> Any:
    """Poll a JavaScript expression (``return ...``) until it is truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = driver.execute_script(script)
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"browser: timed out after {timeout:.0f}s waiting for {what} (last value {last!r}); page text:\n"
                         + str(driver.execute_script("return document.body ? document.body.innerText : ''"))[:2000])


def screenshot(driver: Any, path: Path) -> Path:
    path.write_bytes(driver.get_screenshot_as_png())
    return path


def image_spread(png: bytes, box: tuple[int, int, int, int] | None = None) -> float:
    """Standard deviation of the grey levels of a PNG (or of ``box`` = left, top, right, bottom
    in it): about 0 for a blank or uniform picture."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    if box is not None:
        img = img.crop(box)
    return float(np.asarray(img, np.float32).std())


def element_box(driver: Any, css: str) -> tuple[int, int, int, int]:
    r = driver.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                              "return [r.left, r.top, r.right, r.bottom];", css)
    return int(r[0]), int(r[1]), int(r[2]), int(r[3])
