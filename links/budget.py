"""Budgets: parse the user's spelling, resolve it against measured model costs, and
check whether a set of models (optionally at execution rates) fits.

A budget is what the scheduler may spend on model executions per frame. Users write it
on the command line (``--budget B``) or in ``cameras.yaml``:

=============  =============  ==============================================
spelling       ``Budget.kind``  meaning
=============  =============  ==============================================
``33%``        ``percent``    33% of ALL models' measured compute (ms/frame)
``120ms``      ``ms``         compute milliseconds per frame (average)
``4096MB``     ``mem_mb``     resident memory of the loaded models, MB
``4GB``        ``mem_mb``     same, in GB (x1024)
``gpu:4096MB`` ``gpu_mb``     GPU memory of the loaded models, MB
``3models``    ``models``     model executions per frame (average)
=============  =============  ==============================================

Parsing is case-insensitive and tolerates spaces (``"120 ms"``, ``"GPU: 4 GB"``).

Resources and rates
-------------------
Policies may run a model on only a fraction ``r`` of the frames (its execution *rate*).
How a rate counts depends on the resource:

* ``ms`` (and ``percent``, which resolves to ``ms``): the budget is an AVERAGE per frame,
  so a model costs ``r * ms``. Single frames may cost more than the average (see
  :class:`links.policies.Plan` for the staggering that keeps the peaks low).
* ``mem_mb`` / ``gpu_mb``: a model that runs at all must stay loaded, and a loaded model
  holds its memory whether or not it runs on this frame, so any ``r > 0`` counts fully.
* ``models``: we read a model count as "model executions per frame" and therefore count
  ``sum(r)``, i.e. two models at rate 1/2 use one model's worth. This is the choice that
  makes the count a throughput budget, consistent with ``ms``; a user who means "at most
  N models loaded" should use a memory budget instead.

This module is pure: no Redis, no video, no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

__all__ = [
    "BUDGET_KINDS",
    "RESOURCES",
    "Budget",
    "ModelCost",
    "ResolvedBudget",
    "parse_budget",
]

BudgetKind = Literal["percent", "ms", "mem_mb", "gpu_mb", "models"]
Resource = Literal["ms", "mem_mb", "gpu_mb", "models"]

BUDGET_KINDS: tuple[str, ...] = ("percent", "ms", "mem_mb", "gpu_mb", "models")
RESOURCES: tuple[str, ...] = ("ms", "mem_mb", "gpu_mb", "models")

# Resources where running a model on a fraction of the frames saves budget.
_RATE_SENSITIVE = frozenset({"ms", "models"})

# Relative + absolute slack for float comparisons: a plan whose cost is the sum of a few
# products of rates and costs must not be rejected for a rounding error.
_REL_EPS = 1e-9
_ABS_EPS = 1e-9

_UNITS = {"ms": "ms/frame", "mem_mb": "MB resident memory", "gpu_mb": "MB GPU memory",
          "models": "model/frame"}

_EXAMPLES = "expected e.g. 33%, 120ms, 4096MB, gpu:4096MB or 3models"


def _num(x: float) -> str:
    """Short human spelling of a number: 2.1 -> '2.1', 120.0 -> '120'."""
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


@dataclass(frozen=True)
class ModelCost:
    """Measured cost of one model on this device.

    ``ms``: compute per frame; ``mem_mb``: resident memory once loaded; ``gpu_mb``: GPU
    memory once loaded (0 for CPU-only models).
    """

    name: str
    ms: float
    mem_mb: float
    gpu_mb: float = 0.0

    def __post_init__(self) -> None:
        for field_name in ("ms", "mem_mb", "gpu_mb"):
            v = getattr(self, field_name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"ModelCost {self.name!r}: {field_name} must be a finite number >= 0, got {v!r}"
                )

    def amount(self, resource: str) -> float:
        """This model's use of ``resource`` when it runs on every frame."""
        if resource == "ms":
            return float(self.ms)
        if resource == "mem_mb":
            return float(self.mem_mb)
        if resource == "gpu_mb":
            return float(self.gpu_mb)
        if resource == "models":
            return 1.0
        raise ValueError(f"unknown resource {resource!r}; known: {', '.join(RESOURCES)}")


@dataclass(frozen=True)
class Budget:
    """A budget as the user wrote it; :meth:`resolve` turns it into an absolute limit."""

    kind: BudgetKind
    value: float
    text: str = ""  # the user's spelling, for messages; filled by parse_budget

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"unknown budget kind {self.kind!r}; known: {', '.join(BUDGET_KINDS)}")
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"budget {self.label!r} must be positive")
        if self.kind == "percent" and self.value > 100:
            raise ValueError(f"budget {self.label!r} is over 100% of all models")
        if self.kind == "models" and self.value != int(self.value):
            raise ValueError(f"budget {self.label!r}: a model count must be a whole number")

    @property
    def label(self) -> str:
        """The user's spelling, or a canonical one when built directly."""
        if self.text:
            return self.text
        suffix = {"percent": "%", "ms": "ms", "mem_mb": "MB", "models": "models"}
        if self.kind == "gpu_mb":
            return f"gpu:{_num(self.value)}MB"
        return f"{_num(self.value)}{suffix[self.kind]}"

    def __str__(self) -> str:
        return self.label

    @property
    def resource(self) -> Resource:
        """The resource this budget limits (``percent`` limits compute ms)."""
        return "ms" if self.kind == "percent" else self.kind  # type: ignore[return-value]

    def resolve(self, costs: Mapping[str, ModelCost]) -> "ResolvedBudget":
        """Absolute limit for these models' measured costs.

        Only ``percent`` needs the costs: its limit is ``pct/100 * sum(ms)`` over all models.
        """
        if self.kind == "percent":
            if not costs:
                raise ValueError(f"budget {self.label!r}: no model costs to take a percentage of")
            total = sum(c.ms for c in costs.values())
            if total <= 0:
                raise ValueError(f"budget {self.label!r}: the models' measured compute is 0 ms")
            limit = self.value / 100.0 * total
            return ResolvedBudget("ms", limit, text=f"{self.label} ({_num(limit)} ms/frame)")
        return ResolvedBudget(self.resource, float(self.value), text=self.label)


