"""The supervisor's rules with real child processes and an injected clock (no sleeping to
reach a backoff): crashes restart with capped exponential backoff, a stage that failed on
the user's input stays down after saying so once, a finished one stays finished."""

from __future__ import annotations

import os
import time

import pytest
import stage_targets

from pipeline.app.supervisor import Child, Supervisor
from pipeline.config import parse_config
from pipeline.exitcodes import ExitCode, should_restart


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def supervisor(clock: FakeClock, *children: Child, backoff_max_s: float = 2.0) -> Supervisor:
    cfg = parse_config({"cameras": {"x": {"source": "unused.mp4", "models": ["scene_light"]}}})
    sup = Supervisor(cfg, "redis://unused", workers=1, backoff_max_s=backoff_max_s, stable_after_s=60.0, clock=clock)
    sup.children = []
    for c in children:
        sup.add(c)
    return sup.start()


def wait_exited(sup: Supervisor, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(c.proc is not None and c.proc.is_alive() for c in sup.children):
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.02)


@pytest.mark.parametrize("code, restart", [(0, False), (ExitCode.FAILED, False), (1, True), (ExitCode.TEMPFAIL, True), (-9, True), (None, True)])
def test_which_exits_restart(code: int | None, restart: bool) -> None:
    assert should_restart(code) is restart


def test_a_crashing_child_restarts_with_capped_exponential_backoff() -> None:
    clock = FakeClock()
    sup = supervisor(clock, Child("worker:crashy", os._exit, (3,)))
    delays = []
    try:
        for _ in range(4):
            wait_exited(sup)
            events = sup.poll()  # notices the exit, schedules the restart
            assert len(events) == 1 and "exited with code 3" in events[0].text and not events[0].failed
            delays.append(float(events[0].text.split("restarting in ")[1].rstrip("s")))
            c = sup.children[0]
            clock.t += delays[-1] - 0.01
            assert sup.poll() == [] and c.proc is None  # not yet due
            clock.t += 0.02
            sup.poll()
            assert c.proc is not None  # restarted once the delay has passed
    finally:
        sup.stop()
    assert delays == [0.5, 1.0, 2.0, 2.0]  # doubling, capped at backoff_max_s
    assert sup.children[0].restarts == 4 and sup.children[0].history == [3, 3, 3, 3]


def test_backoff_resets_after_a_stable_run() -> None:
    clock = FakeClock()
    sup = supervisor(clock, Child("worker:crashy", os._exit, (3,)))
    try:
        wait_exited(sup)
        first = sup.poll()[0].text
        clock.t += 0.6
        sup.poll()
        clock.t += 120  # this incarnation "ran" for two minutes before dying
        wait_exited(sup)
        second = sup.poll()[0].text
    finally:
        sup.stop()
    assert first.endswith("restarting in 0.5s") and second.endswith("restarting in 0.5s")


def test_a_worker_that_fails_on_user_input_says_it_once_and_stays_down(capfd: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    sup = supervisor(clock, Child("worker:0", stage_targets.bad_input, ()))
    try:
        wait_exited(sup)
        events = sup.poll()
        for _ in range(5):
            clock.t += 60
            assert sup.poll() == []
    finally:
        sup.stop()
    c = sup.children[0]
    assert c.history == [ExitCode.FAILED] and c.restarts == 0 and c.finished
    assert len(events) == 1 and events[0].failed and sup.workers_gone()
    err = capfd.readouterr().err
    assert err.count("mlink: error: camera door: model ghost: cannot import 'nowhere'") == 1
    assert "Traceback" not in err


def test_finished_and_failed_decoders_stay_down() -> None:
    clock = FakeClock()
    sup = supervisor(clock, Child("decoder:a", stage_targets.finishes, ()), Child("decoder:b", stage_targets.fails, ()))
    try:
        wait_exited(sup)
        assert sup.poll() == []  # decoders ending are not news; their cameras' status events say why
        clock.t += 60
        sup.poll()
    finally:
        sup.stop()
    assert [c.history for c in sup.children] == [[0], [ExitCode.FAILED]]
    assert all(c.restarts == 0 for c in sup.children) and sup.decoders_done()
