"""Unit tests for stages.watchdog: the pure decoder connection state machine
and the PTS unwrapper. Time is injected (plain floats), nothing sleeps."""

from __future__ import annotations

import dataclasses
import random

import pytest

from stages.watchdog import (
    PtsUnwrapper,
    SourceState,
    Transition,
    Watchdog,
    WatchdogConfig,
)

S = SourceState


def wd(is_file: bool = False, seed: int | None = 0, **cfg: object) -> Watchdog:
    """A watchdog with deterministic backoff (jitter 0 unless given)."""
    cfg.setdefault("jitter", 0.0)
    return Watchdog(WatchdogConfig(**cfg), is_file=is_file, rng=random.Random(seed))


def states(ts: list[Transition]) -> list[tuple[SourceState, SourceState]]:
    return [(t.prev, t.state) for t in ts]


def streaming(w: Watchdog, at: float = 0.0) -> Watchdog:
    w.on_connected(at)
    w.on_frame(at)
    return w


# --------------------------------------------------------------------------
# basic transitions
# --------------------------------------------------------------------------


def test_initial_state() -> None:
    w = wd()
    assert w.state is S.CONNECTING
    assert w.attempt == 0
    assert w.next_attempt_at is None
    assert w.last_frame_at is None
    assert not w.terminal


def test_default_config_values() -> None:
    c = WatchdogConfig()
    assert (c.stall_after_s, c.backoff_initial_s, c.backoff_max_s) == (5.0, 0.5, 30.0)
    assert (c.backoff_factor, c.jitter, c.max_attempts) == (2.0, 0.2, 10)
    assert c.effective_lost_after_s == 10.0
    assert WatchdogConfig(lost_after_s=7.0).effective_lost_after_s == 7.0


def test_connected_goes_streaming() -> None:
    w = wd()
    assert w.on_connected(1.0) == [Transition(S.CONNECTING, S.STREAMING, "connected", 1.0, 0)]
    assert w.state is S.STREAMING
    assert w.last_frame_at == 1.0  # stall clock starts at connect
    assert w.on_frame(1.1) == []  # frames while streaming: no transition
    assert w.last_frame_at == 1.1
    assert w.frames == 1


def test_first_frame_implies_connected() -> None:
    w = wd()
    assert w.on_frame(2.0) == [Transition(S.CONNECTING, S.STREAMING, "first frame", 2.0, 0)]
    assert w.state is S.STREAMING


def test_connected_twice_is_ignored() -> None:
    w = wd()
    w.on_connected(1.0)
    assert w.on_connected(2.0) == []
    assert w.state is S.STREAMING
    assert w.last_frame_at == 1.0  # not disturbed


