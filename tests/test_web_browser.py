"""The web view in a real browser: headless Debian Chromium driven by Selenium (tests/browser.py).

A real pipeline (`mlink run --web`) plays two looping clips as live cameras under a budgeted
policy; the tests open its pages and check what a user sees: a tile per camera with the
latest annotated frame, its state, frames/s, budget and the overlay legend, derived outputs
marked as such, the camera page's schedule strip moving without a reload, a clear 404 for
an unknown camera. `mlink web` on its own rides out a Redis outage: the page says so and
recovers. Chromium is installed by scripts/install_browser_deps.sh (scripts/test.sh runs
it); without it these tests FAIL. Set MLINK_WEB_SHOTS=DIR to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from browser import chromium_available, element_box, image_spread, screenshot, start_chromium, wait_js
from conftest import CHEAP_MODELS, clip_path, mlink_cmd, write_config
from redis_private import PrivateRedis, free_port

CAMERAS = {"lobby": "intel_preview_people-detection.gif", "door": "intel_one-by-one-person-detection.mp4"}


def keep(path: Path) -> None:
    """Copy a screenshot to $MLINK_WEB_SHOTS when set (how the README's picture is refreshed)."""
    out = os.environ.get("MLINK_WEB_SHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def live_config(path: Path, **scheduler: Any) -> Path:
    return write_config(path, {
        "defaults": {"models": CHEAP_MODELS, "mode": "live", "loop": True, "fps": 5, "resize": 320},
        "scheduler": {"policy": "ours", "budget": "40%", "cold_start_frames": 10, "period_frames": 40, **scheduler},
        "cameras": {name: {"source": str(clip_path(clip))} for name, clip in CAMERAS.items()},
    })


class Started:
    """A command started in the background, its log, and how to stop it like Ctrl-C."""

    def __init__(self, args: list[str | Path], log: Path) -> None:
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([*mlink_cmd(), *map(str, args)], stdout=f, stderr=subprocess.STDOUT, text=True)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> tuple[int, str, list[psutil.Process]]:
        children = psutil.Process(self.proc.pid).children(recursive=True) if self.proc.poll() is None else []
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code, self.text(), children


def wait_for_frames(base: str, started: Started, cams: list[str], timeout: float = 120) -> dict[str, Any]:
    """Until /api/cameras shows a previewed frame for every camera in ``cams``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert started.proc.poll() is None, started.text()
        try:
            code, last = get_json(base + "/api/cameras")
        except (urllib.error.URLError, ConnectionError):
            code = 0
        if code == 200 and all(any(c["name"] == n and c["frame"] is not None for c in last["cameras"]) for n in cams):
            return last
        time.sleep(0.5)
    raise AssertionError(f"no frames for {cams} within {timeout:.0f}s: {last}\n{started.text()}")


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    why = chromium_available(install=True)
    if why is not None:
        pytest.fail(f"headless Chromium is not available: {why} (`bash scripts/test.sh` installs chromium and chromium-driver)",
                    pytrace=False)
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def live_web(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[str]:
    """`mlink run --web` on two looping live cameras, budgeted: the base URL of its web view."""
    r = redis.Redis.from_url(redis_server)
    r.flushdb()
    tmp = tmp_path_factory.mktemp("web")
    port = free_port()
    t0 = time.monotonic()
    started = Started(["run", live_config(tmp / "live.yaml"), "--redis", redis_server, "--web", f"127.0.0.1:{port}", "--quiet"],
                      tmp / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_frames(base, started, list(CAMERAS))
        print(f"\nweb view up with frames from both cameras {time.monotonic() - t0:.1f}s after `mlink run --web`")
        assert f"mlink: web view on http://127.0.0.1:{port}/" in started.text()
        yield base
    finally:
        code, out, children = started.stop()
    assert code == 0 and "Traceback" not in out, out
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"  # the web child included
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/api/cameras", timeout=5)


TILE_FRAME = """(function (cam) {
  const t = document.querySelector('.tile[data-camera="' + cam + '"]');
  const img = t && t.querySelector('img.frame');
  return img && !img.hidden && img.complete && img.naturalWidth > 0 ? t.dataset.frame : null;
})"""


def tile_frame(cam: str, other_than: str | None = None) -> str:
    """JavaScript: the frame index a tile shows once its image has loaded (and differs from ``other_than``)."""
    expr = f"{TILE_FRAME}({json.dumps(cam)})"
    if other_than is None:
        return f"return {expr};"
    return f"const f = {expr}; return f !== null && f !== {json.dumps(other_than)} ? f : null;"


def test_grid_shows_every_camera_with_its_annotated_frame(chrome: Any, live_web: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    chrome.get(live_web + "/")
    for cam in CAMERAS:
        wait_js(chrome, tile_frame(cam), f"a frame in the {cam} tile")
    print(f"\ngrid: both tiles showed a frame {time.monotonic() - t0:.1f}s after opening /")
    tiles = chrome.execute_script("""return [...document.querySelectorAll('.tile')].map(t => ({
        name: t.dataset.camera, state: t.querySelector('.state').textContent, fps: t.querySelector('.fps').textContent,
        budget: t.querySelector('.budget-text').textContent,
        models: [...t.querySelectorAll('.models li')].map(li => li.dataset.model)}))""")
    assert sorted(t["name"] for t in tiles) == sorted(CAMERAS)
    for t in tiles:
        assert t["state"] == "started", t
        assert t["fps"].endswith("frames/s"), t
        assert t["models"] == CHEAP_MODELS, t
        assert t["budget"].startswith("ours 40%"), t
    legend = chrome.find_element("id", "overlay-legend").text
    assert "executed" in legend and "linked" in legend and "held" in legend and "solid" in legend and "dashed" in legend
    # Once the cold start has trained the links, the tiles show derived outputs as such, and the
    # budget as measured use against its limit.
    wait_js(chrome, "return document.querySelector('.tile .models li.o-linked, .tile .models li.o-held')",
            "a derived (linked or held) output in a tile", timeout=120)
    wait_js(chrome, "return [...document.querySelectorAll('.budget-text')].some(b => / of [0-9.]+ ms per frame/.test(b.textContent))",
            "a budget shown as used of limit")
    # The frames move without a reload (server-sent events).
    first = chrome.execute_script(tile_frame("lobby"))
    wait_js(chrome, tile_frame("lobby", other_than=first), "a newer frame in the lobby tile")
    same = "return [...document.querySelectorAll('.tile')].every(t => t.querySelector('.models').dataset.frame === t.dataset.frame)"
    for _ in range(10):  # each tile's list describes the frame it shows
        assert chrome.execute_script(same)
        time.sleep(0.3)
    png = screenshot(chrome, tmp_path / "web-grid.png")
    keep(png)
    data = png.read_bytes()
    assert image_spread(data) > 10, "the screenshot is blank"
    assert image_spread(data, element_box(chrome, '.tile[data-camera="door"] img.frame')) > 10, "the door tile's frame is uniform"


def test_camera_page_shows_the_schedule_strip_moving(chrome: Any, live_web: str, tmp_path: Path) -> None:
    chrome.get(live_web + "/camera/door")
    shown = wait_js(chrome, "const i = document.getElementById('live'); return i.complete && i.naturalWidth > 0 ? i.dataset.frame : null",
                    "the annotated frame")
    first = int(wait_js(chrome, "return document.getElementById('strip').dataset.lastFrame", "the schedule strip"))
    later = int(wait_js(chrome, f"const f = document.getElementById('strip').dataset.lastFrame; return f && +f > {first} ? f : null",
                        "the strip to move on"))
    assert later > first
    wait_js(chrome, f"const f = document.getElementById('live').dataset.frame; return f && f !== {json.dumps(shown)}", "the frame to move on")
    assert chrome.find_element("id", "mjpeg").get_attribute("href").endswith("/camera/door/stream.mjpg")
    rows = chrome.execute_script("return [...document.querySelectorAll('#strip .row[data-model]')].map(r => r.dataset.model)")
    assert rows == CHEAP_MODELS
    wait_js(chrome, "return document.querySelectorAll('#strip .cell.o-linked, #strip .cell.o-held').length > 0 "
                    "&& document.querySelectorAll('#strip .cell.o-executed').length > 0", "executed and derived cells in the strip",
            timeout=120)
    values = chrome.execute_script("return [...document.querySelectorAll('#values tbody tr')].map(r => [r.dataset.model, r.querySelector('.origin').textContent])")
    assert [v[0] for v in values] == CHEAP_MODELS
    assert all(v[1].split()[0] in ("executed", "linked", "held", "missing") for v in values), values
    assert "ours 40%" in chrome.find_element("css selector", "aside .budget-text").text
    # The table describes the frame shown (same record), not a newer one.
    same = "return document.querySelector('#values tbody').dataset.frame === document.getElementById('live').dataset.frame"
    for _ in range(10):
        assert chrome.execute_script(same)
        time.sleep(0.3)
    png = screenshot(chrome, tmp_path / "web-camera.png")
    keep(png)
    assert image_spread(png.read_bytes(), element_box(chrome, "#live")) > 10, "the live view is uniform"


def test_unknown_camera_is_a_clear_404(chrome: Any, live_web: str) -> None:
    chrome.get(live_web + "/camera/nope")
    text = chrome.find_element("id", "error").text
    assert text == "unknown camera 'nope' (known cameras: door, lobby)", text
    code, body = get_json(live_web + "/api/camera/nope/records?count=3")
    assert code == 404 and body == {"error": "unknown camera 'nope' (known cameras: door, lobby)"}


BANNER = "const b = document.getElementById('banner'); return b.hidden ? null : b.textContent"


def test_mlink_web_says_redis_is_away_and_recovers(chrome: Any, tmp_path: Path) -> None:
    """`mlink web` next to a pipeline (another process) on a Redis that is killed and restarted
    (empty: the harshest case): the page says Redis is unreachable, keeps the last tiles, and
    shows live frames again once Redis and the pipeline are back."""
    srv = PrivateRedis().start()
    port = free_port()
    cfg = write_config(tmp_path / "one.yaml", {
        "defaults": {"models": CHEAP_MODELS, "mode": "live", "loop": True, "fps": 5, "resize": 320},
        "cameras": {"lobby": {"source": str(clip_path(CAMERAS["lobby"]))}},
    })
    run = Started(["run", cfg, "--redis", srv.url, "--quiet"], tmp_path / "run.log")
    web = Started(["web", "--redis", srv.url, "--bind", f"127.0.0.1:{port}"], tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_frames(base, run, ["lobby"])
        chrome.get(base + "/")
        before = wait_js(chrome, tile_frame("lobby"), "a frame in the lobby tile")
        srv.kill()
        t_down = time.monotonic()
        msg = wait_js(chrome, BANNER, "the page to say Redis is unreachable", timeout=20)
        print(f"\nbanner {time.monotonic() - t_down:.1f}s after Redis was killed: {msg}")
        assert msg.startswith("Redis unreachable (redis://127.0.0.1:") and "Retrying" in msg
        assert chrome.execute_script("return document.querySelectorAll('.tile').length") == 1  # the last known tile stays
        code, body = get_json(base + "/api/cameras")
        assert code == 503 and body["error"].startswith(f"redis {srv.url} unreachable: "), body
        time.sleep(2)
        srv.start()
        t_up = time.monotonic()
        wait_js(chrome, "return document.getElementById('banner').hidden", "the banner to go once Redis is back", timeout=20)
        after = wait_js(chrome, tile_frame("lobby", other_than=before), "a new frame once the pipeline is back", timeout=60)
        print(f"banner gone and a new frame ({before} -> {after}) {time.monotonic() - t_up:.1f}s after Redis restarted")
        assert web.proc.poll() is None, web.text()
    finally:
        wcode, wout, _ = web.stop()
        rcode, rout, _ = run.stop()
        srv.close()
    assert wcode == 0 and "Traceback" not in wout, wout
    assert f"mlink: web view on http://127.0.0.1:{port}/, reading {srv.url}" in wout, wout
    assert rcode == 0 and "Traceback" not in rout, rout
