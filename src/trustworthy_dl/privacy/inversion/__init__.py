"""Gradient inversion (DLG, iDLG, Inverting Gradients) and ``tdl privacy-audit``."""

from trustworthy_dl.privacy.inversion.attacks import ATTACKS, Reconstruction, infer_labels, invert
from trustworthy_dl.privacy.inversion.quality import image_quality, label_accuracy, save_grid

__all__ = [
    "ATTACKS",
    "Reconstruction",
    "image_quality",
    "infer_labels",
    "invert",
    "label_accuracy",
    "save_grid",
]
