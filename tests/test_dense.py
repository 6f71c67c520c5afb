"""The segmentation head, the segmentation model and tubelet embedding for video."""

import pytest
import torch

from vitlib import PatchEmbed, ViT, ViTConfig, patchify
from vitlib.dense import SegmentationHead, SegmentationViT, TubeletEmbed


def test_segmentation_head_shape_and_layout():
    torch.manual_seed(0)
    head = SegmentationHead(embed_dim=8, num_classes=3, patch_size=2, grid=(2, 3))
    tokens = torch.randn(4, 6, 8)
    logits = head(tokens)
    assert logits.shape == (4, 3, 4, 6)
    # pixel (y, x) of patch (r, c) = the token's linear map, read as (K, p, p)
    per_token = head.proj(tokens).view(4, 6, 3, 2, 2)
    for r in range(2):
        for c in range(3):
            block = logits[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
            assert torch.equal(block, per_token[:, r * 3 + c])
    # and patchify (channels = classes) takes it apart again
    assert torch.equal(patchify(logits, 2), head.proj(tokens))


def test_equal_tokens_give_equal_patches_and_a_token_decides_only_its_patch():
    torch.manual_seed(0)
    head = SegmentationHead(embed_dim=8, num_classes=2, patch_size=4, grid=(3, 3))
    tokens = torch.randn(1, 1, 8).expand(1, 9, 8)  # the same token at every patch
    logits = head(tokens)
    blocks = patchify(logits, 4)  # (1, 9, 2·4·4)
    assert torch.allclose(blocks, blocks[:, :1].expand_as(blocks), atol=1e-6)
    changed = tokens.clone()
    changed[0, 4] += 1.0  # the centre patch
    diff = (head(changed) - logits).abs().sum(dim=1)[0]  # (12, 12)
    assert diff[4:8, 4:8].gt(0).all()
    diff[4:8, 4:8] = 0
    assert diff.eq(0).all()


def test_segmentation_head_per_patch_constant_when_the_map_ignores_the_pixel():
    # if the linear map gives every pixel of a patch the same logits, the output is constant
    # within each patch: each patch is then one label, as for a per-patch classifier
    head = SegmentationHead(embed_dim=5, num_classes=2, patch_size=3, grid=(2, 2))
    with torch.no_grad():
        weight = torch.randn(2, 1, 5).expand(2, 9, 5).reshape(18, 5)  # rows (class, pixel)
        head.proj.weight.copy_(weight)
        head.proj.bias.zero_()
    logits = head(torch.randn(2, 4, 5))
    blocks = patchify(logits, 3).view(2, 4, 2, 9)  # (B, patch, class, pixel)
    assert torch.allclose(blocks, blocks[..., :1].expand_as(blocks))
    assert not torch.allclose(blocks[:, 0], blocks[:, 1])  # but patches differ


def test_segmentation_head_rejects_a_class_token():
    head = SegmentationHead(embed_dim=8, num_classes=2, patch_size=4, grid=(2, 2))
    with pytest.raises(ValueError, match=r"tokens\[:, 1:\]"):
        head(torch.randn(1, 5, 8))


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_segmentation_vit(pool):
    torch.manual_seed(0)
    backbone = ViT(ViTConfig(image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                             pool=pool))
    model = SegmentationViT(backbone, num_classes=3)
    images = torch.randn(2, 3, 16, 16)
    logits = model(images)
    assert logits.shape == (2, 3, 16, 16)
    tokens = backbone.forward_features(images)[:, int(pool == "cls"):]
    assert torch.allclose(logits, model.head(tokens))
    logits.sum().backward()  # gradients reach the encoder
    assert backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_segmentation_head_goes_where_the_backbone_is():
    # "meta" in bfloat16 stands in for a backbone on a GPU in bfloat16
    backbone = ViT(ViTConfig(image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2))
    model = SegmentationViT(backbone.to("meta", torch.bfloat16), num_classes=3)
    weight = model.head.proj.weight
    assert (weight.device.type, weight.dtype) == ("meta", torch.bfloat16)
    images = torch.randn(2, 3, 16, 16, device="meta", dtype=torch.bfloat16)
    assert model(images).shape == (2, 3, 16, 16)


def test_tubelet_embed_shape_and_order():
    torch.manual_seed(0)
    embed = TubeletEmbed(tubelet_size=2, patch_size=4, in_chans=3, embed_dim=16)
    clips = torch.randn(2, 3, 6, 8, 12)  # 6 frames of 8×12
    tokens = embed(clips)
    assert tokens.shape == (2, 3 * 2 * 3, 16)
    assert embed.num_tokens(6, 8, 12) == 18
    # token 7 is tubelet (time 1, row 0, column 1): frames 2-3, rows 0-3, columns 4-7
    tubelet = clips[:, :, 2:4, 0:4, 4:8]
    weight = embed.proj.weight.flatten(1)  # (D, C·t·p·p)
    expected = tubelet.flatten(1) @ weight.T + embed.proj.bias
    assert torch.allclose(tokens[:, 7], expected, atol=1e-5)


@pytest.mark.parametrize(("shape", "match"), [
    ((1, 3, 10, 8, 8), r"length of 10 .* 4 frames.*\(1, 2, 5, 10\).*trim it to 8.*pad it to 12"),
    ((1, 3, 8, 10, 8), r"height of 10 .* 4 pixels"),
    ((1, 3, 8, 8, 6), r"width of 6 .* 4 pixels"),
    ((1, 3, 2, 8, 8), r"length of 2 .*use a tubelet size that divides it \(1, 2\), or pad it to 4"),
])
def test_tubelet_embed_rejects_clips_it_does_not_divide(shape, match):
    embed = TubeletEmbed(tubelet_size=4, patch_size=4, in_chans=3, embed_dim=8)
    with pytest.raises(ValueError, match=match):
        embed(torch.randn(shape))


def test_tubelet_embed_explains_the_layout():
    embed = TubeletEmbed(tubelet_size=2, patch_size=4, in_chans=3, embed_dim=8)
    with pytest.raises(ValueError, match=r"permute\(0, 2, 1, 3, 4\)"):
        embed(torch.randn(1, 4, 3, 8, 8))  # (B, T, C, H, W)
    with pytest.raises(ValueError, match="unsqueeze"):
        embed(torch.randn(3, 4, 8, 8))


def test_inflated_patch_embed_sees_a_still_clip_as_its_image():
    torch.manual_seed(0)
    patch_embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=16)
    embed = TubeletEmbed.from_patch_embed(patch_embed, tubelet_size=3)
    image = torch.randn(2, 3, 8, 8)
    still = image.unsqueeze(2).expand(-1, -1, 6, -1, -1)  # 6 identical frames
    tokens = embed(still)  # (2, 2·2·2, 16)
    per_image = patch_embed(image)  # (2, 4, 16)
    assert torch.allclose(tokens, per_image.repeat(1, 2, 1), atol=1e-5)