def test_transition_is_frozen() -> None:
    t = Transition(S.CONNECTING, S.STREAMING, "x", 0.0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.state = S.FAILED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        WatchdogConfig().jitter = 0.5  # type: ignore[misc]


# --------------------------------------------------------------------------
# stall detection
# --------------------------------------------------------------------------


def test_stall_threshold_is_exact_and_inclusive() -> None:
    w = streaming(wd(stall_after_s=5.0))
    w.on_frame(10.0)
    assert w.tick(14.999) == []
    assert w.state is S.STREAMING
    ts = w.tick(15.0)
    assert states(ts) == [(S.STREAMING, S.STALLED)]
    assert ts[0].at == 15.0
    assert ts[0].reason == "no frame for 5.000s"
    assert w.state is S.STALLED
    assert w.tick(15.5) == []  # already stalled: nothing new


def test_stall_counts_from_connect_when_no_frame_ever_arrives() -> None:
    w = wd(stall_after_s=2.0)
    w.on_connected(100.0)
    assert w.tick(101.9) == []
    assert states(w.tick(102.0)) == [(S.STREAMING, S.STALLED)]


def test_stall_recovery_on_frame() -> None:
    w = streaming(wd(stall_after_s=5.0))
    w.tick(5.0)
    assert w.state is S.STALLED
    ts = w.on_frame(7.0)
    assert ts == [Transition(S.STALLED, S.STREAMING, "frame after 7.000s stall", 7.0, 0)]
    # The stall timer restarts from the recovering frame.
    assert w.tick(11.999) == []
    assert states(w.tick(12.0)) == [(S.STREAMING, S.STALLED)]


def test_stalled_too_long_is_lost_default_twice_stall() -> None:
    w = streaming(wd(stall_after_s=5.0, backoff_initial_s=0.5))
    w.on_frame(10.0)
    w.tick(15.0)
    assert w.tick(19.999) == []
    assert w.state is S.STALLED
    ts = w.tick(20.0)
    assert states(ts) == [(S.STALLED, S.LOST), (S.LOST, S.RECONNECTING)]
    assert ts[0].reason == "stalled: no frame for 10.000s"
    assert w.state is S.RECONNECTING
    assert w.next_attempt_at == pytest.approx(20.5)
    assert w.last_error == "stalled: no frame for 10.000s"


def test_custom_lost_after() -> None:
    w = streaming(wd(stall_after_s=1.0, lost_after_s=3.0))
    w.tick(1.0)
    assert w.tick(2.999) == []
    assert states(w.tick(3.0))[0] == (S.STALLED, S.LOST)


def test_one_late_tick_cascades_through_all_states() -> None:
    w = streaming(wd(stall_after_s=5.0))
    ts = w.tick(60.0)
    assert states(ts) == [
        (S.STREAMING, S.STALLED),
        (S.STALLED, S.LOST),
        (S.LOST, S.RECONNECTING),
    ]
    assert all(t.at == 60.0 for t in ts)


# --------------------------------------------------------------------------
# errors, backoff, reconnect
# --------------------------------------------------------------------------


def test_error_while_streaming() -> None:
    w = streaming(wd(backoff_initial_s=0.5))
    ts = w.on_error(3.0, "connection reset")
    assert ts == [
        Transition(S.STREAMING, S.LOST, "connection reset", 3.0, 0),
        Transition(S.LOST, S.RECONNECTING, "attempt 1 in 0.500s", 3.0, 0),
    ]
    assert w.next_attempt_at == 3.5
    assert w.last_error == "connection reset"


def test_error_while_connecting_and_while_stalled() -> None:
    w = wd()
    assert states(w.on_error(0.0, "refused")) == [(S.CONNECTING, S.LOST), (S.LOST, S.RECONNECTING)]
    w2 = streaming(wd(stall_after_s=1.0))
    w2.tick(1.0)
    assert states(w2.on_error(1.5, "x")) == [(S.STALLED, S.LOST), (S.LOST, S.RECONNECTING)]


def test_should_reconnect_and_attempt() -> None:
    w = wd(backoff_initial_s=0.5)
    w.on_error(10.0, "refused")
    assert not w.should_reconnect(10.0)
    assert not w.should_reconnect(10.499)
    # Calling the attempt early is ignored: the backoff cannot be bypassed.
    assert w.on_reconnect_attempt(10.499) == []
    assert w.state is S.RECONNECTING
    assert w.attempt == 0
    assert w.should_reconnect(10.5)
    ts = w.on_reconnect_attempt(10.5)
    assert ts == [Transition(S.RECONNECTING, S.CONNECTING, "reconnect attempt 1", 10.5, 1)]
    assert w.state is S.CONNECTING
    assert w.attempt == 1
    assert w.next_attempt_at is None
    assert not w.should_reconnect(11.0)


def test_reconnect_attempt_ignored_when_not_reconnecting() -> None:
    w = streaming(wd())
    assert w.on_reconnect_attempt(100.0) == []
    assert w.state is S.STREAMING


def test_error_while_reconnecting_is_ignored() -> None:
    w = wd()
    w.on_error(0.0, "a")
    due = w.next_attempt_at
    assert w.on_error(0.1, "b") == []
    assert (w.state, w.next_attempt_at, w.attempt, w.last_error) == (S.RECONNECTING, due, 0, "a")


def test_straggler_frame_while_reconnecting_is_ignored() -> None:
    w = streaming(wd())
    w.on_error(1.0, "x")
    assert w.on_frame(1.01) == []
    assert w.state is S.RECONNECTING
    assert w.frames == 1


def fail_repeatedly(w: Watchdog, n: int, t0: float = 0.0) -> list[float]:
    """Fail the connection n times in a row; returns the backoff delays used."""
    t = t0
    delays = []
    for _ in range(n):
        ts = w.on_error(t, "refused")
        if w.state is S.FAILED:
            break
        assert ts[-1].state is S.RECONNECTING
        assert w.next_attempt_at is not None
        delays.append(w.next_attempt_at - t)
        t = w.next_attempt_at
        assert w.on_reconnect_attempt(t)
        t += 0.25  # the connect attempt itself takes a while
    return delays


def test_backoff_growth_and_cap() -> None:
    w = wd(backoff_initial_s=0.5, backoff_factor=2.0, backoff_max_s=30.0, max_attempts=None)
    delays = fail_repeatedly(w, 9)
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
    assert w.attempt == 9


def test_backoff_delay_values() -> None:
    w = wd(backoff_initial_s=1.0, backoff_factor=3.0, backoff_max_s=20.0)
    assert [w.backoff_delay(a) for a in (1, 2, 3, 4, 5)] == [1.0, 3.0, 9.0, 20.0, 20.0]
    # Huge attempt numbers (max_attempts=None for days) must not overflow.
    assert w.backoff_delay(100_000) == 20.0
    with pytest.raises(ValueError):
        w.backoff_delay(0)


def test_backoff_factor_one_is_constant() -> None:
    w = wd(backoff_initial_s=2.0, backoff_factor=1.0, backoff_max_s=2.0)
    assert [w.backoff_delay(a) for a in (1, 2, 10)] == [2.0, 2.0, 2.0]


def test_jitter_bounds_seeded() -> None:
    w = Watchdog(
        WatchdogConfig(backoff_initial_s=0.5, backoff_factor=2.0, backoff_max_s=30.0, jitter=0.2),
        is_file=False,
        rng=random.Random(1234),
    )
    draws = [w.backoff_delay(3) for _ in range(2000)]  # nominal 2.0
    assert all(1.6 < d <= 2.0 for d in draws)
    # It really spreads over the interval (not a constant).
    assert min(draws) < 1.62 and max(draws) > 1.98
    capped = [w.backoff_delay(50) for _ in range(2000)]  # nominal = cap
    assert all(24.0 < d <= 30.0 for d in capped)  # never above backoff_max_s
    assert len(set(capped)) > 1900  # cameras desynchronise even at the cap


def test_jitter_exact_values_from_seed() -> None:
    w = Watchdog(WatchdogConfig(jitter=0.2), is_file=False, rng=random.Random(7))
    ref = random.Random(7)
    expected = [0.5 * (1 - 0.2 * ref.random()), 1.0 * (1 - 0.2 * ref.random())]
    assert [w.backoff_delay(1), w.backoff_delay(2)] == expected
    # First draw of Random(7) is 0.32383..., pin a literal too.
    assert expected[0] == pytest.approx(0.5 * (1 - 0.2 * 0.32383276483316237))


def test_jitter_applied_to_next_attempt_at() -> None:
    w1 = Watchdog(WatchdogConfig(jitter=0.2), is_file=False, rng=random.Random(99))
    w2 = Watchdog(WatchdogConfig(jitter=0.2), is_file=False, rng=random.Random(99))
    w3 = Watchdog(WatchdogConfig(jitter=0.2), is_file=False, rng=random.Random(100))
    for w in (w1, w2, w3):
        w.on_error(10.0, "x")
    assert w1.next_attempt_at == w2.next_attempt_at  # same seed -> same schedule
    assert w1.next_attempt_at != w3.next_attempt_at
    assert 10.4 < w1.next_attempt_at <= 10.5  # type: ignore[operator]


def test_max_attempts_exhausted_fails() -> None:
    w = wd(max_attempts=3)
    delays = fail_repeatedly(w, 3)  # initial connect + reconnect attempts 1, 2
    assert len(delays) == 3
    assert w.attempt == 3 and w.state is S.CONNECTING  # attempt 3 in progress
    ts = w.on_error(100.0, "refused again")
    assert ts == [
        Transition(S.CONNECTING, S.LOST, "refused again", 100.0, 3),
        Transition(S.LOST, S.FAILED, "gave up after 3 reconnect attempts", 100.0, 3),
    ]
    assert w.state is S.FAILED
    assert w.terminal
    assert w.next_attempt_at is None


def test_max_attempts_zero_fails_on_first_loss() -> None:
    w = streaming(wd(max_attempts=0))
    assert states(w.on_error(1.0, "x")) == [(S.STREAMING, S.LOST), (S.LOST, S.FAILED)]


def test_failed_is_terminal_and_ignores_everything() -> None:
    w = wd(max_attempts=0)
    w.on_error(0.0, "x")
    assert w.state is S.FAILED
    for call in (
        lambda: w.on_frame(1.0),
        lambda: w.on_connected(1.0),
        lambda: w.on_error(1.0, "y"),
        lambda: w.on_eos(1.0),
        lambda: w.tick(1000.0),
        lambda: w.on_reconnect_attempt(1000.0),
    ):
        assert call() == []
        assert w.state is S.FAILED
    assert not w.should_reconnect(10_000.0)
    assert w.frames == 0


def test_max_attempts_none_retries_forever() -> None:
    w = wd(max_attempts=None, backoff_max_s=30.0)
    delays = fail_repeatedly(w, 300)
    assert len(delays) == 300
    assert w.state is S.CONNECTING
    assert w.attempt == 300
    assert max(delays) == pytest.approx(30.0)


def test_streaming_resets_attempt_counter() -> None:
    w = wd(backoff_initial_s=0.5, max_attempts=3)
    fail_repeatedly(w, 2)
    assert w.attempt == 2
    w.on_connected(50.0)
    # Connecting alone does not reset: a server that accepts and then drops
    # the connection must keep backing off (and eventually fail).
    assert w.attempt == 2
    w.on_frame(50.1)
    assert w.attempt == 0
    w.on_error(60.0, "x")
    assert w.next_attempt_at == pytest.approx(60.5)  # back to the initial delay
    # ... and the full budget of attempts is available again.
    assert w.on_reconnect_attempt(60.5)
    assert w.attempt == 1
    fail_repeatedly(w, 2, t0=61.0)
    assert w.state is S.CONNECTING and w.attempt == 3
    assert w.on_error(200.0, "x")[-1].state is S.FAILED


def test_connect_without_frames_keeps_backoff_growing() -> None:
    w = wd(backoff_initial_s=1.0, stall_after_s=1.0)
    w.on_error(0.0, "refused")
    w.on_reconnect_attempt(1.0)
    w.on_connected(1.5)
    ts = w.on_error(2.0, "dropped")
    assert ts[-1].reason == "attempt 2 in 2.000s"
    assert w.next_attempt_at == 4.0


def test_stable_after_resets_only_after_stable_streaming() -> None:
    w = wd(stable_after_s=10.0, stall_after_s=5.0)
    fail_repeatedly(w, 2)
    t = 100.0
    w.on_connected(t)
    w.on_frame(t)
    w.on_frame(t + 4.0)
    w.on_frame(t + 8.0)
    assert w.attempt == 2
    w.on_frame(t + 9.999)
    assert w.attempt == 2
    assert w.tick(t + 10.0) == []  # tick can also confirm stability
    assert w.attempt == 0


def test_connect_timeout() -> None:
    w = wd(connect_timeout_s=3.0)
    assert w.tick(10.0) == []  # first observation: connecting since 10.0
    assert w.tick(12.999) == []
    ts = w.tick(13.0)
    assert states(ts) == [(S.CONNECTING, S.LOST), (S.LOST, S.RECONNECTING)]
    assert ts[0].reason == "connect timeout after 3.000s"
    # After a reconnect attempt the timeout counts from the attempt.
    t = w.next_attempt_at
    w.on_reconnect_attempt(t)  # type: ignore[arg-type]
    assert w.tick(t + 2.9) == []  # type: ignore[operator]
    assert states(w.tick(t + 3.0))[0] == (S.CONNECTING, S.LOST)  # type: ignore[operator]


def test_no_connect_timeout_by_default() -> None:
    w = wd()
    w.tick(0.0)
    assert w.tick(1e6) == []
    assert w.state is S.CONNECTING


def test_connect_timeout_can_start_at_construction() -> None:
    w = Watchdog(WatchdogConfig(connect_timeout_s=2.0), is_file=False, now=5.0)
    assert states(w.tick(7.0))[0] == (S.CONNECTING, S.LOST)


# --------------------------------------------------------------------------
# end of stream: files vs live
# --------------------------------------------------------------------------


def test_file_eos_is_terminal() -> None:
    w = streaming(wd(is_file=True))
    assert w.on_eos(30.0) == [Transition(S.STREAMING, S.EOS, "end of file", 30.0, 0)]
    assert w.state is S.EOS and w.terminal
    assert w.on_frame(31.0) == []
    assert w.on_error(31.0, "late") == []
    assert w.tick(1000.0) == []  # no stall detection after the end
    assert not w.should_reconnect(1000.0)
    assert w.state is S.EOS


def test_file_eos_from_stalled_and_connecting() -> None:
    w = streaming(wd(is_file=True, stall_after_s=1.0))
    w.tick(1.0)
    assert states(w.on_eos(1.5)) == [(S.STALLED, S.EOS)]
    w2 = wd(is_file=True)  # empty file: EOS before any frame
    assert states(w2.on_eos(0.0)) == [(S.CONNECTING, S.EOS)]


def test_live_eos_is_a_loss() -> None:
    w = streaming(wd(is_file=False, backoff_initial_s=0.5))
    ts = w.on_eos(30.0)
    assert ts == [
        Transition(S.STREAMING, S.LOST, "end of stream on live source", 30.0, 0),
        Transition(S.LOST, S.RECONNECTING, "attempt 1 in 0.500s", 30.0, 0),
    ]
    assert w.next_attempt_at == 30.5


def test_eos_while_reconnecting_is_ignored() -> None:
    for is_file in (True, False):
        w = wd(is_file=is_file)
        w.on_error(0.0, "x")
        assert w.on_eos(0.1) == []
        assert w.state is S.RECONNECTING


# --------------------------------------------------------------------------
# programming errors
# --------------------------------------------------------------------------


def test_time_going_backwards_raises_and_keeps_state() -> None:
    w = streaming(wd(), at=10.0)
    with pytest.raises(ValueError, match="backwards"):
        w.tick(9.0)
    with pytest.raises(ValueError):
        w.on_frame(9.999)
    assert w.state is S.STREAMING
    assert w.last_frame_at == 10.0
    assert w.on_frame(10.0) == []  # equal time is fine


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stall_after_s": 0.0},
        {"stall_after_s": 5.0, "lost_after_s": 4.0},
        {"backoff_initial_s": -1.0},
        {"backoff_initial_s": 10.0, "backoff_max_s": 5.0},
        {"backoff_factor": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"max_attempts": -1},
        {"connect_timeout_s": 0.0},
        {"stable_after_s": -1.0},
    ],
)
def test_invalid_config_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WatchdogConfig(**kwargs)


