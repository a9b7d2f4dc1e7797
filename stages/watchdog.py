"""Connection watchdog for per-camera decoder processes (pure logic, no I/O).

A decoder process owns one source (RTSP camera or video file). It reports what
it observes -- connected, a frame arrived, an error, end of stream -- to a
:class:`Watchdog`, calls :meth:`Watchdog.tick` periodically, and asks
:meth:`Watchdog.should_reconnect` when to try again. The watchdog decides the
source's state and the reconnect schedule (exponential backoff with jitter,
bounded number of attempts) and returns every state change as a list of
:class:`Transition` records, which the decoder can log or publish.

Nothing here sleeps, reads a clock or touches the network: time is always
passed in as ``now`` (seconds, from a monotonic clock such as
``time.monotonic()``), and randomness comes from an injectable
``random.Random``. That keeps the state machine deterministic and unit-testable
without real sockets or waiting.

State machine (``is_file`` sources end in EOS; live sources never "end")::

    CONNECTING --connected/frame--> STREAMING --no frame for stall_after_s--> STALLED
        |                             |  ^                                     |  |
        |                             |  +-------------frame-------------------+  |
        | error / live EOS /          | error / live EOS     no frame for lost_after_s
        | connect timeout             v                                           |
        +--------------------------> LOST <---------------------------------------+
                                      |
              attempts left? ---------+--------- no --> FAILED (terminal)
                   | yes
                   v
              RECONNECTING --(now >= next_attempt_at) on_reconnect_attempt--> CONNECTING

    file source: end of stream in CONNECTING/STREAMING/STALLED --> EOS (terminal)

``LOST`` is transient: the same call that enters it also leaves it (to
``RECONNECTING`` or ``FAILED``), and both transitions are returned.

Policy for events that do not apply to the current state (a straggling frame
after an error, an error after EOS, ``on_connected`` twice ...): they are
*ignored* -- the state is unchanged and an empty list is returned. Such races
are normal in a decoder loop and must not crash it. Programming errors raise
``ValueError`` instead: an invalid :class:`WatchdogConfig`, or ``now`` going
backwards (a non-monotonic clock would corrupt the stall and backoff maths).

:class:`PtsUnwrapper` is a separate small helper that turns the raw
presentation timestamps of a source whose timestamps restart (after a
reconnect, a camera reboot, a looping file) into one monotonically increasing
timeline.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from pipeline.backoff import backoff_delay

__all__ = [
    "PtsUnwrapper",
    "SourceState",
    "Transition",
    "Watchdog",
    "WatchdogConfig",
]


class SourceState(enum.Enum):
    """Connection state of one decoder source."""

    CONNECTING = "connecting"  # opening the source (initially or after backoff)
    STREAMING = "streaming"  # connected, frames arriving
    STALLED = "stalled"  # connected, but no frame for stall_after_s
    LOST = "lost"  # transient: connection given up, deciding what next
    RECONNECTING = "reconnecting"  # waiting for next_attempt_at
    FAILED = "failed"  # terminal: reconnect attempts exhausted
    EOS = "eos"  # terminal: a file source ended normally

    @property
    def terminal(self) -> bool:
        return self in (SourceState.FAILED, SourceState.EOS)


@dataclass(frozen=True)
class WatchdogConfig:
    """Tunables of :class:`Watchdog`. All durations in seconds.

    Attributes:
        stall_after_s: STREAMING with no frame for this long -> STALLED.
        lost_after_s: STALLED with no frame for this long (measured from the
            last frame, like ``stall_after_s``) -> LOST and reconnect. ``None``
            means ``2 * stall_after_s``.
        connect_timeout_s: CONNECTING for this long without ``on_connected``
            or a frame -> LOST. ``None`` disables it (e.g. when the open call
            has its own timeout and blocks the loop that would call ``tick``).
        backoff_initial_s: nominal delay before the first reconnect attempt.
        backoff_max_s: cap of the nominal delay.
        backoff_factor: growth of the nominal delay per attempt.
        jitter: fraction in [0, 1). The actual delay is drawn uniformly from
            ``(nominal * (1 - jitter), nominal]``: jitter only *shortens* the
            delay, so ``backoff_max_s`` is a hard upper bound, while many
            cameras that dropped at once (server restart) still spread out
            instead of reconnecting in lock-step.
        max_attempts: reconnect attempts allowed after a loss before FAILED
            (0 = fail on the first loss); ``None`` retries forever.
        stable_after_s: the attempt counter resets once a (re)connected source
            has been streaming this long since its first frame. The default 0
            resets on the first frame.
    """

    stall_after_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_factor: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = 10
    lost_after_s: float | None = None
    connect_timeout_s: float | None = None
    stable_after_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.stall_after_s > 0:
            raise ValueError("stall_after_s must be > 0")
        if self.lost_after_s is not None and not self.lost_after_s >= self.stall_after_s:
            raise ValueError("lost_after_s must be >= stall_after_s")
        if self.connect_timeout_s is not None and not self.connect_timeout_s > 0:
            raise ValueError("connect_timeout_s must be > 0 or None")
        if not self.backoff_initial_s >= 0:
            raise ValueError("backoff_initial_s must be >= 0")
        if not self.backoff_max_s >= self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if not self.backoff_factor >= 1.0:
            raise ValueError("backoff_factor must be >= 1")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0 or None")
        if not self.stable_after_s >= 0:
            raise ValueError("stable_after_s must be >= 0")

    @property
    def effective_lost_after_s(self) -> float:
        return 2.0 * self.stall_after_s if self.lost_after_s is None else self.lost_after_s


@dataclass(frozen=True)
class Transition:
    """One state change. ``attempt`` is the watchdog's attempt counter after it."""

    prev: SourceState
    state: SourceState
    reason: str
    at: float
    attempt: int


