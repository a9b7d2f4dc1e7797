"""The compute governor: a budget as a cap on MEASURED spending, enforced frame by frame.

A plan made on start-up costs is a forecast; models cost what they cost on this
machine today (a loaded core, a bigger frame). The governor keeps the promise that
benchmarks and users rely on: over every window of ``window`` consecutive frames the
measured spend is at most ``limit * window`` (plus the estimation error of the frames
booked but not yet measured; the headroom it admits with grows with the estimation error
it observes, so a loaded machine does not break the cap).

Per frame: :meth:`Governor.admit` takes the models a policy wants, in priority order,
and keeps those that fit in the room the window has left, using a running estimate of
each model's cost; after the frame, :meth:`Governor.charge` books what the executed
models measurably cost and updates the estimates (an exponential moving average that
follows rises faster than falls: a cap should err high), so the next decisions use the
machine's real costs. Start it from what a model costs on one frame alone: a budgeted
worker runs most models on one or two frames of a batch, where the per-call overhead is
not shared, so the batched cost the budget is expressed in would be an underestimate.

Quiet stretches bank room for busy ones inside the window; nothing is banked beyond it.
Pure: numbers in, decisions out; no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

__all__ = ["Governor"]


class _Frame:
    __slots__ = ("spend", "estimate", "final")

    def __init__(self, spend: float, estimate: float) -> None:
        # Until measured, ``spend`` is the estimate with headroom (what the window must hold room for).
        self.spend, self.estimate, self.final = spend, estimate, False


@dataclass
class Governor:
    limit: float  # allowed spend per frame, on average over every window (ms for a compute budget)
    window: int  # frames per window
    estimate: dict[str, float]  # predicted cost per model execution, updated from measurements
    alpha: float = 0.2  # weight of a new measurement below the running estimate
    alpha_up: float = 0.6  # ...and above it: costs that rise are believed fast, falls slowly (a cap errs high)
    margin: float = 0.05  # least headroom: admit a model only if its estimate x (1 + margin) fits
    max_margin: float = 1.0  # most headroom the learned estimation error may ask for
    _frames: deque[_Frame] = field(init=False, repr=False)
    _errors: deque[float] = field(init=False, repr=False)  # measured / booked spend of recent frames

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ValueError(f"governor: limit must be > 0, got {self.limit}")
        if self.window < 1:
            raise ValueError(f"governor: window must be >= 1 frame, got {self.window}")
        if not (0 < self.alpha <= 1 and 0 < self.alpha_up <= 1):
            raise ValueError("governor: alpha and alpha_up must be in (0, 1]")
        bad = [m for m, c in self.estimate.items() if not c >= 0]
        if bad:
            raise ValueError(f"governor: negative or unknown cost for {bad}")
        self.estimate = dict(self.estimate)
        # The last window-1 frames: measured spend, or the estimate of frames admitted but not charged yet
        # (a worker decides a whole batch before it runs any model).
        self._frames = deque(maxlen=self.window - 1)
        self._errors = deque(maxlen=64)

    def headroom(self) -> float:
        """The margin admissions use: at least ``margin``, more when recent frames cost more than
        booked (the 90th percentile of measured / booked over the last 64 frames, minus 1): on a
        loaded machine the estimates run behind, and the cap must hold anyway."""
        if len(self._errors) < 8:
            return self.margin
        q = sorted(self._errors)[int(0.9 * (len(self._errors) - 1))]
        return min(self.max_margin, max(self.margin, q - 1.0))

    def room(self) -> float:
        """What the next frame may spend so that the window ending with it stays within the cap."""
        return self.limit * self.window - sum(f.spend for f in self._frames)

    def admit(self, wanted: Iterable[str]) -> list[str]:
        """The models of ``wanted`` (in priority order) that fit the room, skipping those that do not.

        Books their estimated cost for this frame until :meth:`charge` books the measured one.
        """
        room = self.room()
        k = 1 + self.headroom()
        out = []
        for m in wanted:
            c = self.estimate[m] * k
            if c <= room:
                out.append(m)
                room -= c
        self._book(sum(self.estimate[m] for m in out), k)
        return out

    def admit_all_or_none(self, models: Sequence[str]) -> bool:
        """All of ``models`` together (a profiling frame), or nothing booked. True when admitted."""
        k = 1 + self.headroom()
        if sum(self.estimate[m] for m in models) * k > self.room():
            return False
        self._book(sum(self.estimate[m] for m in models), k)
        return True

    def _book(self, estimate: float, k: float) -> None:
        if self._frames.maxlen:
            self._frames.append(_Frame(estimate * k, estimate))

    def charge(self, measured: Mapping[str, float]) -> float:
        """Book the measured cost of the models executed on the oldest admitted frame not yet
        charged (frames are charged in the order they were admitted). Returns the frame's spend."""
        spent = 0.0
        for m, c in measured.items():
            if c < 0:
                raise ValueError(f"governor: negative measured cost for {m}")
            spent += c
            old = self.estimate.get(m)
            a = self.alpha_up if old is None or c > old else self.alpha
            self.estimate[m] = c if old is None else (1 - a) * old + a * c
        pending = next((f for f in self._frames if not f.final), None)
        if pending is not None:
            if pending.estimate > 0:
                self._errors.append(spent / pending.estimate)
            pending.spend, pending.final = spent, True
        return spent

    def used(self) -> float:
        """Spend per frame over the current window, measured where known (what records report as ``used``)."""
        n = len(self._frames)
        return sum(f.spend for f in self._frames) / n if n else 0.0
