"""Self-attention, written from the formulas and then as a fast multi-head module.

    Q = X W_Q,  K = X W_K,  V = X W_V
    A = softmax(Q Kᵀ / √d)
    O = A V
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attention output O = AV and attention matrix A = softmax(QKᵀ/√d).

    q: (..., Nq, d), k: (..., Nk, d), v: (..., Nk, dv).
    mask: optional boolean tensor broadcastable to (..., Nq, Nk); True marks the pairs that may
    attend (the same convention as ``F.scaled_dot_product_attention``).
    Returns O with shape (..., Nq, dv) and A with shape (..., Nq, Nk).
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Nq, Nk)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
                "convert it with mask.bool()"
            )
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1)  # each row sums to 1
    return attn @ v, attn


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over a sequence of tokens (B, N, dim) -> (B, N, dim).

    One fused Linear makes Q, K and V for all heads; ``need_weights=True`` takes the explicit
    path above and also returns the attention weights (B, heads, N, N) for visualisation,
    otherwise the fused ``F.scaled_dot_product_attention`` kernel runs and no weights are kept.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            divisors = [h for h in range(1, dim + 1) if dim % h == 0 and h <= 32]
            raise ValueError(
                f"embed_dim {dim} is not divisible by num_heads {num_heads}; "
                f"choose num_heads from {divisors} or change embed_dim"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # [W_Q; W_K; W_V] stacked
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Returns (output (B, N, dim), attention weights (B, H, N, N) or None)."""
        B, N, C = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, N, 3, H, D).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, D)
        dropout = self.attn_dropout if self.training else 0.0
        if need_weights:
            out, attn = scaled_dot_product_attention(q, k, v, mask)
            out = F.dropout(attn, dropout) @ v if dropout else out  # (B, H, N, D)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            attn = None
        out = out.transpose(1, 2).reshape(B, N, C)  # heads side by side again
        return self.proj_drop(self.proj(out)), attn
