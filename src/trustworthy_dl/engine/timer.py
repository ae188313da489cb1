"""Seconds per phase of a round (data, compute, attack, gather, security, ..., step, eval)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

__all__ = ["PhaseTimer"]


class PhaseTimer:
    def __init__(self) -> None:
        self.split: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.split[phase] += time.perf_counter() - t0
