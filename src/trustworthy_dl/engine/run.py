"""Run one experiment end to end: pick the backend, prepare the output directory, loop, clean up."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from trustworthy_dl.config import Config
from trustworthy_dl.engine.checkpoint import CHECKPOINT, check_config, config_body, load_checkpoint
from trustworthy_dl.engine.comm import launched_by_torchrun, make_comm
from trustworthy_dl.engine.fault_log import FaultLog
from trustworthy_dl.engine.faults import FaultSchedule, restart_attempt
from trustworthy_dl.engine.loop import RoundLoop, RunResult
from trustworthy_dl.engine.setup import build_experiment, check_supported
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.report.rundir import check_run_dir, prepare_run_dir

__all__ = ["run_experiment"]


def run_experiment(
    cfg: Config, *, out_dir: Path | str | None = None, write: bool = True, resume: bool = False
) -> RunResult:
    """Train as ``cfg`` says; the coordinator writes config.yaml, metrics.jsonl, summary.json and plots.

    Under ``torchrun`` this runs one process per rank over torch.distributed; otherwise all nodes
    are simulated in this process. ``resume=True`` continues the unfinished run in ``out_dir``
    from its ``checkpoint.pt`` (see ``engine/checkpoint.py``).
    """
    check_supported(cfg)  # before any process group or file exists
    restarted = _torchrun_restart(out_dir)
    if restarted == "resume":
        resume = True
    comm = make_comm(
        cfg.distributed.num_nodes, backend=cfg.distributed.backend, dist_backend=cfg.distributed.dist_backend
    )
    try:
        target: Path | None = None
        state = records = None
        prepare: Callable[[], None] | None = None  # what the start writes, once it is known to start
        if resume:
            if out_dir is None:
                raise ConfigError("resume needs the run directory")
            run_dir = Path(out_dir)
            if (run_dir / "summary.json").exists():
                raise ConfigError(f"{str(run_dir)!r} holds a finished run (summary.json): nothing to resume")
            state = load_checkpoint(run_dir / CHECKPOINT)
            check_config(state, cfg.to_dict())  # before touching any file
            if comm.is_coordinator:
                target = run_dir
                next_round = int(state["next_round"])

                def prepare() -> None:
                    nonlocal records
                    records, rerun = _keep_records(run_dir / "metrics.jsonl", next_round)
                    if restarted:
                        _note_restart(run_dir, next_round, rerun)

        elif restarted == "restart":  # no checkpoint yet: from round 0, in the same directory
            assert out_dir is not None
            _check_same_run(Path(out_dir), cfg)  # the run that crashed, not another one
            if comm.is_coordinator:
                target = Path(out_dir)

                def prepare() -> None:
                    assert target is not None
                    _, rerun = _keep_records(target / "metrics.jsonl", 0)
                    _note_restart(target, 0, rerun)

        elif write and comm.is_coordinator:
            target = Path(out_dir) if out_dir is not None else cfg.resolved_output_dir()
            check_run_dir(target, overwrite=cfg.output.overwrite)  # refuse early, write nothing yet
            resolved = cfg.to_dict()
            resolved["output"]["dir"] = str(target)

            def prepare() -> None:
                assert target is not None
                prepare_run_dir(target, overwrite=cfg.output.overwrite, config=resolved)

        cut = ((state or {}).get("extra") or {}).get("block_weights")  # a pipeline's measured stage cut
        exp = build_experiment(cfg, comm, block_weights=cut)  # a failed start leaves no file behind
        if prepare is not None:
            prepare()
        if exp.pipeline is not None:
            from trustworthy_dl.engine.pipeline_loop import PipelineLoop

            loop: RoundLoop = PipelineLoop(exp, target)
        else:
            loop = RoundLoop(exp, target)
        if state is not None:
            loop.resume(state, records or [])
        result = loop.run()
        comm.barrier()
        return result
    finally:
        comm.close()


def _torchrun_restart(out_dir: Path | str | None) -> str | None:
    """After torchrun restarted the group (a rank died): "resume" the unfinished run in ``out_dir``
    from its checkpoint, or "restart" it from round 0 when it has none; None otherwise."""
    if not launched_by_torchrun() or restart_attempt() == 0 or out_dir is None:
        return None
    run_dir = Path(out_dir)
    if not (run_dir / "config.yaml").is_file() or (run_dir / "summary.json").exists():
        return None
    return "resume" if (run_dir / CHECKPOINT).is_file() else "restart"


def _check_same_run(run_dir: Path, cfg: Config) -> None:
    """A restarted group continues only the run its directory holds: same config (output.* aside)."""
    try:
        theirs = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{str(run_dir)!r}: its config.yaml cannot be read ({err}); not restarting into it"
        ) from None
    check_config(
        {"config": json.dumps(config_body(theirs if isinstance(theirs, dict) else {}))}, cfg.to_dict()
    )


def _note_restart(run_dir: Path, from_round: int, rerun: int) -> None:
    FaultLog(FaultSchedule(), run_dir).append(
        {"event": "resumed", "attempt": restart_attempt(), "from_round": from_round, "rounds_rerun": rerun}
    )


def _keep_records(path: Path, next_round: int) -> tuple[list[dict], int]:
    """The records of the rounds before the checkpoint (metrics.jsonl keeps just those), and how
    many completed rounds after it will be run again.

    Records the interrupted attempt wrote after its last checkpoint are not lost: the whole old
    file is kept as ``metrics.interrupted-<k>.jsonl`` (the resumed run writes those rounds again).
    """
    if not path.is_file() and next_round == 0:
        return [], 0
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is missing: the run directory is incomplete")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        records = [json.loads(line) for line in lines]
    except json.JSONDecodeError:  # a line cut by the crash: keep the complete ones
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    kept = [r for r in records if int(r.get("round", -1)) < next_round]
    rounds = [int(r["round"]) for r in kept]
    if rounds != list(range(next_round)):
        raise ConfigError(
            f"{str(path)!r} does not hold rounds 0..{next_round - 1} before the checkpoint "
            f"(found {len(rounds)} of them): cannot resume from it"
        )
    k = 1
    while (path.parent / f"metrics.interrupted-{k}.jsonl").exists():
        k += 1
    path.rename(path.parent / f"metrics.interrupted-{k}.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept, len(records) - len(kept)
