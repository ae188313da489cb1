"""The sections of a single run's report: figures, curves, trust, detection, migrations, privacy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustworthy_dl.report.console import fmt_value, summary_rows
from trustworthy_dl.report.metrics import read_metrics
from trustworthy_dl.report.plots import plot_training
from trustworthy_dl.report.report_plots import plot_phase_bars

__all__ = ["Section", "config_of", "run_sections", "table"]

Section = dict[str, Any]


def table(cols: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"cols": cols, "rows": [[fmt_value(v) for v in r] for r in rows]}


def _fig(path: Path | None, root: Path, caption: str) -> list[dict[str, str]]:
    return [{"file": str(path.relative_to(root)), "caption": caption}] if path else []


def run_sections(run_dir: Path, summary: dict[str, Any], figs: Path) -> list[Section]:
    """The report's sections for one run; figures are written into ``figs`` (under ``run_dir``)."""
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    sim = "simulated in one process" if summary.get("simulated") else f"{summary.get('processes')} processes"
    attack_note = " (attack simulated)" if summary.get("attack_simulated") else ""
    sections: list[Section] = [
        {
            "title": "Run",
            "text": f"{summary.get('backend')} backend, {sim}{attack_note}; seed {summary.get('seed')}.",
            "table": table(["figure", "value"], [list(r) for r in summary_rows(summary)]),
        }
    ]
    lm = (summary.get("final") or {}).get("perplexity") is not None
    if records:
        curves = plot_training(records, figs, language_model=lm)
        sections.append(
            {
                "title": "Training curves",
                "figures": [f for p in curves for f in _fig(p, run_dir, p.stem.replace("_", " "))],
            }
        )
    det = summary.get("detection")
    if records and any("trust" in r for r in records):
        from trustworthy_dl.report.trust_plots import plot_detection_timeline, plot_trust

        byz = list(summary.get("byzantine_ids") or [])
        threshold = float((config_of(run_dir).get("security") or {}).get("trust_threshold", 0.7))
        figures = _fig(
            plot_trust(records, figs, byzantine_ids=byz, threshold=threshold), run_dir, "trust per node"
        )
        figures += _fig(
            plot_detection_timeline(records, figs, byzantine_ids=byz), run_dir, "detection timeline"
        )
        sec: Section = {"title": "Trust and detection", "figures": figures}
        if det:
            keys = [
                "tp",
                "fp",
                "tn",
                "fn",
                "tpr",
                "fpr",
                "precision",
                "latency_rounds_median",
                "latency_rounds_max",
            ]
            sec["table"] = table(keys, [[det.get(k) for k in keys]])
            sec["text"] = (
                "Node-rounds; positive = quarantined. Latency: rounds from the attack's start to quarantine. "
                f"False quarantines: {det.get('false_quarantines', 0)}."
            )
        sections.append(sec)
    re = summary.get("reassignment") or {}
    if re.get("events"):
        rows = [
            [e.get("round"), e.get("shard"), e.get("from_node"), e.get("to_node"), e.get("reason")]
            for e in re["first"]
        ]
        sections.append(
            {
                "title": "Shard reassignments",
                "text": f"{re['events']} events, {re.get('seconds_total')} s in total; the first ones:",
                "table": table(["round", "shard", "from node", "to node", "reason"], rows),
            }
        )
    mig = summary.get("migrations") or {}
    if summary.get("pipeline"):
        from trustworthy_dl.report.pipeline_plots import plot_pipeline_loss

        attack = config_of(run_dir).get("attack") or {}
        start = attack.get("start_round", 0) if attack.get("name", "none") != "none" else None
        rows = [
            [
                e.get("round"),
                e.get("replica"),
                e.get("stage"),
                e.get("from"),
                e.get("to"),
                e.get("seconds"),
                e.get("bytes"),
            ]
            for e in mig.get("events", [])
        ]
        sections.append(
            {
                "title": "Pipeline stages and migrations",
                "text": f"{mig.get('count', 0)} migration(s); recovery: {summary.get('recovery_steps')} steps after the last one.",
                "figures": _fig(
                    plot_pipeline_loss(records, figs, attack_start=start),
                    run_dir,
                    "loss, quarantines, migrations",
                ),
                "table": table(["step", "replica", "stage", "from node", "to node", "seconds", "bytes"], rows)
                if rows
                else None,
            }
        )
    split = summary.get("time_split_s") or {}
    if split:
        total = sum(v for k, v in split.items() if k != "eval") or 1.0
        sections.append(
            {
                "title": "Time per phase",
                "figures": _fig(
                    plot_phase_bars({"this run": split}, figs / "phases.png"), run_dir, "seconds per phase"
                ),
                "table": table(
                    ["phase", "seconds", "share of training time"],
                    [
                        [k, v, "-" if k == "eval" else f"{100 * v / total:.1f}%"]
                        for k, v in sorted(split.items(), key=lambda kv: -kv[1])
                    ],
                ),
            }
        )
    priv = summary.get("privacy")
    if priv:
        sections.append(
            {
                "title": "Privacy",
                "table": table(
                    ["field", "value"], [[k, v] for k, v in priv.items() if not isinstance(v, (dict, list))]
                ),
            }
        )
    cfg = run_dir / "config.yaml"
    if cfg.exists():
        sections.append({"title": "Config", "pre": cfg.read_text()})
    return sections


def config_of(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml ({} when it cannot be read)."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}