# --------------------------------------------------------------------------
# a full camera story
# --------------------------------------------------------------------------


def test_camera_reboot_story() -> None:
    w = wd(is_file=False, stall_after_s=5.0, backoff_initial_s=0.5, max_attempts=5)
    log: list[Transition] = []
    log += w.on_connected(0.0)
    for i in range(1, 26):  # 25 fps for 1 s
        log += w.on_frame(i * 0.04)
        log += w.tick(i * 0.04)
    log += w.on_eos(1.5)  # server went away: PyAV just stops yielding
    assert w.should_reconnect(2.0)
    log += w.on_reconnect_attempt(2.0)
    log += w.on_error(2.1, "Connection refused")  # still rebooting
    assert w.next_attempt_at == pytest.approx(3.1)
    assert not w.should_reconnect(3.0)
    log += w.on_reconnect_attempt(3.1)
    log += w.on_connected(3.3)
    log += w.on_frame(3.4)
    assert [t.state for t in log] == [
        S.STREAMING,
        S.LOST,
        S.RECONNECTING,
        S.CONNECTING,
        S.LOST,
        S.RECONNECTING,
        S.CONNECTING,
        S.STREAMING,
    ]
    assert [t.attempt for t in log] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert w.attempt == 0  # reset by the frame after the successful reconnect
    assert w.frames == 26


