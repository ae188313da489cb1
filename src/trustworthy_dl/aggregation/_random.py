"""Per-round random generators for the randomised rules (bucketing, DnC, SignGuard).

A rule built with ``seed`` draws round r's randomness from ``round_generator(seed, r)``: the same
seed replays the same run, and the round counter lives in the rule's ``state_dict``.
"""

from __future__ import annotations

import torch

__all__ = ["round_generator"]

_MASK = (1 << 63) - 1


def round_generator(seed: int, round_idx: int, salt: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, round, salt) by a SplitMix64-style mix."""
    x = (seed * 0x9E3779B97F4A7C15 + round_idx * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _MASK
    x ^= x >> 29
    g = torch.Generator()
    g.manual_seed(x)
    return g
