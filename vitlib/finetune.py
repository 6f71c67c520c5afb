"""Adapting a trained ViT to a new task: a new head, frozen parts, another input size.

Fine-tuning starts from weights learned on a large dataset and changes as little as the new
task needs:

- ``replace_head``: a fresh linear classifier for the new classes (zero-initialised by default,
  so the pre-trained features start unchanged and every class starts equally likely);
- ``freeze`` / ``trainable_parameters``: train only some parts, e.g. the head alone (a *linear
  probe*), and see what stays trainable;
- ``adapt_input``: another image size (the position table is resized, ``ViT.set_image_size``)
  and, if asked, another patch size (the patch projection is resampled with the pseudo-inverse
  resize of FlexiViT, as timm's ``resample_patch_embed`` does).

Layer-wise learning-rate decay lives with the optimizer: ``TrainConfig.layer_decay`` in
``vitlib.train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast import widest_float
from .model import ViT


def replace_head(model: ViT, num_classes: int, *, init_std: float = 0.0) -> ViT:
    """Give ``model`` a new linear head for ``num_classes`` classes (in place) and return it.

    The weights are drawn from N(0, init_std²) (zeros by default) and the biases are zero; the
    config's ``num_classes`` is updated. ``num_classes=0`` removes the head (pooled features).
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be 0 (no head) or more, got {num_classes}")
    if init_std < 0:
        raise ValueError(f"init_std must be 0 (zero weights) or more, got {init_std}")
    dim = model.config.embed_dim
    weight = model.patch_embed.proj.weight  # the new head goes to its device and dtype
    if num_classes == 0:
        model.head = nn.Identity()
    else:
        head = nn.Linear(dim, num_classes, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            head.weight.normal_(0.0, init_std) if init_std > 0 else head.weight.zero_()
            head.bias.zero_()
        model.head = head
    model.config = replace(model.config, num_classes=num_classes)
    return model


def freeze(model: nn.Module, trainable: Sequence[str] = ("head",)) -> nn.Module:
    """Stop the gradient of every parameter except those under the names in ``trainable``
    (in place); returns the model.

    A name selects a parameter or a whole submodule: ``"head"`` (a linear probe), ``"norm"``,
    ``"blocks.11"``, ``"pos_embed"``. ``trainable=()`` freezes everything; to train everything
    again, call ``model.requires_grad_(True)``.
    """
    if isinstance(trainable, str):
        trainable = (trainable,)
    names = [name for name, _ in model.named_parameters()]
    unknown = [t for t in trainable if not any(_under(name, t) for name in names)]
    if unknown:
        tops = list(dict.fromkeys(name.split(".")[0] for name in names))
        raise ValueError(
            f"no parameter of the model is under {', '.join(map(repr, unknown))}; use names of "
            f"its parameters or submodules, such as {', '.join(tops)} (or 'blocks.0')"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(any(_under(name, t) for t in trainable))
    return model


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """The parameters that will train (``requires_grad``): name -> number of values."""
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# --- another input size ---------------------------------------------------------------------


def adapt_input(model: ViT, image_size: int, patch_size: int | None = None) -> ViT:
    """Adapt ``model`` (in place) to ``image_size``×``image_size`` images, and optionally to
    another ``patch_size``; returns it.

    The position table is resized to the new grid (``ViT.set_image_size``). A new patch size
    resamples the patch projection with ``resample_patch_kernel``: the model then sees each
    small patch roughly as it saw the large ones, e.g. a 224-pixel model with 16-pixel patches
    runs on 32-pixel images with 4-pixel patches, an 8×8 grid instead of 14×14.
    """
    patch_size = patch_size or model.config.patch_size
    config = replace(model.config, image_size=image_size, patch_size=patch_size)  # validates
    embed = model.patch_embed
    if patch_size != embed.patch_size:
        old = embed.proj
        new = nn.Conv2d(old.in_channels, old.out_channels, patch_size, stride=patch_size,
                        device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(resample_patch_kernel(old.weight, patch_size))
            new.bias.copy_(old.bias)
        new.weight.requires_grad_(old.weight.requires_grad)  # frozen stays frozen
        new.bias.requires_grad_(old.bias.requires_grad)
        embed.proj, embed.patch_size = new, patch_size
    model.config = config
    model.set_image_size(image_size)  # resizes the table it holds to config's grid
    return model


def resample_patch_kernel(
    weight: Tensor, patch_size: int, *, interpolation: str = "bicubic", antialias: bool = True
) -> Tensor:
    """A patch projection kernel (D, C, p, p) resampled to (D, C, q, q), q = ``patch_size``.

    With R the linear map that resizes a p×p patch to q×q, the new kernel is pinv(Rᵀ) w: for
    a larger q the new projection of R(x) equals the old one of x exactly, for a smaller q it
    is the least-squares best match (Beyer et al., "FlexiViT", 2023).
    """
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"expected a square kernel (D, C, p, p), got {tuple(weight.shape)}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be at least 1, got {patch_size}")
    old = weight.shape[-1]
    if patch_size == old:
        return weight
    basis = torch.eye(old * old, dtype=torch.float64).view(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(patch_size, patch_size), mode=interpolation,
                            antialias=antialias, align_corners=False)  # (p², 1, q, q)
    resize = resized.flatten(1).T  # R: (q², p²), a p×p patch -> a q×q patch
    wide = widest_float(weight.device)
    pinv = torch.linalg.pinv(resize.T).to(weight.device, wide)  # built on the CPU: small
    new = pinv @ weight.to(wide).flatten(2).permute(2, 0, 1).flatten(1)
    d, c = weight.shape[:2]
    return new.view(patch_size, patch_size, d, c).permute(2, 3, 0, 1).to(weight.dtype)