# --------------------------------------------------------------------------
# PtsUnwrapper
# --------------------------------------------------------------------------


def run(u: PtsUnwrapper, raws: list[float | None]) -> list[float]:
    return [u(r) for r in raws]


def test_pts_uninterrupted_stream_passes_through() -> None:
    u = PtsUnwrapper(0.04)
    raws = [0.0, 0.04, 0.08, 0.12, 0.2]  # includes a dropped frame (gap kept)
    assert run(u, raws) == raws
    assert u.resets == 0


def test_pts_keeps_source_origin() -> None:
    u = PtsUnwrapper(0.1)
    assert run(u, [1000.0, 1000.1]) == pytest.approx([1000.0, 1000.1])


def test_pts_reset_to_zero_continues_from_last_plus_interval() -> None:
    u = PtsUnwrapper(0.04)
    out = run(u, [10.0, 10.04, 10.08, 0.0, 0.04, 0.08])
    assert out == pytest.approx([10.0, 10.04, 10.08, 10.12, 10.16, 10.20])
    assert u.resets == 1
    assert u.offset == pytest.approx(10.12)


def test_pts_multiple_resets_accumulate() -> None:
    # Any backwards step is a reset with reset_threshold_s=0.
    u = PtsUnwrapper(0.5, reset_threshold_s=0.0)
    out = run(u, [0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0, 0.5])  # a 1.5 s looping file
    assert out == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    assert u.resets == 2


