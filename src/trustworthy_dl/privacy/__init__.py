"""Node-side privacy: DP-SGD (per-sample clipping + Gaussian noise) and node-level clipping with
opacus accountants, top-k / random-k sparsification with error feedback, and gradient-inversion
attacks (DLG, iDLG, Inverting Gradients) that measure what an update leaks."""

from trustworthy_dl.privacy.accountant import ShardAccountant, noise_for_target
from trustworthy_dl.privacy.mechanism import NodePrivacy
from trustworthy_dl.privacy.per_sample import PerSampleClipper
from trustworthy_dl.privacy.sparsify import Sparsifier

__all__ = ["NodePrivacy", "PerSampleClipper", "ShardAccountant", "Sparsifier", "noise_for_target"]
