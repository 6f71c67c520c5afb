"""vitlib: a small, readable Vision Transformer library that goes with the course notebooks."""

from .attention import MultiHeadSelfAttention, scaled_dot_product_attention
from .model import (
    MLP,
    PRESETS,
    EncoderBlock,
    ViT,
    ViTConfig,
    config_dict,
    count_parameters,
    create_model,
    flops_per_image,
    get_config,
)
from .patches import PatchEmbed, patchify, unpatchify
from .position import resize_pos_embed, sincos_1d, sincos_2d

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "PRESETS",
    "EncoderBlock",
    "MultiHeadSelfAttention",
    "PatchEmbed",
    "ViT",
    "ViTConfig",
    "config_dict",
    "count_parameters",
    "create_model",
    "flops_per_image",
    "get_config",
    "patchify",
    "resize_pos_embed",
    "scaled_dot_product_attention",
    "sincos_1d",
    "sincos_2d",
    "unpatchify",
]
