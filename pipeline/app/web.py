"""The live web view: ``mlink web`` and ``mlink run --web``.

It reads only Redis (the camera registry, ``status:{cam}``, ``results:{cam}``,
``metrics:{cam}`` and the bounded ``preview:{cam}`` hash the workers write: the
latest recorded frame's JPEG with its record), so it runs on any host next to any
pipeline, any number of times. A Starlette app served by uvicorn; plain HTML and a
little JavaScript from ``static/``, no build step.

=================================  ==========================================================
``/``                              camera grid: latest annotated frame, state, frames/s, lag,
                                   budget used vs limit, each model's origin and value
``/camera/{name}``                 the live view large, the schedule strip over the last
                                   frames (executed / linked / held per model), latest values
``/camera/{name}/latest.jpg``      the annotated latest frame (a placeholder before the first);
                                   ``?frame=N``: that frame if a page was just told about it
``/camera/{name}/stream.mjpg``     the annotated frames as MJPEG
``/api/cameras``                   JSON: what the grid shows
``/api/camera/{name}/records``     JSON: the last ``count`` records (1..1000, default 50)
``/events``                        server-sent events for the grid (the same JSON), every 0.5 s
``/camera/{name}/events``          the same for a camera page, with the new strip entries
=================================  ==========================================================

Drawing happens here, on demand (:mod:`pipeline.app.annotate`), and only for frames
someone looks at; the last annotated JPEG per camera is cached in this process. A page
shows the frame and the numbers of the same record: the event it got names the frame,
the last few previews that events announced are kept here (4 per camera), and the page
redraws its table when that frame's image has loaded.

Failure modes: an unknown camera is a 404 naming the known ones; a camera without
frames yet gets a placeholder; while Redis is unreachable the JSON endpoints answer
503 with the reason, the event streams carry ``redis.ok = false`` (the page shows a
banner and keeps the last tiles, greyed) and everything recovers when Redis returns.
A port already in use is a one-line error before anything starts. Loopback by default.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import redis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.app.annotate import decode_jpeg, draw, encode_jpeg, model_colors, origin_text, output_text, placeholder
from pipeline.errors import UserError
from pipeline.exitcodes import ExitCode
from pipeline.keys import CAMERAS_KEY, camera_key, preview_key, results_key, status_key
from pipeline.metrics import RedisMetricsCollector
from pipeline.redis_conn import REDIS_DOWN, RedisUnavailable, connect, first_line, redact

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_RECORDS = 1000
STRIP_FRAMES = 60  # frames the camera page's schedule strip shows
Record = dict[str, Any]


# ------------------------------------------------------------------ binding
def parse_bind(value: str, option: str = "--bind") -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); loopback when no host is given."""
    v = value.strip()
    host, _, port = v.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535 or " " in host:
        hint = f" ({option} takes an optional HOST:PORT: put it after the config file)" if v.endswith((".yaml", ".yml")) else ""
        raise UserError(f"{option} {value!r}: expected HOST:PORT or PORT, e.g. 127.0.0.1:8080{hint}")
    return host, int(port)


