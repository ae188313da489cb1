"""How good a reconstruction is: PSNR and SSIM (torchmetrics) against the true inputs, label
accuracy, and a PNG grid of originals above reconstructions."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = ["PSNR_CAP", "image_quality", "label_accuracy", "save_grid"]

#: PSNR of an exact reconstruction is infinite; it is reported as this (float32 round-off is ~140 dB).
PSNR_CAP = 100.0


def image_quality(recon_BCHW: Tensor, truth_BCHW: Tensor) -> tuple[list[float], list[float]]:
    """Per image PSNR (dB, at most ``PSNR_CAP``) and SSIM of ``recon`` against ``truth``, both in [0, 1] (SSIM with an 11x11
    Gaussian window; a uniform window of the largest odd size that fits for images under 11 pixels)."""
    psnr, ssim = [], []
    side = min(truth_BCHW.shape[-2:])
    kernel = max(3, min(11, side if side % 2 else side - 1))  # 11 (the standard) unless the image is smaller
    for r, t in zip(recon_BCHW.clamp(0, 1), truth_BCHW.clamp(0, 1)):
        psnr.append(min(PSNR_CAP, float(peak_signal_noise_ratio(r[None], t[None], data_range=1.0))))
        value = structural_similarity_index_measure(
            r[None], t[None], data_range=1.0, gaussian_kernel=kernel == 11, kernel_size=kernel
        )
        assert isinstance(value, Tensor)  # a tuple only with return_full_image / return_contrast_sensitivity
        ssim.append(float(value))
    return psnr, ssim


def label_accuracy(pred_B: Tensor, truth_B: Tensor) -> float:
    """Share of the batch's labels recovered (as a multiset: a batch's order is not observable)."""
    pred, truth = sorted(pred_B.tolist()), sorted(truth_B.tolist())
    left = list(truth)
    hits = 0
    for p in pred:
        if p in left:
            left.remove(p)
            hits += 1
    return hits / max(len(truth), 1)


def save_grid(originals: Tensor, recons: dict[str, Tensor], path: Path, *, title: str = "") -> None:
    """Row 1 the originals, one row per setting's reconstructions; images (B, C, H, W) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("original", originals), *recons.items()]
    n = originals.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.5, 1.3 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            img = imgs[j].clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
