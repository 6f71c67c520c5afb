"""Self-attention, written from the formulas and then as a fast multi-head module.

    Q = X W_Q,  K = X W_K,  V = X W_V
    A = softmax(Q Kᵀ / √d)
    O = A V
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_flex: Callable[..., Tensor] | None = None  # FlexAttention inside use_flex_attention()


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
    # scaled before the product, which could overflow float16 (as F.scaled_dot_product_attention)
    scores = (q / math.sqrt(d)) @ k.transpose(-2, -1)  # (..., Nq, Nk)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
                "convert it with mask.bool()"
            )
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1)  # each row sums to 1
    return attn @ v, attn


@contextlib.contextmanager
def use_flex_attention(enabled: bool = True) -> Iterator[None]:
    """Inside, ``MultiHeadSelfAttention`` computes unmasked attention without dropout with
    PyTorch's FlexAttention instead of ``F.scaled_dot_product_attention`` (``enabled=False``:
    never, also inside an outer ``use_flex_attention()``): the same numbers from a kernel that
    ``torch.compile`` generates for the shapes at hand (CUDA; on a CPU it has no backward
    pass). The switch holds for the whole process, like ``sdpa_kernel``; a compiled function
    is traced again when it changes."""
    global _flex
    if enabled:
        from torch.nn.attention.flex_attention import flex_attention  # slow: only when used
    before, _flex = _flex, flex_attention if enabled else None
    try:
        yield
    finally:
        _flex = before


def fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                    dropout: float = 0.0) -> Tensor:
    """softmax(QKᵀ/√d)V for q, k, v (B, H, N, d) by a fused kernel that keeps no attention
    matrix: FlexAttention inside ``use_flex_attention()``, else PyTorch's SDPA."""
    if _flex is not None and mask is None and dropout == 0.0:
        return _flex(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over a sequence of tokens (B, N, dim) -> (B, N, dim).

    One fused Linear makes Q, K and V for all heads; ``need_weights=True`` takes the explicit
    path above and also returns the attention weights (B, heads, N, N) for visualisation,
    otherwise a fused kernel runs (``fused_attention``) and no weights are kept.
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
            out, attn = fused_attention(q, k, v, mask, dropout), None
        out = out.transpose(1, 2).reshape(B, N, C)  # heads side by side again
        return self.proj_drop(self.proj(out)), attn


@torch.no_grad()
def mimetic_init_(
    attn: MultiHeadSelfAttention,
    qk: tuple[float, float] = (0.7, 0.7),
    vo: tuple[float, float] = (0.4, 0.4),
) -> None:
    """Set the attention weights so that, with Z random (entries of variance 1/dim):

        per head  W_Q,h W_K,hᵀ ≈ a·Z + b·I   (qk = (a, b): tokens attend to similar tokens)
        all heads W_V W_O      ≈ a·Z − b·I   (vo = (a, b))

    the pattern that trained ViTs show ("mimetic initialisation", Trockman & Kolter, 2023).
    Each head's product is the best rank-head_dim approximation of its own target; the value
    and output product is exact. Biases become zero. Uses torch's global random generator.
    """
    dim, head_dim = attn.proj.in_features, attn.head_dim
    weight = attn.qkv.weight  # (3·dim, dim): rows [W_Qᵀ; W_Kᵀ; W_Vᵀ], head after head

    def target(a: float, b: float, sign: int) -> Tensor:  # (dim, dim), float64
        z = torch.randn(dim, dim, dtype=torch.float64) / math.sqrt(dim)
        return a * z + sign * b * torch.eye(dim, dtype=torch.float64)

    for h in range(attn.num_heads):
        u, s, vh = torch.linalg.svd(target(*qk, sign=1))
        root = s[:head_dim].sqrt()  # split each singular value between the two factors
        rows = slice(h * head_dim, (h + 1) * head_dim)
        weight[rows] = (u[:, :head_dim] * root).T.to(weight)  # W_Q,h: (dim, head_dim), stored ᵀ
        weight[dim:][rows] = (vh[:head_dim].T * root).T.to(weight)  # W_K,h
    u, s, vh = torch.linalg.svd(target(*vo, sign=-1))
    weight[2 * dim:] = (u * s.sqrt()).T.to(weight)  # W_V: (dim, dim), stored ᵀ
    attn.proj.weight.copy_((s.sqrt()[:, None] * vh).T.to(weight))  # W_O, stored ᵀ
    for bias in (attn.qkv.bias, attn.proj.bias):
        if bias is not None:
            bias.zero_()