def web_url(host: str, port: int) -> str:
    """The address to open; a wildcard host is shown as this machine's name, with a warning."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    url = f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"
    return url if host in LOOPBACK else f"{url} (no authentication: whoever reaches this address sees the cameras)"


def bind_socket(host: str, port: int, option: str = "--bind") -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"{option} {host}:{port}: unknown host ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == 98 else (exc.strerror or str(exc))
        raise UserError(f"{option} {host}:{port}: cannot listen: {why} (choose another with {option} HOST:PORT)") from None
    return sock


def check_bind(host: str, port: int, option: str) -> tuple[str, int]:
    """Fail now (one line) if ``host:port`` cannot be served; returns it with port 0 resolved."""
    with bind_socket(host, port, option) as s:
        return host, int(s.getsockname()[1])


# -------------------------------------------------------------------- board
class RedisAway(Exception):
    """Redis cannot be reached right now: the page says so and the next call retries."""


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class Board:
    """Everything the pages show, read from Redis; thread-safe (endpoints call it from worker threads).

    The grid's summary is cached for ``ttl_s`` so any number of open pages cost Redis
    the same; frames/s come from the processed/decoded counters seen over the last
    few seconds; the last annotated JPEG per camera is kept until a newer frame exists.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, ttl_s: float = 0.4) -> None:
        self.url, self.clock, self.ttl_s = url, clock, ttl_s
        self._r: redis.Redis | None = None
        self._metrics: RedisMetricsCollector | None = None
        self._lock = threading.Lock()
        self._summary: tuple[float, dict[str, Any]] | None = None
        self._last_cameras: list[dict[str, Any]] = []
        self._history: dict[str, deque[tuple[float, int, int]]] = {}
        self._frames: dict[str, tuple[int, bytes]] = {}  # camera -> the last drawn (frame, JPEG)
        self._seen: dict[str, deque[tuple[int, bytes, str]]] = {}  # camera -> the last previews a summary read (frame, JPEG, record)
        self._draw_locks: dict[str, threading.Lock] = {}

    # -- Redis, with every connection failure turned into RedisAway
    def _client(self) -> redis.Redis:
        if self._r is None:
            try:
                self._r = connect(self.url, timeout=2.0)
            except RedisUnavailable as exc:
                raise RedisAway(str(exc).partition(f"{redact(self.url)}: ")[2] or str(exc)) from None
            self._metrics = RedisMetricsCollector(self._r, clock=self.clock)
        return self._r

    def _call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        try:
            return fn(self._client())
        except REDIS_DOWN as exc:
            raise RedisAway(first_line(exc)) from None

    def check(self) -> str | None:
        """None when Redis answers, else why not (a bad URL or password is a UserError)."""
        try:
            self._call(lambda r: r.ping())
            return None
        except RedisAway as exc:
            return str(exc)

    # -- cameras
    def camera_names(self) -> list[str]:
        return sorted(_s(c) for c in self._call(lambda r: r.smembers(CAMERAS_KEY)))

    def known(self, cam: str) -> bool:
        return bool(self._call(lambda r: r.sismember(CAMERAS_KEY, cam) or r.exists(camera_key(cam))))

    def unknown_message(self, cam: str) -> str:
        names = self.camera_names()
        return f"unknown camera {cam!r} (known cameras: {', '.join(names) or 'none'})"

    def summary(self) -> dict[str, Any]:
        """What the grid shows; never raises: while Redis is away, ``redis.ok`` is false
        and the cameras are the last ones seen (``stale``)."""
        now = self.clock()
        with self._lock:
            if self._summary is not None and now - self._summary[0] < self.ttl_s:
                return self._summary[1]
            try:
                cams = self._call(lambda r: self._read_cameras(r, now))
                out = {"time": now, "redis": {"ok": True, "url": redact(self.url)}, "cameras": cams, "stale": False}
                self._last_cameras = cams
            except RedisAway as exc:
                out = {"time": now, "redis": {"ok": False, "url": redact(self.url), "error": str(exc)},
                       "cameras": self._last_cameras, "stale": True}
            self._summary = (now, out)
            return out

    def camera(self, cam: str) -> dict[str, Any] | None:
        s = self.summary()
        return next((c for c in s["cameras"] if c["name"] == cam), None)

    def _read_cameras(self, r: redis.Redis, now: float) -> list[dict[str, Any]]:
        assert self._metrics is not None
        snap = self._metrics.snapshot()
        out = []
        for cam, m in snap.items():
            pipe = r.pipeline(transaction=False)
            pipe.xrevrange(status_key(cam), count=1)
            pipe.hmget(preview_key(cam), "frame", "json", "jpeg")
            pipe.xrevrange(results_key(cam), count=1)
            pipe.hget(camera_key(cam), "failed")
            last_ev, (pframe, pjson, pjpeg), last_res, failed = pipe.execute()
            if pframe is not None and pjpeg:
                # Kept so that the page's image of this frame is drawn from this very record, even
                # after the preview has moved on (the page asks for latest.jpg?frame=N).
                seen = self._seen.setdefault(cam, deque(maxlen=4))
                if not seen or seen[-1][0] != int(pframe):
                    seen.append((int(pframe), bytes(pjpeg), _s(pjson or b"{}")))
            ev = json.loads(last_ev[0][1][b"json"]) if last_ev else {}
            rec = json.loads(pjson) if pjson else (json.loads(last_res[0][1][b"json"]) if last_res else None)
            newest = json.loads(last_res[0][1][b"json"]) if last_res else None
            out.append(self._tile(cam, m, ev, rec, newest, int(pframe) if pframe is not None else None,
                                  _s(failed) if failed else None, now))
        return out

    def _fps(self, cam: str, now: float, processed: int, decoded: int) -> tuple[float | None, float | None]:
        h = self._history.setdefault(cam, deque(maxlen=40))
        if h and (processed < h[-1][1] or decoded < h[-1][2]):
            h.clear()  # counters reset (a fresh replay, Redis restarted empty)
        h.append((now, processed, decoded))
        while len(h) > 2 and now - h[1][0] >= 5.0:
            h.popleft()
        t0, p0, d0 = h[0]
        if now - t0 < 0.8:
            return None, None
        return (processed - p0) / (now - t0), (decoded - d0) / (now - t0)

    def _tile(self, cam: str, m: dict[str, Any], ev: dict[str, Any], rec: Record | None, newest: Record | None,
              frame: int | None, failed: str | None, now: float) -> dict[str, Any]:
        fps, dfps = self._fps(cam, now, m["processed"], m["decoded"])
        totals = {"executed": 0, "linked": 0, "held": 0, "missing": 0}
        for k, n in m["outputs"].items():
            origin = k.partition(":")[0]
            totals[origin] = totals.get(origin, 0) + n
        tile: dict[str, Any] = {
            "name": cam, "state": ev.get("event") or "registered", "reason": ev.get("reason"),
            "since_s": round(now - float(ev["time"]), 1) if "time" in ev else None, "failed": failed,
            "frame": frame, "fps": None if fps is None else round(fps, 2), "decoded_fps": None if dfps is None else round(dfps, 2),
            "lag_s": round(m["lag_s"], 2), "lag_frames": m["lag_frames"], "processed": m["processed"], "decoded": m["decoded"],
            "dropped": m["dropped"], "skipped": m["skipped"], "totals": totals,
            "record_frame": None, "phase": None, "policy": None, "budget_label": None, "budget": None, "models": [], "latency_ms": None,
            "last_record_age_s": round(now - float(newest["wall"]), 1) if newest else None,
        }
        if rec is None:
            return tile
        pol = rec.get("policy") or {}
        outputs = rec.get("outputs") or {}
        colors = model_colors(list(outputs))
        rates = pol.get("rates") or {}
        tile.update(
            record_frame=rec.get("frame"), phase=pol.get("phase"), policy=pol.get("name"), budget_label=pol.get("budget"),
            latency_ms=(rec.get("latency_ms") or {}).get("total"),
            models=[{"name": name, "color": colors[name], "origin": o.get("origin", "missing"), "kind": o.get("kind"),
                     "text": output_text(o), "origin_text": origin_text(o), "confidence": o.get("confidence"),
                     "via": o.get("via"), "rate": rates.get(name)} for name, o in outputs.items()],
        )
        if "limit" in pol and "used" in pol:
            tile["budget"] = {"label": pol.get("budget"), "resource": pol.get("resource"), "used": pol["used"], "limit": pol["limit"]}
        return tile

    # -- records
    def records(self, cam: str, count: int) -> list[Record]:
        items = self._call(lambda r: r.xrevrange(results_key(cam), count=count))
        return [json.loads(f[b"json"]) for _, f in reversed(items) if b"json" in f]

    def strip(self, cam: str, after: str | None, count: int = STRIP_FRAMES) -> tuple[list[dict[str, Any]], str | None]:
        """Compact schedule entries (frame, phase, per model origin and confidence) of the
        records after stream id ``after`` (None: the last ``count``); returns them and the new id."""
        def read(r: redis.Redis) -> list[Any]:
            if after is None:
                return list(reversed(r.xrevrange(results_key(cam), count=count)))
            return list(r.xrange(results_key(cam), min=f"({after}", count=500))

        items = self._call(read)
        out = []
        for eid, f in items:
            after = _s(eid)
            if b"json" not in f:
                continue
            rec = json.loads(f[b"json"])
            out.append({"frame": rec["frame"], "phase": (rec.get("policy") or {}).get("phase"),
                        "o": {m: [o.get("origin", "missing"), o.get("confidence")] for m, o in (rec.get("outputs") or {}).items()}})
        return out, after

    # -- frames
    def annotated(self, cam: str, frame: int | None = None) -> tuple[int, bytes] | None:
        """(frame, JPEG) with its record drawn on it: ``frame`` if a recent summary saw it (what the
        page shows beside it), else the latest previewed frame; None before the first."""
        with self._lock:
            lock = self._draw_locks.setdefault(cam, threading.Lock())
            wanted = next((p for p in self._seen.get(cam, ()) if p[0] == frame), None) if frame is not None else None
        with lock:  # one drawing per camera at a time, whoever asks
            cached = self._frames.get(cam)
            if wanted is None:
                raw = self._call(lambda r: r.hget(preview_key(cam), "frame"))
                if raw is None:
                    return None
                if cached is not None and cached[0] == int(raw):
                    return cached
                f, jpeg, rec = self._call(lambda r: r.hmget(preview_key(cam), "frame", "jpeg", "json"))
                if f is None or not jpeg:
                    return cached
                wanted = (int(f), bytes(jpeg), _s(rec or b"{}"))
            elif cached is not None and cached[0] == wanted[0]:
                return cached
            n, jpeg, rec = wanted
            img = decode_jpeg(jpeg)
            if img is None:
                return cached
            try:
                out = (n, encode_jpeg(draw(img, json.loads(rec))))
            except (ValueError, TypeError):
                out = (n, jpeg)  # a record we cannot draw: the frame as it is
            self._frames[cam] = out
            return out


