"""Attention rollout, mean attention distance and position similarity on hand-checkable cases."""

import math

import pytest
import torch

from vitlib import ViT, ViTConfig
from vitlib.explain import (
    attention_rollout,
    mean_attention_distance,
    num_prefix_tokens,
    patch_distances,
    position_similarity,
    rollout_heatmap,
)

SMALL = dict(image_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4)


def random_attention(batch, heads, tokens, generator=None):
    return torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(dim=-1)


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    for residual in (True, False):
        rollout = attention_rollout([eye, eye, eye], residual=residual)
        assert torch.allclose(rollout, torch.eye(5).expand(2, 5, 5))


def test_rollout_of_uniform_attention_is_uniform_without_residual():
    uniform = torch.full((1, 2, 4, 4), 0.25)
    assert torch.allclose(attention_rollout([uniform] * 3, residual=False),
                          torch.full((1, 4, 4), 0.25))


def test_rollout_by_hand_two_tokens():
    # one head, A = [[0, 1], [1, 0]] (swap); with the residual each block gives [[.5,.5],[.5,.5]]
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    assert torch.allclose(attention_rollout([swap], residual=True), torch.full((1, 2, 2), 0.5))
    # without the residual two swaps undo each other
    assert torch.allclose(attention_rollout([swap, swap], residual=False), torch.eye(2)[None])


def test_rollout_averages_heads_and_multiplies_later_blocks_on_the_left():
    g = torch.Generator().manual_seed(0)
    first, second = random_attention(2, 3, 5, g), random_attention(2, 3, 5, g)
    eye = torch.eye(5)
    a1 = (first.mean(1) + eye) / 2
    a2 = (second.mean(1) + eye) / 2
    rollout = attention_rollout([first, second])
    assert torch.allclose(rollout, a2 @ a1, atol=1e-6)
    assert not torch.allclose(rollout, a1 @ a2, atol=1e-3)
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 5), atol=1e-6)


def test_rollout_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])
    with pytest.raises(ValueError, match="heads, T, T"):
        attention_rollout([torch.rand(2, 5, 5)])


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_rollout_heatmap_shape_and_sum(pool):
    torch.manual_seed(0)
    model = ViT(ViTConfig(pool=pool, **SMALL)).eval()
    heat = rollout_heatmap(model, torch.randn(3, 3, 16, 16))
    assert heat.shape == (3, 4, 4)
    assert (heat >= 0).all()
    assert torch.allclose(heat.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)


def test_rollout_heatmap_reads_the_rollout(monkeypatch):
    # a mean-pool model whose attention always looks at patch 6 alone: without the residual,
    # every token draws on patch 6 only, so the map is 1 there, at row 1, column 2
    model = ViT(ViTConfig(pool="mean", **SMALL)).eval()
    one_hot = torch.zeros(2, 4, 16, 16)
    one_hot[..., 6] = 1.0
    monkeypatch.setattr(model, "attention_maps", lambda images: [one_hot] * 3)
    heat = rollout_heatmap(model, torch.randn(2, 3, 16, 16), residual=False)
    expected = torch.zeros(2, 4, 4)
    expected[:, 1, 2] = 1.0  # patches in row-major order, as patchify lays them out
    assert torch.equal(heat, expected)


def test_rollout_heatmap_uses_the_class_token_row(monkeypatch):
    model = ViT(ViTConfig(pool="cls", **SMALL)).eval()
    attn = torch.full((1, 4, 17, 17), 1 / 17)
    attn[:, :, 0] = 0.0  # the class token looks at the class token (half) and patch 2 (half)
    attn[:, :, 0, 0] = attn[:, :, 0, 3] = 0.5
    monkeypatch.setattr(model, "attention_maps", lambda images: [attn])
    heat = rollout_heatmap(model, torch.randn(1, 3, 16, 16), residual=False)
    expected = torch.zeros(1, 16)
    expected[0, 2] = 1.0  # patch 2 is token 3; the class token's own share is dropped
    assert torch.allclose(heat, expected.view(1, 4, 4))


def test_patch_distances_by_hand():
    d = patch_distances((2, 3), patch_size=4)
    assert d.shape == (6, 6)
    assert d[0, 0] == 0 and d[0, 1] == 4 and d[0, 3] == 4  # right and below
    assert torch.isclose(d[0, 5], torch.tensor(4 * math.sqrt(5)))  # (0,0) -> (1,2)
    assert torch.equal(d, d.T)


def test_attention_to_self_has_distance_zero():
    eye = torch.eye(16).expand(2, 3, 16, 16)
    assert torch.equal(mean_attention_distance([eye, eye], (4, 4), 4), torch.zeros(2, 3))


def test_uniform_attention_distance_is_the_mean_patch_distance():
    uniform = torch.full((1, 2, 16, 16), 1 / 16)
    expected = patch_distances((4, 4), 8).mean()
    assert torch.allclose(mean_attention_distance([uniform], (4, 4), 8), expected.expand(1, 2))


def test_attention_distance_to_neighbour_in_pixels_and_ignoring_the_class_token():
    # 1×2 grid with a class token: each patch puts 0.2 on the class token and 0.8 on the other
    # patch, whose centre is patch_size pixels away; renormalised, the distance is patch_size
    attn = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.0, 0.8], [0.2, 0.8, 0.0]]).view(1, 1, 3, 3)
    distance = mean_attention_distance([attn], (1, 2), patch_size=6, num_prefix_tokens=1)
    assert torch.allclose(distance, torch.tensor([[6.0]]))


