"""Checks for the exercises of notebook 11 (pre-training and fine-tuning)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch
from torch import nn

from vitlib.finetune import freeze
from vitlib.model import ViT, ViTConfig, count_parameters
from vitlib.train import lr_scales

from .checking import CheckResult, check
from .compare import int_problem


def _small_config(**overrides) -> ViTConfig:
    fields = dict(image_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2)
    return ViTConfig(**{**fields, **overrides})


def check_replace_head(
    replace_head: Callable[[ViT, int], ViT], quiet: bool = False
) -> CheckResult:
    """``replace_head(model, num_classes) -> model``: the same ViT with a new, zero-initialised
    ``nn.Linear`` head for ``num_classes`` classes and ``config.num_classes`` updated."""

    def test() -> str | None:
        for pool, width in (("mean", 16), ("cls", 24)):  # two widths: the head's input is D
            num_classes = random.randint(2, 7)
            torch.manual_seed(random.randint(0, 10_000))
            model = ViT(_small_config(num_classes=10, pool=pool, embed_dim=width)).eval()
            if pool == "cls":  # a backbone partly frozen already: it should stay as it is
                model.patch_embed.requires_grad_(False)
            original = copy.deepcopy(model)
            trainable = {name: p.requires_grad for name, p in model.named_parameters()
                         if not name.startswith("head.")}
            images = torch.randn(3, 3, 16, 16)
            got = replace_head(model, num_classes)
            if not isinstance(got, ViT):
                return f"replace_head should return the ViT, got {type(got).__name__}"
            if not isinstance(got.head, nn.Linear):
                return f"the new head should be an nn.Linear, got {type(got.head).__name__}"
            if tuple(got.head.weight.shape) != (num_classes, width):
                return (f"for {num_classes} classes and embed_dim {width} the head's weight "
                        f"should be (out, in) = ({num_classes}, {width}), got "
                        f"{tuple(got.head.weight.shape)}")
            if got.head.bias is None or tuple(got.head.bias.shape) != (num_classes,):
                return (f"the head needs a bias of shape ({num_classes},), one per class: "
                        "nn.Linear(in, out) has one unless bias=False")
            if got.config.num_classes != num_classes:
                return (f"config.num_classes is still {got.config.num_classes}, expected "
                        f"{num_classes}")
            if not all(p.requires_grad for p in got.head.parameters()):
                return ("the new head does not train (requires_grad=False): a fresh nn.Linear "
                        "trains by default, leave it so")
            changed = sorted(name for name, p in got.named_parameters()
                             if name in trainable and p.requires_grad != trainable[name])
            if changed:
                more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
                return (f"replace_head changed requires_grad of the backbone's {changed[0]}"
                        f"{more}: leave the backbone's parameters as they were")
            with torch.no_grad():
                logits = got.eval()(images)
                features = got.pool(got.forward_features(images))
                want = original.pool(original.forward_features(images))
            if not torch.allclose(features, want):
                return "the backbone changed: only the head should be new"
            if torch.count_nonzero(logits):
                return ("the new head's logits are not all zero: initialise its weight and bias "
                        "to zeros")
        return None

    return check(
        "replace_head", test,
        "model.head = nn.Linear(model.config.embed_dim, num_classes), then zero its weight and "
        "bias with nn.init.zeros_, and update the frozen config with "
        "dataclasses.replace(model.config, num_classes=num_classes); return the model",
        quiet,
    )


def check_trainable_count(
    trainable_count: Callable[[ViTConfig, int], int], quiet: bool = False
) -> CheckResult:
    """``trainable_count(config, last_blocks) -> int``: the parameters that train when only the
    head, the final LayerNorm and the last ``last_blocks`` encoder blocks are left unfrozen."""

    def test() -> str | None:
        configs = [
            _small_config(),
            _small_config(num_classes=4, pool="cls", mlp_ratio=4.0, qkv_bias=False),
            _small_config(mlp_ratio=1.5),
            ViTConfig(embed_dim=64, depth=2, num_heads=2, num_classes=random.randint(2, 20),
                      qkv_bias=random.choice([True, False])),
        ]
        for config in configs:
            for last_blocks in range(config.depth + 1):
                names = ["head", "norm"] + [f"blocks.{i}" for i in
                                            range(config.depth - last_blocks, config.depth)]
                want = count_parameters(freeze(ViT(config), names))
                got = trainable_count(config, last_blocks)
                problem = int_problem(f"trainable_count(config, {last_blocks})", got)
                if problem:
                    return problem
                if got != want:
                    return (f"for embed_dim={config.embed_dim}, mlp_ratio={config.mlp_ratio}, "
                            f"qkv_bias={config.qkv_bias}, num_classes={config.num_classes} and "
                            f"the last {last_blocks} of {config.depth} blocks unfrozen, "
                            f"{want:,} parameters train; you said {got!r}")
        return None

    return check(
        "trainable_count", test,
        "count the head (D·classes + classes), the final LayerNorm (2·D) and one block per "
        "unfrozen block: two LayerNorms (4·D), qkv (3·D² plus 3·D with qkv_bias), the "
        "projection (D² + D) and the MLP (2·D·hidden + hidden + D, hidden = int(D·mlp_ratio)). "
        "The patch embedding, position table and class token stay frozen",
        quiet,
    )


def check_layer_decay(
    lr_scale: Callable[[str, int, float], float], quiet: bool = False
) -> CheckResult:
    """``lr_scale(name, depth, layer_decay) -> float``: the factor that layer-wise decay puts on
    the learning rate of the parameter ``name`` in a ViT of ``depth`` blocks."""

    def test() -> str | None:
        # 12 blocks: names from blocks.0 to blocks.11, two digits for some
        cases = [(3, 0.5), (2, 0.75), (12, 0.65), (random.randint(4, 12), random.uniform(0.5, 0.9))]
        for depth, decay in cases:
            model = ViT(_small_config(depth=depth, pool="cls"))
            for name, want in lr_scales(model, decay).items():
                got = lr_scale(name, depth, decay)
                if (not isinstance(got, (int, float)) or isinstance(got, bool)
                        or not abs(got - want) <= 1e-9 * max(1, want)):
                    return (f"with depth {depth} and layer_decay {decay:.3g}, {name!r} should "
                            f"learn at {want:.4g} × lr; you said {got!r}")
        return None

    return check(
        "layer_decay", test,
        "give each parameter a layer number: 0 for patch_embed, pos_embed and cls_token, i + 1 "
        "for blocks.i, depth + 1 for the final norm and the head; its scale is "
        "layer_decay ** (depth + 1 - layer), so the head learns at the full rate and each step "
        "towards the input multiplies by layer_decay once more",
        quiet,
    )
