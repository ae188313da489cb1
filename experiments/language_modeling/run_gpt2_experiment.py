"""Language modeling with model poisoning: the seed README's second experiment.

    python experiments/language_modeling/run_gpt2_experiment.py --quick      # minutes on a CPU
    python experiments/language_modeling/run_gpt2_experiment.py --device cuda  # GPT-2 small

8 simulated nodes train GPT-2 on Tiny Shakespeare; 2 of them are Byzantine and plant a backdoor:
every sequence they train on ends with the trigger phrase " cf " followed by " backdoor", so a
model that learns it completes the trigger with the target. The backdoor's success rate (the
fraction of held-out sequences ending in the trigger whose whole target the model predicts) is
measured at every evaluation next to perplexity, without a defence (plain mean) and with the
default defence (two-stage detection + trust + quarantine). One `tdl sweep` (OUT/sweep.yaml);
results: OUT/experiment.md, OUT/report.html.

Quick mode: GPT-2 tiny (2 layers, 128 wide), 300 rounds. Full mode: GPT-2 small, 2000 rounds.
"""

from __future__ import annotations

from pathlib import Path

from trustworthy_dl.report.experiment import experiment_args, run_experiment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UNDEFENDED = {"security.attack_detection": False, "security.gradient_verification": False}


def main() -> None:
    args = experiment_args(
        __doc__, quick="GPT-2 tiny for 300 rounds (minutes on a CPU)", out="runs/gpt2_experiment"
    )
    sets = {
        "data.name": "tinyshakespeare",
        "model.size": "tiny" if args.quick else "small",
        "distributed.num_nodes": 8,
        "distributed.device": args.device,
        "attack.num_byzantine": 2,
        "attack.params": {"poison_fraction": 1.0},
        "training.num_epochs": 100,
        "training.max_rounds": 300 if args.quick else 2000,
        "training.eval_every": 50 if args.quick else 100,
    }
    sweep = {
        "base": str(CONFIGS / "gpt2_tiny.yaml"),
        "set": sets,
        "axes": {
            "defence": {
                "undefended": UNDEFENDED,
                "defended": {"security.attack_detection": True, "security.gradient_verification": True},
            }
        },
        "grid": {"attack.name": ["none", "backdoor"]},
        "seeds": [0],
        "headline": {"metric": "backdoor_success", "over": ["attack.name"]},
    }
    note = f"GPT-2 {sets['model.size']} on Tiny Shakespeare, 8 nodes (2 Byzantine), {sets['training.max_rounds']} rounds."
    md = run_experiment(sweep, args.out, jobs=args.jobs, note=note)
    print(md.read_text())
    print(f"report: {Path(args.out) / 'report.html'}")


if __name__ == "__main__":
    main()
