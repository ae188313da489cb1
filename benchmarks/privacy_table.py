"""Issue-12 acceptance tables from finished runs: accuracy, detection and inversion PSNR per
privacy setting, and the MNIST / LeNet inversion audits.

    tdl sweep configs/fmnist_defended.yaml --cases benchmarks/privacy_cases.yaml \\
        --grid attack.name=alie,sign_flip --grid attack.start_round=0,100 --out runs/privacy --jobs 2
    tdl privacy-audit configs/fmnist_defended.yaml --out runs/privacy/audit_eps8 --attack ig --images 8 \\
        --set privacy.enabled=true --set privacy.target_epsilon=8      # and eps 2 -> audit_eps2
    tdl privacy-audit configs/privacy_mnist_lenet.yaml --out runs/privacy/mnist_dp8 --attack idlg --images 16
    tdl privacy-audit configs/privacy_mnist_lenet.yaml --out runs/privacy/mnist_top1 --attack idlg --images 16 \\
        --set privacy.mode=none --set privacy.target_epsilon=null --set privacy.sparsify.kind=topk
    tdl privacy-audit configs/privacy_mnist_lenet.yaml --out runs/privacy/mnist_dlg --attack dlg --images 16 \\
        --set privacy.enabled=false
    python benchmarks/privacy_table.py runs/privacy     # prints the tables, writes benchmarks/results/privacy_acceptance.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.is_file() else None


def main(root: Path) -> None:
    rows = []
    audits = {k: _load(root / f"audit_{k}" / "audit.json") for k in ("eps8", "eps2")}
    for d in sorted(root.glob("case=*")):
        s = _load(d / "summary.json")
        if s is None:
            continue
        case = d.name.split("-")[0].removeprefix("case=")
        det, priv = s.get("detection") or {}, s.get("privacy") or {}
        audit = audits.get(case.replace("_", ""))
        psnr = None
        if audit is not None:
            psnr = next(r["psnr_db"] for r in audit["results"] if r["setting"] == "privacy")
        elif case == "eps_inf" and audits.get("eps8") is not None:
            psnr = next(r["psnr_db"] for r in audits["eps8"]["results"] if r["setting"] == "none")
        rows.append(
            {
                "setting": case,
                "attack": s["attack"],
                "start_round": det.get("attack_start"),
                "epsilon": priv.get("epsilon", "inf"),
                "sigma": priv.get("noise_multiplier"),
                "accuracy": s["final"]["test_accuracy"],
                "tpr": det.get("tpr"),
                "fpr": det.get("fpr"),
                "stage1_fpr": det.get("stage1_fpr"),
                "latency": det.get("latency_rounds_median"),
                "recomputations_per_round": (det.get("verification") or {}).get("recomputations_per_round"),
                "inversion_psnr_db": psnr,
            }
        )
    order = {"eps_inf": 0, "eps_8": 1, "eps_2": 2}
    rows.sort(key=lambda r: (r["start_round"], r["attack"], order.get(r["setting"], 9)))
    print(
        "| attack (start) | epsilon | sigma | accuracy | TPR | FPR | stage-1 FPR | latency | "
        "re-computations / round | inversion PSNR (dB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        psnr = "-" if r["inversion_psnr_db"] is None else f"{r['inversion_psnr_db']:.1f}"
        print(
            f"| {r['attack']} ({r['start_round']}) | {r['epsilon']} | {r['sigma'] or '-'} | {r['accuracy']:.3f} | "
            f"{r['tpr']:.3f} | {r['fpr']:.4f} | {r['stage1_fpr']:.4f} | {r['latency']} | "
            f"{r['recomputations_per_round']:.2f} | {psnr} |"
        )
    mnist = {k: _load(root / f"mnist_{k}" / "audit.json") for k in ("dp8", "top1", "dlg")}
    print("\n| MNIST / LeNet, batch 1, 16 images | attack | PSNR (dB) | SSIM | label accuracy | s / image |")
    print("|---|---|---:|---:|---:|---:|")
    for key, rep in mnist.items():
        if rep is None:
            continue
        for r in rep["results"]:
            name = (
                "no defence"
                if r["setting"] == "none"
                else {"dp8": "DP-SGD eps 8", "top1": "top-1% sparsification"}[key]
            )
            print(
                f"| {name} | {rep['attack']} | {r['psnr_db']:.2f} ± {r['psnr_db_std']:.2f} | {r['ssim']:.3f} | "
                f"{r['label_accuracy']:.2f} | {r['seconds_per_image']:.1f} |"
            )
    out = REPO / "benchmarks" / "results" / "privacy_acceptance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"runs": rows, "mnist_audits": mnist, "fmnist_audits": audits}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/privacy"))
