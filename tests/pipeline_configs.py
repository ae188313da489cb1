"""Configs the pipeline tests share: the tiny GPT-2 and the digits CNN pipelines, defended.

``sections`` update the base config's sections key by key (a fresh dict every call).
"""

from __future__ import annotations

GPT2_TEXT = {"name": "text", "block_size": 16, "max_train_samples": 512, "max_test_samples": 64}


def gpt2_pipeline(**sections: dict) -> dict:
    """The end-to-end tests' tiny GPT-2 pipeline (4 stages, a spare), ``sections`` merged in."""
    data: dict = {
        "seed": 0,
        "model": {"name": "gpt2", "size": "tiny"},
        "data": dict(GPT2_TEXT),
        "training": {"batch_size": 8, "max_rounds": 18, "optimizer": "adamw", "learning_rate": 2e-3},
        "distributed": {"num_nodes": 5, "parallelism": "model", "num_stages": 4, "spares": 1},
        "security": {"attack_detection": True, "gradient_verification": True, "pipeline_verify_rate": 0.25},
        "trust": {"snapshot_every": 5},
        "output": {"progress": False, "plots": True},
    }
    return _merged(data, sections)


def cnn_pipeline(**sections: dict) -> dict:
    """A CNN on digits cut into 3 stages on 4 nodes (a spare), defended; ``sections`` merged in."""
    data: dict = {
        "seed": 0,
        "model": {"name": "cnn"},
        "data": {"name": "digits"},
        "training": {"batch_size": 16},
        "distributed": {"num_nodes": 4, "parallelism": "model", "num_stages": 3, "spares": 1},
        "security": {"attack_detection": True, "gradient_verification": True},
        "trust": {"snapshot_every": 2},
        "output": {"progress": False, "plots": False},
    }
    return _merged(data, sections)


def _merged(data: dict, sections: dict) -> dict:
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return data
