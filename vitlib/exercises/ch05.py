"""Checks for the exercises of notebook 05 (the Transformer encoder block)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlib.model import EncoderBlock, count_parameters

from .checking import CheckResult, check, forbidden
from .compare import int_problem, tensor_problem

_LAYER_NORM_FUNCTIONS = [(F, "layer_norm"), (torch, "layer_norm"), (torch, "native_layer_norm")]


def check_layer_norm(layer_norm: Callable[[Tensor, Tensor, Tensor, float], Tensor],
                     quiet: bool = False) -> CheckResult:
    """``layer_norm(x, weight, bias, eps)``: normalise x over its last ``weight.ndim`` dimensions
    (zero mean, unit variance), then scale by ``weight`` and shift by ``bias``."""

    def test() -> str | None:
        cases = [
            ("tokens (2, 5, 16)", torch.randn(2, 5, 16), (16,), 1e-6),
            ("tokens far from zero", 50 + torch.randn(3, 7, 8), (8,), 1e-6),
            ("a (4, 6) normalized shape", torch.randn(3, 4, 6), (4, 6), 1e-5),
            ("nearly constant tokens, large eps", 1e-3 * torch.randn(2, 3, 10), (10,), 1e-2),
        ]
        for what, x, shape, eps in cases:
            weight, bias = 1 + 0.5 * torch.randn(shape), 0.5 * torch.randn(shape)
            want = F.layer_norm(x, shape, weight, bias, eps)
            with forbidden("write LayerNorm from its formula with tensor arithmetic",
                           *_LAYER_NORM_FUNCTIONS):
                got = layer_norm(x.clone(), weight.clone(), bias.clone(), eps)
            problem = tensor_problem(f"layer_norm of {what} (eps={eps})", got, want, atol=1e-4)
            if problem:
                return problem
        return None

    return check(
        "layer_norm", test,
        "with dims = tuple(range(-weight.ndim, 0)): mean = x.mean(dims, keepdim=True), "
        "var = x.var(dims, unbiased=False, keepdim=True) (divide by n, not n - 1), then "
        "(x - mean) / torch.sqrt(var + eps) * weight + bias: eps goes inside the square root. "
        "Take the variance of x - mean: E[x²] - E[x]² loses the digits that matter when the "
        "values are far from zero",
        quiet,
    )


def check_block_parameters(block_parameters: Callable[[int, int, bool], int],
                           quiet: bool = False) -> CheckResult:
    """``block_parameters(dim, mlp_hidden, qkv_bias) -> int``: trainable parameters of one
    pre-norm encoder block (``vitlib.EncoderBlock``)."""

    def test() -> str | None:
        cases = [(192, 384, True), (64, 256, False), (768, 3072, True),
                 (8 * random.randint(1, 16), 8 * random.randint(1, 32), random.random() < 0.5)]
        for dim, hidden, qkv_bias in cases:
            want = count_parameters(EncoderBlock(dim, 1, hidden, qkv_bias))
            got = block_parameters(dim, hidden, qkv_bias)
            call = f"block_parameters({dim}, {hidden}, qkv_bias={qkv_bias})"
            problem = int_problem(call, got)
            if problem:
                return problem
            if got != want:
                how = "many" if got > want else "few"
                return f"{call} gave {got:,}, expected {want:,} ({abs(got - want):,} too {how})"
        return None

    return check(
        "block_parameters", test,
        "add up every weight and bias: norm1 and norm2 (a weight and a bias of D each), qkv = "
        "Linear(D, 3D) (its 3D bias only with qkv_bias), proj = Linear(D, D), fc1 = Linear(D, "
        "hidden), fc2 = Linear(hidden, D); a Linear(a, b) has a·b weights and b biases. The "
        "number of heads changes nothing",
        quiet,
    )


def check_residual_block(
    residual_block: Callable[..., Tensor], quiet: bool = False
) -> CheckResult:
    """``residual_block(x, norm1, attn, norm2, mlp)``: the pre-norm block
    x + attn(norm1(x)), then + mlp(norm2(·)); each argument after x maps (B, N, D) to (B, N, D)."""

    def test() -> str | None:
        for dim, heads in [(16, 2), (24, 3)]:
            block = EncoderBlock(dim, heads, 2 * dim).eval()
            with torch.no_grad():
                for norm in (block.norm1, block.norm2):  # so that swapping them shows
                    norm.weight.normal_(1.0, 0.3)
                    norm.bias.normal_(0.0, 0.3)
                x = torch.randn(2, 5, dim)
                attn = block.attn
                got = residual_block(x.clone(), block.norm1, lambda t, attn=attn: attn(t)[0],
                                     block.norm2, block.mlp)
                problem = tensor_problem(f"the block's output for D={dim}", got, block(x))
            if problem:
                return problem
        return None

    return check(
        "residual_block", test,
        "pre-norm: normalise the input of each branch, not the sum; x = x + attn(norm1(x)), "
        "then x = x + mlp(norm2(x)) using the updated x, and return x (no norm at the end)",
        quiet,
    )