def test_inflated_patch_embed_averages_the_frames_of_a_tubelet():
    # the filter, repeated over the t frames and divided by t, is linear: a tubelet's token is
    # the mean of the tokens that the image model gives its t frames
    torch.manual_seed(0)
    patch_embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=16)
    embed = TubeletEmbed.from_patch_embed(patch_embed, tubelet_size=2)
    clip = torch.randn(1, 3, 4, 8, 8)  # 4 different frames: 2 tubelets in time
    tokens = embed(clip).view(1, 2, 4, 16)  # (B, time, patch, D)
    per_frame = torch.stack([patch_embed(clip[:, :, f]) for f in range(4)], dim=1)  # (1, 4, 4, D)
    expected = per_frame.view(1, 2, 2, 4, 16).mean(dim=2)  # frames 0-1, then frames 2-3
    assert torch.allclose(tokens, expected, atol=1e-5)


def test_inflated_patch_embed_keeps_the_dtype_of_the_image_model():
    patch_embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8).double()
    embed = TubeletEmbed.from_patch_embed(patch_embed, tubelet_size=2)
    assert embed.proj.weight.dtype == embed.proj.bias.dtype == torch.float64
    clip = torch.randn(1, 3, 2, 8, 8, dtype=torch.float64)
    assert embed(clip).dtype == torch.float64


def test_segmentation_vit_refuses_a_backbone_that_drops_tokens():
    backbone = ViT(ViTConfig(embed_dim=16, depth=1, num_heads=2, token_drop=0.5))
    with pytest.raises(ValueError, match="keep all its tokens.*token_drop=0"):
        SegmentationViT(backbone, num_classes=3)
