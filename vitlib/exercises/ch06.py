"""Checks for the exercises of notebook 06 (the whole Vision Transformer)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from vitlib.model import ViT, ViTConfig, count_parameters, flops_per_image, get_config

from .checking import CheckResult, check
from .compare import int_problem, tensor_problem


def _describe(config: ViTConfig) -> str:
    c = config
    return (f"ViTConfig(image_size={c.image_size}, patch_size={c.patch_size}, "
            f"in_chans={c.in_chans}, embed_dim={c.embed_dim}, depth={c.depth}, "
            f"mlp_ratio={c.mlp_ratio}, num_classes={c.num_classes}, qkv_bias={c.qkv_bias}, "
            f"pool={c.pool!r}, pos_embed={c.pos_embed!r})")


def check_vit_size(vit_size: Callable[[ViTConfig], tuple[int, int]],
                   quiet: bool = False) -> CheckResult:
    """``vit_size(config) -> (num_tokens, num_parameters)``: the length of the token sequence
    the encoder sees and the trainable parameters of ``ViT(config)``."""

    def test() -> str | None:
        configs = [
            get_config("vit_cifar_cpu"),
            get_config("vit_cifar_cpu", pool="cls"),
            get_config("vit_cifar_cpu", pos_embed="sincos"),
            get_config("vit_cifar_cpu", num_classes=0),
            ViTConfig(image_size=48, patch_size=8, embed_dim=96, depth=3, num_heads=3,
                      mlp_ratio=4.0, num_classes=100, qkv_bias=False, pool="cls"),
            ViTConfig(image_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                      mlp_ratio=1.5),
            ViTConfig(image_size=random.choice([16, 32]), patch_size=random.choice([2, 4, 8]),
                      embed_dim=32, depth=random.randint(1, 3), num_heads=2,
                      mlp_ratio=random.choice([1.5, 2.0, 4.0]),
                      pool=random.choice(["mean", "cls"])),
        ]
        for config in configs:
            answer = vit_size(config)
            if not isinstance(answer, (tuple, list)) or len(answer) != 2:
                return f"vit_size should return a pair (num_tokens, num_parameters), got {answer!r}"
            tokens, params = answer
            want_params = count_parameters(ViT(config))
            problem = (int_problem("the number of tokens", tokens)
                       or int_problem("the number of parameters", params))
            if problem:
                return problem
            if tokens != config.num_tokens:
                return (f"for {_describe(config)} the number of tokens is {config.num_tokens}, "
                        f"you said {tokens}")
            if params != want_params:
                return (f"for {_describe(config)} the model has {want_params:,} parameters, you "
                        f"said {params:,}")
        return None

    return check(
        "vit_size", test,
        "tokens: (image_size // patch_size)², plus 1 with pool='cls'. Parameters: the patch "
        "projection (C·p²·D weights with C = in_chans, and D biases), the class token (D, only "
        "with pool='cls'), a learned position table (tokens·D; a sin-cos table is fixed, not a "
        "parameter), depth × one block (your answer from notebook 05, hidden = "
        "int(D · mlp_ratio)), the final LayerNorm (2·D) and the head (D·classes + classes; none "
        "when num_classes=0)",
        quiet,
    )


def check_pooling(pool: Callable[[Tensor, str], Tensor], quiet: bool = False) -> CheckResult:
    """``pool(tokens, kind)``: (B, T, D) -> (B, D); kind 'mean' averages all tokens, kind 'cls'
    takes the class token, which ``vitlib.ViT`` puts first."""

    def test() -> str | None:
        for kind in ("mean", "cls"):
            model = ViT(ViTConfig(image_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=1,
                                  pool=kind))
            tokens = torch.randn(3, model.config.num_tokens, 8)
            problem = tensor_problem(f"pool(tokens of shape {tuple(tokens.shape)}, {kind!r})",
                                     pool(tokens.clone(), kind), model.pool(tokens))
            if problem:
                return problem
        return None

    return check(
        "pooling", test,
        "tokens are (batch, tokens, channels): 'mean' is tokens.mean(dim=1), over the token axis "
        "so each channel is averaged; 'cls' is tokens[:, 0], the first token of each image",
        quiet,
    )


def check_flops_growth(flops_growth: Callable[[ViTConfig], float],
                       quiet: bool = False) -> CheckResult:
    """``flops_growth(config) -> float``: by what factor the forward FLOPs per image grow when
    the patch size is halved (everything else equal), within 2 % of ``flops_per_image``."""

    def test() -> str | None:
        configs = [
            get_config("vit_cifar_tiny"),
            get_config("vit_b_16"),
            get_config("vit_cifar_cpu", pool="cls"),
            ViTConfig(image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2),
        ]
        for config in configs:
            smaller = replace(config, patch_size=config.patch_size // 2)
            want = flops_per_image(smaller) / flops_per_image(config)
            got = flops_growth(config)
            if not isinstance(got, (int, float)) or not math.isclose(got, want, rel_tol=0.02):
                return (f"for {_describe(config)} halving the patch size multiplies the FLOPs by "
                        f"{want:.2f}, you predicted {got!r}")
        return None

    return check(
        "flops_growth", test,
        "halving the patch size makes 4× as many patches. Per block, the matrix products that act "
        "on each token alone (Q, K, V, the projection, the MLP: 2·T·D·(4D + 2·hidden)) grow with "
        "T, but QKᵀ and AV (4·T²·D) grow with T², 16×; the patch projection keeps its cost (4× the "
        "patches, each with 4× fewer pixels). Write the FLOPs as a function of the token count T "
        "and take the ratio",
        quiet,
    )
