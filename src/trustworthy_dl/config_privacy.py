"""The ``privacy`` section of the config: node-side DP and sparsification (trustworthy_dl.privacy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trustworthy_dl.config_base import _Section

__all__ = ["PrivacyConfig", "SparsifyConfig"]


class SparsifyConfig(_Section):
    kind: Literal["none", "topk", "randk"] = Field(
        "none", description="Keep the largest (topk) or random (randk) coordinates of each update."
    )
    ratio: float = Field(0.01, gt=0, le=1, description="Fraction of the coordinates kept.")
    error_feedback: bool = Field(
        True, description="Add what was dropped to the next round's update (node-side memory)."
    )


class PrivacyConfig(_Section):
    enabled: bool = Field(False, description="Node-side clipping + Gaussian noise and sparsification.")
    mode: Literal["dp_sgd", "node_clip", "none"] = Field(
        "dp_sgd",
        description="dp_sgd: clip each sample's gradient; node_clip: clip the node's whole update; "
        "none: no clipping or noise (sparsification only).",
    )
    clip_norm: float = Field(1.0, gt=0, description="Clipping norm C (per sample or per update).")
    noise_multiplier: float = Field(
        1.0, ge=0, description="Noise std / C (ignored when target_epsilon is set)."
    )
    target_epsilon: float | None = Field(
        None, gt=0, description="Pick the noise multiplier that reaches this epsilon at the last round."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta epsilon is reported at.")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="opacus accountant.")
    sparsify: SparsifyConfig = Field(default_factory=SparsifyConfig)

    @model_validator(mode="after")
    def _mode_fields(self) -> PrivacyConfig:
        if self.mode == "none" and self.target_epsilon is not None:
            raise ValueError(
                "privacy.target_epsilon needs mode dp_sgd or node_clip (mode none adds no noise)"
            )
        return self
