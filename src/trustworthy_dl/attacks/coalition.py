"""The colluding Byzantine nodes' channel: what they exchange before they send their rows.

An omniscient attack (ALIE, IPM, min-max, the optimal ones) or a colluding per-node attack needs
rows other than the node's own. They travel over a real channel:

* ``knowledge: colluders``: the processes hosting Byzantine nodes form their own process
  sub-group and all-gather their honest rows (ALIE's original setting: the statistics of the
  corrupted workers' own gradients). Honest processes take no part.
* ``knowledge: full``: every process takes part in an all-gather of the honest rows, modelling
  an attacker that eavesdrops on the network and sees every node's update.

In one process (simulated backend) the view is read from the local rows: the same rows the
torchrun exchange delivers, so both backends model the same attacker.

Legend: R local rows, K rows in the view, D flat parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from trustworthy_dl.attacks.attacker import AdversarialAttacker
    from trustworthy_dl.engine.comm import Comm

__all__ = ["coalition_view"]


def coalition_view(
    attacker: AdversarialAttacker, comm: Comm, local_RD: Tensor, round: int
) -> tuple[Tensor | None, list[int]]:
    """``(view_KD, node_ids)`` for :meth:`AdversarialAttacker.corrupt_local` this round.

    Collective: every process of the exchange's group must call it in the same round (all of
    them decide the same way, from the seed-derived Byzantine ids). Returns ``(None, [])`` when
    nothing is exchanged or this process is not part of the exchange.
    """
    need = attacker.needs_view(round)
    if need == "none":
        return None, []
    n = comm.num_nodes
    if need == "all":
        return comm.all_gather_rows(local_RD, list(range(comm.world_size))), list(range(n))
    ranks = sorted({comm.rank_of(i) for i in attacker.byzantine_ids})
    comm.subgroup(ranks)  # made collectively by every process the first time, then cached
    if comm.rank not in ranks:
        return None, []
    rows = comm.all_gather_rows(local_RD, ranks)
    ids = [node for r in ranks for node in comm.nodes_of(r)]
    keep = [k for k, node in enumerate(ids) if attacker.is_byzantine(node)]
    return rows[keep], [ids[k] for k in keep]
