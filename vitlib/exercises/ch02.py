"""Checks for the exercises of notebook 02 (multi-head attention)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .checking import CheckResult, check
from .compare import int_problem, tensor_problem


def _reference_split(x: Tensor, num_heads: int) -> Tensor:
    B, N, D = x.shape
    return x.view(B, N, num_heads, D // num_heads).transpose(1, 2)  # (B, H, N, D/H)


def check_split_heads(split_heads: Callable[[Tensor, int], Tensor],
                      quiet: bool = False) -> CheckResult:
    """``split_heads(x, num_heads)``: (B, N, D) -> (B, H, N, D/H); head h gets channels
    h·D/H to (h+1)·D/H of every token."""

    def test() -> str | None:
        for B, N, H, head_dim in [(2, 5, 3, 4), (1, 7, 1, 6), (3, 4, 4, 2)]:
            x = torch.randn(B, N, H * head_dim)
            got = split_heads(x, H)
            problem = tensor_problem(f"split_heads(x of shape {(B, N, H * head_dim)}, {H})",
                                     got, _reference_split(x, H))
            if problem:
                return problem
        return None

    return check(
        "split_heads", test,
        "first view the channels as (heads, head_dim): x.view(B, N, H, D // H), then move the "
        "head axis in front of the tokens with .transpose(1, 2); a single .view(B, H, N, D // H) "
        "mixes channels of different tokens",
        quiet,
    )


def check_merge_heads(merge_heads: Callable[[Tensor], Tensor], quiet: bool = False) -> CheckResult:
    """``merge_heads(x)``: (B, H, N, d) -> (B, N, H·d), the inverse of ``split_heads``."""

    def test() -> str | None:
        for B, N, H, head_dim in [(2, 5, 3, 4), (1, 6, 2, 8)]:
            x = torch.randn(B, N, H * head_dim)
            heads = _reference_split(x, H)
            problem = tensor_problem(f"merge_heads(heads of shape {tuple(heads.shape)})",
                                     merge_heads(heads), x)
            if problem:
                return problem
        return None

    return check(
        "merge_heads", test,
        "undo the split in reverse order: .transpose(1, 2) back to (B, N, H, d), then "
        ".reshape(B, N, H * d) (reshape, not view: the transposed tensor is not contiguous)",
        quiet,
    )


def _reference_attention_flops(num_tokens: int, dim: int, num_heads: int) -> int:
    """FLOPs of QKᵀ and AV as PyTorch's own FLOP counter counts them."""
    head_dim = dim // num_heads
    q = k = v = torch.zeros(1, num_heads, num_tokens, head_dim, device="meta")
    with FlopCounterMode(display=False) as counter:
        scores = q @ k.transpose(-2, -1)  # (1, H, N, N)
        scores @ v
    return counter.get_total_flops()


def check_attention_flops(attention_flops: Callable[[int, int, int], int],
                          quiet: bool = False) -> CheckResult:
    """``attention_flops(num_tokens, dim, num_heads)``: FLOPs of QKᵀ and AV for one sequence,
    all heads together, counting a multiply-add as 2 FLOPs."""

    def test() -> str | None:
        cases = [(4, 8, 2), (64, 192, 12), (197, 768, 12), (random.randint(5, 300), 64, 4)]
        for n, d, h in cases:
            want = _reference_attention_flops(n, d, h)
            got = attention_flops(n, d, h)
            problem = int_problem(f"attention_flops({n}, {d}, {h})", got)
            if problem:
                return problem
            if got != want:
                return f"attention_flops({n}, {d}, {h}) gave {got}, expected {want}"
        return None

    return check(
        "attention_flops", test,
        "an (m × k) by (k × n) matrix product does m·n·k multiply-adds = 2·m·n·k FLOPs; QKᵀ is "
        "(N × d) by (d × N) and AV is (N × N) by (N × d), per head with d = dim // num_heads "
        "(// keeps the count an int); then multiply by the number of heads",
        quiet,
    )
