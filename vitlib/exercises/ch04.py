"""Checks for the exercises of notebook 04 (position embeddings)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vitlib.attention import MultiHeadSelfAttention
from vitlib.model import EncoderBlock
from vitlib.position import resize_pos_embed, sincos_1d

from .checking import CheckResult, check
from .compare import in_float64, shape_problem, tensor_problem, yes_no_problem


def check_sincos_1d(sincos: Callable[[Tensor, int], Tensor], quiet: bool = False) -> CheckResult:
    """``sincos(positions, dim) -> (N, dim)``: sin(p·ωᵢ) in the first dim/2 channels, cos(p·ωᵢ)
    in the last dim/2, with ωᵢ = 10000^(−2i/dim) for i = 0 … dim/2 − 1."""

    def test() -> str | None:
        cases = [(torch.arange(8), 16), (torch.arange(3), 4), (torch.tensor([0.5, 2.25, 7.0]), 8),
                 (torch.randint(0, 50, (6,)), 2 * random.randint(2, 24))]
        for positions, dim in cases:
            got = sincos(positions, dim)
            problem = tensor_problem(f"sincos(positions {positions.tolist()}, dim={dim})", got,
                                     sincos_1d(positions, dim), atol=1e-4)
            if problem:
                return problem
        return None

    return check(
        "sincos_1d", test,
        "omega = 1 / 10000 ** (torch.arange(dim // 2) / (dim / 2)) gives dim/2 frequencies from 1 "
        "down towards 1/10000; angles = positions[:, None] * omega[None, :] has shape (N, dim/2); "
        "return torch.cat([angles.sin(), angles.cos()], dim=1): all the sines first, then all the "
        "cosines (not interleaved)",
        quiet,
    )


def _equivariance_cases(dim: int, tokens: int = 16
                        ) -> list[tuple[str, Callable[[Tensor], Tensor], bool]]:
    """(description, function on (B, tokens, dim) tokens, whether it is
    permutation-equivariant)."""
    attention = MultiHeadSelfAttention(dim, num_heads=2).eval().double()
    block = EncoderBlock(dim, num_heads=2, mlp_hidden=2 * dim).eval().double()
    positions = torch.randn(1, tokens, dim, dtype=torch.float64)
    tiny_positions = 1e-3 * torch.randn(1, tokens, dim, dtype=torch.float64)  # moves ~1e-4
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    cases = [
        ("self-attention without positions", lambda x: attention(x)[0], True),
        ("a LayerNorm on each token", nn.LayerNorm(dim).double(), True),
        ("a whole encoder block", block, True),
        ("the mean token copied to every position",
         lambda x: x.mean(dim=1, keepdim=True).expand_as(x), True),
        ("adding a position embedding", lambda x: attention(x + positions)[0], False),
        ("adding a tiny position embedding (values around 0.001)",
         lambda x: attention(x + tiny_positions)[0], False),
        ("causal (masked) self-attention", lambda x: attention(x, mask=causal)[0], False),
        ("a cumulative sum over the tokens", lambda x: x.cumsum(dim=1), False),
        ("sorting each channel over the tokens", lambda x: x.sort(dim=1).values, False),
    ]
    return [(what, in_float64(function), want) for what, function, want in cases] + [
        # in float32: rounding moves the last bits (== fails), but only relative to each value
        ("a softmax over the tokens (each channel's weights)", lambda x: x.softmax(dim=1), True),
    ]


def check_permutation_equivariance(
    is_equivariant: Callable[[Callable[[Tensor], Tensor], Tensor], bool], quiet: bool = False
) -> CheckResult:
    """``is_equivariant(f, x) -> bool``: whether f(x[:, perm]) equals f(x)[:, perm] for a random
    permutation ``perm`` of the tokens of x (B, N, D), up to float rounding."""

    def test() -> str | None:
        x = torch.randn(2, 16, 16)  # 16 tokens: a random order is almost never the same one
        with torch.no_grad():
            return yes_no_problem("is_equivariant", _equivariance_cases(dim=16, tokens=16),
                                  lambda f: is_equivariant(f, x.clone()))

    return check(
        "permutation_equivariance", test,
        "draw perm = torch.randperm(x.shape[1]) and compare f(x[:, perm]) with f(x)[:, perm] "
        "(permute the output too: that is equivariance; comparing with f(x) itself tests "
        "invariance instead) using torch.allclose (its default tolerance, or atol=1e-5), not ==: "
        "summing in another order changes the last bits of a float; a looser tolerance misses a "
        "small position embedding, which moves the outputs by about 1e-4",
        quiet,
    )


def check_resized_shape(
    resized_shape: Callable[[tuple[int, int, int], int, int, int], tuple[int, int, int]],
    quiet: bool = False,
) -> CheckResult:
    """``resized_shape(table_shape, new_image_size, patch_size, num_prefix_tokens)``: the shape
    of a (1, T, D) position table after ``resize_pos_embed`` to the new image size's grid."""

    def test() -> str | None:
        cases = [((1, 64, 192), 48, 4, 0), ((1, 197, 768), 384, 16, 1), ((1, 65, 64), 64, 4, 1),
                 ((1, 196, 384), 448, 16, 0), ((1, 17, 8), 8 * random.randint(1, 6), 8, 1)]
        for shape, size, p, prefix in cases:
            want = tuple(resize_pos_embed(torch.zeros(shape), (size // p, size // p), prefix).shape)
            got = resized_shape(shape, size, p, prefix)
            problem = shape_problem(f"the shape from resized_shape({shape}, new_image_size="
                                    f"{size}, patch_size={p}, num_prefix_tokens={prefix})",
                                    got, want)
            if problem:
                return problem
        return None

    return check(
        "resized_shape", test,
        "the new grid has new_image_size // patch_size patches on each side, so (that)² patch "
        "positions; the num_prefix_tokens slots (a class token's) are kept as they are and come "
        "on top; the leading 1 and the width D do not change",
        quiet,
    )
