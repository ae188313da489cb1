"""Trust layer: per-node trust scores and quarantine (TrustManager), shard scheduling (ShardScheduler)."""

from trustworthy_dl.trust.manager import TrustEvents, TrustManager
from trustworthy_dl.trust.scheduler import ReassignmentEvent, ShardScheduler

__all__ = ["ReassignmentEvent", "ShardScheduler", "TrustEvents", "TrustManager"]