def test_pts_reconnect_rebases_even_if_raw_looks_plausible() -> None:
    u = PtsUnwrapper(0.04)
    run(u, [5.0, 5.04])
    u.on_reconnect()
    # The new session's clock is unrelated to the old one, even if it happens
    # to be larger: continue the timeline right after the last frame.
    assert run(u, [7.0, 7.04, 7.12]) == pytest.approx([5.08, 5.12, 5.20])
    assert u.resets == 1
    u.on_reconnect()
    assert u(0.0) == pytest.approx(5.24)
    assert u.resets == 2


def test_pts_default_reset_threshold_is_five_intervals() -> None:
    assert PtsUnwrapper(0.04).reset_threshold_s == pytest.approx(0.2)
    u = PtsUnwrapper(0.04)
    run(u, [1.0, 1.04])
    assert u(1.04 - 0.2) == pytest.approx(1.08)  # exactly 5 intervals back: clamp
    assert u.resets == 0
    assert u(1.04 - 0.21) == pytest.approx(1.12)  # beyond: reset
    assert u.resets == 1
    assert u(1.04 - 0.17) == pytest.approx(1.16)  # spacing kept after the reset


def test_pts_small_backwards_glitch_is_clamped_not_rebased() -> None:
    u = PtsUnwrapper(0.04, reset_threshold_s=1.0)
    out = run(u, [1.0, 1.04, 1.02, 1.04, 1.08, 1.12])
    assert out[:3] == pytest.approx([1.0, 1.04, 1.08])  # 1.02 clamped
    assert out[3] == pytest.approx(1.12)  # 1.04 (a repeat) clamped too
    assert out[4] == pytest.approx(1.16)  # 1.08 still behind -> clamped
    assert out[5] == pytest.approx(1.20)  # 1.12 still behind -> clamped
    assert u.resets == 0
    assert u.offset == 0.0  # original alignment kept
    assert u(1.5) == 1.5  # once raw is ahead again, it passes through


