"""Fine-tuning helpers: a new head, frozen parameters, another image and patch size."""

import pytest
import torch
import torch.nn.functional as F

from vitlib import ViT, ViTConfig, count_parameters
from vitlib.finetune import (
    adapt_input,
    freeze,
    replace_head,
    resample_patch_kernel,
    trainable_parameters,
)


def small_vit(**overrides) -> ViT:
    torch.manual_seed(0)
    fields = dict(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    return ViT(ViTConfig(**{**fields, **overrides})).eval()


# --- replace_head ---------------------------------------------------------------------------


def test_replace_head_zero_init_keeps_features_and_gives_uniform_logits():
    model = small_vit(num_classes=10)
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        features = model.pool(model.forward_features(images))
    assert replace_head(model, 4) is model
    assert model.config.num_classes == 4
    with torch.no_grad():
        logits = model(images)
        assert torch.equal(model.pool(model.forward_features(images)), features)
    assert logits.shape == (3, 4)
    assert torch.count_nonzero(logits) == 0  # every class equally likely at the start


def test_replace_head_small_init_and_no_head():
    model = replace_head(small_vit(embed_dim=64), 50, init_std=0.02)
    std = model.head.weight.std().item()
    assert 0.015 < std < 0.025 and torch.count_nonzero(model.head.bias) == 0
    replace_head(model, 0)
    assert model.config.num_classes == 0
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 64)  # pooled features
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(model, -1)
    with pytest.raises(ValueError, match="init_std"):
        replace_head(model, 3, init_std=-0.1)


def test_replace_head_draws_weights_at_the_given_scale():
    model = replace_head(small_vit(embed_dim=64), 50, init_std=0.1)  # 3200 weights
    std = model.head.weight.std().item()
    assert 0.09 < std < 0.11 and abs(model.head.weight.mean().item()) < 0.01


def test_replace_head_takes_the_models_dtype_and_device():
    # bfloat16 on the CPU stands in for a model in bfloat16 on a GPU, "meta" for its device
    model = replace_head(small_vit().to(torch.bfloat16), 4)
    assert model(torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    meta = replace_head(small_vit().to("meta"), 4)
    assert meta.head.weight.device.type == "meta"


# --- freeze and trainable_parameters --------------------------------------------------------


def test_linear_probe_trains_only_the_head():
    model = replace_head(small_vit(), 3, init_std=0.02)
    freeze(model, ("head",))
    assert set(trainable_parameters(model)) == {"head.weight", "head.bias"}
    assert sum(trainable_parameters(model).values()) == count_parameters(model) == 16 * 3 + 3
    loss = F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"head.weight", "head.bias"}  # autograd computed nothing else


def test_freeze_selects_whole_submodules_by_name_boundary():
    model = small_vit(depth=11, embed_dim=8)
    freeze(model, ["blocks.1", "norm", "pos_embed"])
    names = set(trainable_parameters(model))
    assert "pos_embed" in names and "norm.weight" in names
    assert any(name.startswith("blocks.1.") for name in names)
    assert not any(name.startswith("blocks.10.") for name in names)  # not a prefix match
    assert not any(name.startswith(("head.", "patch_embed.", "blocks.0.")) for name in names)
    freeze(model, ())
    assert trainable_parameters(model) == {}
    model.requires_grad_(True)
    assert sum(trainable_parameters(model).values()) == count_parameters(model, False)


def test_freeze_rejects_unknown_names_and_lists_real_ones():
    with pytest.raises(ValueError, match=r"'classifier'.*head"):
        freeze(small_vit(), ("classifier",))


# --- adapt_input ----------------------------------------------------------------------------


def test_adapt_input_image_size_only_resizes_the_position_table():
    model = small_vit(pool="cls")
    reference = small_vit(pool="cls")
    reference.set_image_size(32)
    adapt_input(model, 32)
    assert model.config.num_tokens == 1 + 8 * 8
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_adapt_input_new_patch_size(pos_embed):
    model = small_vit(image_size=64, patch_size=16, pos_embed=pos_embed)  # a 4×4 grid
    kernel = model.patch_embed.proj.weight.clone()
    adapt_input(model, 32, patch_size=4)  # an 8×8 grid
    c = model.config
    assert (c.image_size, c.patch_size, c.grid_size) == (32, 4, 8)
    assert model.patch_embed.proj.weight.shape == (16, 3, 4, 4)
    assert torch.equal(model.patch_embed.proj.weight, resample_patch_kernel(kernel, 4))
    assert model.pos_embed.shape == (1, 64, 16)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
    with pytest.raises(ValueError, match="not divisible"):
        adapt_input(model, 30, patch_size=4)


