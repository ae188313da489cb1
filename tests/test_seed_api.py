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
