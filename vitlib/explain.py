"""Looking inside a trained ViT: attention rollout, mean attention distance, position similarity.

All three start from what ``ViT.attention_maps`` returns (one (B, heads, T, T) tensor per
block) or from the position table. With ``pool="cls"`` token 0 is the class token and has no
place in the image; the patch tokens follow in row-major (``patchify``) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import ViT


def num_prefix_tokens(model: ViT) -> int:
    """Tokens before the patch tokens: 1 (the class token) with pool='cls', else 0."""
    return int(model.config.pool == "cls")


def attention_rollout(maps: Sequence[Tensor], residual: bool = True) -> Tensor:
    """How much each output token draws on each input token through all blocks (Abnar &
    Zuidema, 2020): (B, T, T), each row summing to 1.

    Per block the heads are averaged; with ``residual`` the identity is added for the skip
    connection (x + attention(x)) and the rows are renormalised, giving (A + I) / 2. The blocks
    are then chained by matrix products, later blocks on the left: R = Â_L ··· Â_2 Â_1.
    """
    if len(maps) == 0:
        raise ValueError("attention_rollout needs at least one block's attention; pass "
                         "model.attention_maps(images)")
    rollout = None
    for attn in maps:
        if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f"expected attention maps shaped (B, heads, T, T), got "
                             f"{tuple(attn.shape)}; pass the list from model.attention_maps")
        a = attn.float().mean(dim=1)  # (B, T, T): average of the heads
        if residual:
            a = a + torch.eye(a.shape[-1], device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)  # rows sum to 1 again
        rollout = a if rollout is None else a @ rollout  # (B, T, T)
    return rollout


def rollout_heatmap(model: ViT, images: Tensor, residual: bool = True) -> Tensor:
    """A heat map per image (B, grid, grid) from the attention rollout, summing to 1 over the
    patches: which input patches the pooled vector, the one the classifier reads, draws on.

    pool='cls': the class token's row of the rollout, restricted to the patches and
    renormalised. pool='mean': the classifier reads the mean of all output tokens, so the map
    is the mean of the rollout's rows (over every query token). Put the model in eval mode
    first, so that no attention dropout is applied.
    """
    rollout = attention_rollout(model.attention_maps(images), residual)  # (B, T, T)
    if model.config.pool == "cls":
        heat = rollout[:, 0, 1:]  # (B, N): class token -> patches
        heat = heat / heat.sum(dim=-1, keepdim=True)
    else:
        heat = rollout.mean(dim=1)  # (B, N): mean over the query tokens
    grid = model.config.grid_size
    return heat.reshape(len(images), grid, grid)  # (B, grid, grid)


def patch_distances(grid: tuple[int, int], patch_size: int) -> Tensor:
    """Euclidean distance in pixels between the centres of every two patches: (N, N) for a
    grid_h × grid_w grid, in row-major order."""
    grid_h, grid_w = grid
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_size  # (N, 2)
    return torch.cdist(centres, centres)  # (N, N)


def mean_attention_distance(
    maps: Sequence[Tensor],
    grid: tuple[int, int],
    patch_size: int,
    num_prefix_tokens: int = 0,
) -> Tensor:
    """How far each head looks, in pixels: (blocks, heads).

    For each query patch, the distance to every key patch weighted by the attention, averaged
    over queries and images (the ViT paper's "attention distance"). Class-token rows and
    columns are dropped and each query's weights over the patches renormalised to sum to 1,
    so attention to oneself gives 0 and uniform attention gives the mean patch distance. A
    query that attends to the class token alone counts as 0.
    """
    n = grid[0] * grid[1]
    distances = None
    result = []
    for attn in maps:
        if attn.ndim != 4 or attn.shape[-1] != num_prefix_tokens + n:
            raise ValueError(
                f"attention maps shaped {tuple(attn.shape)} do not fit a {grid[0]}×{grid[1]} "
                f"grid with {num_prefix_tokens} prefix token(s), which needs (B, heads, "
                f"{num_prefix_tokens + n}, {num_prefix_tokens + n}); pass the model's grid and "
                "num_prefix_tokens(model)"
            )
        if distances is None:
            distances = patch_distances(grid, patch_size).to(attn.device)  # (N, N)
        a = attn.float()[..., num_prefix_tokens:, num_prefix_tokens:]  # (B, H, N, N)
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        per_query = (a * distances).sum(dim=-1)  # (B, H, N)
        result.append(per_query.mean(dim=(0, 2)))  # (H,)
    return torch.stack(result)  # (blocks, heads)


def position_similarity(pos_embed: Tensor, num_prefix_tokens: int = 0) -> Tensor:
    """Cosine similarity between the position vectors of every two patches: (N, N).

    ``pos_embed`` is (1, T, D) or (T, D) (``model.pos_embed``); the first ``num_prefix_tokens``
    rows (a class token's) are dropped.
    """
    table = pos_embed.detach().float()
    if table.ndim == 3:
        table = table[0]
    if table.ndim != 2:
        raise ValueError(f"expected a position table shaped (1, T, D) or (T, D), got "
                         f"{tuple(pos_embed.shape)}")
    unit = F.normalize(table[num_prefix_tokens:], dim=-1)  # (N, D), unit rows
    return unit @ unit.T  # (N, N)
