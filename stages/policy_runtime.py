"""Budgeted frame policies inside the scheduler: cold start, links, periods, adaptation.

This adapts the pure planners of :mod:`links.policies` to the scheduler's
per-frame :class:`stages.scheduler.FramePolicy` protocol. Per camera:

1. Cold start: every model runs on every frame until the CAMERA has
   ``cold_start_frames`` aligned samples (``coldstart:{cam}``, added by whichever worker
   ran the frame; the worker that adds the last one trains, the others plan from the same
   samples when they find the links).
2. Links are trained on them (first 75%; the last 25% score the links and feed
   the planner's accuracy estimates, then the links are fine-tuned on them too),
   stored in Redis (``links:{cam}``, versioned) so every worker on every host
   uses the same links, and the policy plans execution rates under the budget.
3. Budgeted: per frame, the plan (or the Reducto gate) says which models run;
   the others are filled by the plan's fill rule (links + the target's own
   last output, held value, prior, or missing).
   A worker that finds links (and a plan made by the same policy and budget) in
   ``links:{cam}`` — another worker's, or an earlier session's — starts here at once.
4. Every ``period_frames`` frames a small fraction of frames runs all models;
   at the end of the period the links are scored and fine-tuned on those fresh
   samples (uncertain frames first) and the plan is re-made.

Held outputs (temporal context: each model's newest executed output and its frame)
are shared by every worker of a camera through ``held:{cam}``: a worker publishes its
executed outputs in the frame's record script and reads the others' before each batch,
so two workers on one camera fill from the same context as one. Only outputs of
earlier frames are used (a worker ahead of this one has newer ones). The compute
governor's window is the camera's too (``spend:{cam}``, :mod:`stages.shared_state`): one
cap per camera, whichever worker runs which frame.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
import redis

from links.budget import ModelCost, ResolvedBudget, parse_budget
from links.governor import Governor, LocalLedger
from links.linkset import LinkSet
from links.metrics import model_accuracy
from links.outputs import ModelOutput, Origin, output_from_bytes, output_to_bytes
from links.policies import (
    POLICIES,
    CascadeDecider,
    ChangeRisk,
    Plan,
    PlanInputs,
    ReductoGate,
    Reselector,
    Trigger,
    frame_difference,
    make_policy,
    pair_observations,
    thumbnail,
)
from links.samples import AlignedSamples, ModelMeta
from pipeline.costs import load_costs, load_single_ms
from pipeline.errors import UserError
from pipeline.keys import COSTS_KEY, held_key, links_key
from pipeline.streams import FrameMsg
from stages.frame_policy import AllPolicy, Filled, FramePolicy
from stages.shared_state import ColdStartSamples, RedisLedger


@dataclass
class RuntimeOptions:
    name: str
    budget: str | None = None
    period_frames: int = 300
    profile_fraction: float = 0.02
    cold_start_frames: int = 120
    epochs: int = 30
    seed: int = 0
    adapt: bool = True
    min_every: dict[str, int] | None = None  # cascade: model -> run at least every k frames (a floor the user sets)
    min_accuracy: dict[str, float] | None = None  # cascade: model -> the expected accuracy to keep

    @classmethod
    def parse(cls, text: str) -> "RuntimeOptions":
        """``name`` or a JSON object with these fields (how the supervisor passes options)."""
        if text.strip().startswith("{"):
            d = json.loads(text)
            return cls(**d)
        return cls(name=text)

    def to_text(self) -> str:
        return json.dumps(self.__dict__)


class Phase(str, Enum):
    """Where a camera is in its life under a budgeted policy (records carry it as ``policy.phase``)."""

    COLD_START = "cold-start"  # every model on every frame until enough aligned samples exist
    BUDGETED = "budgeted"  # the plan decides; links, held or prior values fill the rest


DIFF_HISTORY = 4096  # frame differences kept for reducto (bounded: a live camera runs for months)


@dataclass
class CamState:
    models: list[str]
    phase: Phase = Phase.COLD_START
    samples: AlignedSamples | None = None  # being collected (cold start, or this period's profiling frames)
    linkset: LinkSet | None = None
    link_version: int = -1
    plan: Plan | None = None
    reselector: Reselector | None = None
    prof_frames: set[int] = field(default_factory=set)
    last: dict[str, tuple[ModelOutput, int]] = field(default_factory=dict)  # this worker's newest executed outputs
    shared: dict[str, tuple[ModelOutput, int]] = field(default_factory=dict)  # the newest ones any worker published
    gate: ReductoGate | None = None
    governor: Governor | None = None  # caps measured compute (compute and model-count budgets)
    decided: dict[int, Phase] = field(default_factory=dict)  # frame -> the phase it was decided in, until its record is built
    prev_thumb: np.ndarray | None = None
    diffs: deque[float] = field(default_factory=lambda: deque(maxlen=DIFF_HISTORY))  # reducto: frame differences, newest last
    plans_made: int = 0
    adapted: int = 0
    prior_acc: dict[str, float] = field(default_factory=dict)  # how often the usual value is right (profiling sample)
    # cascade only: per-frame decisions
    risk: ChangeRisk | None = None
    decider: CascadeDecider | None = None
    thumbs: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> thumbnail, until observed (and kept for samples)
    triggers: dict[int, dict[str, str]] = field(default_factory=dict)  # frame -> model -> why it ran, until described
    estimated: dict[int, float] = field(default_factory=dict)  # frame -> the cost its decision booked, until observed
    refused: dict[int, list[str]] = field(default_factory=dict)  # frame -> models the policy wanted and the cap refused, until described
    fresh_obs: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)  # this period's risk observations
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> risk predicted vs error observed, last period
    exec_thumbs: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # model -> (frame, thumbnail) it last ran on
    cold: ColdStartSamples | None = None  # the camera's shared cold-start samples (Redis), made once


class RuntimePolicy:
    """A budgeted policy (any name in :data:`links.policies.POLICIES` but ``all``)."""

    def __init__(self, opts: RuntimeOptions, r: redis.Redis | None = None, metas: dict[str, ModelMeta] | None = None) -> None:
        if opts.name not in POLICIES:
            raise UserError(f"unknown policy {opts.name!r} (available: {', '.join(POLICIES)})")
        if opts.name != "all" and not opts.budget:
            raise UserError(f"policy {opts.name}: needs a budget (--budget 33% | 120ms | 4096MB | gpu:4096MB | 3models)")
        try:
            self.budget = parse_budget(opts.budget) if opts.budget else None
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.name = opts.name
        self.opts = opts
        self.r = r
        self.planner = make_policy(opts.name)
        self.cams: dict[str, CamState] = {}
        self.metas = metas or {}  # model name -> ModelMeta, set by the worker via bind()

    # The worker tells us each model's kind/classes (needed for aligned samples).
    def bind(self, metas: dict[str, ModelMeta]) -> None:
        self.metas.update(metas)

    # ------------------------------------------------------------ protocol
    def decide(self, camera: str, frame: FrameMsg, models: list[str]) -> set[str]:
        st = self.cams.get(camera)
        if st is None:
            st = self.cams[camera] = CamState(list(models))
        if self.name == "reducto":
            th = thumbnail(frame.image)
            st.diffs.append(0.0 if st.prev_thumb is None else frame_difference(th, st.prev_thumb))
            st.prev_thumb = th
        elif self.name == "cascade":
            st.thumbs[frame.frame] = thumbnail(frame.image)
            if len(st.thumbs) > 4096:  # decided but never observed (a failed write): forget the oldest
                st.thumbs.pop(next(iter(st.thumbs)))
        if st.phase is Phase.COLD_START:
            self._maybe_load_shared(camera, st, frame.frame)
        st.decided[frame.frame] = st.phase
        if len(st.decided) > 4096:  # frames decided but never described (a failed write): forget the oldest
            st.decided.pop(next(iter(st.decided)))
        if st.phase is Phase.COLD_START:
            return set(models)
        assert st.plan is not None and st.reselector is not None
        if st.reselector.due(frame.frame):
            self._new_period(camera, st, frame.frame)
        gov = st.governor
        if frame.frame in st.prof_frames:
            # A profiling frame runs every model: when the window has room for all of them.
            if gov is None or gov.admit_all_or_none(models, frame=frame.frame):
                if st.gate is not None:
                    st.gate.step(st.diffs[-1])  # keep the gate's accumulators in step
                if st.decider is not None:
                    # Paid from the profiling reserve the plan set aside, not from the decider's bucket.
                    st.triggers[frame.frame] = dict.fromkeys(models, Trigger.PROFILE)
                return set(models)
            st.prof_frames.discard(frame.frame)  # no room: this period has one aligned sample less
            _note_refused(st, frame.frame, ["profile"])
        if st.decider is not None and gov is not None:
            # Cascade: the decider's choice (in priority order), then the cap on measured compute.
            choice = st.decider.decide(frame.frame, st.thumbs[frame.frame], gov.estimate)
            run = gov.admit(list(choice), frame=frame.frame)
            booked = sum(gov.estimate[m] for m in choice)
            admitted = sum(gov.estimate[m] for m in run)
            st.decider.tokens += booked - admitted  # refused by the cap: not spent
            _note_refused(st, frame.frame, [m for m in choice if m not in run])
            st.triggers[frame.frame] = {m: choice[m] for m in run}
            st.estimated[frame.frame] = admitted
            # Booked as run now: the next frames of this batch are decided before any model runs,
            # and must not all re-run a model for the same change.
            st.decider.executed(frame.frame, st.thumbs[frame.frame], run)
            return set(run)
        wanted = st.gate.step(st.diffs[-1]) if st.gate is not None else st.plan.executed_at(frame.frame)
        if gov is None:
            return set(wanted)
        # Models the plan runs most often first, then the cheaper: what the cap cuts first is the rarest, dearest.
        order = sorted(wanted, key=lambda m: (-st.plan.rates.get(m, 0.0), gov.estimate[m]))
        run = gov.admit(order, frame=frame.frame)
        _note_refused(st, frame.frame, [m for m in order if m not in run])
        if st.gate is not None and len(run) < len(wanted):
            st.gate.postpone([m for m in wanted if m not in run])
        return set(run)

    def observe(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput], ms: dict[str, float]) -> None:
        st = self.cams[camera]
        spent = None
        if st.governor is not None and st.decided.get(frame.frame) is Phase.BUDGETED:
            spent = st.governor.charge({m: self._amount(m, ms) for m in executed}, frame=frame.frame)
        if self.name == "cascade":
            self._observe_cascade(st, frame.frame, executed, spent)
        for m, out in executed.items():
            st.last[m] = (out, frame.frame)
        if len(executed) == len(st.models) and st.models:
            if st.phase is Phase.COLD_START and self.r is not None:
                self._add_cold_sample(camera, st, frame, executed)
                return
            if st.samples is None:
                st.samples = self._new_samples(st.models)
            st.samples.append(camera, frame.frame, frame.pts, executed)
            if st.phase is Phase.COLD_START and len(st.samples) >= self.opts.cold_start_frames:
                self._train_and_plan(camera, st, frame.frame)

    def _add_cold_sample(self, camera: str, st: CamState, frame: FrameMsg, executed: dict[str, ModelOutput]) -> None:
        """One cold-start frame into the camera's shared samples; the worker that adds the
        ``cold_start_frames``-th trains the links from all of them (and, should links still not
        have appeared after as many more, e.g. that worker died while training, the next to
        reach a multiple trains again)."""
        one = self._new_samples(st.models)
        one.append(camera, frame.frame, frame.pts, executed)
        n_cold = self.opts.cold_start_frames
        cold = self._cold(camera, st)
        n = cold.add(one, st.thumbs.get(frame.frame) if self.name == "cascade" else None)
        if n < n_cold or n % n_cold:
            return
        loaded = cold.load(st.models)
        if loaded is None or len(loaded[0]) < 2:
            return
        st.samples, thumbs = loaded
        st.thumbs.update(thumbs)
        self._train_and_plan(camera, st, frame.frame)

    def _cold(self, camera: str, st: CamState) -> ColdStartSamples:
        assert self.r is not None
        if st.cold is None:
            st.cold = ColdStartSamples(self.r, camera, self.opts.cold_start_frames)
        return st.cold

    def fill(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput], others: list[str]) -> dict[str, Filled]:
        st = self.cams[camera]
        fill = st.plan.fill if st.plan is not None else "missing"
        out: dict[str, Filled] = {}
        last = {m: h for m in others if (h := _held(st, m, frame.frame)) is not None}
        if fill == "link" and st.linkset is not None:
            held = {m: (o, frame.frame - f) for m, (o, f) in last.items()}
            for m, d in st.linkset.derive(executed, others, held=held).items():
                out[m] = Filled(Origin.LINKED, d.output, tuple(d.via), d.confidence)
            return out
        for m in others:
            if fill in ("hold", "reducto") and m in last:
                out[m] = Filled(Origin.HELD, last[m][0], (m,), None)
            elif fill == "prior" and st.linkset is not None:
                out[m] = Filled(Origin.LINKED, st.linkset.prior_output(m), ("prior",), st.prior_acc.get(m))
            else:
                out[m] = Filled(Origin.MISSING, None)
        return out

    def adopt_shared(self, cameras: set[str]) -> None:
        """Adopt the held outputs other workers published since the last call (one round trip
        for the frame numbers; the outputs themselves only where they are newer than ours)."""
        if self.r is None:
            return
        cams = [c for c in cameras if c in self.cams and self.cams[c].phase is Phase.BUDGETED]
        if not cams:
            return
        pipe = self.r.pipeline(transaction=False)
        for c in cams:
            pipe.hmget(held_key(c), [f"{m}@" for m in self.cams[c].models])
        newer: dict[str, list[tuple[str, int]]] = {}
        for c, frames in zip(cams, pipe.execute()):
            st = self.cams[c]
            for m, raw in zip(st.models, frames):
                if raw is None:
                    continue
                f = int(raw)
                mine = max(st.last[m][1] if m in st.last else -1, st.shared[m][1] if m in st.shared else -1)
                if f > mine:
                    newer.setdefault(c, []).append((m, f))
        if not newer:
            return
        pipe = self.r.pipeline(transaction=False)
        for c, items in newer.items():
            # cascade: with each output, the thumbnail of the frame it ran on (field "model#")
            pipe.hmget(held_key(c), [k for m, _ in items for k in (m, f"{m}#", f"{m}#@")])
        for (c, items), blobs in zip(newer.items(), pipe.execute()):
            st = self.cams[c]
            for (m, f), (blob, thumb, thumb_frame) in zip(items, zip(blobs[0::3], blobs[1::3], blobs[2::3])):
                if blob is None or m not in self.metas:
                    continue
                try:
                    st.shared[m] = (output_from_bytes(blob, self.metas[m].classes), f)
                except ValueError:
                    continue  # not ours to trust: fill from this worker's own outputs
                if st.decider is not None and thumb is not None and thumb_frame is not None and int(thumb_frame) == f:
                    t = _thumb_from_bytes(thumb)
                    if t is not None:  # the decider knows the model ran there: no second run for the same change
                        st.decider.executed(f, t, [m])

    def held_to_share(self, camera: str, frame: FrameMsg, executed: dict[str, ModelOutput]) -> dict[str, bytes]:
        st = self.cams.get(camera)
        if st is None or self.r is None:
            return {}
        out = {m: output_to_bytes(o) for m, o in executed.items()}
        if st.decider is not None:
            for m in executed:
                ran = st.exec_thumbs.get(m)
                if ran is not None and ran[0] == frame.frame:
                    out[f"{m}#"] = _thumb_to_bytes(ran[1])
        return out

    def describe(self, camera: str, frame: FrameMsg) -> dict[str, Any]:
        st = self.cams.get(camera)
        d: dict[str, Any] = {"name": self.name, "budget": self.opts.budget}
        # A worker decides a whole batch before any frame of it completes the cold start:
        # a frame decided cold is a cold-start frame even if the plan exists by now.
        decided = st.decided.pop(frame.frame, Phase.COLD_START) if st is not None else Phase.COLD_START
        triggers = st.triggers.pop(frame.frame, None) if st is not None else None
        if triggers is not None:
            d["triggers"] = triggers  # the worker moves each into its executed output's record
        refused = st.refused.pop(frame.frame, None) if st is not None else None
        if refused:
            d["refused"] = refused  # what the cap on measured compute took away ("profile": a whole profiling frame)
        if st is None or st.plan is None or decided is Phase.COLD_START:
            d["phase"] = Phase.COLD_START.value
            return d
        p = st.plan
        gov = st.governor
        d.update(
            phase=Phase.BUDGETED.value,
            resource=p.resource,
            # With a governor: the cap and the MEASURED spend per frame over its window; else the plan's.
            limit=round(gov.limit if gov else p.budget_limit, 3),
            used=round(gov.used() if gov else p.budget_used, 3),
            planned=round(p.budget_used, 3),
            rates={m: r for m, r in p.rates.items()},
            links_version=st.link_version,
        )
        return d

    def _amount(self, model: str, ms: dict[str, float]) -> float:
        """What one execution of ``model`` used of the budget's resource (ms, or 1 for a model count)."""
        assert self.budget is not None
        return 1.0 if self.budget.resource == "models" else float(ms.get(model, 0.0))

    def _observe_cascade(self, st: CamState, frame: int, executed: dict[str, ModelOutput], spent: float | None) -> None:
        thumb = st.thumbs.get(frame)
        if thumb is None:
            return
        est = st.estimated.pop(frame, None)
        dec = st.decider
        if dec is not None:
            if est is not None and spent is not None:
                dec.correct(est, spent)
            if len(executed) == len(st.models) and st.risk is not None:
                # A profiling frame: the truth for every model, against what each would have reused.
                for m, out in executed.items():
                    prev = st.exec_thumbs.get(m)
                    if prev is not None and m in st.last and st.last[m][1] == prev[0] < frame:
                        err = 1.0 - model_accuracy(st.last[m][0], out)
                        st.fresh_obs.setdefault(m, []).append((frame_difference(thumb, prev[1]), frame - prev[0], err))
            dec.executed(frame, thumb, executed)
        for m in executed:
            st.exec_thumbs[m] = (frame, thumb)
        if st.phase is not Phase.COLD_START:
            st.thumbs.pop(frame, None)  # only the cold start's thumbnails are needed later (to fit the risk model)

    def _fit_risk(self, st: CamState, samples: AlignedSamples) -> ChangeRisk:
        """The risk model from a run of aligned samples (the cold start), see :class:`ChangeRisk`."""
        frames = [int(f) for f in samples.frame]
        thumbs = [st.thumbs.get(f) for f in frames]
        keep = [i for i, t in enumerate(thumbs) if t is not None]
        risk = ChangeRisk(list(st.models))
        errors = {}
        for m in st.models:
            outs = [samples.outputs[m][i] for i in keep]
            e = np.zeros((len(keep), len(keep)))
            for i in range(len(keep)):
                for j in range(i + 1, min(len(keep), i + 17)):
                    e[i, j] = 1.0 - model_accuracy(outs[i], outs[j])
            errors[m] = e
        for m, obs in pair_observations([frames[i] for i in keep], [thumbs[i] for i in keep], errors).items():
            for d, age, err in obs:
                risk.add(m, d, age, err)
        risk.fit()
        return risk

    # ------------------------------------------------------------ internals
    def _new_samples(self, models: list[str]) -> AlignedSamples:
        missing = [m for m in models if m not in self.metas]
        if missing:
            raise RuntimeError(f"policy runtime: no metadata for models {missing}")
        return AlignedSamples([self.metas[m] for m in models])

    def _costs(self, st: CamState) -> dict[str, ModelCost]:
        costs = load_costs(self.r, st.models)
        if costs is None:
            raise UserError(f"no measured costs in Redis ({COSTS_KEY}) for models {', '.join(st.models)}: start the pipeline with "
                            "mlink run/replay/bench, or the worker with `mlink worker --config CAMERAS.yaml`, which measure them")
        return costs

    @staticmethod
    def _split(samples: AlignedSamples) -> tuple[AlignedSamples, AlignedSamples]:
        """The cold start's samples: the first 75% train the links, the rest score them for the planner."""
        n = len(samples)
        cut = max(2, int(n * 0.75))
        return samples.subset(np.arange(cut)), samples.subset(np.arange(cut, n))

    def _train_and_plan(self, camera: str, st: CamState, frame_index: int) -> None:
        samples = st.samples
        fit, val = self._split(samples)
        ls = LinkSet.train(fit, seed=self.opts.seed, epochs=self.opts.epochs)
        st.linkset = ls
        if self.name == "cascade":
            st.risk = self._fit_risk(st, samples)
            st.thumbs = {f: t for f, t in st.thumbs.items() if f > frame_index}  # the batch's frames still to come
        self._plan(camera, st, val if len(val) else fit, frame_index, reducto_clip=samples)
        if len(val):
            ls.finetune(val, epochs=max(5, self.opts.epochs // 3))
        self._publish(camera, st)
        st.samples = None
        st.phase = Phase.BUDGETED

    def _plan(self, camera: str, st: CamState, score_on: AlignedSamples, frame_index: int, reducto_clip: AlignedSamples | None = None) -> None:
        ls = st.linkset
        costs = self._costs(st)
        assert self.budget is not None
        resolved: ResolvedBudget = self.budget.resolve(costs)
        try:
            resolved.check_feasible(costs)
        except ValueError as exc:
            raise UserError(f"camera {camera}: {exc}") from None
        extra: dict[str, Any] = {}
        if self.name == "reducto" and reducto_clip is None and st.plan is not None:
            # Re-planning after a period: the profiling frames are spread over the period, not a
            # contiguous clip, so the thresholds stay as tuned; the rates are re-estimated on the
            # period's own frame differences (and the governor holds the budget regardless).
            extra = {"reducto_diffs": np.asarray(list(st.diffs)[-self.opts.period_frames:], float),
                     "reducto_thresholds": dict(st.plan.thresholds)}
        if self.name == "reducto" and reducto_clip is not None:
            # Contiguous profiling clip: the frame differences and, per model, whether
            # reusing the previous output would be wrong at each frame.
            n = len(reducto_clip)
            # The clip's differences end one frame before the current one.
            hist = list(st.diffs)[:-1]
            diffs = np.asarray(hist[-n:], float) if len(hist) >= n else np.zeros(n)
            changes = {}
            for m in st.models:
                outs = reducto_clip.outputs[m]
                changes[m] = np.array([False] + [model_accuracy(outs[i - 1], outs[i]) < 1.0 for i in range(1, n)])
            extra = {"reducto_diffs": diffs, "reducto_changes": changes}
        pairwise = ls.pairwise_scores(score_on)
        cache: dict[tuple[frozenset[str], str, int | None], float] = {}

        def estimate(ex: frozenset[str], target: str, age: int | None) -> float:
            key = (ex, target, age)
            if key not in cache:
                cache[key] = ls.estimate_accuracy(score_on, ex, target, age)
            return cache[key]

        informative = {}
        for m in st.models:
            prior = ls.prior_output(m)
            acc = np.mean([model_accuracy(prior, o) for o in score_on.outputs[m]]) if len(score_on) else 1.0
            informative[m] = bool(acc < 0.9)
            st.prior_acc[m] = float(acc)
        planning, plan_costs = resolved, costs
        if resolved.rate_sensitive:
            self._arm_governor(camera, st, resolved, costs)
            plan_costs, reserve = self._planning_costs(st, resolved, costs)
            # Profiling frames run every model and count against the same budget: plan the rest
            # with what they leave (the governor then holds the measured spend to the full limit).
            planning = ResolvedBudget(resolved.resource, max(resolved.limit - reserve, 0.0), text=resolved.text)
        inp = PlanInputs(st.models, plan_costs, planning, pairwise=pairwise, estimate=estimate, informative=informative, extra=extra)
        st.plan = self.planner.plan(inp)
        if st.calibration:
            st.plan.notes["calibration"] = st.calibration  # the last period's check of the risk model (published with the plan)
        if self.name == "cascade" and st.governor is not None:
            always = tuple(st.plan.notes.get("always", ()))
            cands = tuple(m for m in st.models if m not in always)
            cap = CascadeDecider.bucket_capacity(planning.limit, [st.governor.estimate[m] for m in cands])
            old = st.decider
            if st.risk is None:  # links from elsewhere (another worker, a seed): learn the risks from profiling frames
                st.risk = ChangeRisk(list(st.models))
            st.decider = CascadeDecider(always, cands, max(planning.limit, 1e-6), cap, st.risk,
                                        floors={m: k for m, k in (self.opts.min_every or {}).items() if m in st.models},
                                        targets={m: a for m, a in (self.opts.min_accuracy or {}).items() if m in st.models})
            if old is not None:
                st.decider.last, st.decider.tokens = old.last, min(old.tokens, cap)
        st.plans_made += 1
        st.reselector = Reselector(self.opts.period_frames, origin=frame_index + 1)
        st.gate = ReductoGate(st.plan.thresholds) if st.plan.fill == "reducto" else None

    def _planning_costs(self, st: CamState, resolved: ResolvedBudget,
                        costs: dict[str, ModelCost]) -> tuple[dict[str, ModelCost], float]:
        """What the plan is made with: each model at what the governor will charge for it, and the
        share of every frame's budget the profiling frames take.

        The limit stays a share of what all models cost batched (the same for every policy), but
        a budgeted worker runs most models on one or two frames of a batch, where the per-call
        overhead is not shared: the governor starts from one frame's cost and then follows the
        measured ones. A plan made on the batched costs promised more than the cap lets run, and
        the governor then cut what did not fit, whatever it was worth (``policy.refused``; the
        README's ``pair3_w1`` bench: most profiling frames refused). Planned on the governor's costs, the
        plan itself chooses what to leave out. The profiling reserve is what such a frame is
        booked at (every model, one frame, with the headroom the governor books it with), at
        most half the limit: below that, profiling cannot be paid for and the governor refuses
        the frames that do not fit."""
        gov = st.governor
        if gov is None or resolved.resource != "ms":
            return costs, self.opts.profile_fraction * resolved.used(st.models, costs)
        plan_costs = {m: replace(c, ms=gov.estimate.get(m, c.ms)) for m, c in costs.items()}
        frame = sum(gov.estimate[m] for m in st.models) * (1.0 + gov.headroom_all_or_none())
        return plan_costs, min(self.opts.profile_fraction * frame, 0.5 * resolved.limit)

    def _arm_governor(self, camera: str, st: CamState, resolved: ResolvedBudget | None = None,
                      costs: dict[str, ModelCost] | None = None) -> None:
        """The cap on measured spending, for budgets whose spend depends on how often models run.
        Its window is the camera's (in Redis when there is one): shared by all its workers."""
        assert self.budget is not None
        if costs is None:
            costs = self._costs(st)
        if resolved is None:
            resolved = self.budget.resolve(costs)
        if not resolved.rate_sensitive:
            return
        if st.governor is not None:
            st.governor.limit = resolved.limit  # keep the estimates it learned from measurements
            return
        start = {m: resolved.amount(costs[m]) for m in st.models}
        if resolved.resource == "ms":  # one frame alone costs more than its share of a batch
            single = load_single_ms(self.r, st.models)
            start = {m: max(a, single[m]) for m, a in start.items()}
        ledger = RedisLedger(self.r, camera) if self.r is not None else LocalLedger()
        st.governor = Governor(resolved.limit, self.opts.period_frames, start, ledger=ledger)

    def _new_period(self, camera: str, st: CamState, frame_index: int) -> None:
        assert st.reselector is not None
        start = st.reselector.period_start(frame_index)
        if st.risk is not None and st.fresh_obs:
            # How well the risk model predicted this period's profiling frames, then learn from them.
            calib = st.risk.calibration(st.fresh_obs)
            for m, obs in st.fresh_obs.items():
                for d, age, err in obs:
                    st.risk.add(m, d, age, err)
            st.risk.fit()
            st.fresh_obs = {}
            st.calibration = {m: {"predicted": round(p, 4), "observed": round(o, 4), "n": n} for m, (p, o, n) in calib.items()}
            if st.plan is not None:
                st.plan.notes["calibration"] = st.calibration
        if st.samples is not None and len(st.samples) >= 2 and self.opts.adapt and st.linkset is not None:
            # Adaptation: fine-tune on the last period's fresh aligned samples, then re-plan.
            fresh = st.samples
            idx = st.linkset.select_for_adaptation(fresh, max(2, len(fresh) // 2))
            st.linkset.finetune(fresh.subset(idx) if len(idx) else fresh, epochs=max(5, self.opts.epochs // 3))
            st.adapted += 1
            resel = st.reselector
            self._plan(camera, st, fresh, frame_index)
            st.reselector = resel  # keep the period grid
            self._publish(camera, st)
        st.samples = None
        st.prof_frames = set(Reselector.profiling_frames(start, self.opts.period_frames, self.opts.profile_fraction))

    def _publish(self, camera: str, st: CamState) -> None:
        if self.r is None or st.linkset is None:
            return
        version = int(self.r.hincrby(links_key(camera), "version", 1))
        st.link_version = version
        self.r.hset(links_key(camera), mapping={"blob": st.linkset.to_bytes(), "plan": json.dumps(st.plan.to_dict() if st.plan else None),
                                                "policy": self.name, "budget": self.opts.budget or "", "time": time.time(),
                                                "origin": st.reselector.origin if st.reselector is not None else 0})

    def _maybe_load_shared(self, camera: str, st: CamState, frame_index: int) -> None:
        """Links (and plan) trained by another worker or an earlier session, or seeded by ``mlink bench``.

        A stored plan is adopted only when it was made by this policy for this budget;
        otherwise the links are kept and the cold start goes on to plan anew.
        """
        if self.r is None:
            return
        version, blob, plan_raw, policy, budget = self.r.hmget(links_key(camera), "version", "blob", "plan", "policy", "budget")
        if not version or not blob or int(version) <= st.link_version:
            return
        ls = LinkSet.from_bytes(blob, where=f"links of camera {camera}")
        ls.check_models([self.metas[m] for m in st.models], where=f"links of camera {camera}")
        st.linkset = ls
        st.link_version = int(version)
        seed, seed_diffs = self.r.hmget(links_key(camera), "seed_samples", "seed_diffs")
        if seed:
            samples = AlignedSamples.from_bytes(seed)
            current = list(st.diffs)[-1:]
            if seed_diffs:
                st.diffs = deque([*json.loads(seed_diffs), *current], maxlen=DIFF_HISTORY)
            self._plan(camera, st, samples, -1, reducto_clip=samples)
            st.phase = Phase.BUDGETED
            return
        cold = self._cold(camera, st).load(st.models)
        origin = self.r.hget(links_key(camera), "origin")
        if cold is not None and len(cold[0]) >= 2:
            # The camera's cold-start samples (another worker's training set): plan from them here,
            # as that worker did, so this worker's governor, risk model and period grid match its.
            samples, thumbs = cold
            st.thumbs.update(thumbs)
            if self.name == "cascade":
                st.risk = self._fit_risk(st, samples)
                st.thumbs = {f: t for f, t in st.thumbs.items() if f >= frame_index}  # this frame's and the batch's still to come
            _, val = self._split(samples)
            self._plan(camera, st, val if len(val) else samples, frame_index, reducto_clip=samples)
            if origin is not None and st.reselector is not None:
                st.reselector = Reselector(self.opts.period_frames, origin=int(origin))
            st.samples = None
            st.phase = Phase.BUDGETED
            return
        plan = json.loads(plan_raw) if plan_raw else None
        same = policy is not None and policy.decode() == self.name and (budget or b"").decode() == (self.opts.budget or "")
        # Cascade decides from a risk model fitted on the samples: without them, cold-start anew.
        if plan and same and set(plan.get("rates", {})) == set(st.models) and self.name != "cascade":
            st.plan = Plan.from_dict(plan)
            st.reselector = Reselector(self.opts.period_frames, origin=int(origin) if origin is not None else frame_index)
            st.gate = ReductoGate(st.plan.thresholds) if st.plan.fill == "reducto" else None
            self._arm_governor(camera, st)
            st.samples = None
            st.phase = Phase.BUDGETED


_THUMB_SHAPE = (36, 64)  # links.policies.thumbnail's default


def _thumb_to_bytes(t: np.ndarray) -> bytes:
    """A thumbnail for ``held:{cam}``: 8-bit grey, 2.3 kB (the change signal needs no more)."""
    return np.clip(np.rint(np.asarray(t, np.float32) * 255), 0, 255).astype(np.uint8).tobytes()


def _thumb_from_bytes(b: bytes) -> np.ndarray | None:
    """Raw bytes of the expected size, or None (never anything but an array of numbers)."""
    if len(b) != _THUMB_SHAPE[0] * _THUMB_SHAPE[1]:
        return None
    return np.frombuffer(b, np.uint8).reshape(_THUMB_SHAPE).astype(np.float32) / 255.0


def _note_refused(st: CamState, frame: int, models: list[str]) -> None:
    """Remember what the cap refused on ``frame`` (for its record), bounded like the other per-frame maps."""
    if models:
        st.refused.setdefault(frame, []).extend(models)
        if len(st.refused) > 4096:  # decided but never described (a failed write): forget the oldest
            st.refused.pop(next(iter(st.refused)))


def _held(st: CamState, model: str, frame: int) -> tuple[ModelOutput, int] | None:
    """The newest output of ``model`` executed before ``frame``, this worker's or shared.

    A reclaimed (older) frame can arrive after newer ones: then only an output from the
    future exists, and it is used as if one frame old rather than leaving a gap.
    """
    cands = [h for h in (st.last.get(model), st.shared.get(model)) if h is not None]
    before = [h for h in cands if h[1] < frame]
    if before:
        return max(before, key=lambda h: h[1])
    if cands:
        o, _ = min(cands, key=lambda h: h[1])
        return o, frame - 1
    return None


def make_frame_policy(name: str, r: redis.Redis | None = None, **options: Any) -> FramePolicy:
    """A frame policy by name (or the JSON options the supervisor passes): ``all`` or a budgeted one."""
    opts = RuntimeOptions.parse(name)
    for k, v in options.items():
        if v is not None:
            setattr(opts, k, v)
    if opts.name == "all":
        return AllPolicy()
    return RuntimePolicy(opts, r)
