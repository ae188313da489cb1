"""Parameter monitor: tamper detection by digest, and norms and drift of the global parameters.

Every round each node reports a digest of its copy of the parameters (or of its pipeline
stage); the coordinator compares it with the digest of its own copy. A Byzantine stage node can
tamper with the parameters it holds (Threat model, DESIGN.md); a differing digest is evidence
(confirmed, 1.0) against it. The digest is SHA-256 of the tensor's raw bytes, carried as a
(32,) uint8 tensor because nodes send tensors only; a single flipped bit changes it. It is
exact, so nodes and coordinator must hold the same dtype (both copies come from the same
broadcast, so they do unless one was tampered with).

Legend: N nodes, D flat parameters.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DIGEST_BYTES", "ParameterMonitor", "tensor_digest"]

DIGEST_BYTES = 32


def tensor_digest(t: Tensor) -> Tensor:
    """SHA-256 of ``t``'s dtype, shape and raw bytes as a (32,) uint8 CPU tensor (any dtype, bf16 too)."""
    flat = t.detach().contiguous().reshape(-1).cpu()
    h = hashlib.sha256(f"{flat.dtype}|{tuple(t.shape)}|".encode())
    h.update(flat.view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


class ParameterMonitor:
    """Checks node copies of the parameters against the coordinator's, and summarises them."""

    @staticmethod
    def digest(params_D: Tensor) -> Tensor:
        """The digest a node sends for its copy (see :func:`tensor_digest`)."""
        return tensor_digest(params_D)

    @staticmethod
    def check(reference_params_D: Tensor, node_digests: Tensor | Sequence[Tensor | None]) -> list[int]:
        """Node ids whose digest differs from the coordinator's copy ``reference_params_D``.

        Args:
            reference_params_D: the coordinator's parameters (or the stage's slice).
            node_digests: an (N, 32) uint8 tensor, or one (32,) tensor per node; None marks a
                node that did not report (a fault, not evidence of tampering: skipped).

        Raises:
            ValueError: if a digest is not 32 bytes (a malformed message).
        """
        ref_32 = tensor_digest(reference_params_D)
        tampered = []
        for node, d in enumerate(node_digests):
            if d is None:
                continue
            if d.numel() != DIGEST_BYTES:
                raise ValueError(f"digest of node {node} has {d.numel()} entries, expected {DIGEST_BYTES}")
            if not torch.equal(d.reshape(-1).to(device="cpu", dtype=torch.uint8), ref_32):
                tampered.append(node)
        return tampered

    @staticmethod
    def stats(params_D: Tensor, prev_params_D: Tensor | None = None) -> dict[str, float | bool]:
        """Norm and drift of the global parameters, for the round log.

        Returns:
            ``param_norm``, ``finite``, and with ``prev_params_D`` also ``drift``
            (||p - p_prev||) and ``relative_drift`` (drift / ||p_prev||; the denominator floored at 1e-30).
        """
        p = params_D.detach().to(torch.float64)
        norm = float(torch.linalg.vector_norm(p))
        out: dict[str, float | bool] = {"param_norm": norm, "finite": math.isfinite(norm)}
        if prev_params_D is not None:
            prev = prev_params_D.detach().to(device=p.device, dtype=torch.float64)
            drift = float(torch.linalg.vector_norm(p - prev))
            prev_norm = float(torch.linalg.vector_norm(prev))
            out["drift"] = drift
            out["relative_drift"] = drift / max(prev_norm, 1e-30)
        return out
