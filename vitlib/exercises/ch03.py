"""Checks for the exercises of notebook 03 (patch embedding)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vitlib.patches import patchify

from .checking import CheckResult, check
from .compare import int_problem, tensor_problem


def check_patchify(my_patchify: Callable[[Tensor, int], Tensor],
                   quiet: bool = False) -> CheckResult:
    """``my_patchify(images, patch_size)``: (B, C, H, W) -> (B, N, C·p·p) in ``vitlib.patchify``
    order (patches row by row; inside a patch: channel, then row, then column)."""

    def test() -> str | None:
        for B, C, H, W, p in [(2, 3, 8, 8, 4), (1, 3, 12, 6, 3), (2, 1, 4, 4, 1), (1, 2, 6, 6, 6)]:
            images = torch.randn(B, C, H, W)
            problem = tensor_problem(f"patchify(images of shape {(B, C, H, W)}, {p})",
                                     my_patchify(images, p), patchify(images, p))
            if problem:
                return problem
        return None

    return check(
        "patchify", test,
        "reshape (B, C, H, W) to (B, C, H/p, p, W/p, p), permute to (B, H/p, W/p, C, p, p) so the "
        "grid comes first and each patch is channel, row, column, then reshape to "
        "(B, (H/p)·(W/p), C·p·p)",
        quiet,
    )


def check_num_tokens(num_tokens: Callable[[int, int, int], int],
                     quiet: bool = False) -> CheckResult:
    """``num_tokens(height, width, patch_size)``: how many patch tokens an image gives."""

    def test() -> str | None:
        cases = [(32, 32, 4), (224, 224, 16), (224, 224, 14), (384, 384, 16), (48, 96, 8),
                 (random.choice([8, 16, 32]), 64, random.choice([1, 2, 4, 8]))]
        for h, w, p in cases:
            want = patchify(torch.zeros(1, 1, h, w, device="meta"), p).shape[1]
            got = num_tokens(h, w, p)
            problem = int_problem(f"num_tokens({h}, {w}, {p})", got)
            if problem:
                return problem
            if got != want:
                return f"num_tokens({h}, {w}, {p}) gave {got}, expected {want}"
        return None

    return check(
        "num_tokens", test,
        "count patches along each side separately: (height // patch_size) * (width // patch_size); "
        "dividing the pixel count by patch_size (rather than patch_size²) overcounts",
        quiet,
    )


def check_conv_to_linear(conv_to_linear: Callable[[nn.Conv2d], nn.Linear],
                         quiet: bool = False) -> CheckResult:
    """``conv_to_linear(conv)``: the ``nn.Linear`` that, applied to ``patchify(x, p)``, gives the
    same tokens as the patch convolution (kernel = stride = p)."""

    def test() -> str | None:
        for C, D, p in [(3, 8, 4), (2, 5, 2), (3, 16, 8)]:
            conv = nn.Conv2d(C, D, kernel_size=p, stride=p)
            x = torch.randn(2, C, 4 * p, 2 * p)
            linear = conv_to_linear(conv)
            if not isinstance(linear, nn.Linear):
                return f"conv_to_linear should return an nn.Linear, got {type(linear).__name__}"
            with torch.no_grad():
                want = conv(x).flatten(2).transpose(1, 2)  # (B, N, D)
                got = linear(patchify(x, p))
            problem = tensor_problem(f"linear(patchify(x, {p})) for C={C}, D={D}", got, want)
            if problem:
                return problem
        return None

    return check(
        "conv_to_linear", test,
        "conv.weight is (D, C, p, p); flattened to (D, C·p·p) with conv.weight.flatten(1) its "
        "order matches patchify's (channel, row, column); copy it into nn.Linear(C·p·p, D).weight "
        "and copy conv.bias into the bias",
        quiet,
    )
