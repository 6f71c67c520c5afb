"""vitlib: a small, readable Vision Transformer library that goes with the course notebooks."""

from . import cnn, dense, explain, finetune
from .attention import MultiHeadSelfAttention, mimetic_init_, scaled_dot_product_attention
from .augment import Augment, AugmentConfig
from .checkpoint import load_model
from .data import CIFAR10, Split, load_cifar10, synthetic_cifar, train_val_split
from .interop import (
    detect_format,
    from_hf,
    from_timm,
    from_torchvision,
    load_google_npz,
    load_pretrained,
    load_state_dict_checked,
)
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
from .train import History, TrainConfig, evaluate

__version__ = "0.1.0"

__all__ = [
    "Augment",
    "AugmentConfig",
    "CIFAR10",
    "EncoderBlock",
    "History",
    "MLP",
    "MultiHeadSelfAttention",
    "PRESETS",
    "PatchEmbed",
    "Split",
    "TrainConfig",
    "ViT",
    "ViTConfig",
    "cnn",
    "config_dict",
    "count_parameters",
    "create_model",
    "dense",
    "detect_format",
    "evaluate",
    "explain",
    "finetune",
    "flops_per_image",
    "from_hf",
    "from_timm",
    "from_torchvision",
    "get_config",
    "load_cifar10",
    "load_google_npz",
    "load_model",
    "load_pretrained",
    "load_state_dict_checked",
    "mimetic_init_",
    "patchify",
    "resize_pos_embed",
    "scaled_dot_product_attention",
    "sincos_1d",
    "sincos_2d",
    "synthetic_cifar",
    "train_val_split",
    "unpatchify",
]
