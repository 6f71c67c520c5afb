"""Beyond classification: per-pixel predictions from the patch tokens, and tokens for video.

segmentation:  image (B, C, H, W) -> ViT encoder -> patch tokens (B, N, D)
               -> Linear per token (B, N, K·p·p) -> unpatchify -> logits (B, K, H, W)
video:         clip (B, C, T, H, W) -> Conv3d over t × p × p tubelets -> tokens (B, N, D),
               N = (T/t)·(H/p)·(W/p)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .model import ViT
from .patches import PatchEmbed, unpatchify


class SegmentationHead(nn.Module):
    """Patch tokens (B, N, D) -> per-pixel class logits (B, num_classes, H, W).

    One linear map, the same for every token, turns a token into the logits of all p × p
    pixels of its patch; ``unpatchify`` puts the patches back in their places. A token decides
    its own patch's pixels and nothing else.
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int,
                 grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.grid = grid
        self.proj = nn.Linear(embed_dim, num_classes * patch_size**2)

    def forward(self, tokens: Tensor) -> Tensor:
        grid_h, grid_w = self.grid
        if tokens.ndim != 3 or tokens.shape[1] != grid_h * grid_w:
            raise ValueError(
                f"expected patch tokens shaped (B, {grid_h * grid_w}, D) for a {grid_h}×{grid_w} "
                f"grid, got {tuple(tokens.shape)}; drop a class token first (tokens[:, 1:])"
            )
        x = self.proj(tokens)  # (B, N, K·p·p), each row (K, p, p) flattened channel first
        return unpatchify(x, self.patch_size, self.grid, self.num_classes)  # (B, K, H, W)


class SegmentationViT(nn.Module):
    """A ViT encoder with a ``SegmentationHead``: images (B, C, H, W) -> logits (B, K, H, W).

    The backbone's classifier head is not used; a class token, if any, is dropped after the
    encoder (it has no pixels of its own).
    """

    def __init__(self, backbone: ViT, num_classes: int) -> None:
        super().__init__()
        c = backbone.config
        if c.token_drop > 0:
            raise ValueError(f"segmentation predicts every patch, so the backbone must keep all "
                             f"its tokens; it has token_drop={c.token_drop}: build it with "
                             "token_drop=0")
        self.backbone = backbone
        weight = backbone.patch_embed.proj.weight  # the head goes to its device and dtype
        self.head = SegmentationHead(c.embed_dim, num_classes, c.patch_size,
                                     (c.grid_size, c.grid_size)).to(weight.device, weight.dtype)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.backbone.forward_features(images)  # (B, T, D)
        tokens = tokens[:, int(self.backbone.config.pool == "cls"):]  # (B, N, D) patch tokens
        return self.head(tokens)  # (B, K, H, W)


def _check_axis(size: int, step: int, what: str, unit: str) -> None:
    if size % step != 0:
        options = [s for s in range(1, size + 1) if size % s == 0]
        below, above = size // step * step, (size // step + 1) * step
        trim = f"trim it to {below} or " if below > 0 else ""
        raise ValueError(
            f"a clip {what} of {size} is not divisible by the tubelet's {step} {unit}; use a "
            f"tubelet size that divides it ({', '.join(map(str, options))}), or {trim}pad it "
            f"to {above}"
        )


class TubeletEmbed(nn.Module):
    """Video clips (B, C, T, H, W) -> tokens (B, N, embed_dim), N = (T/t)·(H/p)·(W/p).

    The video version of ``PatchEmbed``: a Conv3d with kernel = stride = (t, p, p) maps each
    tubelet (t frames of a p × p patch) to one token. Tokens come time-major: all patches of the
    first t frames in row-major order, then those of the next t frames, and so on.
    """

    def __init__(self, tubelet_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.tubelet_size = tubelet_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size,
                              patch_size), stride=(tubelet_size, patch_size, patch_size))

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        """Tokens for a clip of ``frames`` frames of height × width pixels."""
        for size, step, what, unit in ((frames, self.tubelet_size, "length", "frames"),
                                       (height, self.patch_size, "height", "pixels"),
                                       (width, self.patch_size, "width", "pixels")):
            _check_axis(size, step, what, unit)
        return (frames // self.tubelet_size) * (height // self.patch_size) * (
            width // self.patch_size)

    def forward(self, clips: Tensor) -> Tensor:
        if clips.ndim != 5 or clips.shape[1] != self.in_chans:
            hint = ("for frames stacked as (B, T, C, H, W) use clips.permute(0, 2, 1, 3, 4)"
                    if clips.ndim == 5 and clips.shape[2] == self.in_chans
                    else "add a batch dimension with clips.unsqueeze(0)" if clips.ndim == 4
                    else "pass a batch of clips")
            raise ValueError(f"expected clips shaped (batch, {self.in_chans}, frames, H, W), got "
                             f"{tuple(clips.shape)}; {hint}")
        self.num_tokens(*clips.shape[2:])  # checks that the tubelet divides the clip
        return self.proj(clips).flatten(2).transpose(1, 2)  # (B, D, T/t, gh, gw) -> (B, N, D)

    @classmethod
    @torch.no_grad()
    def from_patch_embed(cls, patch_embed: PatchEmbed, tubelet_size: int) -> TubeletEmbed:
        """Inflate an image model's patch embedding to tubelets (as in I3D and ViViT): the 2-D
        filter repeated over the t frames and divided by t, so a clip of t identical frames
        gives the same token as its one image."""
        conv = patch_embed.proj  # Conv2d (D, C, p, p)
        embed = cls(tubelet_size, patch_embed.patch_size, patch_embed.in_chans, conv.out_channels)
        embed = embed.to(device=conv.weight.device, dtype=conv.weight.dtype)
        weight = conv.weight.unsqueeze(2).expand(-1, -1, tubelet_size, -1, -1)  # (D, C, t, p, p)
        embed.proj.weight.copy_(weight / tubelet_size)
        embed.proj.bias.copy_(conv.bias)
        return embed
