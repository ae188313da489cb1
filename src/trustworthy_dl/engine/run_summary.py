"""A finished run's summary.json: headline figures, detection, trust, faults, traffic; its plots."""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING, Any

import torch

from trustworthy_dl.engine.setup import headline

if TYPE_CHECKING:
    from trustworthy_dl.engine.loop import RoundLoop

__all__ = ["extra_plots", "run_summary", "traffic_summary"]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def traffic_summary(loop: RoundLoop, traffic: list[Any], rounds: int) -> dict[str, Any]:
    """Bytes each process sent and received per round (this attempt), measured at the comm."""
    per = max(rounds, 1)
    return {
        "mode": loop.exp.cfg.aggregation.mode if loop.sharded else "gather",
        "bytes_per_round": [
            {
                "rank": k,
                "nodes": list(loop.comm.nodes_of(k)),
                "sent": round(t.sent / per),
                "received": round(t.received / per),
            }
            for k, t in enumerate(traffic)
        ],
        "note": "payload bytes through the comm per round, measured in each process (rounds of this attempt)",
    }


def extra_plots(loop: RoundLoop) -> None:
    if loop.exp.security is None:
        return
    from trustworthy_dl.report.trust_plots import plot_detection_timeline, plot_trust

    assert loop.out_dir is not None
    plot_trust(
        loop.log.records,
        loop.out_dir,
        byzantine_ids=loop.exp.adversary.byzantine_ids,
        threshold=loop.exp.trust.threshold,
    )
    plot_detection_timeline(loop.log.records, loop.out_dir, byzantine_ids=loop.exp.adversary.byzantine_ids)


def run_summary(loop: RoundLoop, wall: float) -> dict[str, Any]:
    exp, cfg = loop.exp, loop.exp.cfg
    evals = [r for r in loop.log.records if "test_loss" in r]
    last = evals[-1] if evals else {}
    train_s = wall - loop.totals.split.get("eval", 0.0)
    summary: dict[str, Any] = {
        "run": {
            "name": cfg.model.name + "-" + cfg.data.name,
            "dir": str(loop.out_dir) if loop.out_dir else None,
        },
        "backend": exp.comm.backend_name,
        "simulated": exp.comm.backend_name == "simulated",
        "attack_simulated": cfg.attack.enabled,
        **headline(cfg),
        "byzantine_ids": exp.adversary.byzantine_ids,
        "processes": exp.comm.world_size,
        "device": str(exp.device),
        "num_params": exp.flat.num_params,
        **({"data_note": exp.data.meta["note"]} if exp.data.meta.get("note") else {}),
        "final": {
            "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"),
            "perplexity": last.get("test_perplexity"),
            **(
                {"backdoor_success": last["test_backdoor_success"]} if "test_backdoor_success" in last else {}
            ),
            "train_loss": loop.log.records[-1]["loss"] if loop.log.records else None,
        },
        "best_test_accuracy": max((r["test_accuracy"] for r in evals), default=None),
        "rounds": exp.total_rounds,
        "rounds_per_epoch": exp.rounds_per_epoch,
        "epochs": exp.total_rounds / exp.rounds_per_epoch,
        "wall_s": round(wall, 3),
        "throughput": {
            "samples_per_s": round(loop.samples / train_s, 2) if train_s > 0 else None,
            "rounds_per_s": round(exp.total_rounds / train_s, 3) if train_s > 0 else None,
            "note": "training samples (all nodes) per second of training time, evaluation excluded",
        },
        "time_split_s": {k: round(v, 4) for k, v in sorted(loop.totals.split.items())},
        "peak_memory_mb": round(_peak_memory_mb(exp.device), 1),
    }
    if exp.security is not None or cfg.attack.enabled:
        summary["detection"] = loop.tracker.summary()
        if exp.security is not None:
            summary["detection"]["verification"] = exp.security.cost_summary()
        summary["trust"] = exp.trust.summary()
    if exp.privacy is not None:
        summary["privacy"] = exp.privacy.summary()
    if exp.redundancy is not None:
        compute_s = loop.totals.split.get("compute", 0.0)
        summary["redundancy"] = exp.redundancy.summary(compute_s)
    faults = loop.faults.summary()
    if faults is not None:
        summary["faults"] = faults
    if loop.reassignments:
        summary["reassignment"] = {
            "events": len(loop.reassignments),
            "seconds_total": round(sum(e["seconds"] for e in loop.reassignments), 6),
            "shards_moved_away": sum(e["reason"] == "inactive" for e in loop.reassignments),
            "shards_returned": sum(e["reason"] == "return" for e in loop.reassignments),
            "first": loop.reassignments[:20],
        }
    return summary
