"""The Vision Transformer, top to bottom.

image (B, C, H, W)
  -> patches -> linear projection                    PatchEmbed       (B, N, D)
  -> [+ class token] + position embedding                              (B, T, D)
  -> depth × pre-norm encoder block                  EncoderBlock     (B, T, D)
  -> LayerNorm -> global average pool (or class token)                 (B, D)
  -> linear classifier                                                 (B, num_classes)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadSelfAttention, mimetic_init_
from .patches import PatchEmbed
from .position import resize_pos_embed, sincos_2d

POS_EMBEDS = ("learned", "sincos")  # the choices of ViTConfig.pos_embed
ATTN_INITS = ("random", "mimetic")  # the choices of ViTConfig.attn_init


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32  # input height = width, in pixels
    patch_size: int = 4  # side of a square patch; image_size must be a multiple
    in_chans: int = 3  # colour channels
    num_classes: int = 10  # classifier outputs; 0 gives pooled features
    embed_dim: int = 192  # token width D
    depth: int = 9  # encoder blocks
    num_heads: int = 12  # attention heads; must divide embed_dim
    mlp_ratio: float = 2.0  # MLP hidden width = mlp_ratio · D
    qkv_bias: bool = True  # bias on the Q, K, V projections
    pool: Literal["mean", "cls"] = "mean"  # global average pooling (article) or class token
    pos_embed: Literal["learned", "sincos"] = "learned"  # trained table or fixed 2-D sin-cos
    attn_init: Literal["random", "mimetic"] = "random"  # attention weights: small random, or
    #   set so that Q·Kᵀ ≈ identity and V·O ≈ −identity, as in trained ViTs (mimetic_init_)
    dropout: float = 0.0  # after embeddings, attention projection and MLP
    attn_dropout: float = 0.0  # on the attention weights
    drop_path: float = 0.0  # stochastic depth, rising linearly to this at the last block
    token_drop: float = 0.0  # training only: share of patch tokens dropped per image at random
    norm_eps: float = 1e-6  # LayerNorm epsilon (Hugging Face checkpoints use 1e-12)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            options = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            raise ValueError(
                f"image size {self.image_size} is not divisible by patch size {self.patch_size}; "
                f"use a patch size that divides it ({', '.join(map(str, options))}) "
                "or resize the image"
            )
        if self.embed_dim % self.num_heads != 0:
            options = [h for h in range(1, 33) if self.embed_dim % h == 0]
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}; "
                f"choose num_heads from {options} or change embed_dim"
            )
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.token_drop < 1:
            raise ValueError(f"token_drop is the share of patch tokens dropped in training, in "
                             f"[0, 1), got {self.token_drop}; 0 keeps them all")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if self.attn_init not in ATTN_INITS:
            raise ValueError(f"attn_init must be {' or '.join(map(repr, ATTN_INITS))}, "
                             f"got {self.attn_init!r}")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be {' or '.join(map(repr, POS_EMBEDS))}, "
                             f"got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and self.embed_dim % 4 != 0:
            raise ValueError(
                f"pos_embed='sincos' needs embed_dim divisible by 4, got {self.embed_dim}; "
                "use a multiple of 4 or pos_embed='learned'"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (self.pool == "cls")

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch for a random subset of samples."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_hidden, dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x))[0])  # (B, T, D)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer classifier built from a ``ViTConfig``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        # share of patch tokens dropped in training: config.token_drop, until a trainer turns
        # it off for the end of a run (TrainConfig.token_drop_until)
        self.token_drop = c.token_drop
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.pool == "cls" else None
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.embed_dim))
        else:
            self.register_buffer("pos_embed", self._sincos_table(c), persistent=False)
        self.pos_drop = nn.Dropout(c.dropout)
        # on the CPU even under another default device (with torch.device("meta"): ...)
        rates = torch.linspace(0, c.drop_path, c.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            EncoderBlock(
                c.embed_dim, c.num_heads, c.mlp_hidden, c.qkv_bias,
                c.dropout, c.attn_dropout, rate, c.norm_eps,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        if c.attn_init == "mimetic":
            for block in self.blocks:
                mimetic_init_(block.attn)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    @staticmethod
    def _sincos_table(c: ViTConfig) -> Tensor:
        table = sincos_2d(c.grid_size, c.grid_size, c.embed_dim)  # (N, D)
        if c.pool == "cls":
            table = torch.cat([torch.zeros(1, c.embed_dim), table])  # class token: no position
        return table.unsqueeze(0)  # (1, T, D)

    def embed(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> tokens with positions added (B, T, D). In training with
        ``token_drop``, each image keeps a random subset of its patch tokens (fewer T)."""
        size = self.config.image_size
        if x.ndim == 4 and tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"this model's position embedding was built for {size}×{size} images, got "
                f"{x.shape[-2]}×{x.shape[-1]}; resize the images, or call "
                f"model.set_image_size({x.shape[-1]}) to resize the position embedding"
            )
        prefix = int(self.cls_token is not None)
        x = self.patch_embed(x) + self.pos_embed[:, prefix:]  # (B, N, D)
        if self.training and self.token_drop > 0:
            x = self._keep_random_tokens(x)  # (B, K, D)
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]  # (1, 1, D)
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        return self.pos_drop(x)

    def _keep_random_tokens(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, K, D): a random K of the N tokens of each image, K = N·(1 − drop)."""
        B, N, D = x.shape
        keep = max(1, round(N * (1 - self.token_drop)))
        index = torch.rand(B, N, device=x.device).argsort(dim=1)[:, :keep]  # (B, K)
        return x.gather(1, index[:, :, None].expand(B, keep, D))

    def forward_features(self, x: Tensor) -> Tensor:
        """Images -> final normalised tokens (B, T, D)."""
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, T, D) -> (B, D): average over patch tokens, or the class token."""
        return tokens[:, 0] if self.config.pool == "cls" else tokens.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.forward_features(x)))  # (B, num_classes)

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Every block's attention weights for images x: a list of depth × (B, H, T, T)."""
        maps = []
        x = self.embed(x)
        for block in self.blocks:
            maps.append(block.attn(block.norm1(x), need_weights=True)[1])
            x = block(x)
        return maps

    @torch.no_grad()
    def set_image_size(self, image_size: int) -> None:
        """Adapt the model to another input size: bicubic resize of a learned position
        embedding, a new table for sin-cos. Patch size and weights are unchanged."""
        c = replace(self.config, image_size=image_size)  # validates divisibility
        if isinstance(self.pos_embed, nn.Parameter):
            prefix = int(c.pool == "cls")
            table = resize_pos_embed(self.pos_embed.data, (c.grid_size, c.grid_size), prefix)
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        else:
            self.pos_embed = self._sincos_table(c).to(self.pos_embed)  # its device and dtype
        self.config = c


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):  # the patch projection, initialised like a Linear
        nn.init.trunc_normal_(module.weight.view(module.out_channels, -1), std=0.02)
        nn.init.zeros_(module.bias)


