"""AdversarialAttacker: who is Byzantine, when they attack, and what they send.

Legend: N nodes, B Byzantine nodes, H honest nodes, D flat parameters.

Built from the ``attack:`` config section. It is stateless: the Byzantine ids come from the run
seed and every random draw from a generator seeded by (seed, round, node), so a run, or a resumed
run, is deterministic on both backends.

How the Byzantine rows are made in an active round (``corrupt``):

* omniscient attacks (ALIE, IPM, min-max, ...) see the honest nodes' rows and return one vector
  that every Byzantine node sends (collusive by nature; ``collude`` does not change them);
* per-node attacks (gaussian, sign-flip, ...) with ``collude: true`` compute one vector from the
  mean of the Byzantine nodes' own honest rows with one shared draw, sent by all;
  with ``collude: false`` each node attacks from its own honest row with its own draw;
* data attacks poison the Byzantine nodes' batches (``corrupt_batch``); ``corrupt`` then only
  applies their model-replacement ``boost`` to the Byzantine rows.

Each Byzantine node acts in the process that hosts it (``corrupt_local``), before anything is
sent: the coordinator only sees what the node sent. What an attack needs from other nodes comes
through ``attacks/coalition.py``: with ``knowledge: colluders`` the Byzantine processes exchange
their own honest rows in a process sub-group (ALIE's setting); with ``knowledge: full`` they also
see every honest node's row (an eavesdropper on the network).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustworthy_dl.attacks.backdoor import model_replacement
from trustworthy_dl.attacks.base import DataAttack, UpdateAttack, build_attack
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.pipeline import StageAttack
from trustworthy_dl.attacks.registry import DATA_ATTACKS, PIPELINE_ATTACKS, UPDATE_ATTACKS
from trustworthy_dl.errors import ConfigError

if TYPE_CHECKING:
    from trustworthy_dl.config import AttackConfig

__all__ = ["AdversarialAttacker", "derive_seed"]

_COALITION = -1  # the "node" whose generator the colluding Byzantine nodes share


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (e.g. seed, round, node); stable across runs and platforms."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class AdversarialAttacker:
    """Decides who attacks and when, and applies the configured attack.

    Args:
        cfg: the ``attack`` config section (``AttackConfig``), or an attack name (the seed's
            ``AdversarialAttacker('alie', num_nodes=8, seed=0)``), with ``fields`` as its other
            settings (``num_byzantine=2``, ``params={...}``).
        num_nodes: N; None for an attacker built before the run (``AdversarialAttacker("alie",
            num_byzantine=2)`` passed to ``DistributedTrainer.train``), which the run binds.
        seed: the run seed; Byzantine ids (when not given) and every draw derive from it.
    """

    def __init__(
        self, cfg: AttackConfig | str, *, num_nodes: int | None = None, seed: int = 0, **fields: Any
    ) -> None:
        if isinstance(cfg, str):
            from pydantic import ValidationError

            from trustworthy_dl.config import AttackConfig as _AttackConfig

            try:
                cfg = _AttackConfig(name=cfg, **fields)
            except ValidationError as err:
                raise ConfigError(f"AdversarialAttacker({cfg!r}): {err.errors()[0]['msg']}") from None
        elif fields:
            raise TypeError(f"settings {sorted(fields)} go in the AttackConfig when one is given")
        if num_nodes is not None and num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        self.cfg = cfg
        self.num_nodes: int = num_nodes or 0  # 0: not bound to a run's nodes yet
        self.seed = seed
        self.name: str = cfg.name.lower()
        self.attack: UpdateAttack | DataAttack | StageAttack | None = None
        if self.name != "none":
            registry = (
                DATA_ATTACKS
                if self.name in DATA_ATTACKS
                else PIPELINE_ATTACKS
                if self.name in PIPELINE_ATTACKS
                else UPDATE_ATTACKS
            )
            self.attack = build_attack(registry, self.name, dict(cfg.params))
        self.byzantine_ids: list[int] = []
        self._byz: frozenset[int] = frozenset()
        if num_nodes is not None:
            self.bind(num_nodes, seed=seed)

    def bind(self, num_nodes: int, *, seed: int | None = None) -> AdversarialAttacker:
        """Fix the number of nodes (and seed): the Byzantine ids are chosen now, as a run would."""
        if num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = num_nodes
        self.seed = self.seed if seed is None else seed
        self.byzantine_ids = self._choose_ids() if self.attack is not None else []
        self._byz = frozenset(self.byzantine_ids)
        return self

    def _choose_ids(self) -> list[int]:
        n = self.num_nodes
        if self.cfg.byzantine_ids is not None:
            ids = sorted(self.cfg.byzantine_ids)
            bad = [i for i in ids if not 0 <= i < n]
            if bad or len(set(ids)) != len(ids):
                raise ConfigError(
                    f"attack.byzantine_ids {self.cfg.byzantine_ids} must be distinct ids in [0, {n})"
                )
        else:
            k = self.cfg.num_byzantine
            if not 0 <= k < n:
                raise ConfigError(f"attack.num_byzantine={k} must be in [0, num_nodes={n})")
            g = torch.Generator().manual_seed(derive_seed(self.seed, "byzantine_ids"))
            ids = sorted(torch.randperm(n, generator=g)[:k].tolist())
        if len(ids) >= n:
            raise ConfigError(f"{len(ids)} Byzantine nodes leave no honest node among num_nodes={n}")
        return ids

    # ------------------------------------------------------------------ who and when

    @property
    def num_byzantine(self) -> int:
        return len(self.byzantine_ids)

    @property
    def is_data_attack(self) -> bool:
        return isinstance(self.attack, DataAttack)

    @property
    def stage_attack(self) -> StageAttack | None:
        """The pipeline-stage attack, if this is one (it acts on messages, not on update rows)."""
        return self.attack if isinstance(self.attack, StageAttack) else None

    def is_byzantine(self, node: int) -> bool:
        return node in self._byz

    def active(self, round: int) -> bool:
        """Whether the Byzantine nodes attack in ``round`` (start / end inclusive / every k)."""
        c = self.cfg
        if self.attack is None or not self.byzantine_ids or round < c.start_round:
            return False
        if c.end_round is not None and round > c.end_round:
            return False
        return (round - c.start_round) % c.every == 0

    def generator(self, round: int, node: int, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator of ``node`` in ``round`` (node -1: the colluding coalition's)."""
        return torch.Generator(device=device).manual_seed(derive_seed(self.seed, "attack", round, node))

    # ------------------------------------------------------------------ acting

    @property
    def knowledge(self) -> str:
        """What an omniscient attack sees: "full" (every honest row) or "colluders" (their own)."""
        return str(getattr(self.cfg, "knowledge", "full"))

    def needs_view(self, round: int) -> str:
        """What the Byzantine nodes must see this round before they send: "all" rows (full
        knowledge), the Byzantine nodes' own honest rows ("byzantine"), or "none" (each node
        attacks from its own row)."""
        if not self.active(round) or not isinstance(self.attack, UpdateAttack):
            return "none"
        if self.attack.knowledge == "omniscient":
            return "all" if self.knowledge == "full" else "byzantine"
        return "byzantine" if self.cfg.collude and self.num_byzantine > 1 else "none"

    def corrupt(
        self, updates_ND: Tensor, *, round: int, aggregator: Callable[..., Any] | None = None
    ) -> Tensor:
        """The round's updates with the Byzantine rows replaced (a new tensor; the input is not modified).

        The coordinator-side form of :meth:`corrupt_local` (every node in one place). Returns
        ``updates_ND`` itself when nothing changes (no attack, inactive round, data attack
        without boost). ``aggregator`` is the one in use; optimal attacks need it.
        """
        if not self.active(round) or isinstance(self.attack, StageAttack):
            return updates_ND
        if updates_ND.dim() != 2 or updates_ND.shape[0] != self.num_nodes:
            raise ValueError(f"updates must be ({self.num_nodes}, D), got {tuple(updates_ND.shape)}")
        if isinstance(self.attack, DataAttack) and self.attack.boost == 1.0:
            return updates_ND
        out = updates_ND.clone()
        self.corrupt_local(
            out,
            local_nodes=range(self.num_nodes),
            view_KD=updates_ND,
            view_ids=list(range(self.num_nodes)),
            round=round,
            aggregator=aggregator,
        )
        return out

    def corrupt_local(
        self,
        local_RD: Tensor,
        *,
        local_nodes: range,
        view_KD: Tensor | None,
        view_ids: list[int],
        round: int,
        aggregator: Callable[..., Any] | None = None,
    ) -> None:
        """Node-side attack: overwrite the rows of this process's Byzantine nodes in ``local_RD``.

        ``local_RD`` holds the honest rows of ``local_nodes`` (in that order). ``view_KD`` holds
        what the coalition exchanged (:meth:`needs_view`): the honest rows of nodes ``view_ids`` in
        node order (every node with full knowledge, the Byzantine nodes' own with "colluders");
        None when nothing was exchanged. A Byzantine node acts only on its own row.
        """
        if not self.active(round) or isinstance(self.attack, StageAttack):
            return
        mine = [(i, node) for i, node in enumerate(local_nodes) if node in self._byz]
        if not mine:
            return
        attack = self.attack
        if isinstance(attack, DataAttack):
            if attack.boost != 1.0:
                for i, _ in mine:
                    local_RD[i] = model_replacement(local_RD[i], boost=attack.boost)
            return
        assert attack is not None
        b, device = self.num_byzantine, local_RD.device
        need = self.needs_view(round)
        if need == "none":
            if self.cfg.collude:  # one colluding Byzantine node: the coalition's draw on its own row
                g = self.generator(round, _COALITION, device)
                row = attack(local_RD[mine[0][0] : mine[0][0] + 1].clone(), num_byzantine=1, generator=g)
                local_RD[mine[0][0]] = row[0].to(local_RD.dtype)
                return
            for i, node in mine:
                row = attack(
                    local_RD[i : i + 1].clone(),
                    num_byzantine=1,
                    generator=self.generator(round, node, device),
                )
                local_RD[i] = row[0].to(local_RD.dtype)
            return
        if view_KD is None or view_KD.shape[0] != len(view_ids):
            raise RuntimeError(
                f"attack {self.name!r} needs the coalition's view ({need}) but none was exchanged"
            )
        pos = {node: k for k, node in enumerate(view_ids)}
        missing = [n for n in self.byzantine_ids if n not in pos]
        if missing:
            raise RuntimeError(f"the coalition's view lacks Byzantine nodes {missing}")
        ids = torch.tensor([pos[n] for n in self.byzantine_ids], dtype=torch.long, device=view_KD.device)
        g = self.generator(round, _COALITION, device)
        if attack.knowledge == "omniscient":
            if need == "all":
                ctx = AttackContext(
                    honest_ND=view_KD,
                    aggregator=None
                    if aggregator is None
                    else _InNodeOrder(aggregator, self.byzantine_ids, self.num_nodes),
                    round=round,
                    num_nodes=self.num_nodes,
                    byzantine_ids=tuple(self.byzantine_ids),
                )
                honest_HD = ctx.honest_HD
                assert honest_HD is not None
            else:  # ALIE's setting: statistics of the colluders' own honest rows
                honest_HD = view_KD.index_select(0, ids)
                ctx = AttackContext(
                    honest_ND=honest_HD, aggregator=aggregator, round=round, num_nodes=self.num_nodes
                )
            byz_BD = attack(honest_HD, num_byzantine=b, generator=g, context=ctx)
        else:
            ctx = AttackContext(
                round=round, num_nodes=self.num_nodes, byzantine_ids=tuple(self.byzantine_ids)
            )
            own_BD = view_KD.index_select(0, ids)
            byz_BD = attack(own_BD.mean(0, keepdim=True), num_byzantine=1, generator=g, context=ctx).expand(
                b, -1
            )
        if byz_BD.shape != (b, local_RD.shape[1]):
            raise RuntimeError(
                f"attack {self.name!r} returned shape {tuple(byz_BD.shape)}, expected {(b, local_RD.shape[1])}"
            )
        slot = {node: k for k, node in enumerate(self.byzantine_ids)}
        for i, node in mine:
            local_RD[i] = byz_BD[slot[node]].to(local_RD.dtype)

    def corrupt_batch(
        self, node: int, x: Tensor, y: Tensor, *, round: int, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        """Node ``node``'s batch, poisoned if it is Byzantine, the attack is a data attack and active."""
        if not isinstance(self.attack, DataAttack) or node not in self._byz or not self.active(round):
            return x, y
        g = self.generator(round, node, x.device)
        return self.attack.apply(x, y, generator=g, num_classes=num_classes)

    # ------------------------------------------------------------------ bookkeeping

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for logs: name, params, Byzantine ids and schedule."""
        c = self.cfg
        return {
            "name": self.name,
            "params": dict(c.params),
            "byzantine_ids": list(self.byzantine_ids),
            "start_round": c.start_round,
            "end_round": c.end_round,
            "every": c.every,
            "collude": c.collude,
        }

    def state_dict(self) -> dict[str, Any]:
        """The attacker has no evolving state; the ids are saved so a resume can check them."""
        return {"byzantine_ids": list(self.byzantine_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ids = list(state.get("byzantine_ids", self.byzantine_ids))
        if ids != self.byzantine_ids:
            raise ConfigError(
                f"checkpoint's Byzantine ids {ids} differ from this config's {self.byzantine_ids}; "
                "resume with the same seed and attack section"
            )


class _InNodeOrder:
    """The aggregator as the attacks call it: they stack [honest rows; Byzantine rows]; this puts
    such an (N, D) stack back in node order first, so that an aggregator that treats nodes
    differently (the engine's: only trusted nodes count) sees each row as the node that sent it.
    Other attributes (``state_dict`` / ``load_state_dict`` of a stateful rule) are the wrapped one's."""

    def __init__(self, aggregator: Callable[..., Any], byzantine_ids: list[int], num_nodes: int) -> None:
        byz = set(byzantine_ids)
        order = [i for i in range(num_nodes) if i not in byz] + list(byzantine_ids)
        self._agg = aggregator
        self._inv = torch.argsort(torch.tensor(order, dtype=torch.long))

    def __call__(self, rows_ND: Tensor, *args: Any, **kwargs: Any) -> Any:
        if rows_ND.shape[0] == self._inv.numel():
            rows_ND = rows_ND.index_select(0, self._inv.to(rows_ND.device))
        return self._agg(rows_ND, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._agg, name)
