"""Privacy accounting with opacus's maintained accountants (RDP, PRV), one per data shard.

A shard is one node's local data set. Each round a shard is used once per batch drawn from it by
any node (its holder, and a node on probation computing on its home shard's next batch; Byzantine
or not: a coordinator cannot tell), with sampling rate q = batch_size / |shard|. A shard that an
attacking node computed on without the mechanism is ``expose``d: epsilon inf. Every use is one step of the
subsampled Gaussian mechanism with the effective noise multiplier of the mode:

* ``dp_sgd``: per-sample clipping to C and noise std sigma * C: multiplier sigma (Abadi et al.).
* ``node_clip``: the node's whole mean update clipped to C and noise std sigma * C. Removing one
  sample changes the clipped update by up to 2C (both updates lie in the C-ball), so the
  sample-level multiplier is sigma / 2; what is reported. The same run gives node-level DP (a
  node's whole data set) with multiplier sigma and q = 1, stated in the README, not accounted.

Assumption stated in the README: opacus's accountants analyse Poisson subsampling; the sampler
draws fixed-size batches from a shuffled shard (the usual approximation in DP-SGD practice).

``epsilon()`` reports the maximum over shards (the guarantee every data owner gets) at ``delta``.
Epsilon grows with q and with the steps, so only shards on the Pareto front of (q, steps) are
evaluated each round; ``per_shard()`` gives every shard's (once, for the summary).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = ["ShardAccountant", "noise_for_target"]

_KINDS = {"rdp": RDPAccountant, "prv": PRVAccountant}


def noise_for_target(
    target_epsilon: float, *, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The smallest noise multiplier reaching ``target_epsilon`` after ``steps`` (opacus's search)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=max(int(steps), 1),
                accountant=accountant,
                epsilon_tolerance=0.01,
            )
        )


class ShardAccountant:
    """One opacus accountant per shard; ``step`` each use, ``epsilon`` the worst shard's.

    Args:
        sample_rates: q of each shard.
        noise_multiplier: the effective (sample-level) multiplier of each step; 0: no guarantee.
        accountant: ``rdp`` or ``prv``.
        delta: the delta epsilon is reported at.
    """

    def __init__(
        self, sample_rates: list[float], noise_multiplier: float, accountant: str, delta: float
    ) -> None:
        if accountant not in _KINDS:
            raise ValueError(f"accountant must be rdp or prv, got {accountant!r}")
        self.sample_rates = [min(1.0, float(q)) for q in sample_rates]
        self.sigma, self.kind, self.delta = float(noise_multiplier), accountant, float(delta)
        self.steps = [0] * len(sample_rates)
        self.exposed: set[int] = set()
        self._cache: dict[tuple[float, int], float] = {}

    def step(self, shard: int, uses: int = 1) -> None:
        self.steps[shard] += int(uses)

    def expose(self, shard: int) -> None:
        """The shard's data went out without the mechanism (an attacking node computed on it): its
        epsilon is inf from now on."""
        self.exposed.add(int(shard))

    def _accountant(self, q: float, steps: int) -> IAccountant:
        acc = _KINDS[self.kind]()
        acc.history = [(self.sigma, q, steps)]
        return acc

    def _epsilon(self, q: float, steps: int) -> float:
        if steps == 0:
            return 0.0
        if self.sigma <= 0:
            return math.inf
        key = (q, steps)
        if key not in self._cache:
            self._cache = {k: self._cache[k] for k in list(self._cache)[-64:]}  # bounded
            with warnings.catch_warnings():  # "optimal order is the largest alpha": a valid, looser bound
                warnings.filterwarnings("ignore", message="Optimal order")
                self._cache[key] = float(self._accountant(q, steps).get_epsilon(delta=self.delta))
        return self._cache[key]

    def epsilon(self) -> float:
        """The largest epsilon over shards at ``delta``."""
        pairs = sorted(set(zip(self.sample_rates, self.steps)), key=lambda p: (-p[0], -p[1]))
        front, best_steps = [], -1
        for q, s in pairs:  # q descending: keep those with more steps than every larger-q shard
            if s > best_steps:
                front.append((q, s))
                best_steps = s
        if self.exposed:
            return math.inf
        return max((self._epsilon(q, s) for q, s in front), default=0.0)

    def per_shard(self) -> list[float]:
        return [
            math.inf if i in self.exposed else self._epsilon(q, s)
            for i, (q, s) in enumerate(zip(self.sample_rates, self.steps))
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "sigma": self.sigma,
            "sample_rates": list(self.sample_rates),
            "exposed": sorted(self.exposed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [float(q) for q in state["sample_rates"]] != self.sample_rates or float(
            state["sigma"]
        ) != self.sigma:
            raise ValueError("the checkpoint's privacy accountant has other sample rates or noise")
        self.steps = [int(s) for s in state["steps"]]
        self.exposed = {int(i) for i in state.get("exposed", [])}
