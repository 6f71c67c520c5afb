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
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\).*grayscale"):
        embed(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unsqueeze"):
        embed(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="do not fill"):
        unpatchify(torch.randn(1, 5, 48), 4, (2, 2))
