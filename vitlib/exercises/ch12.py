"""Checks for the exercises of notebook 12 (inside a trained ViT, and beyond classification)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vitlib
import vitlib.dense
import vitlib.patches
from vitlib.dense import SegmentationHead, TubeletEmbed
from vitlib.explain import attention_rollout, mean_attention_distance

from .checking import CheckResult, check, forbidden
from .compare import int_problem, tensor_problem


def _random_attention(blocks: int, batch: int, heads: int, tokens: int) -> list[Tensor]:
    return [torch.randn(batch, heads, tokens, tokens).mul(2).softmax(dim=-1)
            for _ in range(blocks)]


def check_attention_rollout(rollout: Callable[[list[Tensor]], Tensor],
                            quiet: bool = False) -> CheckResult:
    """``rollout(maps) -> (B, T, T)``: the attention rollout of a list of (B, H, T, T)
    attention maps, first block first, with the residual (identity) added."""

    def test() -> str | None:
        for blocks, batch, heads, tokens in [(1, 1, 1, 3), (2, 2, 3, 5),
                                             (random.randint(3, 5), 2, 4, random.randint(4, 9))]:
            maps = _random_attention(blocks, batch, heads, tokens)
            problem = tensor_problem(
                f"rollout of {blocks} block(s) of maps shaped {tuple(maps[0].shape)}",
                rollout([m.clone() for m in maps]), attention_rollout(maps))
            if problem:
                return problem
        return None

    return check(
        "attention_rollout", test,
        "per block: average the heads (dim=1), add the identity torch.eye(T) for the skip "
        "connection and divide each row by its sum; then chain the blocks with later ones on the "
        "left: R = A_block @ R, starting from the first block",
        quiet,
    )


def check_mean_attention_distance(distance: Callable[[Tensor, tuple[int, int], int], Tensor],
                                  quiet: bool = False) -> CheckResult:
    """``distance(attn, grid, patch_size) -> (H,)``: for one block's attention (B, H, N, N)
    over a grid_h × grid_w patch grid (no class token), each head's mean attention distance in
    pixels: the attention-weighted distance between patch centres, averaged over the queries
    and the images."""

    def test() -> str | None:
        for grid, patch_size in [((2, 2), 4), ((3, 4), 2),
                                 ((random.randint(2, 5), random.randint(2, 5)), 8)]:
            n = grid[0] * grid[1]
            attn = _random_attention(1, 2, 3, n)[0]
            problem = tensor_problem(
                f"distance(attention {tuple(attn.shape)}, grid={grid}, patch_size={patch_size})",
                distance(attn.clone(), grid, patch_size),
                mean_attention_distance([attn], grid, patch_size)[0], atol=1e-4)
            if problem:
                return problem
        return None

    return check(
        "mean_attention_distance", test,
        "patch i sits at row i // grid_w and column i % grid_w; the distance between two patches "
        "is the straight-line (Euclidean) distance between those positions times patch_size (in "
        "pixels, not patches). Weight the (N, N) distances by the attention, sum over the keys "
        "(last axis), then average over the queries and the batch: one number per head",
        quiet,
    )


def check_tubelet_tokens(tubelet_tokens: Callable[[int, int, int, int], int],
                         quiet: bool = False) -> CheckResult:
    """``tubelet_tokens(frames, image_size, tubelet_size, patch_size) -> int``: the number of
    tokens a clip of ``frames`` square frames becomes with t × p × p tubelets."""

    def test() -> str | None:
        cases = [(16, 224, 2, 16), (8, 32, 4, 4), (1, 32, 1, 8), (32, 112, 8, 16),
                 (4 * random.randint(1, 8), 16 * random.randint(1, 4), 4, 16)]
        for frames, size, tubelet, patch in cases:
            want = TubeletEmbed(tubelet, patch, 3, 1).num_tokens(frames, size, size)
            got = tubelet_tokens(frames, size, tubelet, patch)
            problem = int_problem(f"tubelet_tokens({frames}, {size}, {tubelet}, {patch})", got)
            if problem:
                return problem
            if got != want:
                return (f"{frames} frames of {size}×{size} pixels in tubelets of {tubelet} frames "
                        f"× {patch}×{patch} pixels make {want:,} tokens, you said {got!r}")
        return None

    return check(
        "tubelet_tokens", test,
        "count the tubelets along each axis: frames // tubelet_size in time, and "
        "image_size // patch_size along the height and along the width; the tokens are their "
        "product",
        quiet,
    )


_UNPATCHIFY_FUNCTIONS = [(vitlib, "unpatchify"), (vitlib.patches, "unpatchify"),
                         (vitlib.dense, "unpatchify"), (F, "fold")]


def check_segmentation_logits(
    logits_fn: Callable[[Tensor, nn.Linear, int, tuple[int, int], int], Tensor],
    quiet: bool = False,
) -> CheckResult:
    """``logits_fn(tokens, linear, patch_size, grid, num_classes) -> (B, K, H, W)``: per-pixel
    logits from patch tokens (B, N, D), where ``linear`` maps a token to the K·p·p logits of its
    patch's pixels (flattened as (K, p, p)), and the patches form a grid_h × grid_w grid."""

    def test() -> str | None:
        for grid, patch_size, num_classes in [((2, 2), 2, 2), ((2, 3), 4, 3),
                                              ((random.randint(1, 4), 2), 3, 5)]:
            reference = SegmentationHead(6, num_classes, patch_size, grid)
            tokens = torch.randn(2, grid[0] * grid[1], 6)
            with torch.no_grad():
                want = reference(tokens)
                with forbidden("arrange the logits with reshape and permute yourself",
                               *_UNPATCHIFY_FUNCTIONS):
                    got = logits_fn(tokens.clone(), reference.proj, patch_size, grid,
                                    num_classes)
            problem = tensor_problem(
                f"logits for a {grid[0]}×{grid[1]} grid of {patch_size}×{patch_size} patches "
                f"and {num_classes} classes", got, want)
            if problem:
                return problem
        return None

    return check(
        "segmentation_logits", test,
        "apply the linear map to every token: (B, N, K·p·p). Then view it as (B, gh, gw, K, p, p) "
        "and move the axes to (B, K, gh, p, gw, p) before the final reshape to (B, K, gh·p, "
        "gw·p): a plain reshape of (B, N, K·p·p) mixes pixels of different patches. This is "
        "what vitlib.unpatchify does, written out with reshape and permute",
        quiet,
    )