@dataclass(frozen=True)
class ResolvedBudget:
    """An absolute limit on one resource: ``limit`` units of ``resource`` per frame."""

    resource: Resource
    limit: float
    text: str = ""

    def __post_init__(self) -> None:
        if self.resource not in RESOURCES:
            raise ValueError(f"unknown resource {self.resource!r}; known: {', '.join(RESOURCES)}")
        if not math.isfinite(self.limit) or self.limit < 0:
            raise ValueError(f"budget limit must be a finite number >= 0, got {self.limit!r}")

    @property
    def label(self) -> str:
        return self.text or f"{_num(self.limit)} {_UNITS[self.resource]}"

    @property
    def rate_sensitive(self) -> bool:
        """True when running a model on fewer frames saves this resource (ms, models)."""
        return self.resource in _RATE_SENSITIVE

    def amount(self, cost: ModelCost) -> float:
        """One model's use of this budget's resource at rate 1."""
        return cost.amount(self.resource)

    def used(
        self,
        models: Iterable[str],
        costs: Mapping[str, ModelCost],
        rates: Mapping[str, float] | None = None,
    ) -> float:
        """Budget used by ``models``; each at ``rates[m]`` (default 1).

        Compute and model-count budgets count ``rate * amount``; memory budgets count the
        full amount of every model with a rate > 0 (see the module docstring).
        """
        total = 0.0
        for m in models:
            r = 1.0 if rates is None else float(rates.get(m, 1.0))
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"rate of model {m!r} must be in [0, 1], got {r!r}")
            if r == 0.0:
                continue
            try:
                c = costs[m]
            except KeyError:
                raise ValueError(f"no measured cost for model {m!r}") from None
            total += (r if self.rate_sensitive else 1.0) * self.amount(c)
        return total

    def within(self, amount: float) -> bool:
        """``amount <= limit`` up to float rounding."""
        return amount <= self.limit * (1.0 + _REL_EPS) + _ABS_EPS

    def fits(
        self,
        models: Iterable[str],
        costs: Mapping[str, ModelCost],
        rates: Mapping[str, float] | None = None,
    ) -> bool:
        """Whether ``models`` (at ``rates``) stay within the limit."""
        return self.within(self.used(models, costs, rates))

    def check_feasible(self, costs: Mapping[str, ModelCost], min_rate: float = 1.0) -> None:
        """Raise ``ValueError`` (one line) when not even the cheapest model fits.

        ``min_rate``: the lowest rate a policy may run a model at; with rates a compute
        budget below the cheapest model can still run it now and then, but by default we
        ask for at least one model on every frame, which is what users expect a budget to
        buy.
        """
        if not costs:
            raise ValueError(f"budget {self.label}: there are no models to run")
        cheapest = min(costs.values(), key=lambda c: (self.amount(c), c.name))
        need = self.amount(cheapest) * (min_rate if self.rate_sensitive else 1.0)
        if not self.within(need):
            raise ValueError(
                f"budget {self.label} is below the cheapest model "
                f"({cheapest.name}, {_num(self.amount(cheapest))} {_UNITS[self.resource]})"
            )


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_RE_PERCENT = re.compile(rf"^{_NUMBER}\s*%$")
_RE_MS = re.compile(rf"^{_NUMBER}\s*ms$")
_RE_MEM = re.compile(rf"^(?:(gpu)\s*:\s*)?{_NUMBER}\s*(mb|gb)$")
_RE_MODELS = re.compile(r"^(\d+)\s*models?$")


def parse_budget(text: str) -> Budget:
    """Parse ``33%``, ``120ms``, ``4096MB``/``4GB``, ``gpu:4096MB`` or ``3models``.

    Raises ``ValueError`` with a one-line message naming ``text`` when it is not one of
    these spellings or its value is not positive.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid budget {text!r}: {_EXAMPLES}")
    original = text.strip()
    s = original.lower()
    kind: BudgetKind
    if m := _RE_PERCENT.match(s):
        kind, value = "percent", float(m.group(1))
    elif m := _RE_MS.match(s):
        kind, value = "ms", float(m.group(1))
    elif m := _RE_MEM.match(s):
        value = float(m.group(2)) * (1024.0 if m.group(3) == "gb" else 1.0)
        kind = "gpu_mb" if m.group(1) else "mem_mb"
    elif m := _RE_MODELS.match(s):
        kind, value = "models", float(m.group(1))
    else:
        raise ValueError(f"invalid budget {original!r}: {_EXAMPLES}")
    return Budget(kind, value, text=original)
