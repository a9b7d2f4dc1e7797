"""The compute governor: a budget as a cap on MEASURED spending, enforced frame by frame.

A plan made on start-up costs is a forecast; models cost what they cost on this
machine today (a loaded core, a bigger frame). The governor keeps the promise that
benchmarks and users rely on: over every window of ``window`` consecutive frames (by
frame number) the measured spend is at most ``limit * window`` (plus the estimation error
of the frames booked but not yet measured; the headroom it admits with grows with the
estimation error it observes, so a loaded machine does not break the cap).

Per frame: :meth:`Governor.admit` takes the models a policy wants, in priority order,
and keeps those that fit in the room every window containing the frame has left, using a
running estimate of each model's cost; after the frame, :meth:`Governor.charge` books
what the executed models measurably cost and updates the estimates (an exponential
moving average that follows rises faster than falls: a cap should err high), so the next
decisions use the machine's real costs. Start it from what a model costs on one frame
alone: a budgeted worker runs most models on one or two frames of a batch, where the
per-call overhead is not shared, so the batched cost the budget is expressed in would be
an underestimate.

The per-frame spend lives in a :class:`SpendLedger`. :class:`LocalLedger` keeps it in
memory (one worker); a ledger in Redis (``stages.shared_state``) makes it one window
per camera for every worker, so two workers serving one camera share one cap instead of
each spending a full one. Frames may be booked out of order (workers read batches
concurrently, a reclaimed frame arrives late): a frame is admitted against every window
that contains it, not only the one it ends.

Quiet stretches bank room for busy ones inside the window; nothing is banked beyond it.
Pure: numbers in, decisions out; no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

__all__ = ["Governor", "LocalLedger", "SpendLedger", "window_room"]


def window_room(spend: Mapping[int, float], frame: int, window: int, cap: float) -> float:
    """What ``frame`` may spend so that every window of ``window`` frames containing it stays
    within ``cap``, given the other frames' spend (``frame``'s own entry, if any, is replaced)."""
    s = {g - frame: v for g, v in spend.items() if g != frame and -window < g - frame < window}
    total = sum(s.get(d, 0.0) for d in range(-window + 1, 1))  # the window ending at frame
    worst = total
    for j in range(1, window):  # the windows ending after it, which later frames may already fill
        total += s.get(j, 0.0) - s.get(j - window, 0.0)
        worst = max(worst, total)
    return cap - worst


def choose(costs: Sequence[float], room: float, all_or_none: bool) -> list[bool]:
    """Which of ``costs`` (in priority order) fit ``room``: greedily, skipping those that do not;
    with ``all_or_none``, all of them or none."""
    if all_or_none:
        fits = sum(costs) <= room
        return [fits] * len(costs)
    out = []
    for c in costs:
        ok = c <= room
        out.append(ok)
        if ok:
            room -= c
    return out


class SpendLedger(Protocol):
    """Where one camera's per-frame spend lives (booked estimates until measured)."""

    def book(self, frame: int, costs: Sequence[float], window: int, cap: float, all_or_none: bool) -> tuple[list[bool], float, int]:
        """Atomically: choose the costs that fit (:func:`window_room`, :func:`choose`) and record
        their sum as ``frame``'s spend. Returns the mask, and the spend and number of booked
        frames in the window ending at ``frame``, this one included."""
        ...

    def settle(self, frame: int, spent: float) -> None:
        """Replace ``frame``'s booked spend by its measured one."""
        ...


class LocalLedger:
    """A :class:`SpendLedger` in memory: frame -> spend, the last two windows kept."""

    def __init__(self) -> None:
        self.spend: dict[int, float] = {}

    def book(self, frame: int, costs: Sequence[float], window: int, cap: float, all_or_none: bool) -> tuple[list[bool], float, int]:
        mask = choose(costs, window_room(self.spend, frame, window, cap), all_or_none)
        self.spend[frame] = float(sum(c for c, ok in zip(costs, mask) if ok))
        for g in [g for g in self.spend if g <= frame - 2 * window]:
            del self.spend[g]
        inside = [v for g, v in self.spend.items() if frame - window < g <= frame]
        return mask, sum(inside), len(inside)

    def settle(self, frame: int, spent: float) -> None:
        self.spend[frame] = float(spent)