class Watchdog:
    """Pure connection state machine for one source; see the module docstring.

    ``attempt`` counts reconnect attempts since the source last streamed
    stably: 0 while on the initial connection, 1 during the first reconnect
    attempt, and so on. ``next_attempt_at`` is set only in RECONNECTING.
    """

    def __init__(
        self,
        cfg: WatchdogConfig | None = None,
        *,
        is_file: bool,
        rng: random.Random | None = None,
        now: float | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else WatchdogConfig()
        self.is_file = is_file
        # A private Random: jitter must not depend on (or disturb) global state.
        self._rng = rng if rng is not None else random.Random()
        self.state = SourceState.CONNECTING
        self.attempt = 0
        self.next_attempt_at: float | None = None
        self.last_frame_at: float | None = None
        # When the current state was entered (None: initial state, time unknown
        # until the first call; connect timeout then counts from that call).
        self.state_since: float | None = now
        self.streaming_since: float | None = None  # first frame of this connection
        self.last_error: str | None = None
        self.frames = 0  # frames seen over the watchdog's lifetime
        self._last_now: float | None = now

    # -- public queries --------------------------------------------------
    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def should_reconnect(self, now: float) -> bool:
        """True when RECONNECTING and the backoff delay has elapsed."""
        self._advance(now)
        return (
            self.state is SourceState.RECONNECTING
            and self.next_attempt_at is not None
            and now >= self.next_attempt_at
        )

    def backoff_delay(self, attempt: int) -> float:
        """Delay (s) to wait before reconnect attempt number ``attempt`` (>= 1).

        Nominal delay ``min(max, initial * factor**(attempt-1))``, shortened by
        a random fraction of at most ``jitter`` (see :class:`WatchdogConfig`).
        Draws one number from the rng.
        """
        c = self.cfg
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        return backoff_delay(attempt, c.backoff_initial_s, c.backoff_max_s, c.backoff_factor, c.jitter, self._rng.random())

    # -- events ------------------------------------------------------------
    def on_connected(self, now: float) -> list[Transition]:
        """The source opened successfully: CONNECTING -> STREAMING.

        The stall clock starts now, so a source that connects but never
        delivers a frame is caught by the stall/lost timers. The attempt
        counter is *not* reset here (only by actual frames), so a server that
        accepts connections and then fails keeps backing off.
        """
        self._advance(now)
        if self.state is not SourceState.CONNECTING:
            return []
        self.last_frame_at = now
        self.streaming_since = None
        return [self._go(SourceState.STREAMING, "connected", now)]

    def on_frame(self, now: float) -> list[Transition]:
        """A decoded frame arrived.

        CONNECTING -> STREAMING (implicit connect), STALLED -> STREAMING
        (recovered); in STREAMING it just feeds the stall timer. Ignored in
        LOST/RECONNECTING/FAILED/EOS (a straggler from a dead connection).
        """
        self._advance(now)
        out: list[Transition] = []
        if self.state is SourceState.CONNECTING:
            self.streaming_since = None
            out.append(self._go(SourceState.STREAMING, "first frame", now))
        elif self.state is SourceState.STALLED:
            gap = now - self.last_frame_at if self.last_frame_at is not None else 0.0
            out.append(self._go(SourceState.STREAMING, f"frame after {gap:.3f}s stall", now))
        elif self.state is not SourceState.STREAMING:
            return []
        self.frames += 1
        self.last_frame_at = now
        if self.streaming_since is None:
            self.streaming_since = now
        self._maybe_reset_attempts(now)
        return out

    def on_error(self, now: float, reason: str) -> list[Transition]:
        """The connection failed (open error, read error, decoder error...).

        CONNECTING/STREAMING/STALLED -> LOST -> RECONNECTING (with
        ``next_attempt_at``) or -> FAILED when attempts are exhausted.
        Ignored in RECONNECTING (already handled) and terminal states.
        """
        self._advance(now)
        if self.state not in (
            SourceState.CONNECTING, SourceState.STREAMING, SourceState.STALLED
        ):
            return []
        return self._lose(now, reason)

    def on_eos(self, now: float) -> list[Transition]:
        """End of stream. Files end normally (-> EOS, terminal); for a live
        source an ending stream means the connection was lost (-> LOST ->
        RECONNECTING/FAILED) -- e.g. PyAV simply stops yielding packets when
        an RTSP server goes away."""
        self._advance(now)
        if self.state not in (
            SourceState.CONNECTING, SourceState.STREAMING, SourceState.STALLED
        ):
            return []
        if self.is_file:
            self.next_attempt_at = None
            return [self._go(SourceState.EOS, "end of file", now)]
        return self._lose(now, "end of stream on live source")

    def tick(self, now: float) -> list[Transition]:
        """Time-driven checks; call regularly (e.g. every frame and at least
        every second while waiting for frames).

        STREAMING -> STALLED once ``now - last_frame >= stall_after_s``;
        STALLED -> LOST -> ... once ``now - last_frame >= lost_after_s``;
        CONNECTING -> LOST -> ... after ``connect_timeout_s`` (if set).
        Thresholds are inclusive. A single late tick may return several
        transitions (STREAMING -> STALLED -> LOST -> RECONNECTING).
        """
        self._advance(now)
        out: list[Transition] = []
        cfg = self.cfg
        if self.state is SourceState.CONNECTING:
            assert self.state_since is not None  # set by _advance
            waited = now - self.state_since
            if cfg.connect_timeout_s is not None and waited >= cfg.connect_timeout_s:
                out += self._lose(now, f"connect timeout after {waited:.3f}s")
            return out
        if self.state is SourceState.STREAMING:
            self._maybe_reset_attempts(now)
            assert self.last_frame_at is not None
            gap = now - self.last_frame_at
            if gap >= cfg.stall_after_s:
                out.append(self._go(SourceState.STALLED, f"no frame for {gap:.3f}s", now))
        if self.state is SourceState.STALLED:
            assert self.last_frame_at is not None
            gap = now - self.last_frame_at
            if gap >= cfg.effective_lost_after_s:
                out += self._lose(now, f"stalled: no frame for {gap:.3f}s")
        return out

    def on_reconnect_attempt(self, now: float) -> list[Transition]:
        """The caller starts a reconnect: RECONNECTING -> CONNECTING, attempt+1.

        Ignored (empty list) unless RECONNECTING and the backoff has elapsed
        (``should_reconnect(now)``), so the backoff cannot be bypassed by
        mistake.
        """
        if not self.should_reconnect(now):
            return []
        self.attempt += 1
        self.next_attempt_at = None
        self.last_frame_at = None
        self.streaming_since = None
        return [self._go(SourceState.CONNECTING, f"reconnect attempt {self.attempt}", now)]

    # -- internals -----------------------------------------------------------
    def _advance(self, now: float) -> None:
        if self._last_now is not None and now < self._last_now:
            raise ValueError(
                f"time went backwards: now={now!r} < previous {self._last_now!r}; "
                "use a monotonic clock"
            )
        self._last_now = now
        if self.state_since is None:
            self.state_since = now

    def _go(self, state: SourceState, reason: str, now: float) -> Transition:
        t = Transition(prev=self.state, state=state, reason=reason, at=now, attempt=self.attempt)
        self.state = state
        self.state_since = now
        return t

    def _lose(self, now: float, reason: str) -> list[Transition]:
        """Enter LOST and immediately decide: RECONNECTING or FAILED."""
        self.last_error = reason
        self.streaming_since = None
        out = [self._go(SourceState.LOST, reason, now)]
        limit = self.cfg.max_attempts
        if limit is not None and self.attempt >= limit:
            self.next_attempt_at = None
            reason = f"gave up after {self.attempt} reconnect attempts"
            out.append(self._go(SourceState.FAILED, reason, now))
            return out
        delay = self.backoff_delay(self.attempt + 1)
        self.next_attempt_at = now + delay
        out.append(
            self._go(
                SourceState.RECONNECTING,
                f"attempt {self.attempt + 1} in {delay:.3f}s",
                now,
            )
        )
        return out

    def _maybe_reset_attempts(self, now: float) -> None:
        if (
            self.attempt
            and self.streaming_since is not None
            and now - self.streaming_since >= self.cfg.stable_after_s
        ):
            self.attempt = 0


class PtsUnwrapper:
    """Map raw per-frame PTS (seconds) onto one monotonically increasing timeline.

    Sources restart their timestamps: an RTSP reconnect usually starts again
    near 0, a camera reboot or a looping file jumps backwards, and FFmpeg
    yields ``None`` for the first RTSP frame before RTCP sync. Downstream
    (tracking, frame ordering in the scheduler) needs a timeline that never
    goes back, so:

    * normally ``out = raw + offset`` (the offset starts at 0, so an
      uninterrupted stream keeps its own timestamps and spacing);
    * after :meth:`on_reconnect`, or when ``raw + offset`` jumps back by more
      than ``reset_threshold_s`` (a timestamp reset), or forward by more than
      ``max_forward_jump_s`` (if set), the offset is re-based so that the
      frame gets ``last_out + nominal_interval`` and the following frames keep
      their raw spacing from there;
    * a small backwards step or a repeat (reordering glitch, <=
      ``reset_threshold_s``, default five nominal intervals) does not re-base;
      the frame is clamped to ``last_out + nominal_interval`` so the output
      still strictly increases and the original alignment is kept;
    * ``raw_pts=None`` gets ``last_out + nominal_interval`` (or 0.0 first).

    The caller keeps the raw PTS if it needs it; this only computes the
    output. Pure and deterministic.
    """

    def __init__(
        self,
        nominal_interval: float,
        *,
        reset_threshold_s: float | None = None,
        max_forward_jump_s: float | None = None,
    ) -> None:
        if not nominal_interval > 0:
            raise ValueError("nominal_interval must be > 0")
        if reset_threshold_s is None:
            # Reordering glitches are a few frames at most; a bigger backwards
            # step is a timestamp reset.
            reset_threshold_s = 5.0 * nominal_interval
        if not reset_threshold_s >= 0:
            raise ValueError("reset_threshold_s must be >= 0")
        if max_forward_jump_s is not None and not max_forward_jump_s > 0:
            raise ValueError("max_forward_jump_s must be > 0 or None")
        self.nominal_interval = float(nominal_interval)
        self.reset_threshold_s = float(reset_threshold_s)
        self.max_forward_jump_s = max_forward_jump_s
        self.offset = 0.0
        self.last_out: float | None = None
        self.resets = 0  # number of re-basings (reconnects + detected resets)
        self._rebase_next = False

    def on_reconnect(self) -> None:
        """The next frame comes from a new connection: re-base on it."""
        self._rebase_next = True

    def __call__(self, raw_pts: float | None) -> float:
        step = self.nominal_interval
        last = self.last_out
        if last is None:
            # First frame ever: keep the source's own origin.
            out = 0.0 if raw_pts is None else raw_pts + self.offset
            self._rebase_next = False
        elif raw_pts is None:
            out = last + step
        else:
            candidate = raw_pts + self.offset
            jump = candidate - last
            if (
                self._rebase_next
                or jump < -self.reset_threshold_s
                or (self.max_forward_jump_s is not None and jump > self.max_forward_jump_s)
            ):
                self.offset = last + step - raw_pts
                self.resets += 1
                self._rebase_next = False
                out = last + step
            elif jump <= 0:
                out = last + step  # small glitch: clamp, keep the offset
            else:
                out = candidate
        self.last_out = out
        return out
