#!/usr/bin/python3
"""A small, real RTSP server for tests: serves an H.264 .mp4 as an RTSP stream.

Built on GStreamer's gst-rtsp-server through PyGObject. It must be run with the
*system* interpreter (``/usr/bin/python3``) because that is where Debian's
``python3-gi`` and the GObject-introspection typelibs live; the project venv
does not (and should not) carry them. ``scripts/install_rtsp_deps.sh``
installs the Debian packages.

Usage::

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --path /cam \
        --file VIDEO.mp4 [--loop] [--user U --password P]

Once the server listens it prints exactly one line ``READY rtsp://HOST:PORT/PATH``
on stdout (and flushes), which the test fixture waits for; with ``--port 0``
the OS picks the port and the READY line tells which. SIGTERM / SIGINT stop it
cleanly with exit status 0; exit status 3 means the port could not be bound.

Two serving modes:

* default (no ``--loop``): the file is served as-is with
  ``filesrc ! qtdemux ! h264parse ! rtph264pay``; the stream ends (EOS) when
  the file does, like a recorded clip.
* ``--loop``: emulates a live camera that never ends. A private "feeder"
  pipeline (``filesrc ! qtdemux ! h264parse ! appsink sync=true``) reads the
  file in real time and seeks back to the start at EOS; every access unit is
  re-timestamped onto a continuous timeline and pushed into a live ``appsrc``
  inside the RTSP media. Looping inside the RTSP media pipeline itself is
  fragile (the media owns the bus, clients' PLAY Range headers trigger
  flushing seeks that break segment looping, and a flushing seek makes RTP
  timestamps jump backwards), whereas a live appsrc looks exactly like a
  camera: not seekable, monotonic timestamps, joinable at any time.

The media factory is *shared*, so any number of clients watch the same
pipeline (as with a real camera). With ``--user/--password`` basic auth is
required; other credentials get ``401 Unauthorized``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402

# Caps of the elementary stream between the feeder and the RTSP media.
# Byte-stream + access-unit alignment with SPS/PPS repeated before every IDR
# (config-interval=-1 on the feeder's h264parse) so the payloader can learn the
# parameter sets from the stream itself, regardless of where a client joins.
H264_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"

# If the timestamps we generate drift this far from the media pipeline's
# running time (e.g. the pipeline was paused, or our callback was starved),
# re-anchor the timeline on "now" instead of making the sinks wait or drop.
REANCHOR_THRESHOLD_NS = int(1.5 * Gst.SECOND)

# Bound on frames queued in the media's appsrc (e.g. while rtsp-media keeps the
# stream blocked between DESCRIBE and PLAY). Beyond it we drop like a camera
# would, and then resume only at the next keyframe so clients never receive a
# decodable-looking stream with holes in it.
MAX_QUEUED_BUFFERS = 60

# Exit status when the port cannot be bound (distinct from argparse's 2), so a
# launcher can tell "port still busy, retry" from a real failure.
EXIT_BIND_FAILED = 3


def log(msg: str) -> None:
    """Diagnostics go to stderr; stdout is reserved for the READY line."""
    print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)


@dataclass(eq=False)  # identity semantics: feeders live in a set
class LoopFeeder:
    """Reads the file in real time, forever, and pushes H.264 AUs into ``appsrc``.

    One feeder exists per prepared RTSP media (the factory is shared, so in
    practice one per "camera session"); it is stopped when the media is
    unprepared, i.e. when the last client has gone.
    """

    file: Path
    appsrc: GstApp.AppSrc
    pipeline: Gst.Pipeline = field(init=False)
    # Timeline bookkeeping, all in nanoseconds.
    _loop_offset: int = 0  # added to the file's timestamps in the current loop
    _loop_end: int = 0  # max(pts + duration) seen in the current loop (file time)
    _wrap_pending: bool = False  # set at EOS; the next buffer starts a new loop
    _shift: int | None = None  # virtual time -> media running time
    _last_dts: int = -1
    _need_keyframe: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False
    loops: int = 0

    def __post_init__(self) -> None:
        desc = (
            f'filesrc location="{self.file}" ! qtdemux ! h264parse config-interval=-1 '
            f"! {H264_CAPS} ! appsink name=sink sync=true max-buffers=4 "
            "emit-signals=true"
        )
        self.pipeline = Gst.parse_launch(desc)
        sink = self.pipeline.get_by_name("sink")
        sink.connect("new-sample", self._on_sample)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        bus = self.pipeline.get_bus()
        bus.remove_signal_watch()
        self.pipeline.set_state(Gst.State.NULL)

    # -- bus (main loop thread) --------------------------------------------
    def _on_message(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        if msg.type == Gst.MessageType.EOS:
            with self._lock:
                if self._stopped:
                    return
                self._wrap_pending = True
            self.loops += 1
            # Flushing seek back to the start; the appsink's clock sync restarts
            # from the new segment, so pacing stays real time across the wrap.
            ok = self.pipeline.seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0
            )
            if not ok:
                log("feeder: seek to start failed; stream will end")
        elif msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            log(f"feeder error: {err.message} ({dbg})")

    # -- appsink streaming thread ----------------------------------------------
    def _on_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        src_buf = sample.get_buffer()
        with self._lock:
            if self._stopped:
                return Gst.FlowReturn.FLUSHING
            return self._push(src_buf)

    def _push(self, src_buf: Gst.Buffer) -> Gst.FlowReturn:
        none = Gst.CLOCK_TIME_NONE
        pts = src_buf.pts
        if pts == none:
            return Gst.FlowReturn.OK  # cannot place it on the timeline
        dts = src_buf.dts if src_buf.dts != none else pts
        dur = src_buf.duration if src_buf.duration != none else 0
        is_key = not src_buf.has_flags(Gst.BufferFlags.DELTA_UNIT)

        if self._wrap_pending:
            # New loop: continue the virtual timeline where the previous loop's
            # presentation ended, so timestamps stay strictly increasing.
            self._loop_offset += self._loop_end - pts
            self._loop_end = 0
            self._wrap_pending = False
        self._loop_end = max(self._loop_end, pts + dur)
        vpts = pts + self._loop_offset
        vdts = dts + self._loop_offset

        # Only a PLAYING media has a meaningful running time; frames produced
        # while it is not playing are simply lost, like a camera's.
        _, cur, _ = self.appsrc.get_state(0)
        clock = self.appsrc.get_clock()
        if cur != Gst.State.PLAYING or clock is None:
            self._need_keyframe = True
            return Gst.FlowReturn.OK
        now = clock.get_time() - self.appsrc.get_base_time()

        if self._shift is None or abs(vdts + self._shift - now) > REANCHOR_THRESHOLD_NS:
            self._shift = now - vdts
        out_dts = max(vdts + self._shift, self._last_dts + 1, 0)
        out_pts = max(vpts + self._shift, out_dts)

        level = self.appsrc.get_property("current-level-buffers")
        if level >= MAX_QUEUED_BUFFERS:
            self._need_keyframe = True
        if self._need_keyframe:
            if not is_key or level >= MAX_QUEUED_BUFFERS:
                return Gst.FlowReturn.OK
            self._need_keyframe = False

        buf = src_buf.copy()  # shares memory; gives us our own timestamps
        buf.pts = out_pts
        buf.dts = out_dts
        self._last_dts = out_dts
        ret = self.appsrc.push_buffer(buf)
        if ret == Gst.FlowReturn.FLUSHING:
            # Media is shutting down or flushing; keep reading the file so the
            # feeder can resume if it comes back, it is stopped on unprepare.
            self._need_keyframe = True
            return Gst.FlowReturn.OK
        return Gst.FlowReturn.OK


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """Media factory whose media is a live appsrc fed by a :class:`LoopFeeder`."""

    def __init__(self, file: Path) -> None:
        super().__init__()
        self.file = file
        self.feeders: set[LoopFeeder] = set()
        self.set_launch(
            f"( appsrc name=src is-live=true format=time do-timestamp=false "
            f'caps="{H264_CAPS}" ! h264parse config-interval=-1 '
            "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(
        self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia
    ) -> None:
        appsrc = media.get_element().get_by_name("src")
        feeder = LoopFeeder(self.file, appsrc)
        self.feeders.add(feeder)

        def on_unprepared(_media: GstRtspServer.RTSPMedia) -> None:
            feeder.stop()
            self.feeders.discard(feeder)

        media.connect("unprepared", on_unprepared)

        # Start reading the file only once the live appsrc actually wants data
        # (need-data fires from its streaming thread, i.e. once the media runs).
        # Starting in media-configure would lose the first keyframe while the
        # media is still NULL/READY and leave clients waiting a whole GOP
        # (~5 s for the samples) for the next one.
        started = threading.Event()

        def on_need_data(_src: GstApp.AppSrc, _length: int) -> None:
            if not started.is_set():
                started.set()
                feeder.start()

        appsrc.connect("need-data", on_need_data)

    def stop_all(self) -> None:
        for feeder in list(self.feeders):
            feeder.stop()
        self.feeders.clear()


def build_factory(file: Path, loop: bool) -> GstRtspServer.RTSPMediaFactory:
    if loop:
        factory: GstRtspServer.RTSPMediaFactory = LoopingFactory(file)
    else:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f'( filesrc location="{file}" ! qtdemux ! h264parse '
            "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
    # Shared: every client sees the same pipeline, like a physical camera, and
    # a second client does not restart the stream for the first.
    factory.set_shared(True)
    return factory


def setup_auth(
    server: GstRtspServer.RTSPServer,
    factory: GstRtspServer.RTSPMediaFactory,
    user: str,
    password: str,
) -> None:
    """Require HTTP basic auth; only ``user`` may access/construct the media."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, user)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    factory.add_role_from_structure(
        Gst.Structure.new_from_string(
            f"{user}, media.factory.access=(boolean)true, "
            "media.factory.construct=(boolean)true"
        )
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8554, help="TCP port; 0 picks a free one")
    p.add_argument("--path", default="/cam", help="mount point, e.g. /cam")
    p.add_argument("--file", required=True, type=Path, help="H.264 .mp4 to serve")
    p.add_argument("--loop", action="store_true", help="loop forever like a live camera")
    p.add_argument("--user", help="require basic auth with this user")
    p.add_argument("--password", help="password for --user")
    args = p.parse_args(argv)
    if (args.user is None) != (args.password is None):
        p.error("--user and --password must be given together")
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    if not args.file.is_file():
        p.error(f"no such file: {args.file}")
    args.file = args.file.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = build_factory(args.file, args.loop)
    if args.user is not None:
        setup_auth(server, factory, args.user, args.password)
    server.get_mount_points().add_factory(args.path, factory)

    loop = GLib.MainLoop()
    # attach() binds and listens; it returns 0 when binding fails (port busy).
    if server.attach(None) == 0:
        log(f"could not listen on {args.host}:{args.port}")
        return EXIT_BIND_FAILED
    port = server.get_bound_port()

    def quit_(*_: object) -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, quit_)

    print(f"READY rtsp://{args.host}:{port}{args.path}", flush=True)
    try:
        loop.run()
    finally:
        if isinstance(factory, LoopingFactory):
            factory.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
