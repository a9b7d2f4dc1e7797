"""The supervisor: starts and watches stage processes, restarts the dead ones.

One decoder process per camera and N scheduler workers, each a ``spawn``ed
multiprocessing child (no inherited locks, torch threads or sockets). How a child
exits decides what happens next (:mod:`pipeline.exitcodes`): ``OK`` is finished (a
file camera ended), ``FAILED`` is a permanent problem with the user's input (bad
file, bad model spec, unknown policy): its one-line error was printed once and it
stays down; anything else (a crash, Redis away) is restarted with exponential
backoff (0.5 s doubling to ``backoff_max_s``; the backoff resets once a child has
run for ``stable_after_s``). Time comes from an injected clock. Children die with the supervisor
(PR_SET_PDEATHSIG), so even a SIGKILLed supervisor leaves no orphans behind.

The web view of ``mlink run --web`` is one more child, ``web``
(:func:`pipeline.app.web.web_main`): restarted like the others if it crashes and
stopped with them; it reads only Redis.

Metrics: :meth:`Supervisor.serve_metrics` exposes ``/metrics`` (see
:mod:`pipeline.metrics`): the per-camera counters every stage keeps in Redis
(so the numbers cover workers on other hosts too) plus this supervisor's
process restarts.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from links.errors import LinksError
from pipeline.app.web import web_main
from pipeline.backoff import Backoff
from pipeline.config import Config, spec_code_refs
from pipeline.errors import UserError
from pipeline.exitcodes import ExitCode, should_restart
from pipeline.metrics import serve_metrics
from pipeline.redis_conn import REDIS_DOWN, RedisUnavailable, connect, first_line
from pipeline.streams import consumer_name
from stages.assignment import live_workers
from stages.decoder import decoder_main
from stages.scheduler import worker_main

_CTX = mp.get_context("spawn")


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _child(target: Callable[..., int], args: tuple[Any, ...]) -> None:
    """A stage process: run ``target`` and turn how it ended into an exit code."""
    _die_with_parent()
    try:
        code = int(target(*args))
    except RedisUnavailable as exc:
        # Not a bad input: Redis is restarting or unreachable. Restart later.
        print(f"mlink: {exc}; will retry", file=sys.stderr)
        code = ExitCode.TEMPFAIL
    except REDIS_DOWN as exc:
        print(f"mlink: {first_line(exc)}; will retry", file=sys.stderr)
        code = ExitCode.TEMPFAIL
    except (UserError, LinksError) as exc:
        print(f"mlink: error: {exc}", file=sys.stderr)
        code = ExitCode.FAILED
    except KeyboardInterrupt:
        code = ExitCode.OK
    sys.exit(code)


@dataclass
class Child:
    name: str
    target: Callable[..., int]
    args: tuple[Any, ...]
    proc: Any = None
    restarts: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0, jitter=0.0))  # quick deaths in a row
    started_at: float = 0.0
    next_start: float = 0.0
    finished: bool = False  # exited OK (eos) or FAILED: stays down
    exitcode: int | None = None
    history: list[int] = field(default_factory=list)

    @property
    def is_worker(self) -> bool:
        return self.name.startswith("worker:")

    @property
    def is_decoder(self) -> bool:
        return self.name.startswith("decoder:")


@dataclass
class ChildEvent:
    """Something the supervisor did or saw, for the user."""

    text: str
    failed: bool = False  # a child stopped for good with an error


class Supervisor:
    def __init__(self, cfg: Config, redis_url: str, *, workers: int | None = None, batch: int | None = None,
                 policy: str | None = None, claim_idle_ms: int = 10_000, backoff_max_s: float = 30.0,
                 stable_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 web: tuple[str, int] | None = None) -> None:
        self.cfg, self.redis_url = cfg, redis_url
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.clock = clock
        self.metrics_server: Any = None
        base = str(cfg.base_dir) if cfg.base_dir else None
        self.children: list[Child] = []
        for cam in cfg.cameras.values():
            self.add(Child(f"decoder:{cam.name}", decoder_main, (cam.model_dump_json(), redis_url, base)))
        n = workers or cfg.scheduler.workers
        for i in range(n):
            # The workers may load what this config names (its models), and nothing else Redis says.
            allow = tuple(sorted({ref for s in cfg.all_model_specs() for ref in spec_code_refs(s)}))
            self.add(Child(f"worker:{i}", worker_main, (redis_url, batch or cfg.scheduler.batch, policy or cfg.scheduler.runtime_options(),
                                                        claim_idle_ms, allow, cfg.scheduler.share_cameras)))
        if web is not None:
            self.add(Child("web", web_main, (redis_url, *web)))  # (host, port): the web view

    def add(self, child: Child) -> Child:
        """Watch one more child (started by :meth:`start`); its backoff is capped at ``backoff_max_s``."""
        child.backoff.maximum = max(child.backoff.initial, self.backoff_max_s)
        self.children.append(child)
        return child

    def start(self, join_timeout_s: float = 60.0) -> "Supervisor":
        """Start every child. Workers that deal the cameras among themselves (the default) all
        join before the decoders start (or ``join_timeout_s`` passes): a worker that joins after
        frames flow takes cameras from one that began them, and a camera that moves starts its
        in-process state afresh on its new owner (MOG2's background model: measured, one camera
        moved at its 8th frame of a 2-worker bench took MOG2's agreement from 1.0 to 0.85)."""
        workers = [c for c in self.children if c.is_worker]
        for c in self.children:
            if not c.is_decoder:
                self._spawn(c)
        if len(workers) > 1 and not self.cfg.scheduler.share_cameras:
            self._wait_for_workers(workers, join_timeout_s)
        for c in self.children:
            if c.is_decoder:
                self._spawn(c)
        return self

    def _wait_for_workers(self, workers: list[Child], timeout_s: float) -> None:
        r = None
        try:
            r = connect(self.redis_url)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                alive = {consumer_name(c.proc.pid) for c in workers if c.proc is not None and c.proc.is_alive()}
                if alive <= set(live_workers(r)):  # a worker that already exited (a bad input) is not waited for
                    return
                time.sleep(0.1)
        except (RedisUnavailable, *REDIS_DOWN):
            return  # the decoders wait for Redis themselves; their start need not
        finally:
            if r is not None:
                r.close()

    def _spawn(self, c: Child) -> None:
        c.proc = _CTX.Process(target=_child, args=(c.target, c.args), name=c.name, daemon=False)
        c.proc.start()
        c.started_at = self.clock()

    def pids(self, prefix: str = "") -> list[int]:
        """PIDs of the running children whose name starts with ``prefix``."""
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.is_alive() and c.name.startswith(prefix)]

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Start ``/metrics`` in a thread of this process; returns the bound port."""
        server, _ = serve_metrics(connect(self.redis_url), port, host=host, supervisor=self)
        self.metrics_server = server
        return int(server.server_port)

    def poll(self) -> list[ChildEvent]:
        """Notice exited children, restart the ones due; returns what happened."""
        events = []
        now = self.clock()
        for c in self.children:
            if c.finished:
                continue
            if c.proc is not None and c.proc.exitcode is None:
                continue
            if c.proc is not None:
                code = c.proc.exitcode
                c.history.append(code)
                c.exitcode = code
                c.proc = None
                if not should_restart(code):
                    c.finished = True
                    if code == ExitCode.FAILED and c.is_worker:
                        # Its one-line error is on stderr already; restarting would only repeat it.
                        events.append(ChildEvent(f"{c.name} stopped: it hit an error that a restart would repeat", failed=True))
                    continue
                if now - c.started_at >= self.stable_after_s:
                    c.backoff.reset()  # it ran fine for a while: restart quickly
                delay = c.backoff.next_delay()
                c.next_start = now + delay
                events.append(ChildEvent(f"{c.name} exited with code {code}; restarting in {delay:.1f}s"))
            if c.proc is None and now >= c.next_start:
                c.restarts += 1
                self._spawn(c)
        return events

    def decoders_done(self) -> bool:
        return all(c.finished for c in self.children if c.is_decoder)

    def workers_gone(self) -> bool:
        """Every worker stopped for good (e.g. they all hit the same user error)."""
        workers = [c for c in self.children if c.is_worker]
        return bool(workers) and all(c.finished for c in workers)

    def restarts(self) -> int:
        return sum(c.restarts for c in self.children)

    def stop(self, timeout: float = 10.0) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None
        for c in self.children:
            if c.proc is not None and c.proc.is_alive():
                c.proc.terminate()  # SIGTERM: children finish the current step and exit
        deadline = time.monotonic() + timeout
        for c in self.children:
            if c.proc is not None:
                c.proc.join(max(0.1, deadline - time.monotonic()))
                if c.proc.is_alive():
                    c.proc.kill()
                    c.proc.join(2)
