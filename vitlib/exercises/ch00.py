"""Checks for the exercises of notebook 00 (the article's example, broken and fixed)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vitlib.model import EncoderBlock, ViT, ViTConfig
from vitlib.patches import patchify, unpatchify

from .checking import CheckResult, check
from .compare import tensor_problem


def check_pipeline_shapes(pipeline_shapes: Callable[[int, int, int, int, int], list],
                          quiet: bool = False) -> CheckResult:
    """``pipeline_shapes(batch_size, image_size, patch_size, embed_dim, num_classes)``: the six
    shapes along a ViT with mean pooling on RGB images: patches, patch tokens, tokens with
    positions, encoder output, pooled features, class scores."""

    def test() -> str | None:
        for case in [(2, 32, 4, 64, 10), (1, 64, 8, 48, 100), (3, 224, 16, 96, 1000)]:
            batch_size, image_size, patch_size, embed_dim, num_classes = case
            model = ViT(ViTConfig(image_size=image_size, patch_size=patch_size, depth=1,
                                  embed_dim=embed_dim, num_heads=1, num_classes=num_classes))
            x = torch.zeros(batch_size, 3, image_size, image_size)
            with torch.no_grad():
                features = model.forward_features(x)
                pooled = model.pool(features)
                want = [patchify(x, patch_size).shape, model.patch_embed(x).shape,
                        model.embed(x).shape, features.shape, pooled.shape,
                        model.head(pooled).shape]
            want = [tuple(shape) for shape in want]
            got = [tuple(shape) for shape in pipeline_shapes(*case)]
            if len(got) != len(want):
                return f"expected a list of {len(want)} shapes, got {len(got)}"
            for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
                if g != w:
                    return f"for arguments {case}, shape {step} is {g}, expected {w}"
        return None

    return check(
        "pipeline_shapes", test,
        "with N = (image_size // patch_size)**2 patches: (B, N, 3·p·p), then (B, N, D) for the "
        "projection, the position sum and the encoder, then (B, D) after pooling, and "
        "(B, num_classes) at the end",
        quiet,
    )


class _SequenceFirstMistake(nn.Module):
    """A model that feeds (batch, tokens, dim) to a sequence-first nn.Transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.to_tokens = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        with warnings.catch_warnings():  # PyTorch warns about batch_first: that is the point
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(16, 2, 1, 1, dim_feedforward=32, dropout=0.0)
        self.classifier = nn.Linear(16, 10)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.to_tokens(images).flatten(2).transpose(1, 2)  # (B, N, D)
        return self.classifier(self.transformer(tokens, tokens).mean(dim=1))


def _reference_leak_matrix(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        base = model(images)
        rows = []
        for j in range(len(images)):
            changed = images.clone()
            changed[j] = 0.0
            rows.append((model(changed) - base).abs().amax(dim=-1))  # (B,) for a change in j
    return torch.stack(rows, dim=1)  # [i, j]: effect on output i of changing image j


def check_leak_matrix(leak_matrix: Callable[[nn.Module, Tensor], Tensor],
                      quiet: bool = False) -> CheckResult:
    """``leak_matrix(model, images) -> (B, B)``: entry [i, j] is the largest change in output i
    (max over its class scores, in absolute value) when image j alone is set to zeros."""

    def test() -> str | None:
        images = torch.randn(4, 3, 16, 16)
        models = {"a model that mixes the batch": _SequenceFirstMistake().eval(),
                  "a correct ViT": ViT(ViTConfig(image_size=16, embed_dim=16, depth=1,
                                                 num_heads=2)).eval()}
        for what, model in models.items():
            want = _reference_leak_matrix(model, images)
            problem = tensor_problem(f"the leak matrix of {what}", leak_matrix(model, images),
                                     want, atol=1e-5)
            if problem:
                return problem
        return None

    return check(
        "leak_matrix", test,
        "compute the outputs once for the untouched batch; then for each j, clone the batch, "
        "set image j to zeros, run the model again (in torch.no_grad()) and put "
        "(new - old).abs().amax(dim=-1) in column j",
        quiet,
    )


def check_fixed_vit(build_model: Callable[..., nn.Module], quiet: bool = False) -> CheckResult:
    """``build_model(image_size, patch_size, embed_dim, num_heads, depth, num_classes)``: a
    ViT that gives one score vector per image, keeps images apart and knows where patches are."""

    def test() -> str | None:
        model = build_model(image_size=32, patch_size=4, embed_dim=32, num_heads=4, depth=2,
                            num_classes=10).eval()
        blocks = [m for m in model.modules()
                  if isinstance(m, EncoderBlock | nn.TransformerEncoderLayer)]
        if len(blocks) != 2:
            return (f"for depth=2 the model holds {len(blocks)} encoder blocks: stack `depth` "
                    "vitlib.EncoderBlock (attention + MLP each)")
        images = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            out = model(images)
            if tuple(out.shape) != (3, 10):
                return f"3 images gave outputs of shape {tuple(out.shape)}, expected (3, 10)"
            changed = images.clone()
            changed[1] = torch.randn(3, 32, 32)
            leak = (model(changed)[[0, 2]] - out[[0, 2]]).abs().max().item()
            if leak > 1e-5:
                return (f"changing image 1 changed the outputs of images 0 and 2 (by up to "
                        f"{leak:.2g}): the batch is being mixed")
            order = torch.randperm(64)
            scrambled = unpatchify(patchify(images, 4)[:, order], 4, (8, 8), 3)
            moved = (model(scrambled) - out).abs().max().item()
            if moved < 1e-5:
                return ("shuffling the patches of the images left the outputs unchanged: the "
                        "model does not know where each patch was")
        return None

    return check(
        "fixed_vit", test,
        "use an encoder with batch_first=True (or vitlib's EncoderBlock, which is batch first), "
        "and add a learned position embedding of shape (1, N, D) initialised with small random "
        "values (e.g. nn.init.trunc_normal_(..., std=0.02); zeros would make every position "
        "look the same)",
        quiet,
    )
