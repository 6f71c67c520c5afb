"""A small ResNet-style CNN for 32×32 images: the baseline a ViT is compared with.

image (B, C, H, W)
  -> stem: 3×3 conv -> BatchNorm -> ReLU                                   (B, w0, H, W)
  -> stage 0: blocks × BasicBlock at full resolution                       (B, w0, H, W)
  -> stage i > 0: the first block halves H and W, the others keep them     (B, wi, H/2^i, W/2^i)
  -> global average pool                                                   (B, w_last)
  -> linear classifier                                                     (B, num_classes)

Same call convention as ``vitlib.ViT``: normalised float images in, logits out, so the same
training engine (``vitlib.train.train``) trains either model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class CNNConfig:
    in_chans: int = 3  # colour channels
    num_classes: int = 10  # classifier outputs; 0 gives pooled features
    widths: tuple[int, ...] = (16, 32, 64)  # channels per stage; stages after the first halve H, W
    blocks: tuple[int, ...] = (1, 1, 1)  # BasicBlocks per stage (each holds two 3×3 convs)

    def __post_init__(self) -> None:
        # lists (from JSON, say) become tuples, so that the config stays hashable
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.widths or len(self.widths) != len(self.blocks):
            raise ValueError(
                f"widths {self.widths} and blocks {self.blocks} must name the same number of "
                "stages (at least one): one width and one block count per stage, e.g. "
                "widths=(16, 32, 64), blocks=(1, 1, 1)"
            )
        if min(self.widths) < 1 or min(self.blocks) < 1:
            raise ValueError(
                f"every stage needs at least 1 channel and 1 block, got widths {self.widths} "
                f"and blocks {self.blocks}; drop a stage instead of giving it 0"
            )
        if self.in_chans < 1 or self.num_classes < 0:
            raise ValueError(
                f"in_chans must be at least 1 and num_classes at least 0 (0 = pooled features), "
                f"got in_chans={self.in_chans}, num_classes={self.num_classes}"
            )

    @property
    def stride(self) -> int:
        """Pixels per cell of the final feature map: each stage after the first halves H, W."""
        return 2 ** (len(self.widths) - 1)


def conv3x3(in_chans: int, out_chans: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution that keeps the size (stride 1) or halves it (stride 2); no bias, since
    a BatchNorm follows."""
    return nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ReLU(x' + conv-BN-ReLU-conv-BN(x)), where the shortcut x' is x itself, or a 1×1 conv +
    BN when the block changes the width or the resolution."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chans, out_chans, stride)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = conv3x3(out_chans, out_chans)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.shortcut = nn.Identity()
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, out, H / stride, W / stride)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages of ``BasicBlock``s, global average pooling, linear head."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = c = config
        self.stem = nn.Sequential(
            conv3x3(c.in_chans, c.widths[0]), nn.BatchNorm2d(c.widths[0]), nn.ReLU()
        )
        stages, in_chans = [], c.widths[0]
        for i, (width, count) in enumerate(zip(c.widths, c.blocks, strict=True)):
            first_stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_chans, width, first_stride)]
            blocks += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            in_chans = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_chans, c.num_classes) if c.num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the last feature map (B, w_last, H / stride, W / stride)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected images shaped (B, {self.config.in_chans}, H, W), got "
                f"{tuple(x.shape)}; add a batch axis with x.unsqueeze(0) for one image"
            )
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.forward_features(x).mean(dim=(2, 3))  # global average pool (B, w_last)
        return self.head(pooled)  # (B, num_classes)


# --- presets --------------------------------------------------------------------------------

PRESETS: dict[str, Callable[[], CNNConfig]] = {
    # about as many parameters as vit_cifar_cpu (the FLOPs: see flops_per_image)
    "resnet_cifar_cpu": lambda: CNNConfig(widths=(16, 32, 64), blocks=(1, 1, 1)),
    # about as many parameters as vit_cifar_tiny
    "resnet_cifar_tiny": lambda: CNNConfig(widths=(64, 128, 256), blocks=(2, 2, 2)),
}


def get_config(name: str, **overrides) -> CNNConfig:
    """A preset's config, with any field replaced by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown CNN preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name](), **overrides)


def create_model(name: str, **overrides) -> ResNet:
    """Build a preset model, e.g. ``create_model("resnet_cifar_cpu")``."""
    return ResNet(get_config(name, **overrides))


# --- size and cost --------------------------------------------------------------------------


def _convs(config: CNNConfig) -> list[tuple[int, int, int, int]]:
    """Every convolution of ``ResNet(config)`` in order, as (in, out, kernel, stride)."""
    c = config
    convs = [(c.in_chans, c.widths[0], 3, 1)]
    in_chans = c.widths[0]
    for i, (width, count) in enumerate(zip(c.widths, c.blocks, strict=True)):
        for j in range(count):
            stride = 2 if i > 0 and j == 0 else 1
            convs += [(in_chans, width, 3, stride), (width, width, 3, 1)]
            if stride != 1 or in_chans != width:
                convs.append((in_chans, width, 1, stride))  # the shortcut
            in_chans = width
    return convs


def flops_per_image(config: CNNConfig, image_size: int = 32) -> int:
    """Forward-pass FLOPs for one image_size × image_size image (2 per multiply-add), counting
    the convolutions and the head; BatchNorm, ReLU, additions and pooling are left out."""
    total, size = 0, image_size
    for in_chans, out_chans, kernel, stride in _convs(config):
        if kernel == 3:  # a 1×1 shortcut runs at the same output size as its block's first conv
            size = (size + 2 - 3) // stride + 1
        total += 2 * in_chans * kernel * kernel * out_chans * size * size
    return total + 2 * config.widths[-1] * config.num_classes


def receptive_field(config: CNNConfig) -> int:
    """Side in pixels of the input square that one cell of the final feature map can see
    (through the longest path, the 3×3 convs)."""
    field, jump = 1, 1  # field so far; distance in input pixels between neighbouring cells
    for _, _, kernel, stride in _convs(config):
        if kernel == 3:
            field += (kernel - 1) * jump
            jump *= stride
    return field
