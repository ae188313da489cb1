"""``tdl``: the command line. Thin: it parses arguments and calls the library.

    tdl run [CONFIG] [--set section.key=value ...] [--out DIR] [--quiet]
    tdl launch -n K [CONFIG] [...]      # the same run, one process per rank under torchrun
    tdl sweep CONFIG --grid key=v1,v2 [--grid ...] --out DIR [--jobs K]
    tdl sweep SWEEP.yaml --out DIR [--jobs K]   # base/set/grid/cases/seeds in one file
    tdl validate CONFIG [--set ...]     # parse and validate only
    tdl report RUN_OR_SWEEP_DIR         # headline figures; writes report.html and report.md there
    tdl privacy-audit CONFIG --out DIR [--attack dlg|idlg|ig] [--images 16] [--rounds 0,50]
    tdl list models|datasets|aggregators|attacks

User errors (bad config, missing data) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trustworthy_dl.errors import TdlError

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tdl", description="Byzantine-robust distributed training and evaluation."
    )
    from trustworthy_dl import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp: argparse.ArgumentParser, what: str = "YAML config") -> None:
        sp.add_argument("config", nargs="?", help=f"{what} (default: the built-in quickstart)")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a field, e.g. --set training.learning_rate=0.1 (repeatable)",
        )

    run = sub.add_parser("run", help="train and evaluate as the config says")
    config_args(run)
    run.add_argument("--out", help="output directory (overrides output.dir)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the unfinished run in RUN_DIR from its checkpoint.pt (its own config.yaml)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or final table")

    launch = sub.add_parser("launch", help="run with one process per rank under torchrun (gloo on CPU)")
    launch.add_argument("-n", "--nproc", type=int, default=2, help="processes on this machine")
    launch.add_argument("--nnodes", type=int, default=1, help="machines taking part (torchrun --nnodes)")
    launch.add_argument("--node-rank", type=int, default=0, help="this machine's rank, 0..nnodes-1")
    launch.add_argument("--master-addr", help="address of the machine with node rank 0 (nnodes > 1)")
    launch.add_argument("--master-port", type=int, default=29500, help="its rendezvous port")
    launch.add_argument(
        "--max-restarts",
        type=int,
        help="torchrun restarts after a rank dies (default: distributed.max_restarts)",
    )
    config_args(launch)
    launch.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    launch.add_argument("--out", help="output directory")
    launch.add_argument("--resume", metavar="RUN_DIR", help="continue the unfinished run in RUN_DIR")

    sweep = sub.add_parser("sweep", help="run a config over a grid of overrides and tabulate the results")
    config_args(sweep, "YAML config, or a sweep file (base, set, grid, cases, axes, seeds)")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis of the grid (repeatable)"
    )
    sweep.add_argument(
        "--cases", metavar="FILE", help="YAML mapping case name -> {key: value} overrides: one more axis"
    )
    sweep.add_argument(
        "--out", help="sweep directory, one sub-directory per point (default: out: of the sweep file)"
    )
    sweep.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    sweep.add_argument("--columns", help="comma-separated columns of the printed table")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")

    val = sub.add_parser("validate", help="validate a config and print it resolved")
    config_args(val)

    rep = sub.add_parser(
        "report", help="print a run's or sweep's headline figures and write report.html + report.md"
    )
    rep.add_argument("run_dir", metavar="RUN_OR_SWEEP_DIR")
    rep.add_argument("--no-html", action="store_true", help="print only; write no report files")

    audit = sub.add_parser(
        "privacy-audit",
        help="reconstruct node updates by gradient inversion, with and without the privacy layer",
    )
    config_args(audit)
    audit.add_argument("--out", required=True, help="directory for audit.json, audit.md and the image grids")
    audit.add_argument("--attack", default="idlg", help="dlg | idlg | ig (default idlg)")
    audit.add_argument("--images", type=int, default=16, help="updates attacked per setting and round")
    audit.add_argument("--rounds", default="0", help="comma-separated rounds whose model is attacked (0,50)")
    audit.add_argument("--batch-size", type=int, default=1, help="images per attacked update (1..8)")
    audit.add_argument(
        "--iterations", type=int, help="attack iterations (default: 100 L-BFGS steps, ig 1000)"
    )
    audit.add_argument("--quiet", action="store_true", help="no progress bar")

    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("what", choices=["models", "datasets", "aggregators", "attacks"])
    return p


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from trustworthy_dl.config import load_config

    return load_config(args.config, args.overrides)


def _resume_config(args: argparse.Namespace) -> str:
    """The config.yaml of the run directory named by ``--resume`` (which then takes no CONFIG / --out)."""
    if args.config or args.out:
        raise TdlError("--resume RUN_DIR uses that run's own config.yaml and directory: drop CONFIG / --out")
    config_path = Path(args.resume) / "config.yaml"
    if not config_path.is_file():
        raise TdlError(f"{str(config_path)!r} not found: is {args.resume!r} a run directory?")
    return str(config_path)


def _cmd_run(args: argparse.Namespace) -> int:
    from trustworthy_dl.engine.run import run_experiment
    from trustworthy_dl.report.console import print_summary

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("output.progress=false")
    if args.resume:
        cfg = _load(argparse.Namespace(config=_resume_config(args), overrides=overrides))
        result = run_experiment(cfg, out_dir=args.resume, resume=True)
    else:
        cfg = _load(argparse.Namespace(config=args.config, overrides=overrides))
        result = run_experiment(cfg, out_dir=args.out)
    if result.out_dir is not None and not args.quiet:
        print_summary(result.summary)
    return 0


def _check_launch(args: argparse.Namespace, cfg: Config) -> None:
    """What every rank would refuse, refused once here: torchrun would otherwise retry a bad start
    ``max_restarts`` times and end in its own traceback (and a restart attempt must never take
    an earlier run's directory for its own)."""
    import torch

    from trustworthy_dl.engine.checkpoint import CHECKPOINT
    from trustworthy_dl.engine.setup import check_supported
    from trustworthy_dl.report.rundir import check_run_dir

    procs = args.nproc * args.nnodes
    if procs > cfg.distributed.num_nodes:
        raise TdlError(
            f"{procs} processes (--nproc {args.nproc} x --nnodes {args.nnodes}) for "
            f"distributed.num_nodes={cfg.distributed.num_nodes}: every process needs at least one node"
        )
    check_supported(cfg)
    if cfg.distributed.dist_backend == "nccl" and not torch.cuda.is_available():
        raise TdlError(
            "distributed.dist_backend=nccl needs CUDA GPUs, and this machine has none; use gloo or auto"
        )
    if args.node_rank != 0:
        return
    if args.resume:
        run_dir = Path(args.resume)
        if (run_dir / "summary.json").exists():
            raise TdlError(f"{args.resume!r} holds a finished run (summary.json): nothing to resume")
        if not (run_dir / CHECKPOINT).is_file():
            raise TdlError(f"{args.resume!r} has no {CHECKPOINT} to resume from")
    else:
        check_run_dir(Path(args.out or cfg.resolved_output_dir()), overwrite=cfg.output.overwrite)


def _cmd_launch(args: argparse.Namespace) -> int:
    if args.resume:
        cfg = _load(argparse.Namespace(config=_resume_config(args), overrides=args.overrides))
    else:
        cfg = _load(args)  # fail fast, in one process, on a bad config
    if args.nproc < 1:
        raise TdlError(f"--nproc must be >= 1, got {args.nproc}")
    if cfg.distributed.parallelism != "data" and args.nproc > 1:
        from trustworthy_dl.engine.pipeline_setup import check_processes

        check_processes(cfg, multi_process=True)
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise TdlError(f"--node-rank must be in 0..{args.nnodes - 1}, got {args.node_rank}")
    if args.nnodes > 1 and not args.master_addr:
        raise TdlError("--nnodes > 1 needs --master-addr (the address of the machine with --node-rank 0)")
    restarts = cfg.distributed.max_restarts if args.max_restarts is None else args.max_restarts
    if restarts < 0:
        raise TdlError(f"--max-restarts must be >= 0, got {restarts}")
    _check_launch(args, cfg)
    if args.nnodes > 1:
        where = [
            f"--nnodes={args.nnodes}",
            f"--node-rank={args.node_rank}",
            f"--master-addr={args.master_addr}",
            f"--master-port={args.master_port}",
        ]
    else:
        where = ["--standalone"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={args.nproc}",
        f"--max-restarts={restarts}",
        # poll the workers once a second (torchrun's default is 0.1 s): when a rank dies, the
        # coordinator then names it in faults.jsonl before the agent stops the group
        "--monitor-interval=1",
        "-m",
        "trustworthy_dl",
        "run",
    ]
    if args.config:
        cmd.append(args.config)
    for o in args.overrides:
        cmd += ["--set", o]
    if args.quiet:
        cmd.append("--quiet")
    if args.resume:
        cmd += ["--resume", args.resume]
    else:  # one directory for every attempt: a restarted group resumes the run in it
        cmd += ["--out", str(args.out or cfg.resolved_output_dir())]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from trustworthy_dl.engine.sweep import read_cases, run_sweep, spec_from_flags
    from trustworthy_dl.engine.sweep_file import is_sweep_file, read_sweep_file
    from trustworthy_dl.report.sweep_tables import markdown_table

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    cases = read_cases(args.cases) if args.cases else None
    if is_sweep_file(args.config):  # tdl sweep SWEEP.yaml: the file holds the grid; flags add to it
        spec = read_sweep_file(args.config)
        flags = spec_from_flags(None, args.grid, overrides=args.overrides, cases=cases)
        spec.overrides += flags.overrides
        spec.grid += flags.grid
        if cases:
            if "case" in spec.named:
                raise TdlError("--cases: the sweep file already has a cases axis")
            spec.named["case"] = cases
        spec.columns = columns or spec.columns
    else:
        spec = spec_from_flags(args.config, args.grid, overrides=args.overrides, cases=cases, columns=columns)
    out = args.out or spec.out
    if not out:
        raise TdlError("tdl sweep needs --out DIR (or out: in the sweep file)")
    rows = run_sweep(spec, out=Path(out), jobs=args.jobs, progress=not args.quiet)
    print(markdown_table(rows, spec.columns), end="")
    headline = Path(out) / "headline.md"
    if headline.exists():
        print("\nheadline (" + str(headline) + "):\n" + headline.read_text(), end="")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from trustworthy_dl.engine.setup import check_supported

    cfg = _load(args)
    check_supported(cfg)  # what `run` refuses before it starts, refused here too
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from trustworthy_dl.report.console import print_summary
    from trustworthy_dl.report.html_report import write_report

    d = Path(args.run_dir)
    path = d / "summary.json"
    if path.is_file() and not (d / "sweep.json").is_file():
        from trustworthy_dl.report.rundir import read_summary

        print_summary(read_summary(path))
    elif (d / "headline.md").is_file():
        print((d / "headline.md").read_text(), end="")
    elif not (d / "sweep.json").is_file():
        raise TdlError(
            f"{str(path)!r} not found: is {args.run_dir!r} a finished run directory (or a sweep directory)?"
        )
    if not args.no_html:
        html, md = write_report(d)
        print(f"report: {html} (and {md.name}, figures in {html.parent / 'report'})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from trustworthy_dl.models import list_models as names
    elif args.what == "datasets":
        from trustworthy_dl.data import list_datasets as names
    elif args.what == "aggregators":
        from trustworthy_dl.aggregation import list_aggregators, list_pre_aggregators

        print("aggregators:     " + ", ".join(list_aggregators()))
        print("pre-aggregators: " + ", ".join(list_pre_aggregators()))
        return 0
    else:
        from trustworthy_dl.attacks import attack_names as names
    print("\n".join(names()))
    return 0


def _cmd_privacy_audit(args: argparse.Namespace) -> int:
    from trustworthy_dl.privacy.inversion.audit import run_audit

    try:
        rounds = [int(v) for v in args.rounds.split(",") if v.strip()]
    except ValueError:
        raise TdlError(f"--rounds takes comma-separated integers, got {args.rounds!r}") from None
    report = run_audit(
        _load(args),
        args.out,
        attack=args.attack,
        images=args.images,
        rounds=rounds,
        batch_size=args.batch_size,
        iterations=args.iterations,
        progress=not args.quiet,
    )
    if not args.quiet:
        print((Path(args.out) / "audit.md").read_text())
    del report
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": _cmd_run,
        "launch": _cmd_launch,
        "sweep": _cmd_sweep,
        "validate": _cmd_validate,
        "report": _cmd_report,
        "list": _cmd_list,
        "privacy-audit": _cmd_privacy_audit,
    }[args.command]
    try:
        return handler(args)
    except TdlError as err:
        print(f"tdl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tdl: interrupted; files written so far are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tdl list models | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's exit flush does not fail again
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
