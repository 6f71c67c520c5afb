import pytest
import torch

from vitlib import PatchEmbed, patchify, unpatchify


def test_patchify_round_trip_and_order():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 3 * 4 * 4)
    # second patch is the top-right 4×4 block, flattened channel first
    torch.testing.assert_close(patches[0, 1], images[0, :, :4, 4:].reshape(-1))
    torch.testing.assert_close(unpatchify(patches, 4, (2, 2), 3), images)


def test_conv_patch_embedding_equals_linear_on_patches():
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=24)
    images = torch.randn(2, 3, 16, 12)
    tokens = embed(images)
    assert tokens.shape == (2, 12, 24)
    linear = embed.as_linear()
    torch.testing.assert_close(linear(patchify(images, 4)), tokens, atol=1e-5, rtol=1e-5)


def test_bad_images_are_explained():
    embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8)
    message = r"height 30 is not divisible by patch size 4.*\(1, 2, 3, 5, 6, 10, 15, 30\)"
    with pytest.raises(ValueError, match=message):
        embed(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="width 30 is not divisible by patch size 4"):
        embed(torch.randn(1, 3, 32, 30))
    with pytest.raises(ValueError, match=message):
        patchify(torch.randn(1, 3, 30, 32), 4)
    with pytest.raises(ValueError, match="width 30 is not divisible by patch size 4"):
        patchify(torch.randn(1, 3, 32, 30), 4)
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\).*grayscale"):
        embed(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unsqueeze"):
        embed(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="do not fill"):
        unpatchify(torch.randn(1, 5, 48), 4, (2, 2))


def test_whitened_patch_embedding_decorrelates_the_patches():
    torch.manual_seed(0)
    # images whose patches are strongly correlated: smooth, and colour channels alike
    base = torch.nn.functional.interpolate(torch.randn(256, 1, 4, 4), size=16, mode="bilinear")
    images = base.expand(-1, 3, -1, -1) + 0.1 * torch.randn(256, 3, 16, 16)
    embed = PatchEmbed(patch_size=2, in_chans=3, embed_dim=20)  # 12 numbers per patch
    before = embed.proj.weight.detach().clone()
    patches = patchify(images, 2).flatten(0, 1)  # (B·N, 12)
    spread = (patches @ before.flatten(1).T).std()
    assert embed.whiten_(images, eps=1e-6) is embed
    out = (patches @ embed.proj.weight.detach().flatten(1).T).double()
    cov = torch.cov(out[:, :12].T)  # the 12 whitened outputs
    assert torch.allclose(cov, spread.double() ** 2 * torch.eye(12, dtype=torch.double),
                          atol=1e-3 * spread.item() ** 2)
    assert torch.equal(embed.proj.weight[12:], before[12:])  # the rest keep their weights
    # the first output follows the direction of largest variance: the patch's mean brightness
    mean_brightness = patches.mean(1)
    assert abs(torch.corrcoef(torch.stack([out[:, 0].float(), mean_brightness]))[0, 1]) > 0.95
    # eps damps directions of little variance: their outputs shrink, the big ones do not
    damped = PatchEmbed(patch_size=2, in_chans=3, embed_dim=20)
    damped.proj.weight.data.copy_(before)
    damped.whiten_(images, eps=1.0)
    out_damped = patches @ damped.proj.weight.detach().flatten(1).T
    assert out_damped[:, 11].std() < 0.5 * out[:, 11].std()
    assert out_damped[:, 0].std().item() == pytest.approx(out[:, 0].std().item(), rel=0.1)
    with pytest.raises(ValueError, match="eps must be positive"):
        damped.whiten_(images, eps=0.0)


def test_whitening_a_narrower_embedding_keeps_the_leading_directions():
    torch.manual_seed(0)
    base = torch.nn.functional.interpolate(torch.randn(256, 1, 4, 4), size=16, mode="bilinear")
    images = base.expand(-1, 3, -1, -1) + 0.1 * torch.randn(256, 3, 16, 16)
    embed = PatchEmbed(patch_size=2, in_chans=3, embed_dim=8)  # fewer outputs than 12 numbers
    patches = patchify(images.double(), 2).flatten(0, 1)  # (B·N, 12)
    spread = (patches @ embed.proj.weight.detach().flatten(1).double().T).std()
    embed.whiten_(images, eps=1e-6)
    weights = embed.proj.weight.detach().flatten(1).double()  # (8, 12)
    out = patches @ weights.T  # (B·N, 8)
    torch.testing.assert_close(torch.cov(out.T), spread**2 * torch.eye(8, dtype=torch.double),
                               atol=1e-3 * spread.item() ** 2, rtol=0)
    # the 8 directions of largest variance: none of the 4 smallest
    smallest = torch.linalg.eigh(torch.cov(patches.T)).eigenvectors[:, :4]  # ascending
    assert (weights @ smallest).abs().max() < 1e-5 * weights.abs().max()
    assert abs(torch.corrcoef(torch.stack([out[:, 0], patches.mean(1)]))[0, 1]) > 0.95


def test_unpatchify_inverts_patchify_on_a_wide_grid_with_any_channel_count():
    # patch n filled with the number n: the image shows 0 1 2 / 3 4 5 block by block
    numbers = torch.arange(6.0)[None, :, None].expand(1, 6, 2 * 4 * 4)  # 2 channels, p = 4
    image = unpatchify(numbers, 4, (2, 3), channels=2)
    assert image.shape == (1, 2, 8, 12)
    blocks = torch.arange(6.0).view(2, 3).repeat_interleave(4, 0).repeat_interleave(4, 1)
    torch.testing.assert_close(image, blocks.expand(1, 2, 8, 12))
    for channels in (1, 3):
        images = torch.randn(2, channels, 8, 12)
        patches = patchify(images, 4)
        torch.testing.assert_close(unpatchify(patches, 4, (2, 3), channels), images)


def test_unpatchify_refuses_too_few_patches():
    with pytest.raises(ValueError, match="do not fill"):
        unpatchify(torch.randn(1, 3, 48), 4, (2, 2))


def test_whitening_grayscale_images_in_rgb_stays_finite_for_a_tiny_eps():
    # three equal channels: two thirds of the patch covariance's eigenvalues are zero, and
    # rounding makes some of them slightly negative
    torch.manual_seed(0)
    images = torch.randn(64, 1, 8, 8).expand(-1, 3, -1, -1)
    embed = PatchEmbed(patch_size=2, in_chans=3, embed_dim=12).whiten_(images, eps=1e-20)
    assert torch.isfinite(embed.proj.weight).all()
