"""Checkpoints: everything a run carries between rounds, so an interrupted run resumes exactly.

``output.checkpoint_every: k`` makes the coordinator write ``checkpoint.pt`` in the run directory
after every k-th round (through a temporary file and an atomic rename: a crash never leaves a
half-written checkpoint), and ``tdl run --resume DIR`` continues from it. Saved: the flat
parameters and the model's buffers (BatchNorm statistics), the optimizer, the aggregator's state
(CenteredClip's centre...), trust scores and quarantine, the shard holders, the security layer
(verifier watch list) and detection tallies, the reassignment log, and torch's global RNG. Every
other random choice (batches, attacks, spot checks) is derived from (seed, round), so a resumed
simulated run reproduces the uninterrupted one exactly (a test checks every metric). Under
``torchrun`` every rank reads the same file (the run directory must be visible to all ranks).

Only tensors and plain containers are saved; loading uses ``torch.load(weights_only=True)``,
which never runs code from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trustworthy_dl.errors import ConfigError

if TYPE_CHECKING:
    from trustworthy_dl.engine.loop import RoundLoop

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "check_config",
    "config_body",
    "config_difference",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
]

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def config_body(config: dict[str, Any]) -> dict[str, Any]:
    """What must not change across a resume: every section but ``output``, as plain JSON values."""
    body = {k: v for k, v in config.items() if k != "output"}
    return json.loads(json.dumps(body, sort_keys=True, default=str))


def config_difference(saved: dict[str, Any], current: dict[str, Any], path: str = "") -> str | None:
    """The first setting of ``saved`` that ``current`` changes, as "key: saved -> current"; None if
    none. Settings ``current`` has and ``saved`` lacks (added by a newer release, at their
    defaults) are not differences."""
    for key, old in saved.items():
        where = f"{path}.{key}" if path else key
        if key not in current:
            return f"{where}: {old!r} in the checkpoint, absent now"
        new = current[key]
        if isinstance(old, dict) and isinstance(new, dict):
            found = config_difference(old, new, where)
            if found:
                return found
        elif old != new:
            return f"{where}: {old!r} in the checkpoint, {new!r} now"
    return None


def check_config(state: dict[str, Any], config: dict[str, Any]) -> None:
    """A ConfigError naming the first setting (outside ``output``) that differs from the checkpoint's."""
    diff = config_difference(json.loads(state["config"]), config_body(config))
    if diff is not None:
        raise ConfigError(
            f"the checkpoint was written by a run with another config ({diff}); resume with the run's "
            "own config.yaml (only output.* may change)"
        )


