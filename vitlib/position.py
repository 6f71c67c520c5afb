"""Position embeddings: 2-D sine-cosine tables and resizing learned ones to a new grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(N,) positions -> (N, dim) table: sin on the first half of channels, cos on the second."""
    if dim % 2 != 0:
        raise ValueError(f"a sine-cosine embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2)
    omega = 1.0 / temperature**omega  # (dim/2,) frequencies from 1 down to temperature^(2/dim - 1)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D embedding (grid_h·grid_w, dim): half the channels encode the row, half the column.

    Rows are listed first (row-major), matching the patch order of ``patchify``.
    """
    if dim % 4 != 0:
        raise ValueError(
            f"a 2-D sine-cosine embedding needs embed_dim divisible by 4, got {dim}; "
            "use a multiple of 4 or pos_embed='learned'"
        )
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb_rows = sincos_1d(rows.flatten(), dim // 2, temperature)  # (N, dim/2)
    emb_cols = sincos_1d(cols.flatten(), dim // 2, temperature)  # (N, dim/2)
    return torch.cat([emb_rows, emb_cols], dim=1)


def resize_pos_embed(
    pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 0
) -> Tensor:
    """Bicubic resize of a learned table (1, prefix + gh·gw, D) to (1, prefix + nh·nw, D).

    The grid must be square in the input; prefix tokens (a class token's slot) are kept as is.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(
            f"cannot resize a position embedding with {n} grid tokens: it is not a square grid; "
            "check num_prefix_tokens (1 when the model has a class token)"
        )
    if (side, side) == tuple(new_grid):
        return pos_embed
    d = grid.shape[-1]
    grid = grid.reshape(1, side, side, d).permute(0, 3, 1, 2).float()  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
