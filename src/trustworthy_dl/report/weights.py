"""A finished run's trained weights: ``model.safetensors`` next to ``summary.json``.

Every run ends by writing them, on every backend and layout (pipelines too: the full model), so
the result of training is never lost because the last checkpoint fell before the last round.
safetensors holds tensors only: loading it runs no code. Tied tensors (GPT-2's embedding and
output head) are written once per name, as separate copies.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["WEIGHTS_FILE", "load_final_weights", "save_final_weights"]

WEIGHTS_FILE = "model.safetensors"


def save_final_weights(model: nn.Module, out_dir: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s parameters and buffers to ``out_dir/model.safetensors`` atomically."""
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    path = out_dir / WEIGHTS_FILE
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_final_weights(path: Path | str) -> dict[str, Tensor]:
    """The state dict a run wrote (``model.load_state_dict(load_final_weights(...))``)."""
    return load_file(str(path))
