"""Run one experiment end to end: pick the backend, prepare the output directory, loop, clean up."""

from __future__ import annotations

from pathlib import Path

from trustworthy_dl.config import Config
from trustworthy_dl.engine.comm import make_comm
from trustworthy_dl.engine.loop import RoundLoop, RunResult
from trustworthy_dl.engine.setup import build_experiment
from trustworthy_dl.report.rundir import prepare_run_dir

__all__ = ["run_experiment"]


def run_experiment(cfg: Config, *, out_dir: Path | str | None = None, write: bool = True) -> RunResult:
    """Train as ``cfg`` says; the coordinator writes config.yaml, metrics.jsonl, summary.json and plots.

    Under ``torchrun`` this runs one process per rank over torch.distributed; otherwise all nodes
    are simulated in this process.
    """
    comm = make_comm(
        cfg.distributed.num_nodes, backend=cfg.distributed.backend, dist_backend=cfg.distributed.dist_backend
    )
    try:
        target: Path | None = None
        if write and comm.is_coordinator:
            target = Path(out_dir) if out_dir is not None else cfg.resolved_output_dir()
            resolved = cfg.to_dict()
            resolved["output"]["dir"] = str(target)
            prepare_run_dir(target, overwrite=cfg.output.overwrite, config=resolved)
        exp = build_experiment(cfg, comm)
        result = RoundLoop(exp, target).run()
        comm.barrier()
        return result
    finally:
        comm.close()
