"""Helpers to run a real RTSP server (``scripts/rtsp_server.py``) from tests.

This is deliberately *not* a conftest: ``tests/conftest.py`` imports what it
needs from here and wraps it in pytest fixtures.

The server runs under the system interpreter (``/usr/bin/python3``) because
GStreamer's Python bindings come from Debian packages, not from the venv. The
first time the bindings are found missing, ``scripts/install_rtsp_deps.sh``
is run once (set ``MLINK_NO_RTSP_INSTALL=1`` to forbid that).

Typical use::

    with start_rtsp_server(VIDEOS_DIR / "intel_car-detection.mp4") as srv:
        container = av.open(srv.url, options={"rtsp_transport": "tcp"})
        ...
        srv.restart()  # same port: simulates a camera reboot
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO_ROOT / "scripts" / "rtsp_server.py"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_rtsp_deps.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
_EXIT_BIND_FAILED = 3  # scripts/rtsp_server.py: port could not be bound
# The test footage committed with the tests (see tests/data/SOURCES.md).
VIDEOS_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_VIDEO = VIDEOS_DIR / "intel_car-detection.mp4"

_GI_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); "
    "gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer"
)

# The install script must run at most once per test session, even if several
# threads/fixtures ask at the same time.
_install_lock = threading.Lock()
_install_attempted = False


def _gi_importable() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    try:
        res = subprocess.run(
            [SYSTEM_PYTHON, "-c", _GI_CHECK], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


@functools.cache
def _available_cached() -> bool:
    return _gi_importable()


def ensure_rtsp_deps() -> bool:
    """Make the system GStreamer RTSP bindings available; True on success.

    Runs ``scripts/install_rtsp_deps.sh`` once per process if they are missing
    (unless ``MLINK_NO_RTSP_INSTALL=1``). Never raises.
    """
    global _install_attempted
    if _available_cached():
        return True
    with _install_lock:
        if _install_attempted or os.environ.get("MLINK_NO_RTSP_INSTALL") == "1":
            return _available_cached()
        _install_attempted = True
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                ["bash", str(INSTALL_SCRIPT)], check=False, timeout=900,
                stdout=subprocess.DEVNULL,
            )
        _available_cached.cache_clear()
        return _available_cached()


def rtsp_available(install: bool = True) -> bool:
    """True if ``scripts/rtsp_server.py`` can run (system python has gst-rtsp-server).

    With ``install=True`` (default) a missing dependency triggers one run of
    the install script. Tests do not skip on False: the ``rtsp_deps`` fixture
    (tests/conftest.py) fails them with the reason.
    """
    return ensure_rtsp_deps() if install else _available_cached()


class RtspServerError(RuntimeError):
    """The server process failed to start or did not become ready in time."""


@dataclass
class RtspServerHandle:
    """A running ``scripts/rtsp_server.py`` subprocess.

    ``url`` carries no credentials; use :meth:`url_with` / ``auth_url`` for
    those. Usable as a context manager (stops on exit).
    """

    video: Path
    port: int | None = None  # None until started with an OS-chosen port
    path: str = "/cam"
    loop: bool = True
    user: str | None = None
    password: str | None = None
    timeout: float = 20.0
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None  # server stderr (GStreamer warnings etc.)
    starts: int = 0

    # -- URLs ------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RtspServerError("server has not been started")
        return f"rtsp://{self.host}:{self.port}{self.path}"

    def url_with(self, user: str, password: str) -> str:
        """The stream URL with (percent-encoded) credentials embedded."""
        cred = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        return f"rtsp://{cred}{self.host}:{self.port}{self.path}"

    @property
    def auth_url(self) -> str:
        """URL with the server's own credentials (== ``url`` without auth)."""
        if self.user is None or self.password is None:
            return self.url
        return self.url_with(self.user, self.password)

    # -- lifecycle ---------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RtspServerHandle:
        """Start the server and block until it prints READY (or raise)."""
        if self.running:
            raise RtspServerError("server already running")
        if not ensure_rtsp_deps():
            raise RtspServerError(
                "GStreamer RTSP server bindings unavailable for /usr/bin/python3 "
                "(scripts/install_rtsp_deps.sh failed?)"
            )
        if not Path(self.video).is_file():
            raise RtspServerError(f"video not found: {self.video}")
        # Re-binding the same port right after a stop can fail transiently;
        # retry until the deadline in that case (exit status 3 = bind failed).
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._spawn_and_wait(deadline)
                self.starts += 1
                return self
            except _BindFailed:
                if time.monotonic() >= deadline:
                    raise RtspServerError(
                        f"could not bind {self.host}:{self.port} within {self.timeout}s"
                    ) from None
                time.sleep(0.1)

    def _spawn_and_wait(self, deadline: float) -> None:
        cmd = [
            SYSTEM_PYTHON, str(SERVER_SCRIPT),
            "--host", self.host,
            "--port", str(self.port if self.port is not None else 0),
            "--path", self.path,
            "--file", str(self.video),
        ]
        if self.loop:
            cmd.append("--loop")
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or ""]
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="rtsp_server_", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        log = open(self.log_path, "ab")  # noqa: SIM115 - child owns a dup of it
        try:
            # A clean environment for the system python: the venv's variables
            # (PYTHONHOME/PYTHONPATH/VIRTUAL_ENV) must not leak into it.
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV")}
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,  # keep test's Ctrl-C for us
            )
        finally:
            log.close()
        self.proc = proc
        assert proc.stdout is not None
        line = _readline_until(proc, deadline)
        if line is None:
            # EOF (process exiting) or timeout: give an exiting process a moment
            # so we can read its status.
            try:
                rc: int | None = proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                rc = None
            self._kill()
            if rc == _EXIT_BIND_FAILED and self.port is not None:
                raise _BindFailed()
            raise RtspServerError(
                f"rtsp server not ready (exit status {rc}); log tail:\n{self._log_tail()}"
            )
        if not line.startswith("READY "):
            self._kill()
            raise RtspServerError(f"unexpected server output {line!r}")
        ready_url = line.split(" ", 1)[1].strip()
        # The server reports the port it actually bound (matters for port 0).
        self.port = int(ready_url.rsplit(":", 1)[1].split("/", 1)[0])

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the server (SIGKILL after ``timeout``); returns its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None
        return proc.returncode

    def restart(self) -> RtspServerHandle:
        """Stop and start again on the same port (a camera/server reboot)."""
        self.stop()
        return self.start()

    def _kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    def __enter__(self) -> RtspServerHandle:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leak a server process
        with contextlib.suppress(Exception):
            self._kill()


class _BindFailed(Exception):
    pass


def _readline_until(proc: subprocess.Popen[bytes], deadline: float) -> str | None:
    """Read one stdout line, or None on EOF/timeout, without blocking forever."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def start_rtsp_server(
    video: Path = DEFAULT_VIDEO,
    port: int | None = None,
    path: str = "/cam",
    loop: bool = True,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 20.0,
) -> RtspServerHandle:
    """Start ``scripts/rtsp_server.py`` serving ``video`` and wait until ready.

    ``port=None`` lets the OS pick a free loopback port (no race: the server
    binds port 0 and reports the real one); ``restart()`` reuses it.
    """
    if not path.startswith("/"):
        path = "/" + path
    handle = RtspServerHandle(
        video=Path(video), port=port, path=path, loop=loop,
        user=user, password=password, timeout=timeout,
    )
    return handle.start()


def free_port(host: str = "127.0.0.1") -> int:
    """A currently unused TCP port (for "nothing listens here" tests)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
