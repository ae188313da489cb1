"""Issue 14 (first part): the fraction of files whose vote a worst-case adversary wins, against
the number q of nodes it holds, for each placement at the ByzShield paper's sizes.

    python benchmarks/redundancy_table.py    # prints the table, writes benchmarks/results/redundancy.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trustworthy_dl.security.redundancy import make_assignment, worst_case_distorted

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    ("detox", 15, 3),
    ("mols", 15, 3),
    ("ramanujan1", 15, 3),
    ("detox", 25, 5),
    ("ramanujan2", 25, 5),
]


# c_q_max, the most files q corrupted workers distort, as the ByzShield authors' own script
# ("section 5/simulations.py" of github.com/kkonstantinidis/ByzShield, which its ReadMe says
# computes Table 3 (MOLS, l = 5, r = 3) and Table 4 (Ramanujan Case 2, l = r = 5) of the paper)
# prints when run: the reference this table is checked against.
REFERENCE = {
    ("mols", 15, 3): {2: 1, 3: 3, 4: 5, 5: 8},
    ("ramanujan2", 25, 5): {3: 1, 4: 1, 5: 2, 6: 4, 7: 5},
}


def main() -> None:
    rows = []
    for scheme, k, r in SETTINGS:
        a = make_assignment(scheme, workers=k, replication=r)
        t0 = time.perf_counter()
        counts = {q: worst_case_distorted(a, q)[0] for q in range(1, (k - 1) // 2 + 1)}
        rows.append(
            {
                "scheme": scheme,
                "workers": k,
                "replication": r,
                "files": a.shape[1],
                "distorted": counts,
                "fraction": {q: round(c / a.shape[1], 3) for q, c in counts.items()},
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        print(
            f"{scheme:<11} K={k:<3} r={r} f={a.shape[1]:<3} "
            + " ".join(f"q={q}:{c / a.shape[1]:.2f}" for q, c in counts.items())
        )
        ref = REFERENCE.get((scheme, k, r))
        if ref:
            same = all(counts[q] == c for q, c in ref.items())
            rows[-1]["reference"] = ref
            rows[-1]["agrees_with_reference"] = same
            print(f"  ByzShield reference (authors' script) {ref}: {'agrees' if same else 'DIFFERS'}")
    out = REPO / "benchmarks" / "results" / "redundancy.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