def test_adapt_input_to_larger_patches_embeds_upsampled_patches_as_before():
    model = small_vit()  # 16-pixel images, 4-pixel patches: a 4×4 grid
    bias = torch.randn(16)  # a trained projection's bias (it starts at zero)
    with torch.no_grad():
        model.patch_embed.proj.bias.copy_(bias)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = model.patch_embed(images)
    adapt_input(model, 32, patch_size=8)  # the same 4×4 grid of larger patches
    assert torch.equal(model.patch_embed.proj.bias, bias)
    patches = images.view(2, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(32, 3, 4, 4)
    upsampled = F.interpolate(patches, size=(8, 8), mode="bicubic", antialias=True)
    larger = upsampled.view(2, 4, 4, 3, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.patch_embed(larger), tokens, atol=1e-4, rtol=1e-4)


def test_resampled_kernel_sees_an_upsampled_patch_as_the_original():
    torch.manual_seed(0)
    kernel = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    bigger = resample_patch_kernel(kernel, 8)
    patch = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    upsampled = F.interpolate(patch, size=(8, 8), mode="bicubic", antialias=True)  # as R
    old = F.conv2d(patch, kernel).flatten(1)
    new = F.conv2d(upsampled, bigger).flatten(1)
    assert torch.allclose(old, new, atol=1e-8)  # exact for a larger patch size


def test_resampled_kernel_stays_on_the_kernels_device():
    # "meta" stands in for a GPU here: a kernel there must not meet a CPU matrix
    kernel = torch.empty(5, 3, 4, 4, device="meta")
    bigger = resample_patch_kernel(kernel, 8)
    assert bigger.device == kernel.device and bigger.shape == (5, 3, 8, 8)
    assert bigger.dtype == kernel.dtype

def test_resampled_kernel_is_the_least_squares_match_for_a_smaller_patch():
    torch.manual_seed(1)
    kernel = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    smaller = resample_patch_kernel(kernel, 4)
    assert smaller.shape == (6, 3, 4, 4)
    # R resizes a 16×16 patch to 4×4; the new kernel w' minimises |Rᵀw' - w|, so the residual
    # is orthogonal to R's rows: R (Rᵀw' - w) = 0 (normal equations), per output and channel
    basis = torch.eye(256, dtype=torch.float64).view(256, 1, 16, 16)
    resize = F.interpolate(basis, size=(4, 4), mode="bicubic", antialias=True).flatten(1).T
    residual = resize.T @ smaller.flatten(2).permute(2, 0, 1).flatten(1) - (
        kernel.flatten(2).permute(2, 0, 1).flatten(1))
    assert torch.allclose(resize @ residual, torch.zeros(16, 18, dtype=torch.float64), atol=1e-9)
    assert resample_patch_kernel(kernel, 16) is kernel
    with pytest.raises(ValueError, match="square kernel"):
        resample_patch_kernel(kernel[..., :8], 4)


def test_freeze_accepts_a_single_name():
    model = small_vit()
    freeze(model, "head")  # a name, not a sequence of its letters
    assert set(trainable_parameters(model)) == {"head.weight", "head.bias"}


def test_adapt_input_keeps_frozen_parameters_frozen():
    model = freeze(small_vit(), ("head",))  # a linear probe
    adapt_input(model, 32, patch_size=8)
    assert set(trainable_parameters(model)) == {"head.weight", "head.bias"}
    model = freeze(small_vit(), ("patch_embed.proj.bias", "pos_embed"))
    adapt_input(model, 32, patch_size=8)
    assert set(trainable_parameters(model)) == {"patch_embed.proj.bias", "pos_embed"}


def test_adapt_input_keeps_the_models_dtype():
    # bfloat16 on the CPU stands in for a model in bfloat16 on a GPU
    model = adapt_input(small_vit().to(torch.bfloat16), 32, patch_size=8)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_adapted_patch_embedding_cuts_images_into_the_new_patches():
    model = small_vit(image_size=64, patch_size=16)
    adapt_input(model, 24, patch_size=4)  # 24 pixels: a multiple of 4, not of 16
    assert model.patch_embed.patch_size == 4
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        tokens = model.patch_embed(images)
    assert tokens.shape == (2, 36, 16)
    weight, bias = model.patch_embed.proj.weight, model.patch_embed.proj.bias
    first = torch.einsum("dcij,bcij->bd", weight, images[:, :, :4, :4]) + bias
    torch.testing.assert_close(tokens[:, 0], first)


def test_failed_adapt_input_leaves_the_model_unchanged():
    model = small_vit()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="not divisible"):
        adapt_input(model, 30, patch_size=8)  # 30 pixels do not split into 8-pixel patches
    assert model.config == small_vit().config and model.patch_embed.patch_size == 4
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], t) for name, t in before.items())


def test_resample_patch_kernel_rejects_an_empty_patch():
    with pytest.raises(ValueError, match="patch_size"):
        resample_patch_kernel(torch.randn(2, 3, 4, 4), 0)


def test_low_precision_kernel_is_resampled_at_full_precision_and_rounded_once():
    torch.manual_seed(2)
    kernel = torch.randn(4, 3, 8, 8).to(torch.bfloat16)
    for size in (4, 16):
        exact = resample_patch_kernel(kernel.double(), size)  # the same values, in float64
        assert torch.equal(resample_patch_kernel(kernel, size), exact.to(torch.bfloat16))
