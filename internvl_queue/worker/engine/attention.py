"""Attention for single-token decode steps over a static KV cache, without copying K/V per head.

transformers' sdpa path repeats every K/V head for its query-head group (``repeat_kv``) whenever a
mask is given, which for a 14:2 model like Qwen2.5-0.5B writes 7 copies of the whole cache per
layer and step: the dominant cost of a large decode batch. Here the queries of a group attend to
their one K/V head directly. Prefill (more than one query token) keeps the sdpa path.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

__all__ = ["GROUPED_DECODE", "grouped_decode_attention"]

GROUPED_DECODE = "internvl_queue_grouped_decode"


def grouped_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, heads, q_len, dim]
    key: torch.Tensor,  # [batch, kv_heads, slots, dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # bool [batch, 1, q_len, slots], True = visible
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or kv_heads == heads or attention_mask is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else dim**-0.5
    grouped = query.view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # [b, kv, group, slots]
    scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = scores.softmax(-1).to(value.dtype)
    out = torch.matmul(weights, value)  # [b, kv, group, dim]
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention)