# --- presets --------------------------------------------------------------------------------

PRESETS: dict[str, Callable[[], ViTConfig]] = {
    # small models for 32×32 CIFAR-10 images, patch 4 -> 64 tokens
    "vit_cifar_cpu": lambda: ViTConfig(embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0),
    "vit_cifar_tiny": lambda: ViTConfig(embed_dim=192, depth=9, num_heads=12, mlp_ratio=2.0),
    "vit_cifar_small": lambda: ViTConfig(embed_dim=384, depth=7, num_heads=12, mlp_ratio=2.0),
    # the shapes of the ViT paper (and DeiT's Ti and S) at 224×224, patch 16, class token
    "vit_ti_16": lambda: _imagenet(embed_dim=192, depth=12, num_heads=3),
    "vit_s_16": lambda: _imagenet(embed_dim=384, depth=12, num_heads=6),
    "vit_b_16": lambda: _imagenet(embed_dim=768, depth=12, num_heads=12),
}


def _imagenet(**kwargs) -> ViTConfig:
    return ViTConfig(
        image_size=224, patch_size=16, num_classes=1000, mlp_ratio=4.0, pool="cls", **kwargs
    )


def get_config(name: str, **overrides) -> ViTConfig:
    """A preset's config, with any field replaced by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name](), **overrides)


def create_model(name: str, **overrides) -> ViT:
    """Build a preset model, e.g. ``create_model("vit_cifar_tiny", drop_path=0.1)``."""
    return ViT(get_config(name, **overrides))


# --- size and cost --------------------------------------------------------------------------

def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_image(config: ViTConfig) -> int:
    """Forward-pass FLOPs for one image (2 per multiply-add), counting the matrix products and
    attention; norms, activations and softmax are left out. Training costs about 3× this
    (less with ``token_drop``: the blocks then see fewer tokens)."""
    c = config
    n, t, d, h = c.num_patches, c.num_tokens, c.embed_dim, c.mlp_hidden
    patch = 2 * n * (c.in_chans * c.patch_size**2) * d
    attn = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d  # qkv, QKᵀ and AV, projection
    mlp = 2 * 2 * t * d * h
    head = 2 * d * c.num_classes
    return patch + c.depth * (attn + mlp) + head


def config_dict(config: ViTConfig) -> dict:
    """The config as a plain dict (for checkpoints and JSON)."""
    return asdict(config)
