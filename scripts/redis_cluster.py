#!/usr/bin/env python3
"""Start a throw-away 3-master Redis Cluster on loopback (for tests and demos).

Each node is a ``redis-server`` (Debian's ``/usr/bin/redis-server`` by default,
or any Redis >= 6.2) with ``cluster-enabled yes``, its own
port and a private temp dir, persistence off, bound to 127.0.0.1 only. The
16384 slots are split in three ranges, the nodes MEET each other, and the
script waits for ``cluster_state:ok`` on every node.

    python scripts/redis_cluster.py            # prints the URL, Ctrl-C stops
    # -> redis+cluster://127.0.0.1:PORT        (pass it to mlink --redis)

From Python (tests)::

    from scripts.redis_cluster import LocalCluster
    with LocalCluster() as c:
        url = c.url
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

SLOTS = 16384


def _free_ports(n: int) -> list[int]:
    """``n`` free loopback ports whose +10000 bus ports are free too."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in out:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        out.append(port)
    return out


class LocalCluster:
    def __init__(self, masters: int = 3, binary: str | None = None, timeout: float = 20.0) -> None:
        self.masters = masters
        self.binary = binary or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else shutil.which("redis-server") or "redis-server")
        self.timeout = timeout
        self.dir: Path | None = None
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> "LocalCluster":
        self.dir = Path(tempfile.mkdtemp(prefix="mlink-cluster-"))
        self.ports = _free_ports(self.masters)
        for port in self.ports:
            d = self.dir / str(port)
            d.mkdir()
            args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "2000",
                    "--save", "", "--appendonly", "no", "--dir", str(d), "--daemonize", "no",
                    "--loglevel", "warning", "--logfile", str(d / "redis.log")]
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        try:
            clients = [self._wait_ping(p) for p in self.ports]
            per = SLOTS // self.masters
            for i, c in enumerate(clients):
                lo = i * per
                hi = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
                c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))  # (ADDSLOTSRANGE needs Redis 7)
            for p in self.ports[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
                if all("cluster_state:ok" in t and f"cluster_known_nodes:{self.masters}" in t for t in texts):
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"redis cluster on ports {self.ports} did not reach cluster_state:ok")
            for c in clients:
                c.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ping(self, port: int) -> redis.Redis:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                c = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
                c.ping()
                return c
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masters", type=int, default=3)
    a = ap.parse_args(argv)
    c = LocalCluster(a.masters).start()
    print(c.url, flush=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        while not stop["flag"] and all(p.poll() is None for p in c.procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
