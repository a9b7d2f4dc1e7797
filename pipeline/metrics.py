"""Prometheus metrics: counters kept in Redis, exposed by any process.

Design: the stage processes do not each run an HTTP server. They increment
per-camera counters in Redis, in the same transaction as the data they count
(a worker's ``HINCRBY metrics:{cam} processed`` is in the MULTI/EXEC that
writes the records and acks the frames). Counters therefore

- add up across every worker and decoder on every host (scale-out),
- survive process restarts (a restarted worker does not reset them),
- live in the camera's hash slot (``metrics:{cam}``), so Redis Cluster works.

Whoever wants an endpoint serves one: the supervisor of ``mlink run`` (the
aggregated view of all hosts sharing its Redis, plus its own process-restart
counters), or any ``mlink worker`` on another host. A scrape reads the
counters and the stream lengths straight from Redis (a few commands per
camera), so nothing is cached and every endpoint shows the same numbers.
A Redis restart without persistence resets the counters; Prometheus' ``rate()``
handles counter resets.

Exposed, all with a ``camera`` label:

================================  =========================================
``mlink_frames_decoded_total``    frames the decoder sent (frame index)
``mlink_frames_processed_total``  frames with a record
``mlink_frames_dropped_total``    live frames dropped (MAXLEN trim, Redis away)
``mlink_bad_frames_total``        frame entries that could not be decoded
``mlink_frames_reclaimed_total``  frames taken over from dead workers
``mlink_model_outputs_total``     per ``model`` and ``origin`` (executed vs
                                  linked = derived, held, missing)
``mlink_reconnects_total``        source reconnect attempts
``mlink_decoded_fps``             decoded frames/s since the previous scrape
``mlink_processed_fps``           processed frames/s since the previous scrape
``mlink_stream_lag_frames``       frames waiting in ``frames:{cam}``
``mlink_stream_lag_seconds``      age of the oldest waiting frame
``mlink_camera_state``            1 for the last status event (``state`` label)
``mlink_process_restarts_total``  per supervised ``process`` (supervisor only)
================================  =========================================
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from pipeline.keys import CAMERAS_KEY, camera_key, frames_key, metrics_key, status_key
from pipeline.redis_conn import REDIS_DOWN


def count_origin(origin: str, model: str) -> str:
    """Hash field counting one model output of one origin (``executed:yolo``)."""
    return f"{origin}:{model}"


def count_status(r: Any, cam: str, event: str) -> None:
    """Count a decoder status event (reconnects, stalls, drops) in the camera's metrics hash."""
    field = {"reconnecting": "reconnects", "stalled": "stalls", "lost": "losses"}.get(event)
    if field:
        r.hincrby(metrics_key(cam), field, 1)


