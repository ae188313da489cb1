"""Attacks: update attacks on the (N, D) matrix and data attacks on a node's batch."""

from trustworthy_dl.attacks.registry import DATA_ATTACKS, UPDATE_ATTACKS, attack_names

__all__ = ["DATA_ATTACKS", "UPDATE_ATTACKS", "attack_names"]
