"""``gpt2``: a Hugging Face ``GPT2LMHeadModel`` built from a ``GPT2Config`` (never downloaded).

Radford et al. (2019), "Language Models are Unsupervised Multitask Learners". Sizes: tiny (2 layers,
128 wide, 4 heads; cheap on CPU), small (12/768/12), medium (24/1024/16), large (36/1280/20).
Dropout is off so that a node's gradient is a deterministic function of (parameters, batch): the
verifier can recompute it exactly. The input and output embeddings are tied, as in GPT-2.

Attention is "eager" (explicit matmul + softmax with an additive causal mask): it has real
``torch.func.vmap`` batching rules, so per-node gradients ``vmap(grad(loss))`` run as one batched
computation and compile well (tiny, 8 nodes: 45 ms per step under ``torch.compile`` against 1.4 s
with "sdpa"). PyTorch's ``scaled_dot_product_attention`` ("sdpa") is as fast on CPU for plain
forward/backward and saves memory on long sequences, but on CPU it has no vmap rule (functorch falls
back to a per-sample loop and warns); choose it with ``build_gpt2(..., attn_implementation="sdpa")``.

``transformers`` is imported when a GPT-2 is built, so that ``import trustworthy_dl.models`` stays light.

Shapes: ``ids_BL`` long -> ``logits_BLV``; between pipeline blocks ``h_BLD`` float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from trustworthy_dl.models.registry import register_model

if TYPE_CHECKING:
    from transformers import GPT2Config

__all__ = ["GPT2", "GPT2_SIZES", "build_gpt2"]

# size -> (n_layer, n_embd, n_head)
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 4),
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
    "large": (36, 1280, 20),
}


class GPT2(nn.Module):
    """``forward(ids_BL) -> logits_BLV``; the Hugging Face model is ``self.hf``."""

    def __init__(self, config: GPT2Config) -> None:
        from transformers import GPT2LMHeadModel

        super().__init__()
        self.hf = GPT2LMHeadModel(config)

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids_BL, use_cache=False).logits

    def pipeline_blocks(self) -> list[nn.Module]:
        """``embedding | block_0 | ... | block_{n-1} | ln_f + lm_head``, sharing this model's parameters.

        The first and last blocks share the tied embedding matrix.
        """
        t = self.hf.transformer
        blocks = [_GPT2Block(block, self.hf.config) for block in t.h]
        return [_Embedding(t.wte, t.wpe, t.drop), *blocks, _Head(t.ln_f, self.hf.lm_head)]


class _Embedding(nn.Module):
    """``ids_BL -> h_BLD``: token + position embeddings (as ``GPT2Model.forward``)."""

    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding, drop: nn.Module) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = wte, wpe, drop

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        pos_1L = torch.arange(ids_BL.shape[-1], device=ids_BL.device).unsqueeze(0)
        return self.drop(self.wte(ids_BL) + self.wpe(pos_1L))


class _GPT2Block(nn.Module):
    """``h_BLD -> h_BLD``: one transformer block, called by keyword with a causal mask of our own.

    Eager attention adds ``attention_mask`` to its scores, so it gets the additive causal mask
    (0 on and below the diagonal, the dtype's minimum above); SDPA takes None and applies
    ``is_causal`` itself. Nothing from ``transformers.masking_utils`` (whose signature changes
    between releases) is used.
    """

    def __init__(self, block: nn.Module, config: GPT2Config) -> None:
        super().__init__()
        self.block = block
        self._eager = getattr(config, "_attn_implementation", "eager") == "eager"

    def forward(self, h_BLD: torch.Tensor) -> torch.Tensor:
        mask = causal_mask(h_BLD.shape[1], h_BLD.dtype, h_BLD.device) if self._eager else None
        out = self.block(h_BLD, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive causal mask (1, 1, L, L): 0 where a position may attend, the dtype's minimum elsewhere."""
    blocked_LL = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
        blocked_LL, torch.finfo(dtype).min
    )[None, None]


class _Head(nn.Module):
    """``h_BLD -> logits_BLV``: final LayerNorm and the (tied) language-model head."""

    def __init__(self, ln_f: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.ln_f, self.lm_head = ln_f, lm_head

    def forward(self, h_BLD: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(h_BLD))


def build_gpt2(
    size: str, *, vocab_size: int, block_size: int, attn_implementation: Literal["eager", "sdpa"] = "eager"
) -> GPT2:
    """GPT-2 of ``size`` (a key of :data:`GPT2_SIZES`) over ``vocab_size`` tokens and ``block_size`` positions."""
    from transformers import GPT2Config

    n_layer, n_embd, n_head = GPT2_SIZES[size]
    config = GPT2Config(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        bos_token_id=vocab_size - 1,  # GPT-2's <|endoftext|> is its last token
        eos_token_id=vocab_size - 1,
        attn_implementation=attn_implementation,  # a PretrainedConfig keyword that GPT2Config passes on
    )
    return GPT2(config)


@register_model("gpt2", sizes=tuple(GPT2_SIZES), kind="text", default_size="tiny")
def _build_gpt2(
    *,
    size: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm: str,
    vocab_size: int,
    block_size: int,
) -> nn.Module:
    """GPT-2 (see :mod:`trustworthy_dl.models.gpt2`); ``norm`` is not used (GPT-2 keeps LayerNorm)."""
    del num_classes, in_channels, image_size, norm  # a language model with its own LayerNorm
    return build_gpt2(size, vocab_size=vocab_size, block_size=block_size)
