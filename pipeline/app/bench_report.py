"""Tables and plots of a ``bench.json`` (what ``mlink bench`` writes and ``scripts/bench_tables.py``
turns into the README's tables: the numbers are never typed by hand)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(x: float, fmt: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ms(pair: list[float] | tuple[float, float], fmt: str = ".3f") -> str:
    m, s = pair
    if isinstance(m, float) and math.isnan(m):
        return "invalid"
    return f"{_f(m, fmt)} ± {_f(s, fmt)}" if s and not math.isnan(s) and s > 0 else _f(m, fmt)


def format_tables(res: dict[str, Any]) -> str:
    s = res["summary"]
    opts = res["options"]
    inf = [m for m, v in res["informative"].items() if v]
    lines = [
        f"{res['semantics']}; {res['eval_frames']} evaluated frames; models: {', '.join(res['models'])}; "
        f"all models: {res['total_ms']:.1f} ms/frame measured here ({res['machine']['cores']} cores, {res['machine']['cpu'] or 'cpu'}"
        f"{', ' + res['machine']['gpu'] if res['machine'].get('gpu') else ''}); fps {opts['fps'] or 'native'}; repeats {opts['repeats']}; "
        f"cold start {opts['cold_start_frames']} frames, period {opts['period_frames']}, profiling {opts['profile_fraction']:.0%}"
        f"{'; ' + str(opts['workers']) + ' workers per budgeted run' if opts.get('workers', 1) > 1 else ''}"
        f"{' sharing every camera' if opts.get('workers', 1) > 1 and opts.get('share_cameras') else ''}",
        f"informative targets (most common value < 90% of frames): {', '.join(inf) or 'none'}",
        "",
        "Accuracy at equal measured compute (interpolated on each policy's accuracy-vs-compute curve; — = not bracketed by its runs):",
        "",
        "| policy | mean @ 1/5 | mean @ 1/3 | informative @ 1/5 | informative @ 1/3 |",
        "|---|---|---|---|---|",
    ]
    for p, v in s["at"].items():
        lines.append(f"| {p} | {_f(v['mean']['1/5'])} | {_f(v['mean']['1/3'])} | {_f(v['informative']['1/5'])} | {_f(v['informative']['1/3'])} |")
    def known(x: Any) -> bool:
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    prior = res.get("prior_accuracy")
    closed = [v["prior_error_closed"] for v in s["at"].values() if "prior_error_closed" in v]
    if prior and inf and any(known(x) for c in closed for x in c.values()):
        base = sum(prior[m] for m in inf) / len(inf)
        lines += ["", f"Informative targets, share of the prior's error closed at equal compute (prior = always the most common "
                  f"reference value, {base:.3f} on them): " + "; ".join(
                      f"{p} {_f(v['prior_error_closed']['1/5'], '.0%')} @ 1/5, {_f(v['prior_error_closed']['1/3'], '.0%')} @ 1/3"
                      for p, v in s["at"].items() if "prior_error_closed" in v)]
    per = {p: v["per_model"] for p, v in s["at"].items() if "per_model" in v}
    if per:
        for label in ("1/5", "1/3"):
            if not any(known(per[p][m][label]) for p in per for m in res["models"]):
                continue  # no policy's runs bracket this share (e.g. one budget)
            lines += ["", f"Per model at {label} of all's compute (interpolated; — = not bracketed):", "",
                      "| model | " + " | ".join(per) + " |", "|---|" + "---|" * len(per)]
            for m in res["models"]:
                lines.append(f"| {m} | " + " | ".join(_f(per[p][m][label]) for p in per) + " |")
    lines += ["", "Every run (mean ± spread over valid repeats; compute = executed outputs priced at their measured ms in the reference run, over all's, cold start included):", "",
              "| policy | budget | valid | compute | mean acc | informative acc | box F1 | count MAE | frames/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in s["rows"]:
        lines.append(f"| {row['policy']} | {row['budget']} | {row['valid']}/{row['runs']} | {_ms(row['compute_share'], '.1%')} | "
                     f"{_ms(row['mean'])} | {_ms(row['informative'])} | {_ms(row['box_f1'])} | {_ms(row['count_mae'], '.2f')} | {_ms(row['fps'], '.2f')} |")
    ratio = [r for r in res["runs"] if r.get("compute_share")]
    if ratio:  # above 1: the run's models took longer than in the reference (a loaded machine, a neighbour process)
        lines += ["", "Measured ms per priced ms, each run (policy budget seed: ratio" + (", camera moves" if "camera_moves" in ratio[0] else "") + "): " +
                  "; ".join(f"{r['policy']} {r['budget']} {r['seed']}: {r['compute_share_measured'] / r['compute_share']:.2f}" +
                            (f", {sum(len(v) for v in r['camera_moves'].values())}" if "camera_moves" in r else "") for r in ratio)]
    refused = [r for r in res["runs"] if "refused" in r]
    if refused:  # what the cap on measured compute took from what the policy wanted (records' policy.refused)
        lines += ["", "Refused by the cap, each run (policy budget seed: profiling frames refused" +
                  (" / run" if "full_frames" in refused[0] else "") + ", other model executions refused): " +
                  "; ".join(f"{r['policy']} {r['budget']} {r['seed']}: {r['refused'].get('profile', 0)}" +
                            (f"/{r['full_frames']}" if "full_frames" in r else "") + ", "
                            f"{sum(v for k, v in r['refused'].items() if k != 'profile')}" for r in refused)]
    bad = [r for r in res["runs"] if not r["valid"]]
    if bad:
        lines += ["", "Invalid runs (accuracy not shown):", ""]
        lines += [f"- {r['policy']} @ {r['budget']} seed {r['seed']}: {'; '.join(r['invalid_reasons'])}" for r in bad]
    curve = res["hold_last_curve"]
    lines += ["", "Exact hold-last from the reference (every model on every k-th frame): " +
              ", ".join(f"k={c['k']}: {c['compute_share']:.1%} -> {c['mean']:.3f}" for c in curve if c["k"] in (1, 2, 3, 4, 5, 8, 16))]
    drift = [r for r in res["runs"] if r.get("drift")]
    if drift:
        lines += ["", "After each scene change (--concat): mean accuracy in the 1st / 2nd / 3rd period:", "",
                  "| policy | budget | seed | change at frame | period 1 | period 2 | period 3 |", "|---|---|---|---|---|---|---|"]
        for r in drift:
            for cam, rows in r["drift"].items():
                for b, row in zip(res["boundaries"][cam], rows):
                    lines.append(f"| {r['policy']} | {r['budget']} | {r['seed']} | {b} | " + " | ".join(_f(x) for x in row) + " |")
    t = res["timings"]
    lines += ["", f"Bench time: costs {t.get('costs_s', 0):.0f} s, reference {t.get('reference_s', 0):.0f} s, "
              f"{len(res['runs'])} runs {t.get('runs_s', 0):.0f} s" + (f", warm links {t['warm_links_training_s']:.0f} s" if "warm_links_training_s" in t else "")]
    return "\n".join(lines)


def plot_bench(res: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = res["summary"]["rows"]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for key, title, fname in [("mean", "mean accuracy, all models", "accuracy_vs_compute.png"),
                              ("informative", "mean accuracy, informative targets", "accuracy_informative_vs_compute.png")]:
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        curve = res["hold_last_curve"]
        ax.plot([c["compute_share"] for c in curve], [c[key] for c in curve], color="k", ls="--", lw=1, label="hold-last exact (k=1..16)")
        for p in policies:
            pts = sorted((r["compute_share"][0], r[key][0]) for r in rows if r["policy"] == p and r["valid"])
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        for share in (0.2, 1 / 3):
            ax.axvline(share, color="grey", lw=0.8, alpha=0.6)
        ax.set_xlabel("measured compute, share of all models on every frame")
        ax.set_ylabel("agreement with the reference")
        ax.set_title(f"{title} ({res['semantics']})", fontsize=10)
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(out_dir / fname)
    names = res["models"]
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    fig, axes = plt.subplots(len(budgets), 1, figsize=(10, 3.2 * max(len(budgets), 1)), squeeze=False)
    w = 0.8 / max(len(policies), 1)
    for bi, b in enumerate(budgets):
        ax = axes[bi][0]
        for pi, p in enumerate(policies):
            runs = [r for r in res["runs"] if r["policy"] == p and r["budget"] == b and r["valid"]]
            if runs:
                vals = [sum(r["accuracy"]["per_model"][m] for r in runs) / len(runs) for m in names]
                ax.bar([i + pi * w for i in range(len(names))], vals, w, label=p)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))], names, rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"per-model accuracy at budget {b}")
        ax.legend(fontsize=7, ncol=6, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out_dir / "per_model.png", dpi=110)
    plt.close(fig)
    written.append(out_dir / "per_model.png")
    return written
