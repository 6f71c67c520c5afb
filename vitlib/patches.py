"""Cutting images into patches and projecting each patch to a token."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_divisible(size: int, patch_size: int, what: str = "image size") -> None:
    if size % patch_size != 0:
        options = [p for p in range(1, size + 1) if size % p == 0]
        raise ValueError(
            f"{what} {size} is not divisible by patch size {patch_size}; use a patch size that "
            f"divides it ({', '.join(map(str, options))}) or resize the image"
        )


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C·p·p) with N = (H/p)·(W/p), patches in row-major order.

    Each patch is flattened channel first, then rows, then columns: the same order as
    ``conv.weight.flatten(1)`` of a Conv2d with kernel = stride = p.
    """
    B, C, H, W = images.shape
    _check_divisible(H, patch_size, "image height")
    _check_divisible(W, patch_size, "image width")
    p, gh, gw = patch_size, H // patch_size, W // patch_size
    x = images.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(B, gh * gw, C * p * p)


def unpatchify(
    patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3
) -> Tensor:
    """Inverse of ``patchify``: (B, N, C·p·p) -> (B, C, gh·p, gw·p)."""
    B, N, _ = patches.shape
    gh, gw = grid
    p = patch_size
    if N != gh * gw:
        raise ValueError(f"{N} patches do not fill a {gh}×{gw} grid; pass the grid they came from")
    x = patches.reshape(B, gh, gw, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(B, channels, gh * p, gw * p)


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> patch tokens (B, N, embed_dim), N = (H/p)·(W/p).

    A Conv2d with kernel = stride = patch size: one linear map applied to each patch.
    ``as_linear()`` gives the same map as an ``nn.Linear`` on ``patchify``-ed images.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            hint = (
                "add a batch dimension with x.unsqueeze(0)"
                if x.ndim == 3
                else "convert grayscale to RGB with x.expand(-1, 3, -1, -1), or build the model "
                "with in_chans matching your data"
            )
            raise ValueError(
                f"expected images shaped (batch, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                + hint
            )
        _check_divisible(x.shape[-2], self.patch_size, "image height")
        _check_divisible(x.shape[-1], self.patch_size, "image width")
        # (B, D, gh, gw) -> (B, N, D), stored token by token: the transposed view alone keeps
        # the (B, D, N) memory order, and every residual add after it inherits that order, so
        # each LayerNorm would gather its D features with a stride of N
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()

    @torch.no_grad()
    def whiten_(self, images: Tensor, eps: float = 1e-2) -> PatchEmbed:
        """Start from the whitened principal directions of the patches of ``images``
        (normalised, (B, C, H, W)): output k is a patch's coordinate along the k-th direction
        of largest variance, divided by √(variance + eps), so those outputs are uncorrelated and
        of about equal spread (eps > 0 keeps the near-constant directions small). They are
        scaled to the spread of the current weights' outputs, so calling it again gives the
        same directions at a smaller scale; outputs beyond C·p·p keep their weights, and so does
        the bias. A data-dependent start, for short training runs."""
        if eps <= 0:
            raise ValueError(f"eps must be positive (it keeps directions without variance "
                             f"finite), got {eps}; 1e-2 suits normalised images")
        weight = self.proj.weight  # (D, C, p, p)
        # in float64 on the CPU: small eigenvalues need the precision, and not every device has it
        patches = patchify(images.detach().to("cpu", torch.float64), self.patch_size)
        patches = patches.flatten(0, 1)  # (B·N, C·p·p)
        current = weight.detach().to("cpu", torch.float64).flatten(1)  # (D, C·p·p)
        spread = (patches @ current.T).std()  # of the outputs of the current weights
        variance, directions = torch.linalg.eigh(torch.cov(patches.T))  # ascending variance
        filters = (directions / (variance.clamp(min=0) + eps).sqrt()).T.flip(0)  # (C·p·p, C·p·p)
        k = min(len(current), len(filters))
        weight[:k] = (spread * filters[:k]).view_as(weight[:k]).to(weight)
        return self

    @torch.no_grad()
    def as_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear(C·p·p, embed_dim)`` acting on ``patchify(x, p)``."""
        w = self.proj.weight  # (D, C, p, p)
        linear = nn.Linear(w[0].numel(), w.shape[0], device=w.device, dtype=w.dtype)
        linear.weight.copy_(w.flatten(1))
        linear.bias.copy_(self.proj.bias)
        return linear