def test_pts_duplicate_timestamp_still_advances() -> None:
    u = PtsUnwrapper(0.04)
    assert run(u, [0.0, 0.04, 0.04, 0.12]) == pytest.approx([0.0, 0.04, 0.08, 0.12])
    assert u.resets == 0


def test_pts_none_values() -> None:
    u = PtsUnwrapper(0.08)
    # FFmpeg's first RTSP frame often has no pts.
    assert run(u, [None, 0.08, 0.16, None, 0.32]) == pytest.approx([0.0, 0.08, 0.16, 0.24, 0.32])
    u.on_reconnect()
    assert u(None) == pytest.approx(0.40)
    assert u(3.0) == pytest.approx(0.48)  # the rebase waits for a real pts
    assert u(3.08) == pytest.approx(0.56)


def test_pts_max_forward_jump() -> None:
    u = PtsUnwrapper(0.1, max_forward_jump_s=60.0)
    assert run(u, [0.0, 0.1, 30.0]) == pytest.approx([0.0, 0.1, 30.0])  # a 30 s gap is real
    assert u(3600.0) == pytest.approx(30.1)  # a 1 h jump is a clock change
    assert u.resets == 1
    unbounded = PtsUnwrapper(0.1)
    assert run(unbounded, [0.0, 3600.0]) == [0.0, 3600.0]


def test_pts_random_resets_always_strictly_monotonic() -> None:
    rng = random.Random(5)
    u = PtsUnwrapper(0.04)
    raw = 0.0
    prev: float | None = None
    rebased = 0
    for _ in range(5000):
        r = rng.random()
        if r < 0.01:
            raw = rng.uniform(0.0, 100.0)  # arbitrary jump (may go either way)
        elif r < 0.02:
            u.on_reconnect()
            raw = 0.0
        else:
            raw += 0.04
        resets_before = u.resets
        out = u(raw)
        if prev is not None:
            assert out > prev
            if r >= 0.02 or u.resets > resets_before:
                # Within a segment, and at each re-basing, frames are exactly
                # one nominal interval apart.
                assert out - prev == pytest.approx(0.04)
        rebased += u.resets > resets_before
        prev = out
    assert rebased == u.resets > 40  # reconnects + backward jumps were hit


@pytest.mark.parametrize(
    "args",
    [
        {"nominal_interval": 0.0},
        {"nominal_interval": -1.0},
        {"nominal_interval": 0.04, "reset_threshold_s": -1.0},
        {"nominal_interval": 0.04, "max_forward_jump_s": 0.0},
    ],
)
def test_pts_invalid_args(args: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PtsUnwrapper(**args)
