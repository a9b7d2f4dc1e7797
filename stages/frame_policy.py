"""The per-frame policy interface between the scheduler and the policies it runs.

The scheduler asks a :class:`FramePolicy` which models execute on a frame and how
the others are filled; :class:`AllPolicy` is the reference. The budgeted policies
live in :mod:`stages.policy_runtime`, which implements this interface; the
scheduler imports only this module, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from links.outputs import ModelOutput, Origin
from links.samples import ModelMeta
from pipeline.streams import FrameMsg


@dataclass
class Filled:
    """A non-executed model's output as the policy derived it."""

    origin: Origin
    output: ModelOutput | None
    via: tuple[str, ...] = ()
    confidence: float | None = None


class FramePolicy(Protocol):
    """Decides per frame which models execute and how the others are filled."""

    name: str

    def decide(self, camera: str, frame: FrameMsg, models: list[str]) -> set[str]: ...

    def fill(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput], others: list[str]) -> dict[str, Filled]: ...

    def describe(self, camera: str, frame: FrameMsg) -> dict[str, Any]:
        """The policy's state for this frame's record (as it was when the frame was decided)."""
        ...

    def bind(self, metas: dict[str, ModelMeta]) -> None:
        """Learns each model's kind and classes when the worker adds a camera."""
        ...

    def observe(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput], ms: dict[str, float]) -> None:
        """Sees every executed output and its measured ms (profiling samples, held values, adaptation, the budget cap)."""
        ...

    def adopt_shared(self, cameras: set[str]) -> None:
        """Called before a batch's decisions and again before its outputs are filled (the other
        workers' batches may have finished while this one's models ran): a policy reads what
        other workers shared (held outputs)."""
        ...

    def held_to_share(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput]) -> dict[str, bytes]:
        """Executed outputs to publish as the camera's held outputs (``held:{cam}``), written in
        the frame's record script, so every worker on the camera fills from the newest ones."""
        ...


class AllPolicy:
    """The reference: every model executes on every frame."""

    name = "all"

    def decide(self, camera: str, frame: FrameMsg, models: list[str]) -> set[str]:
        return set(models)

    def fill(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput], others: list[str]) -> dict[str, Filled]:
        return {m: Filled(Origin.MISSING, None) for m in others}

    def describe(self, camera: str, frame: FrameMsg) -> dict[str, Any]:
        return {"name": self.name, "budget": None}

    def observe(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput], ms: dict[str, float]) -> None:
        pass

    def bind(self, metas: dict[str, ModelMeta]) -> None:
        pass

    def adopt_shared(self, cameras: set[str]) -> None:
        pass

    def held_to_share(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput]) -> dict[str, bytes]:
        return {}  # every model runs on every frame: nothing is ever held