def test_attention_distance_per_head_and_block():
    # head 0 looks at itself, head 1 at the patch to its right or left (one patch away)
    n = 4
    neighbour = torch.zeros(n, n)
    for i in range(n):
        neighbour[i, i + 1 if i % 2 == 0 else i - 1] = 1.0
    attn = torch.stack([torch.eye(n), neighbour]).unsqueeze(0)  # (1, 2, 4, 4) on a 1×4 grid
    distance = mean_attention_distance([attn, attn.flip(1)], (1, 4), patch_size=2)
    assert torch.equal(distance, torch.tensor([[0.0, 2.0], [2.0, 0.0]]))


def test_attention_distance_renormalises_each_query_over_the_patches():
    # 1×3 grid, patch_size 2, a class token; each query's patch weights, scaled to sum to 1:
    # patch 0 -> half itself, half patch 1 (2 px): 1; patch 1 -> patch 2 (2 px): 2;
    # patch 2 -> patch 0 only, after its 0.8 on the class token is dropped (4 px): 4
    attn = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                         [0.5, 0.25, 0.25, 0.0],
                         [0.0, 0.0, 0.0, 1.0],
                         [0.8, 0.2, 0.0, 0.0]]).view(1, 1, 4, 4)
    distance = mean_attention_distance([attn], (1, 3), patch_size=2, num_prefix_tokens=1)
    assert torch.allclose(distance, torch.tensor([[(1.0 + 2.0 + 4.0) / 3]]))


def test_attention_distance_averages_over_the_images():
    # image 0 looks at itself (0 px), image 1 at the neighbouring patch (3 px): mean 1.5
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    attn = torch.stack([torch.eye(2), swap]).view(2, 1, 2, 2)
    distance = mean_attention_distance([attn], (1, 2), patch_size=3)
    assert torch.allclose(distance, torch.tensor([[1.5]]))


def test_attention_distance_counts_a_query_seeing_only_the_class_token_as_0():
    attn = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    distance = mean_attention_distance([attn], (1, 2), patch_size=4, num_prefix_tokens=1)
    assert torch.equal(distance, torch.tensor([[2.0]]))  # (0 + 4 px) / 2 queries, no NaN


def test_attention_distance_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        mean_attention_distance([torch.rand(1, 2, 17, 17)], (4, 4), 4)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_attention_distance_of_a_model(pool):
    model = ViT(ViTConfig(pool=pool, **SMALL)).eval()
    maps = model.attention_maps(torch.randn(2, 3, 16, 16))
    distance = mean_attention_distance(maps, (4, 4), 4, num_prefix_tokens(model))
    assert distance.shape == (3, 4)
    farthest = patch_distances((4, 4), 4).max()
    assert (distance >= 0).all() and (distance <= farthest).all()


def test_position_similarity():
    table = torch.tensor([[9.0, 9.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # row 0: class token
    sim = position_similarity(table[None], num_prefix_tokens=1)
    assert torch.allclose(sim, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0],
                                             [0.0, 0.0, 1.0]]))
    model = ViT(ViTConfig(pool="cls", pos_embed="sincos", **SMALL))
    sim = position_similarity(model.pos_embed, num_prefix_tokens(model))
    assert sim.shape == (16, 16)
    assert torch.allclose(sim.diagonal(), torch.ones(16))
    assert sim[0, 1] > sim[0, 15]  # a sin-cos table: neighbours are more alike than far patches
    with pytest.raises(ValueError, match="position table"):
        position_similarity(torch.rand(4))


def test_position_similarity_of_a_learned_table_is_detached():
    # a learned table is a trainable parameter; the similarity is for plotting, not training
    model = ViT(ViTConfig(pool="cls", pos_embed="learned", **SMALL))
    assert model.pos_embed.requires_grad
    sim = position_similarity(model.pos_embed, num_prefix_tokens(model))
    assert sim.shape == (16, 16) and not sim.requires_grad
    sim.numpy()  # ready for matplotlib


def test_plots_of_heat_maps_and_distances():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlib import viz

    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    fig = viz.heatmap_overlays(images, torch.rand(3, 4, 4), ["a", "b", "c"], title="maps", ncols=2)
    assert len(fig.axes) == 2 * 2 * 2  # two groups of (image row, overlay row) × 2 columns
    assert fig.axes[0].get_title() == "a"
    with pytest.raises(ValueError, match="one 2-D heat map per image"):
        viz.heatmap_overlays(images, torch.rand(2, 4, 4), title="maps")
    fig2 = viz.layer_head_scatter(torch.rand(3, 4), title="distance", ylabel="pixels",
                                  reference=0.5)
    ax = fig2.axes[0]
    assert ax.get_xlabel() == "block" and ax.get_ylabel() == "pixels"
    assert len(ax.collections) == 4  # one scatter per head
    with pytest.raises(ValueError, match="blocks, heads"):
        viz.layer_head_scatter(torch.rand(3), title="t", ylabel="y")
    plt.close(fig)
    plt.close(fig2)
