"""The sections of a sweep's report: headline, attack x defence heatmap, curves, trust, overhead."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from trustworthy_dl.report.metrics import read_metrics
from trustworthy_dl.report.report_plots import plot_curves, plot_heatmap, plot_phase_bars, plot_trust_groups
from trustworthy_dl.report.run_page import Section, config_of, table
from trustworthy_dl.report.rundir import read_summary
from trustworthy_dl.report.sweep_tables import LOWER_IS_BETTER, headline, run_dir_of

__all__ = ["sweep_sections"]

_FIGURES = [
    "test_accuracy",
    "perplexity",
    "tpr",
    "fpr",
    "latency_median",
    "false_quarantines",
    "recomputations_per_round",
    "epsilon",
    "rounds",
    "wall_s",
]


def _label(row: dict[str, Any], keys: list[str]) -> str:
    return " / ".join(str(row.get(k)) for k in keys) or "all"


def _mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Point-wise mean over seeds of curves that share their rounds (the first one otherwise)."""
    if not curves:
        return [], []
    x = curves[0][0]
    same = [c for c in curves if c[0] == x]
    return x, list(np.mean([c[1] for c in same], axis=0)) if x else []


def sweep_sections(sweep_dir: Path, figs: Path) -> list[Section]:
    rows: list[dict[str, Any]] = json.loads((sweep_dir / "sweep.json").read_text())
    meta_path = sweep_dir / "sweep_axes.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    axes: list[str] = meta.get("axes") or (list(rows[0])[: list(rows[0]).index("status")] if rows else [])
    over: list[str] = [k for k in meta.get("over", []) if k in axes]
    metric: str = meta.get("metric", "test_accuracy")
    dkeys = [k for k in axes if k not in over and k != "seed"]
    ok = [r for r in rows if r.get("status") == "ok"]
    sections: list[Section] = [
        {
            "title": "Sweep",
            "text": (
                f"{len(rows)} runs ({len(ok)} finished) over the axes {', '.join(axes) or '(none)'}; "
                f"base config {meta.get('base') or 'built-in defaults'}. Every run is simulated in one process "
                "unless its own summary says otherwise; each figure below traces back to a run directory."
            ),
        }
    ]
    rel = lambda p: str(p.relative_to(sweep_dir))  # noqa: E731
    lower = metric in LOWER_IS_BETTER
    head = headline(rows, axes=axes, over=over, metric=metric) if rows else []
    if over and head:
        attacks: list[str] = []
        for t in head:
            attacks += [a for a in t["attacks"] if a not in attacks]
        names = [_label(t["defence"], dkeys) for t in head]
        clean = any(t["no_attack"] for t in head)
        cols = (["no attack"] if clean else []) + attacks + ["worst case"]
        vals = np.full((len(head), len(cols)), np.nan)
        for i, t in enumerate(head):
            cells = (
                ([t["no_attack"]] if clean else []) + [t["attacks"].get(a) for a in attacks] + [t["worst"]]
            )
            for j, c in enumerate(cells):
                if c:
                    vals[i, j] = c["mean"]
        hm = plot_heatmap(vals, names, cols, figs / "heatmap.png", metric=metric, lower_better=lower)
        trows = [
            [
                n,
                *[("-" if not np.isfinite(v) else f"{v:.4f}") for v in vals[i]],
                (t["worst"] or {}).get("attack", "-"),
            ]
            for i, (n, t) in enumerate(zip(names, head))
        ]
        sections.append(
            {
                "title": f"Headline: worst-case {metric} over attacks",
                "text": (
                    f"Rows: {' / '.join(dkeys) or 'all runs'}; columns: {' / '.join(over)} (mean over seeds). The worst case is the "
                    f"{'maximum' if lower else 'minimum'} over attacks; runs with attack.name = none form the no-attack column."
                ),
                "figures": [{"file": rel(hm), "caption": f"{metric}: defence x attack"}],
                "table": table([" / ".join(dkeys) or "runs", *cols, "worst attack"], trows),
            }
        )
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        groups[_label(r, dkeys)].append(r)
    curve_figs, trust_figs = [], []
    splits: dict[str, dict[str, float]] = {}
    for gi, (gname, grows) in enumerate(groups.items()):
        per_attack: dict[str, list[tuple[list[int], list[float]]]] = defaultdict(list)
        trust: dict[str, dict[str, Any]] = {}
        phase_sum: dict[str, float] = defaultdict(float)
        for r in grows:
            d = run_dir_of(sweep_dir, r)
            recs = read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").exists() else []
            key = "test_perplexity" if r.get("perplexity") is not None else "test_accuracy"
            ev = [x for x in recs if key in x]
            label = _label(r, over) if over else "mean over seeds"
            per_attack[label].append(([x["round"] for x in ev], [float(x[key]) for x in ev]))
            summary = read_summary(d / "summary.json")
            for k, v in (summary.get("time_split_s") or {}).items():
                phase_sum[k] += float(v) / max(1, int(summary.get("rounds") or 1)) / len(grows)
            tr = [x for x in recs if "trust" in x]
            if tr and label not in trust:
                byz = set(summary.get("byzantine_ids") or [])
                scores = np.array([x["trust"] for x in tr], dtype=float)
                hon = [i for i in range(scores.shape[1]) if i not in byz]
                trust[label] = {
                    "rounds": [x["round"] for x in tr],
                    "byzantine": scores[:, sorted(byz)].mean(axis=1)
                    if byz and summary.get("attack") != "none"
                    else None,
                    "honest": scores[:, hon].mean(axis=1),
                }
        curves = {a: _mean_curve(c) for a, c in per_attack.items()}
        p = plot_curves(
            curves, figs / f"curves_{gi}.png", title=gname, ylabel="test metric (mean over seeds)"
        )
        if p:
            curve_figs.append({"file": rel(p), "caption": gname})
        security = config_of(run_dir_of(sweep_dir, grows[0])).get("security") or {}
        threshold = float(security.get("trust_threshold", 0.7))
        p = plot_trust_groups(trust, figs / f"trust_{gi}.png", title=gname, threshold=threshold)
        if p:
            trust_figs.append({"file": rel(p), "caption": gname})
        splits[gname] = dict(phase_sum)
    if curve_figs:
        sections.append(
            {
                "title": "Test curves per setting",
                "text": "One figure per defence; one line per attack.",
                "figures": curve_figs,
            }
        )
    if trust_figs:
        sections.append({"title": "Trust trajectories", "figures": trust_figs})
    det = [r for r in ok if r.get("tpr") is not None or r.get("fpr") is not None]
    if det:
        keys = [
            "tpr",
            "fpr",
            "latency_median",
            "latency_max",
            "false_quarantines",
            "recomputations_per_round",
        ]
        sections.append(
            {
                "title": "Detection",
                "text": "Node-rounds, positive = quarantined; latency in rounds from the attack's start.",
                "table": table([*axes, *keys], [[r.get(k) for k in [*axes, *keys]] for r in det]),
            }
        )
    if any(splits.values()):
        phases = plot_phase_bars(splits, figs / "phases.png", per="round")
        base = min((sum(v for k, v in s.items() if k != "eval") for s in splits.values() if s), default=0.0)
        trows = []
        for g, s in splits.items():
            total = sum(v for k, v in s.items() if k != "eval")
            sec = s.get("security", 0.0) + s.get("trust", 0.0)
            trows.append(
                [
                    g,
                    total,
                    f"{100 * sec / total:.1f}%" if total else "-",
                    f"{total / base:.2f}x" if base else "-",
                ]
            )
        sections.append(
            {
                "title": "Time per phase and overhead",
                "text": "Mean seconds per round over each setting's runs (evaluation excluded); security share = security + trust phases; relative to the cheapest setting.",
                "figures": [{"file": rel(phases), "caption": "seconds per round by phase"}] if phases else [],
                "table": table(["setting", "s / round", "security share", "relative cost"], trows),
            }
        )
    if any(r.get("epsilon") is not None for r in ok):
        keys = [*axes, "epsilon", "test_accuracy"]
        sections.append({"title": "Privacy", "table": table(keys, [[r.get(k) for k in keys] for r in ok])})
    exp_path = sweep_dir / "experiment.json"
    if exp_path.exists():  # the seed's experiment tables (report/experiment.py), when written
        from trustworthy_dl.report.experiment import TITLES

        for name, trows in json.loads(exp_path.read_text()).items():
            if trows:
                cols = list(trows[0])
                sections.append(
                    {
                        "title": TITLES.get(name, name),
                        "table": table(cols, [[r.get(c) for c in cols] for r in trows]),
                    }
                )
    figs_cols = [c for c in _FIGURES if any(r.get(c) is not None for r in rows)]
    sections.append(
        {
            "title": "All runs",
            "table": table(
                [*axes, "status", *figs_cols],
                [[r.get(c) for c in [*axes, "status", *figs_cols]] for r in rows],
            ),
        }
    )
    return sections