@dataclass
class Governor:
    limit: float  # allowed spend per frame, on average over every window (ms for a compute budget)
    window: int  # frames per window
    estimate: dict[str, float]  # predicted cost per model execution, updated from measurements
    alpha: float = 0.2  # weight of a new measurement below the running estimate
    alpha_up: float = 0.6  # ...and above it: costs that rise are believed fast, falls slowly (a cap errs high)
    margin: float = 0.05  # least headroom: admit a model only if its estimate x (1 + margin) fits
    max_margin: float = 1.0  # most headroom the learned estimation error may ask for
    early_margin: float = 0.25  # headroom until 8 frames have been measured against their booking
    ledger: SpendLedger = field(default_factory=LocalLedger)
    _pending: dict[int, tuple[float, float, bool]] = field(init=False, repr=False)  # frame -> (estimate, booked with headroom, all-or-none), until charged
    _errors: deque[float] = field(init=False, repr=False)  # measured / booked spend of recent frames
    _errors_all: deque[float] = field(init=False, repr=False)  # ...of recent all-or-none (profiling) frames
    _next: int = field(init=False, repr=False, default=0)  # frame number when callers give none
    _last: tuple[int, float, int] = field(init=False, repr=False, default=(-1, 0.0, 0))  # last admitted frame, its window's spend, frames

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
        # Frames admitted but not charged yet (a worker decides a whole batch before it runs any model).
        self._pending = {}
        self._errors = deque(maxlen=64)
        self._errors_all = deque(maxlen=16)

    def headroom(self) -> float:
        """The margin admissions use: at least ``margin``, more when recent frames cost more than
        booked (the 90th percentile of measured / booked over the last 64 frames, minus 1): on a
        loaded machine the estimates run behind, and the cap must hold anyway."""
        if len(self._errors) < 8:
            # Too few measured frames to know the error: assume a loaded machine (a budget small
            # enough that only the profiling frames run learns slowest, and each of its frames is
            # a large share of the window), or the worst error seen so far if larger.
            worst = max(self._errors, default=1.0) - 1.0
            return min(self.max_margin, max(self.margin, self.early_margin, worst))
        q = sorted(self._errors)[int(0.9 * (len(self._errors) - 1))]
        return min(self.max_margin, max(self.margin, q - 1.0))

    def headroom_all_or_none(self) -> float:
        """The margin a frame that runs every model (profiling) is booked with: at least
        :meth:`headroom`, and the WORST error seen on recent such frames (the early margin until 8
        have been measured). Such a frame is the largest single booking there is (at a 5% budget,
        half a window), it runs rarely, so its estimate learns least, and one of them costing more
        than booked breaks its window on its own; the frames between them are too cheap to say how
        far off it may be."""
        worst = max(self._errors_all, default=1.0) - 1.0
        if len(self._errors_all) < 8:
            worst = max(worst, self.early_margin)
        return min(self.max_margin, max(self.headroom(), worst))

    def room(self, frame: int | None = None) -> float:
        """What ``frame`` (default: the next) may spend so that every window containing it stays within the cap."""
        spend = getattr(self.ledger, "spend", None)
        if spend is None:
            raise TypeError("governor: room() needs an in-memory ledger")
        return window_room(spend, self._next if frame is None else frame, self.window, self.limit * self.window)

    def admit(self, wanted: Iterable[str], frame: int | None = None) -> list[str]:
        """The models of ``wanted`` (in priority order) that fit the room, skipping those that do not.

        Books their estimated cost for this frame until :meth:`charge` books the measured one.
        """
        wanted = list(wanted)
        mask = self._book(frame, wanted, all_or_none=False)
        return [m for m, ok in zip(wanted, mask) if ok]

    def admit_all_or_none(self, models: Sequence[str], frame: int | None = None) -> bool:
        """All of ``models`` together (a profiling frame), or nothing booked. True when admitted."""
        return all(self._book(frame, list(models), all_or_none=True)) if models else True

    def _book(self, frame: int | None, models: list[str], all_or_none: bool) -> list[bool]:
        f = self._next if frame is None else int(frame)
        self._next = max(self._next, f + 1)
        k = 1 + (self.headroom_all_or_none() if all_or_none else self.headroom())
        costs = [self.estimate[m] * k for m in models]
        mask, window_spend, n = self.ledger.book(f, costs, self.window, self.limit * self.window, all_or_none)
        est = sum(self.estimate[m] for m, ok in zip(models, mask) if ok)
        self._pending[f] = (est, est * k, all_or_none)
        if len(self._pending) > 4 * self.window:  # decided but never charged (a failed write): forget the oldest
            self._pending.pop(next(iter(self._pending)))
        if f >= self._last[0]:
            self._last = (f, window_spend, n)
        return mask

    def charge(self, measured: Mapping[str, float], frame: int | None = None) -> float:
        """Book the measured cost of the models executed on ``frame`` (default: the oldest admitted
        frame not yet charged) and learn from it. Returns the frame's spend."""
        spent = 0.0
        for m, c in measured.items():
            if c < 0:
                raise ValueError(f"governor: negative measured cost for {m}")
            spent += c
            old = self.estimate.get(m)
            a = self.alpha_up if old is None or c > old else self.alpha
            self.estimate[m] = c if old is None else (1 - a) * old + a * c
        if frame is None:
            frame = next(iter(self._pending), None)
        if frame is not None:
            booked = self._pending.pop(frame, None)
            if booked is not None:
                if booked[0] > 0:
                    self._errors.append(spent / booked[0])
                    if booked[2]:
                        self._errors_all.append(spent / booked[0])
                last, total, n = self._last
                if last - self.window < frame <= last:
                    self._last = (last, total - booked[1] + spent, n)
            self.ledger.settle(frame, spent)
        return spent

    def used(self) -> float:
        """Spend per frame over the window ending at the last admitted frame, measured where known
        (what records report as ``used``)."""
        _, total, n = self._last
        return total / n if n else 0.0
