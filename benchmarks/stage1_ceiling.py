"""How well could any per-round statistic of ours separate an attack? Oracle bounds for stage 1.

Issue 10 asks for stage-1 F1 >= 0.99 on the non-colluding sign flip x3 in MANDERA's setting
(Fashion-MNIST CNN, batch 10 per node, 20% Byzantine); the default reaches 0.60-0.98 (README). This
benchmark asks whether the features stage 1 computes hold that much information. On the same
honest rounds as ``stage1_detection.py`` (``_stage1.py``), every node-round gets six features, each
a robust z-score across the round's nodes: mean rank and rank spread (MANDERA), log norm, cosine to
the coordinate-wise median, Krum score and nearest-neighbour distance (the distance method). Then:

* ``best <feature>``: F1 of that one feature with the best threshold chosen *with the labels*
  (either side), an upper bound for any detector that thresholds it;
* ``LDA held out``: Fisher's linear discriminant of the six features fitted with the labels on the
  even rounds, its threshold chosen on the even rounds, scored on the odd rounds (a held-out
  figure for the best linear rule on these features; an unsupervised detector that thresholds a
  linear score of them cannot expect to do better, a nonlinear one could);
* ``LDA in-sample``: the same with the threshold chosen on the odd rounds themselves (optimistic);
* ``default`` / ``mandera`` / ``distance``: what stage 1 flags on the same node-rounds, each round
  on its own (``history_decay`` 0), and ``default, with memory``: the default stage 1, whose rank
  test also clusters each node's running means of its rank features (information no single round
  holds, so not bounded by the ceiling above).

    python benchmarks/stage1_ceiling.py        # table; writes benchmarks/results/stage1_ceiling.json
"""

from __future__ import annotations

import argparse
import json

import torch

from _stage1 import RESULTS, Counts, attacked, honest_rounds
from trustworthy_dl.security import Stage1Detector
from trustworthy_dl.security.base import MAD_SCALE
from trustworthy_dl.security.distance import distance_statistics
from trustworthy_dl.security.ranks import rank_features

FEATURES = ("rank_mean", "rank_spread", "log_norm", "cosine", "krum", "nearest")
# what stage 1 flags on the same node-rounds: on each round alone (the ceiling's own terms) and,
# for the default, with the rank test's per-node memory (``history_decay`` 0.8, the default)
DETECTORS = {
    "default": ("mandera", "distance"),
    "mandera": ("mandera",),
    "distance": ("distance",),
    "default, with memory": ("mandera", "distance"),
}
SINGLE_ROUND = {"mandera": {"history_decay": 0.0}}


def features(x_ND: torch.Tensor) -> torch.Tensor:
    """(N, 6) robust z-scores (median / 1.4826 MAD across the round's nodes) of the six features."""
    r = rank_features(x_ND)
    s = distance_statistics(x_ND)
    f = torch.stack([r[:, 0], r[:, 1], s["norm"], s["cosine"], s["krum"], s["collusion"]], dim=1)
    med = f.median(dim=0).values
    return (f - med) / (MAD_SCALE * (f - med).abs().median(dim=0).values).clamp(min=1e-12)


def f1_at(score: torch.Tensor, y: torch.Tensor, t: float) -> float:
    p = score >= t
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def best_threshold(score: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(best F1, its threshold) over every observed value as the threshold."""
    best = (0.0, float("inf"))
    for t in torch.unique(score).tolist():
        best = max(best, (f1_at(score, y, t), t))
    return best


def ceiling(n: int, partition: str, attack: str, rounds: int, seed: int) -> dict:
    z, y, rnd = [], [], []
    flags: dict[str, Counts] = {m: Counts() for m in DETECTORS}
    dets = {
        m: Stage1Detector(methods=ms, params=None if "memory" in m or "mandera" not in ms else SINGLE_ROUND)
        for m, ms in DETECTORS.items()
    }
    for r, honest in honest_rounds(n, partition=partition, rounds=rounds, seed=seed):
        x, byz = attacked(attack, honest, num_byzantine=n // 5, round=r, seed=seed)
        z.append(features(x))
        y.append(byz)
        rnd.append(torch.full((n,), r))
        for m, det in dets.items():
            flags[m].add(
                det.inspect(x, generator=torch.Generator().manual_seed(seed * 1_000_003 + r)).flags_N, byz
            )
    Z, Y, R = torch.cat(z).double(), torch.cat(y), torch.cat(rnd)
    row: dict = {"num_nodes": n, "partition": partition, "attack": attack, "byzantine": n // 5}
    for k, name in enumerate(FEATURES):
        row[f"best {name}"] = round(max(best_threshold(Z[:, k], Y)[0], best_threshold(-Z[:, k], Y)[0]), 3)
    tr, te = R % 2 == 0, R % 2 == 1
    mu1, mu0 = Z[tr & Y].mean(0), Z[tr & ~Y].mean(0)
    cov = torch.cov(torch.cat([Z[tr & Y] - mu1, Z[tr & ~Y] - mu0]).T) + 1e-9 * torch.eye(len(FEATURES))
    w = torch.linalg.solve(cov, mu1 - mu0)
    _, t_train = best_threshold(Z[tr] @ w, Y[tr])
    row["LDA held out"] = round(f1_at(Z[te] @ w, Y[te], t_train), 3)
    row["LDA in-sample"] = round(best_threshold(Z[te] @ w, Y[te])[0], 3)
    row |= {m: c.rates()["f1"] for m, c in flags.items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="16,50,100")
    ap.add_argument("--partitions", default="iid,dirichlet")
    ap.add_argument("--attacks", default="sign_flip_x3")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for attack in args.attacks.split(","):
        for n in (int(v) for v in args.nodes.split(",")):
            for part in args.partitions.split(","):
                rows.append(ceiling(n, part, attack, args.rounds, args.seed))
                print(json.dumps(rows[-1]), flush=True)
    cols = [c for c in rows[0] if c != "byzantine"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "stage1_ceiling.json"
    out.write_text(json.dumps({"rounds": args.rounds, "seed": args.seed, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
