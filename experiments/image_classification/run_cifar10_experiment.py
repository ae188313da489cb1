"""Image classification under Byzantine attacks: the seed README's first experiment.

    python experiments/image_classification/run_cifar10_experiment.py --quick     # minutes on a CPU
    python experiments/image_classification/run_cifar10_experiment.py --device cuda  # the full grid

16 simulated nodes train an image classifier while 2 or 4 of them (the attack intensity) run one of
five attacks; each setting is trained undefended (plain mean, no detection) and with the default
defence (two-stage detection, trust, quarantine and shard reassignment, trimmed mean). It measures
what the seed promises: trust dynamics; detection false-positive / false-negative rates and
latency per attack and intensity; accuracy and loss under attack; recovery after reassignment;
reassignment overhead; throughput and memory with the security layer on and off. Everything comes
from one `tdl sweep` (OUT/sweep.yaml); results: OUT/experiment.md, OUT/report.html.

CIFAR-10 is read from a local copy (data.root or TDL_DATA_ROOT, the python-pickle batches); when it
is absent, Fashion-MNIST stands in and the script says so. Quick mode: a small CNN, 100 rounds.
Full mode: ResNet-20, 2000 rounds, three seeds (meant for a GPU machine).
"""

from __future__ import annotations

from pathlib import Path

from trustworthy_dl.config import DataConfig
from trustworthy_dl.data import load_dataset
from trustworthy_dl.errors import DataError
from trustworthy_dl.report.experiment import experiment_args, run_experiment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ATTACKS = ["gaussian", "sign_flip", "alie", "ipm", "label_flip"]
UNDEFENDED = {"aggregation.name": "mean", "aggregation.params": {}}
UNDEFENDED |= {"security.attack_detection": False, "security.gradient_verification": False}


def dataset() -> tuple[str, str]:
    try:
        load_dataset(DataConfig(name="cifar10"))
        return "cifar10", ""
    except DataError as err:
        first = str(err).splitlines()[0].split(". Looked in")[0]
        note = f"CIFAR-10 is not available here, so Fashion-MNIST stands in for it ({first})"
        print(note, flush=True)
        return "fashion-mnist", note


def main() -> None:
    args = experiment_args(
        __doc__, quick="a small CNN for 100 rounds (minutes on a CPU)", out="runs/cifar10_experiment"
    )
    data, note = dataset()
    model = "cnn" if args.quick else "resnet20"
    sets = {
        "data.name": data,
        "model.name": model,
        "distributed.device": args.device,
        "training.max_rounds": 100 if args.quick else 2000,
        "training.eval_every": 10 if args.quick else 100,
    }
    cases = {"none": {"attack.name": "none"}}
    for attack in ATTACKS:
        for f in (2, 4):
            cases[f"{attack}_f{f}"] = {"attack.name": attack, "attack.num_byzantine": f}
    sweep = {
        "base": str(CONFIGS / "fmnist_defended.yaml"),
        "set": sets,
        "axes": {"defence": {"undefended": UNDEFENDED, "defended": {"security.attack_detection": True}}},
        "cases": cases,
        "seeds": [0] if args.quick else [0, 1, 2],
        "headline": {"metric": "test_accuracy", "over": ["case"]},
    }
    note = (
        note + "\n\n" if note else ""
    ) + f"{model} on {data}, 16 nodes, {sets['training.max_rounds']} rounds."
    md = run_experiment(sweep, args.out, jobs=args.jobs, intensity=["attack.num_byzantine"], note=note)
    print(md.read_text())
    print(f"report: {Path(args.out) / 'report.html'}")


if __name__ == "__main__":
    main()
