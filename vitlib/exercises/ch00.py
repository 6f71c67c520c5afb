"""Checks for the exercises of notebook 00 (the article's example, broken and fixed)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vitlib.model import EncoderBlock, ViT, ViTConfig
from vitlib.patches import patchify, unpatchify

from .checking import CheckResult, check
from .compare import shape_problem, tensor_problem


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
            got = pipeline_shapes(*case)
            if not isinstance(got, (list, tuple)) or len(got) != len(want):
                return f"expected a list of {len(want)} shapes, got {got!r:.80}"
            for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
                problem = shape_problem(f"for arguments {case}, shape {step}", g, w)
                if problem:
                    return problem
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


_FIXED_VIT_CONFIGS = [
    dict(image_size=32, patch_size=4, embed_dim=32, num_heads=4, depth=2, num_classes=10),
    dict(image_size=16, patch_size=8, embed_dim=24, num_heads=3, depth=1, num_classes=5),
]


def _position_tables(model: nn.Module, num_patches: int, dim: int) -> list[nn.Parameter]:
    """The trainable parameters of shape (..., N, D) outside linear, conv, attention and
    LayerNorm layers: candidates for a learned position embedding."""
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.MultiheadAttention)
    return [p for module in model.modules() if not isinstance(module, layers)
            for p in module.parameters(recurse=False)
            if p.requires_grad and p.ndim >= 2 and tuple(p.shape[-2:]) == (num_patches, dim)]


def _first_block_input(model: nn.Module, block: nn.Module, images: Tensor) -> Tensor:
    """The tokens that ``block`` receives first when the model runs on ``images``."""
    seen = []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        if tensors:
            seen.append(tensors[0].detach().clone())

    handle = block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model(images)
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the first encoder block was never called")
    return seen[0]


def _fixed_vit_problem(build_model: Callable[..., nn.Module], sizes: dict) -> str | None:
    """What is wrong with the model that ``build_model(**sizes)`` gives, or None."""
    image_size, patch_size, depth = sizes["image_size"], sizes["patch_size"], sizes["depth"]
    dim, classes = sizes["embed_dim"], sizes["num_classes"]
    grid = image_size // patch_size
    num_patches = grid * grid
    described = ", ".join(f"{key}={value}" for key, value in sizes.items())
    model = build_model(**sizes)
    if not isinstance(model, nn.Module):
        return f"build_model should return an nn.Module, got {type(model).__name__}"
    model.eval()
    blocks = [m for m in model.modules()
              if isinstance(m, EncoderBlock | nn.TransformerEncoderLayer)]
    if len(blocks) != depth:
        return (f"for depth={depth} the model holds {len(blocks)} encoder blocks: stack `depth` "
                "vitlib.EncoderBlock (attention + MLP each)")
    images = torch.randn(3, 3, image_size, image_size)
    with torch.no_grad():
        try:
            out = model(images)
        except Exception as error:  # sizes fixed in the code fail here; name the sizes
            return f"with {described} the model raised {type(error).__name__}: {error}"
        if not isinstance(out, Tensor) or tuple(out.shape) != (3, classes):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            return (f"with {described}, 3 images gave outputs of shape {shape}, expected "
                    f"(3, {classes})")
        if not torch.isfinite(out).all():
            return f"with {described} the outputs contain NaN or infinite values"
        changed = images.clone()
        changed[1] = torch.randn(3, image_size, image_size)
        leak = (model(changed)[[0, 2]] - out[[0, 2]]).abs().max().item()
        if not leak <= 1e-5:
            return (f"changing image 1 changed the outputs of images 0 and 2 (by up to "
                    f"{leak:.2g}): the batch is being mixed")
        norms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
        if norms < 2 * depth + 1:
            return (f"for depth={depth} the model holds {norms} nn.LayerNorm modules, expected at "
                    f"least {2 * depth + 1}: two in each block and a final one after the encoder")
        if not _position_tables(model, num_patches, dim):
            return (f"with {described} there is no trainable position table of shape "
                    f"(1, {num_patches}, {dim}) (an nn.Parameter, not a buffer)")
        order = torch.randperm(num_patches)
        while (order == torch.arange(num_patches)).any():  # every patch moves
            order = torch.randperm(num_patches)
        scrambled = unpatchify(patchify(images, patch_size)[:, order], patch_size, (grid, grid), 3)
        first = _first_block_input(model, blocks[0], images)
        moved_input = _first_block_input(model, blocks[0], scrambled)
        if first.shape == moved_input.shape and first.ndim == 3 and torch.allclose(
                moved_input, first[:, order], atol=1e-6):
            return ("shuffling the patches only shuffled the first block's input tokens: the "
                    "model does not know where each patch was before the encoder (add the "
                    "position table to the patch tokens, before the blocks)")
        moved = (model(scrambled) - out).abs().max().item()
        if not moved >= 1e-5:
            return ("shuffling the patches of the images left the outputs unchanged: the "
                    "model does not know where each patch was")
    return None


def check_fixed_vit(build_model: Callable[..., nn.Module], quiet: bool = False) -> CheckResult:
    """``build_model(image_size, patch_size, embed_dim, num_heads, depth, num_classes)``: a
    ViT that gives one score vector per image, keeps images apart and knows where patches are:
    ``depth`` encoder blocks, a final LayerNorm and a learned position table added to the patch
    tokens before the encoder, for any of those sizes."""

    def test() -> str | None:
        for sizes in _FIXED_VIT_CONFIGS:
            problem = _fixed_vit_problem(build_model, sizes)
            if problem:
                return problem
        return None

    return check(
        "fixed_vit", test,
        "use an encoder with batch_first=True (or vitlib's EncoderBlock, which is batch first), "
        "and add a learned position embedding of shape (1, N, D) to the patch tokens before "
        "the blocks, initialised with small random values (e.g. nn.init.trunc_normal_(..., "
        "std=0.02); zeros would make every position look the same); end the encoder with a "
        "LayerNorm, and take every size from the arguments",
        quiet,
    )