def count_dropped(r: Any, cam: str, n: int = 1) -> None:
    r.hincrby(metrics_key(cam), "dropped", n)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class RedisMetricsCollector(Collector):
    """Reads every registered camera's counters and streams at scrape time."""

    def __init__(self, r: Any, clock: Callable[[], float] = time.time) -> None:
        self.r = r
        self.clock = clock
        self._prev: dict[str, tuple[float, int, int]] = {}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per camera: the raw numbers behind the metrics (also handy in tests)."""
        out: dict[str, dict[str, Any]] = {}
        for cam in sorted(_s(c) for c in self.r.smembers(CAMERAS_KEY)):
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(camera_key(cam))
            pipe.hgetall(metrics_key(cam))
            pipe.xlen(frames_key(cam))
            pipe.xrange(frames_key(cam), count=1)
            pipe.xrevrange(status_key(cam), count=1)
            info, counters, qlen, oldest, last = pipe.execute()
            info = {_s(k): _s(v) for k, v in (info or {}).items()}
            counters = {_s(k): int(v) for k, v in (counters or {}).items()}
            now = self.clock()
            lag_s = 0.0
            if oldest:
                try:
                    lag_s = max(0.0, now - float(oldest[0][1][b"wall"]))
                except (KeyError, ValueError):
                    lag_s = 0.0
            state = ""
            if last:
                try:
                    state = str(json.loads(last[0][1][b"json"]).get("event", ""))
                except (KeyError, ValueError):
                    state = ""
            out[cam] = {
                "decoded": int(info.get("next_frame", 0) or 0),
                # trimmed unread by the live bound (camera hash) + not delivered (Redis away, reader
                # behind the camera) + trimmed while a worker that then died held them
                "dropped": int(info.get("dropped", 0) or 0) + counters.get("dropped", 0) + counters.get("trimmed", 0),
                "processed": counters.get("processed", 0),
                "bad_frames": counters.get("bad_frames", 0),
                "skipped": counters.get("skipped", 0),
                "reclaimed": counters.get("reclaimed", 0),
                "reconnects": counters.get("reconnects", 0),
                "outputs": {k: v for k, v in counters.items() if ":" in k},
                "lag_frames": int(qlen or 0),
                "lag_s": lag_s,
                "state": state,
                "now": now,
            }
        return out

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily("mlink_redis_up", "1 when Redis answered this scrape, 0 while it is away")
        try:
            snap = self.snapshot()
        except REDIS_DOWN:
            # A scrape during an outage answers at once (no traceback, no hang): Redis is down.
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        dec = CounterMetricFamily("mlink_frames_decoded", "Frames sent by the camera's decoder", labels=["camera"])
        proc = CounterMetricFamily("mlink_frames_processed", "Frames with an analytics record", labels=["camera"])
        drop = CounterMetricFamily("mlink_frames_dropped", "Live frames dropped (Redis away, reader behind the camera, trimmed by the stream bound)", labels=["camera"])
        bad = CounterMetricFamily("mlink_bad_frames", "Frame entries that could not be decoded", labels=["camera"])
        skip = CounterMetricFamily("mlink_frames_skipped", "Live frames older than max_lag_s, skipped by a worker to stay current", labels=["camera"])
        recl = CounterMetricFamily("mlink_frames_reclaimed", "Frames reclaimed from dead workers", labels=["camera"])
        reco = CounterMetricFamily("mlink_reconnects", "Source reconnect attempts", labels=["camera"])
        outs = CounterMetricFamily("mlink_model_outputs", "Model outputs by origin: executed vs derived (links) and others",
                                   labels=["camera", "model", "origin"])
        dfps = GaugeMetricFamily("mlink_decoded_fps", "Decoded frames per second since the previous scrape", labels=["camera"])
        pfps = GaugeMetricFamily("mlink_processed_fps", "Processed frames per second since the previous scrape", labels=["camera"])
        lagf = GaugeMetricFamily("mlink_stream_lag_frames", "Frames waiting in frames:{camera}", labels=["camera"])
        lags = GaugeMetricFamily("mlink_stream_lag_seconds", "Age of the oldest waiting frame", labels=["camera"])
        st = GaugeMetricFamily("mlink_camera_state", "Last status event of the camera (value 1)", labels=["camera", "state"])
        for cam, v in snap.items():
            dec.add_metric([cam], v["decoded"])
            proc.add_metric([cam], v["processed"])
            drop.add_metric([cam], v["dropped"])
            bad.add_metric([cam], v["bad_frames"])
            skip.add_metric([cam], v["skipped"])
            recl.add_metric([cam], v["reclaimed"])
            reco.add_metric([cam], v["reconnects"])
            for k, n in sorted(v["outputs"].items()):
                origin, _, model = k.partition(":")
                outs.add_metric([cam, model, origin], n)
            prev = self._prev.get(cam)
            d_fps = p_fps = 0.0
            if prev is not None and v["now"] > prev[0]:
                dt = v["now"] - prev[0]
                d_fps = max(0, v["decoded"] - prev[1]) / dt
                p_fps = max(0, v["processed"] - prev[2]) / dt
            self._prev[cam] = (v["now"], v["decoded"], v["processed"])
            dfps.add_metric([cam], d_fps)
            pfps.add_metric([cam], p_fps)
            lagf.add_metric([cam], v["lag_frames"])
            lags.add_metric([cam], v["lag_s"])
            if v["state"]:
                st.add_metric([cam, v["state"]], 1)
        return [up, dec, proc, drop, bad, skip, recl, reco, outs, dfps, pfps, lagf, lags, st]


class RestartCollector(Collector):
    """Process restarts of a :class:`pipeline.app.supervisor.Supervisor`."""

    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor

    def collect(self) -> Iterable[Any]:
        m = CounterMetricFamily("mlink_process_restarts", "Restarts of supervised stage processes", labels=["process", "camera"])
        for c in self.sup.children:
            cam = c.name.split(":", 1)[1] if c.name.startswith("decoder:") else ""
            m.add_metric([c.name, cam], c.restarts)
        return [m]


def build_registry(r: Any, supervisor: Any = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(RedisMetricsCollector(r))
    if supervisor is not None:
        reg.register(RestartCollector(supervisor))
    return reg


def serve_metrics(r: Any, port: int, host: str = "127.0.0.1", supervisor: Any = None) -> tuple[Any, Any]:
    """Start ``/metrics`` on ``host:port`` in a daemon thread; returns (server, thread).

    ``port=0`` picks a free port (``server.server_port``). Loopback by default:
    pass ``host="0.0.0.0"`` deliberately to expose it.
    """
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=build_registry(r, supervisor))
