"""Redundancy-based defences (DETOX, ByzShield): placements of data files on nodes with
replication r, and the worst-case adversary against a placement."""

from trustworthy_dl.security.redundancy.assignments import SCHEMES, make_assignment
from trustworthy_dl.security.redundancy.worst_case import distorted, worst_case_distorted

__all__ = ["SCHEMES", "distorted", "make_assignment", "worst_case_distorted"]