# ---------------------------------------------------------------------- app
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _page(name: str) -> str:
    return (STATIC / name).read_text()


def _not_found_page(message: str) -> HTMLResponse:
    body = _page("notfound.html").replace("{{message}}", message.replace("&", "&amp;").replace("<", "&lt;"))
    return HTMLResponse(body, status_code=404)


def create_app(board: Board, *, stopping: threading.Event | None = None, tick_s: float = 0.5) -> Starlette:
    """The web view's ASGI app over ``board``; ``stopping`` ends every open stream (server shutdown)."""
    stop = stopping or threading.Event()

    def away(why: str) -> JSONResponse:
        return _error(503, f"redis {redact(board.url)} unreachable: {why}")

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    async def known_or_404(name: str, api: bool) -> Response | None:
        try:
            if await run(board.known, name):
                return None
            msg = await run(board.unknown_message, name)
        except RedisAway as exc:
            return away(str(exc)) if api else None  # the page itself says so
        return _error(404, msg) if api else _not_found_page(msg)

    async def grid(request: Request) -> Response:
        return HTMLResponse(_page("grid.html"))

    async def camera_page(request: Request) -> Response:
        name = request.path_params["name"]
        return await known_or_404(name, api=False) or HTMLResponse(_page("camera.html"))

    async def api_cameras(request: Request) -> Response:
        s = await run(board.summary)
        if not s["redis"]["ok"]:
            return away(s["redis"]["error"])
        return JSONResponse(s)

    async def api_records(request: Request) -> Response:
        name = request.path_params["name"]
        raw = request.query_params.get("count", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_RECORDS:
            return _error(400, f"count must be a whole number from 1 to {MAX_RECORDS}, not {raw!r}")
        if (resp := await known_or_404(name, api=True)) is not None:
            return resp
        try:
            recs = await run(board.records, name, int(raw))
        except RedisAway as exc:
            return away(str(exc))
        return JSONResponse({"camera": name, "count": len(recs), "records": recs})

    async def latest_jpg(request: Request) -> Response:
        name = request.path_params["name"]
        if (resp := await known_or_404(name, api=True)) is not None:
            return resp
        raw = request.query_params.get("frame", "")
        try:
            got = await run(board.annotated, name, int(raw) if raw.isdigit() else None)
        except RedisAway:
            return Response(placeholder("redis unreachable"), status_code=503, media_type="image/jpeg")
        headers = {"Cache-Control": "no-store"}
        if got is None:
            return Response(placeholder(f"{name}: no frames yet"), media_type="image/jpeg", headers={**headers, "X-Mlink-Placeholder": "1"})
        return Response(got[1], media_type="image/jpeg", headers={**headers, "X-Mlink-Frame": str(got[0])})

    async def stream_mjpg(request: Request) -> Response:
        name = request.path_params["name"]
        if (resp := await known_or_404(name, api=True)) is not None:
            return resp

        async def parts() -> AsyncIterator[bytes]:
            last: int | None = -1
            while not stop.is_set():
                try:
                    got = await run(board.annotated, name)
                except RedisAway:
                    got = None
                frame = None if got is None else got[0]
                if frame != last:
                    data = got[1] if got is not None else placeholder(f"{name}: no frames yet")
                    last = frame
                    yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n"
                await anyio.sleep(0.1)

        return StreamingResponse(parts(), media_type="multipart/x-mixed-replace; boundary=frame", headers={"Cache-Control": "no-store"})

    def sse(make: Callable[[], dict[str, Any]]) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"
            while not stop.is_set():
                payload = await run(make)
                yield f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
                with anyio.move_on_after(tick_s):
                    while not stop.is_set():
                        await anyio.sleep(0.05)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def grid_events(request: Request) -> Response:
        return sse(board.summary)

    async def camera_events(request: Request) -> Response:
        name = request.path_params["name"]
        if (resp := await known_or_404(name, api=True)) is not None:
            return resp
        state: dict[str, str | None] = {"after": None}

        def make() -> dict[str, Any]:
            s = board.summary()
            out: dict[str, Any] = {"redis": s["redis"], "stale": s["stale"], "camera": next((c for c in s["cameras"] if c["name"] == name), None),
                                   "strip": [], "reset": state["after"] is None}
            if s["redis"]["ok"]:
                try:
                    out["strip"], state["after"] = board.strip(name, state["after"])
                except RedisAway:
                    pass
            return out

        return sse(make)

    routes = [
        Route("/", grid),
        Route("/events", grid_events),
        Route("/api/cameras", api_cameras),
        Route("/api/camera/{name}/records", api_records),
        Route("/camera/{name}", camera_page),
        Route("/camera/{name}/latest.jpg", latest_jpg),
        Route("/camera/{name}/stream.mjpg", stream_mjpg),
        Route("/camera/{name}/events", camera_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no such page: {request.url.path}")

    return Starlette(routes=routes, exception_handlers={404: not_found})


# ------------------------------------------------------------------- server
class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` decides what a signal does."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(board: Board, sock: socket.socket, *, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Serve the web view on an already listening socket until one of ``signals``."""
    stopping = threading.Event()
    config = uvicorn.Config(create_app(board, stopping=stopping), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=2)
    server = _Server(config)

    def _stop(*_: object) -> None:
        stopping.set()
        server.should_exit = True

    for s in signals:
        signal.signal(s, _stop)
    server.run(sockets=[sock])


def web_main(redis_url: str, host: str, port: int) -> int:
    """Process entry point (the supervisor of ``mlink run --web`` starts it): Ctrl-C is the
    supervisor's to handle; SIGTERM stops the server."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = bind_socket(host, port, "--web")
    serve(Board(redis_url), sock, signals=(signal.SIGTERM,))
    return ExitCode.OK
