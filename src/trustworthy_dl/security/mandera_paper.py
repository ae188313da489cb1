"""MANDERA as its authors published it: rank features, 2-means with k-means++ restarts, and the
duplicate-spread rule that picks the malicious cluster.

W. Zhu, B. Zhang, et al., "MANDERA: Malicious Node Detection in Federated Learning via
Ranking", 2022 (arXiv:2110.11736), Algorithm 1:

1. rank every coordinate of the (N, d) update matrix across the N nodes (ties: average rank);
2. describe node i by the mean and the sample standard deviation of its d ranks;
3. split the N points into two clusters with k-means (k = 2; here scikit-learn's ``KMeans``
   with ``n_init`` k-means++ starts, seeded, so the split is reproducible);
4. the malicious cluster is the one with more duplicated rank-spread values (colluding nodes
   that send one vector share one rank row, so their spreads coincide exactly); on a tie, the
   smaller cluster. Every member of it is flagged, every round.

There is no significance test: a round without attackers still flags a cluster (the authors
assume attackers are present). :func:`~trustworthy_dl.security.mandera.mandera` (``mandera`` /
``ranks``) is the project's calibrated variant that flags only a significant split; this method
is ``mandera_paper``, for reproducing the paper and comparing against it.

Legend: N nodes, d sampled coordinates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.security.base import DETECTION_METHODS, MethodResult
from trustworthy_dl.security.ranks import rank_moments

__all__ = ["duplicated_count", "mandera_paper"]


def duplicated_count(values: Tensor) -> int:
    """How many entries of ``values`` equal another entry (a value seen k > 1 times counts k)."""
    if values.numel() < 2:
        return 0
    _, counts = torch.unique(values, return_counts=True)
    return int(counts[counts > 1].sum())


@DETECTION_METHODS.register("mandera_paper")
def mandera_paper(
    x_Nd: Tensor,
    *,
    reference_d: Tensor | None = None,
    n_init: int = 10,
    seed: int = 0,
    decimals: int = 9,
) -> MethodResult:
    """Flag the cluster MANDERA's rule calls malicious (always one cluster, significant or not).

    Args:
        x_Nd: finite updates on the sampled coordinates.
        reference_d: unused (ranks need no reference); accepted for a uniform signature.
        n_init: k-means++ starts; the split with the lowest inertia is kept.
        seed: the k-means random state.
        decimals: rank spreads are compared after rounding to this many decimals (identical rank
            rows give bit-identical spreads; the rounding only absorbs summation order).

    Returns:
        flags_N for the members of the malicious cluster; scores_N is 2.0 for them and 0.0 for
        the others (the rule has no graded score).
    """
    del reference_d
    if n_init < 1:
        raise ValueError(f"mandera_paper needs n_init >= 1, got {n_init}")
    from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import

    n = x_Nd.shape[0]
    mean_N, std_N = rank_moments(x_Nd, correction=1)
    feats_N2 = torch.stack([mean_N, std_N], dim=1)
    per_node = {"features": feats_N2}
    flags_N = torch.zeros(n, dtype=torch.bool)
    if n < 3 or len(torch.unique(feats_N2, dim=0)) < 2:
        return MethodResult(flags_N, flags_N.to(torch.float64), {"flagged_cluster": None}, per_node)
    km = KMeans(n_clusters=2, init="k-means++", n_init=n_init, random_state=seed)
    labels_N = torch.as_tensor(km.fit_predict(feats_N2.numpy()), dtype=torch.int64)
    spread_N = torch.round(std_N, decimals=decimals)
    dups = [duplicated_count(spread_N[labels_N == c]) for c in (0, 1)]
    sizes = [int((labels_N == c).sum()) for c in (0, 1)]
    if dups[0] != dups[1]:
        bad = 0 if dups[0] > dups[1] else 1
    else:
        bad = 0 if sizes[0] < sizes[1] else 1  # equal sizes: cluster 0 (the paper leaves it open)
    flags_N = labels_N == bad
    info: dict[str, Any] = {"cluster_sizes": sizes, "duplicated": dups, "flagged_cluster": bad}
    return MethodResult(flags_N, flags_N.to(torch.float64) * 2.0, info, per_node)