def save_checkpoint(loop: RoundLoop, path: Path, *, next_round: int, wall_s: float = 0.0) -> None:
    """Write the state after round ``next_round - 1`` to ``path`` atomically."""
    exp = loop.exp
    agg_state = getattr(exp.aggregator, "state_dict", None)
    state = {
        "format": FORMAT,
        "next_round": next_round,
        "total_rounds": exp.total_rounds,
        "config": json.dumps(config_body(exp.cfg.to_dict()), sort_keys=True),
        "params": exp.flat.params_D.detach().clone(),
        "buffers": {name: b.detach().clone() for name, b in exp.flat.model.named_buffers()},
        "optimizer": exp.optimizer.state_dict(),
        "aggregator": agg_state() if callable(agg_state) else {},
        "trust": exp.trust.state_dict(),
        "scheduler": exp.scheduler.state_dict(),
        "security": exp.security.state_dict() if exp.security is not None else None,
        "attacker": exp.adversary.state_dict(),
        "tracker": loop.tracker.state_dict(),
        "loop": {
            "samples": loop.samples,
            "time_split": dict(loop.totals.split),
            "reassignments": json.dumps(loop.reassignments),
            "faults": json.dumps(loop.faults.state_dict()),
            "wall_s": wall_s,
        },
        "rng": torch.get_rng_state(),
        "privacy": _privacy_state(loop),
        "extra": loop.extra_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; a missing, foreign or damaged file is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(
            f"no checkpoint at {str(path)!r}: was the run started with output.checkpoint_every > 0, "
            "and did it reach its first checkpoint?"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        # one line, and never torch's advice to retry with weights_only=False: that would run
        # code from a file that is damaged or not ours
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        why = (
            type(err).__name__
            if "weights_only" in first or not first
            else f"{type(err).__name__}: {first[:200]}"
        )
        raise ConfigError(
            f"checkpoint {str(path)!r} cannot be read: damaged or not written by trustworthy-dl ({why})"
        ) from None
    if (
        not isinstance(state, dict)
        or state.get("format") != FORMAT
        or not isinstance(state.get("config"), str)
    ):
        raise ConfigError(f"{str(path)!r} is not a trustworthy-dl checkpoint (format {FORMAT})")
    missing = sorted(_KEYS - set(state))
    if missing:
        raise ConfigError(f"checkpoint {str(path)!r} is incomplete: it lacks {', '.join(missing)}")
    return state


_KEYS = {
    "next_round",
    "total_rounds",
    "params",
    "buffers",
    "optimizer",
    "trust",
    "scheduler",
    "tracker",
    "loop",
}


def restore(loop: RoundLoop, state: dict[str, Any]) -> int:
    """Load ``state`` into the run's components; returns the round to continue from."""
    exp = loop.exp
    check_config(state, exp.cfg.to_dict())
    if state["total_rounds"] != exp.total_rounds:
        raise ConfigError(
            f"the checkpoint's run has {state['total_rounds']} rounds, this one {exp.total_rounds}"
        )
    params = state["params"]
    if params.shape != exp.flat.params_D.shape:
        raise ConfigError(
            f"checkpoint has {params.numel()} parameters, the model {exp.flat.params_D.numel()}"
        )
    with torch.no_grad():
        exp.flat.params_D.copy_(params.to(exp.flat.params_D.device))
        buffers = dict(exp.flat.model.named_buffers())
        for name, value in state["buffers"].items():
            if name not in buffers:
                raise ConfigError(f"checkpoint has a buffer {name!r} the model does not have")
            buffers[name].copy_(value.to(buffers[name].device))
    exp.optimizer.load_state_dict(state["optimizer"])
    load_agg = getattr(exp.aggregator, "load_state_dict", None)
    if callable(load_agg):
        load_agg(state["aggregator"])
    exp.trust.load_state_dict(state["trust"])
    exp.scheduler.load_state_dict(state["scheduler"])
    if exp.security is not None and state["security"] is not None:
        exp.security.load_state_dict(state["security"])
    exp.adversary.load_state_dict(state["attacker"])
    loop.tracker.load_state_dict(state["tracker"])
    loop.samples = int(state["loop"]["samples"])
    loop.totals.split.update({k: float(v) for k, v in state["loop"]["time_split"].items()})
    loop.reassignments = json.loads(state["loop"]["reassignments"])
    loop.faults.load_state_dict(json.loads(state["loop"].get("faults", "{}")))
    torch.set_rng_state(state["rng"])
    _load_privacy_state(loop, state.get("privacy"))
    loop.load_extra_state(state.get("extra", {}))
    return int(state["next_round"])


def _privacy_state(loop: RoundLoop) -> dict[str, Any] | None:
    """The accountant's steps per shard and the nodes' error-feedback memories (privacy on)."""
    p = loop.exp.privacy
    if p is None:
        return None
    return {
        "accountant": p.accountant.state_dict() if p.accountant is not None else None,
        "mechanism": p.mechanism.state_dict(),
    }


def _load_privacy_state(loop: RoundLoop, state: dict[str, Any] | None) -> None:
    p = loop.exp.privacy
    if p is None:
        return
    if state is None:
        raise ConfigError("the checkpoint has no privacy state (written with privacy off)")
    try:
        if p.accountant is not None and state["accountant"] is not None:
            p.accountant.load_state_dict(state["accountant"])
        p.mechanism.load_state_dict(state["mechanism"])
    except (KeyError, ValueError) as err:
        raise ConfigError(f"the checkpoint's privacy state does not fit this run: {err}") from None
