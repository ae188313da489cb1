"""Security layer: two-stage detection, gradient verification, parameter monitor, metrics.

One round (DESIGN.md)::

    s1 = detector.inspect(updates_ND, generator=g)                 # stage 1: statistics
    nodes = verifier.select(s1.flags_N, trust.active_N, r, scores_N=s1.scores_N)  # stage 2: whom
    v = verifier.verify(updates_ND, nodes, recompute)
    verdict = make_verdict(N, stage1=s1, verification=v, tampered=monitor.check(params, digests))
    trust.update(verdict.evidence_N)
    agg = aggregator(updates_ND[verdict.aggregate_mask(trust.active_N)])
"""

from trustworthy_dl.security.base import DETECTION_METHODS, MethodResult
from trustworthy_dl.security.detector import COMBINE_RULES, Stage1Detector, Stage1Result
from trustworthy_dl.security.distance import DISTANCE_SCORES, distance, distance_statistics
from trustworthy_dl.security.mandera import mandera, two_means
from trustworthy_dl.security.mandera_paper import mandera_paper
from trustworthy_dl.security.metrics import DetectionTracker, confusion_rates
from trustworthy_dl.security.monitor import ParameterMonitor, tensor_digest
from trustworthy_dl.security.ranks import average_ranks, rank_features
from trustworthy_dl.security.verdict import Verdict, make_verdict
from trustworthy_dl.security.verification import GradientVerifier, VerificationResult

__all__ = [
    "COMBINE_RULES",
    "DETECTION_METHODS",
    "DISTANCE_SCORES",
    "DetectionTracker",
    "GradientVerifier",
    "MethodResult",
    "ParameterMonitor",
    "Stage1Detector",
    "Stage1Result",
    "Verdict",
    "VerificationResult",
    "average_ranks",
    "confusion_rates",
    "distance",
    "distance_statistics",
    "make_verdict",
    "mandera",
    "mandera_paper",
    "rank_features",
    "tensor_digest",
    "two_means",
]
