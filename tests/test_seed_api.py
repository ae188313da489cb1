"""The seed README's "Basic Usage", as written: the imports, a TrustManager made without a node
count and passed to ``train``, and a clear message for a corpus that is not available offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustworthy_dl.errors import ConfigError


def test_seed_basic_usage_runs_as_written(tmp_path: Path) -> None:
    from trustworthy_dl import DistributedTrainer, TrustManager
    from trustworthy_dl.attacks import AdversarialAttacker  # noqa: F401  (the seed's import line)
    from trustworthy_dl.models import get_model  # noqa: F401  (the seed's import line)

    trainer = DistributedTrainer(model_name="gpt2", num_nodes=8, trust_threshold=0.7)
    trust_manager = TrustManager(initial_trust=0.9, decay_rate=0.1, recovery_rate=0.05)
    with pytest.raises(ConfigError, match=r"not available offline.*data.name=text.*available: "):
        trainer.train(dataset="openwebtext", epochs=10, trust_manager=trust_manager)
    # the same call on a small local corpus, with a tiny GPT-2 and a few rounds
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    small = DistributedTrainer(model_name="gpt2", model_size="tiny", num_nodes=8, trust_threshold=0.7)
    trust_manager = TrustManager(initial_trust=0.95, decay_rate=0.2, recovery_rate=0.05)
    result = small.train(
        dataset="text", data_root=str(corpus), epochs=10, max_rounds=3, trust_manager=trust_manager,
        write=False, overrides=["output.progress=false", "security.attack_detection=true"],
    )  # fmt: skip
    assert result.config.trust.initial_trust == 0.95 and result.config.trust.decay_rate == 0.2
    assert trust_manager.num_nodes == 8 and len(trust_manager.scores) == 8  # bound to the run's nodes
    assert small.trust_manager is trust_manager and trust_manager.threshold == 0.7
    assert result.summary["final"]["perplexity"] is not None


def test_adversarial_attacker_from_a_name() -> None:
    from trustworthy_dl.attacks import AdversarialAttacker

    attacker = AdversarialAttacker("alie", num_nodes=8, seed=0)  # the seed's line
    assert attacker.name == "alie"
    two = AdversarialAttacker("sign_flip", num_nodes=8, num_byzantine=2)
    assert len(two.byzantine_ids) == 2 and two.active(0)
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        AdversarialAttacker("nope", num_nodes=8)


def _toy(n: int = 400, seed: int = 0) -> tuple[object, object]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)
    return x, y


def test_users_own_module_dataset_and_standalone_attacker() -> None:
    import torch
    from torch import nn
    from torch.utils.data import Dataset, TensorDataset

    from trustworthy_dl import DistributedTrainer
    from trustworthy_dl.attacks import AdversarialAttacker
    from trustworthy_dl.data import list_datasets
    from trustworthy_dl.models import list_models

    x, y = _toy()
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    before = [p.detach().clone() for p in net.parameters()]
    attacker = AdversarialAttacker("sign_flip", num_byzantine=1, params={"scale": 4})
    assert attacker.byzantine_ids == [] and attacker.num_nodes == 0  # not bound before the run
    trainer = DistributedTrainer(num_nodes=4, attack_detection=True, gradient_verification=True)
    quiet = ["output.progress=false"]
    res = trainer.train(
        model=net, dataset=TensorDataset(x, y), epochs=30, attacker=attacker, write=False, overrides=quiet
    )
    assert res.summary["model"] == "user-sequential" and res.summary["dataset"] == "user-tensordataset"
    assert res.summary["attack"] == "sign_flip" and res.config.attack.params["scale"] == 4
    assert "seeded 10%" in res.summary["data_note"]
    assert attacker.num_nodes == 4 and attacker.byzantine_ids == res.summary["byzantine_ids"]
    assert trainer.attacker is attacker
    assert res.summary["detection"]["tpr"] > 0.5 and res.summary["final"]["test_accuracy"] > 0.5
    assert all(
        torch.equal(a, b) for a, b in zip(before, net.parameters())
    )  # the user's module is not trained in place
    assert "user-sequential" not in list_models() and "user-tensordataset" not in list_datasets()

    class Pairs(Dataset):  # any map-style Dataset of (x, y) pairs, with its own test split
        def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.x[i], int(self.y[i])

    xt, yt = _toy(100, seed=1)
    res = DistributedTrainer(num_nodes=4).train(
        model=net, dataset=Pairs(x, y), test_dataset=(xt, yt), max_rounds=5, write=False, overrides=quiet
    )
    assert res.summary["dataset"] == "user-pairs" and "data_note" not in res.summary
    with pytest.raises(ConfigError, match="must be a torch Dataset of"):
        DistributedTrainer(num_nodes=4).train(model=net, dataset=[1, 2, 3], write=False)
    with pytest.raises(ConfigError, match="x has 400 samples and y 3"):
        DistributedTrainer(num_nodes=4).train(model=net, dataset=(x, y[:3]), write=False)
    with pytest.raises(ConfigError, match="classification"):
        DistributedTrainer(num_nodes=4).train(model=net, dataset=(x, y.float()), write=False)
