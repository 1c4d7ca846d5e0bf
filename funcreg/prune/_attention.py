"""nn.MultiheadAttention with some of its heads removed.

``nn.MultiheadAttention`` ties its heads' width to ``embed_dim`` (head_dim = embed_dim /
num_heads), so it cannot hold fewer heads at the same model width; this module computes the
same attention with ``num_heads`` heads of ``head_dim`` each and keeps the parameter names
(``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``), so that the
smaller params run through ``functional_call`` as the old ones did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.Module):
    """The heads ``keep`` of ``mha`` (an ``nn.MultiheadAttention`` with one fused q/k/v
    projection), with ``nn.MultiheadAttention.forward``'s arguments. The attention weights
    are not returned (``None``): averaged over fewer heads they would not be the original's.
    """

    def __init__(self, mha: nn.MultiheadAttention, num_heads: int) -> None:
        super().__init__()
        self.embed_dim = mha.embed_dim
        self.head_dim = mha.head_dim
        self.num_heads = num_heads
        self.dropout = mha.dropout
        self.batch_first = mha.batch_first
        inner = num_heads * mha.head_dim
        like = mha.in_proj_weight
        self.in_proj_weight = nn.Parameter(like.new_empty(3 * inner, self.embed_dim))
        self.in_proj_bias = (None if mha.in_proj_bias is None
                             else nn.Parameter(like.new_empty(3 * inner)))
        self.out_proj = nn.Linear(inner, self.embed_dim, bias=mha.out_proj.bias is not None,
                                  device=like.device, dtype=like.dtype)
        self.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # (L, N, E) from here on, as nn.MultiheadAttention computes
        length, batch, _ = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            return F.linear(x, w, b).reshape(x.shape[0], batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        mask = self._mask(attn_mask, key_padding_mask, q, key.shape[0])
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = out.permute(2, 0, 1, 3).reshape(length, batch, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _mask(
        self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
        q: torch.Tensor, source: int,
    ) -> torch.Tensor | None:
        """attn_mask and key_padding_mask as one additive float mask (True = masked out)."""
        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (N * heads, L, S): this module holds fewer heads
                raise ValueError(
                    "a 3-d attn_mask has one slice per head of the original module; this "
                    "pruned nn.MultiheadAttention has fewer heads: pass a 2-d mask"
                )
            mask = _additive(attn_mask, q.dtype)
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, q.dtype).reshape(q.shape[0], 1, 1, source)
            mask = pad if mask is None else mask + pad
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
