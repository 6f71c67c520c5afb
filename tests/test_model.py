from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitlib import (
    PRESETS,
    EncoderBlock,
    ViT,
    ViTConfig,
    config_dict,
    count_parameters,
    create_model,
    flops_per_image,
    get_config,
    sincos_2d,
)
from vitlib.model import DropPath

SMALL = dict(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def test_block_equals_nn_transformer_encoder_layer():
    torch.manual_seed(0)
    ours = EncoderBlock(32, 4, 64, norm_eps=1e-6).eval()
    ref = nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, activation="gelu", layer_norm_eps=1e-6,
        batch_first=True, norm_first=True,
    ).eval()
    pairs = [
        (ref.self_attn.in_proj_weight, ours.attn.qkv.weight),
        (ref.self_attn.in_proj_bias, ours.attn.qkv.bias),
        (ref.self_attn.out_proj.weight, ours.attn.proj.weight),
        (ref.self_attn.out_proj.bias, ours.attn.proj.bias),
        (ref.linear1.weight, ours.mlp.fc1.weight), (ref.linear1.bias, ours.mlp.fc1.bias),
        (ref.linear2.weight, ours.mlp.fc2.weight), (ref.linear2.bias, ours.mlp.fc2.bias),
        (ref.norm1.weight, ours.norm1.weight), (ref.norm1.bias, ours.norm1.bias),
        (ref.norm2.weight, ours.norm2.weight), (ref.norm2.bias, ours.norm2.bias),
    ]
    with torch.no_grad():
        for r, o in pairs:
            o.normal_()  # non-trivial norms too
            r.copy_(o)
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "cls"])
@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_forward_shapes_and_attention_maps(pool, pos_embed):
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL, pool=pool, pos_embed=pos_embed)).eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = 16 + (pool == "cls")
    assert model.forward_features(x).shape == (2, tokens, 32)
    assert model(x).shape == (2, 5)
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, tokens, tokens)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 4, tokens))
    assert ("pos_embed" in model.state_dict()) == (pos_embed == "learned")


def test_mean_pooling_is_the_average_of_normalised_tokens():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL)).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model.head(model.forward_features(x).mean(dim=1))
    torch.testing.assert_close(model(x), expected)


def test_class_token_pooling_reads_the_class_token_with_its_position():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL, pool="cls")).eval()
    with torch.no_grad():  # away from their near-zero starts, so that every term shows
        model.cls_token.normal_()
        model.pos_embed.normal_()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.embed(x)  # (2, 1 + 16, 32)
    cls = model.cls_token[0, 0] + model.pos_embed[0, 0]
    torch.testing.assert_close(tokens[:, 0], cls.expand(2, -1))
    torch.testing.assert_close(tokens[:, 1:], model.patch_embed(x) + model.pos_embed[:, 1:])
    torch.testing.assert_close(model(x), model.head(model.forward_features(x)[:, 0]))


def test_sincos_table_gives_the_class_token_no_position():
    model = ViT(ViTConfig(**SMALL, pool="cls", pos_embed="sincos"))
    assert model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_2d(4, 4, 32))


def test_features_end_with_the_final_norm():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL)).eval()
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.embed(x)
    for block in model.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(model.forward_features(x), model.norm(tokens))


def test_presets_build_and_match_the_issue_shape():
    tiny = create_model("vit_cifar_tiny")
    assert count_parameters(tiny) == pytest.approx(2.7e6, rel=0.01)
    for name in PRESETS:
        config = get_config(name)
        assert config.image_size % config.patch_size == 0
    assert get_config("vit_b_16").num_tokens == 197
    assert get_config("vit_cifar_tiny", depth=3).depth == 3


def test_flops_per_image_matches_pytorch_flop_counter():
    config = ViTConfig(**SMALL, pool="cls")
    model = ViT(config).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # math path: counted as matmuls
        model(torch.randn(1, 3, 16, 16))
    assert flops_per_image(config) == counter.get_total_flops()


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL, drop_path=0.5))
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 2) + 1  # no zeros of its own
    out = DropPath(0.2).train()(x)
    dropped = (out == 0).all(dim=(1, 2))
    assert torch.equal(dropped, (out == 0).any(dim=(1, 2)))  # all of a sample or nothing
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.8)
    # 800 expected of 4000, standard deviation 25: 0.03 is almost 5 of them
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert torch.equal(DropPath(0.2).eval()(x), x)


def test_drop_path_rises_linearly_from_zero_at_the_first_block():
    model = ViT(ViTConfig(**SMALL | dict(depth=4), drop_path=0.3))
    assert isinstance(model.blocks[0].drop_path, nn.Identity)
    rates = [block.drop_path.p for block in model.blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3])


def test_set_image_size_resizes_position_embedding():
    torch.manual_seed(0)
    for pool in ("mean", "cls"):
        model = ViT(ViTConfig(**SMALL, pool=pool)).eval()
        model.set_image_size(24)
        assert model.pos_embed.shape == (1, 36 + (pool == "cls"), 32)
        assert model(torch.randn(1, 3, 24, 24)).shape == (1, 5)
    sincos = ViT(ViTConfig(**SMALL, pos_embed="sincos")).eval()
    sincos.set_image_size(8)
    assert sincos(torch.randn(1, 3, 8, 8)).shape == (1, 5)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_set_image_size_keeps_the_tables_dtype_device_and_gradient_flag(pos_embed):
    # bfloat16 on the CPU stands in for a model in bfloat16 on a GPU, "meta" for its device
    model = ViT(ViTConfig(**SMALL, pos_embed=pos_embed)).to(torch.bfloat16)
    model.pos_embed.requires_grad_(False)  # frozen (a buffer for sin-cos)
    model.set_image_size(24)
    assert model.pos_embed.dtype == torch.bfloat16 and not model.pos_embed.requires_grad
    assert model(torch.randn(2, 3, 24, 24, dtype=torch.bfloat16)).dtype == torch.bfloat16
    meta = ViT(ViTConfig(**SMALL, pos_embed=pos_embed)).to("meta")
    meta.set_image_size(24)
    assert meta(torch.randn(2, 3, 24, 24, device="meta")).device.type == "meta"


def test_builds_under_another_default_device():
    with torch.device("meta"):  # as with torch.device("cuda"), without the data
        model = ViT(ViTConfig(**SMALL, drop_path=0.1, attn_init="mimetic", pos_embed="sincos"))
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert model.blocks[-1].drop_path.p == pytest.approx(0.1)  # rising to drop_path
    assert model(torch.randn(2, 3, 16, 16, device="meta")).shape == (2, 5)


def test_bad_inputs_are_explained():
    model = ViT(ViTConfig(**SMALL))
    with pytest.raises(ValueError, match=r"for 16×16 images, got 24×24.*set_image_size\(24\)"):
        model(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        model(torch.randn(1, 1, 16, 16))
    divisors = r"\(1, 2, 3, 5, 6, 10, 15, 30\)"
    with pytest.raises(ValueError, match=r"size 30 is not divisible by patch size 4.*" + divisors):
        ViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="not divisible by num_heads 5"):
        ViTConfig(embed_dim=192, num_heads=5)
    with pytest.raises(ValueError, match="pool must be"):
        ViTConfig(pool="max")
    for name in ("dropout", "attn_dropout", "drop_path"):
        with pytest.raises(ValueError, match=rf"{name} is a probability in \[0, 1\), got 2"):
            ViTConfig(**{name: 2.0})
    with pytest.raises(ValueError, match="unknown preset 'vit_huge'.*vit_cifar_tiny"):
        create_model("vit_huge")
    with pytest.raises(ValueError, match="not divisible by patch size"):
        model.set_image_size(18)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_token_drop_keeps_a_random_subset_of_patch_tokens_in_training_only(pool):
    torch.manual_seed(0)
    config = ViTConfig(embed_dim=16, depth=1, num_heads=2, patch_size=8, pool=pool)  # 16 patches
    dropping = ViT(replace(config, token_drop=0.25))
    full = ViT(config)
    full.load_state_dict(dropping.state_dict())
    x = torch.randn(3, 3, 32, 32)
    prefix = int(pool == "cls")
    every = full.embed(x)  # (3, prefix + 16, 16)
    kept = dropping.train().embed(x)
    assert kept.shape == (3, prefix + 12, 16)
    if prefix:
        assert torch.equal(kept[:, 0], every[:, 0])  # the class token always stays
    for b in range(3):  # each kept token is one of the image's own tokens, none twice
        matches = (kept[b, prefix:, None] == every[b, None, prefix:]).all(-1)  # (12, 16)
        assert matches.sum(1).tolist() == [1] * 12 and matches.sum(0).max() == 1
    assert not torch.equal(kept, dropping.embed(x))  # a new subset every call
    assert dropping(x).shape == (3, 10)
    dropping.eval()  # evaluation sees every token: the same numbers as without token_drop
    assert torch.equal(dropping(x), full.eval()(x))
    with pytest.raises(ValueError, match=r"token_drop .* in \[0, 1\)"):
        ViTConfig(token_drop=1.0)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_residual_stream_is_stored_token_by_token(pool):
    # LayerNorm reduces over D: a stream laid out as (B, D, N) makes every norm strided (with a
    # class token, torch.cat makes a fresh tensor; the mean-pooling model relies on PatchEmbed)
    model = ViT(ViTConfig(**SMALL, pool=pool))
    tokens = model.embed(torch.randn(2, 3, 16, 16))
    assert tokens.is_contiguous()
    assert model.blocks[0](tokens).is_contiguous()


def test_weights_start_as_in_the_reference_vit():
    # truncated normal (std 0.02) for every linear map and the patch projection, zero biases,
    # LayerNorms at identity, position table of std 0.02, class token almost zero
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL | dict(embed_dim=64), pool="cls"))
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(linears) == 1 + 2 * 4 + 1  # patches, per block qkv, proj, fc1, fc2, head
    for m in linears:
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.2)
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    for m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.2)
    assert 0 < model.cls_token.abs().max() < 1e-4


def test_imagenet_presets_have_the_published_shapes():
    # ViT-B/16 (Dosovitskiy et al.), DeiT-Ti and DeiT-S: width, depth, heads; MLP 4× wide
    shapes = {"vit_ti_16": (192, 12, 3), "vit_s_16": (384, 12, 6), "vit_b_16": (768, 12, 12)}
    for name, (width, depth, heads) in shapes.items():
        c = get_config(name)
        assert (c.embed_dim, c.depth, c.num_heads) == (width, depth, heads)
        assert (c.image_size, c.patch_size, c.num_classes, c.pool) == (224, 16, 1000, "cls")
        assert c.mlp_hidden == 4 * width
    with torch.device("meta"):  # no memory for the weights
        assert count_parameters(create_model("vit_b_16")) == 86_567_656  # "86M"


def test_no_classes_gives_the_pooled_features():
    torch.manual_seed(0)
    for pool in ("mean", "cls"):
        model = ViT(ViTConfig(**SMALL | dict(num_classes=0), pool=pool)).eval()
        x = torch.randn(2, 3, 16, 16)
        features = model(x)
        assert features.shape == (2, 32)
        tokens = model.forward_features(x)
        torch.testing.assert_close(features, tokens[:, 0] if pool == "cls" else tokens.mean(1))


def test_dropout_settings_reach_embeddings_attention_and_mlp():
    config = ViTConfig(**SMALL, dropout=0.5, attn_dropout=0.25)
    model = ViT(config)
    for block in model.blocks:
        assert block.attn.attn_dropout == 0.25
        assert block.attn.proj_drop.p == 0.5 and block.mlp.drop.p == 0.5
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval().embed(x)
        tokens = model.train().embed(x)  # each entry dropped, or kept and doubled
        zeros = tokens == 0
        assert 0.4 < zeros.float().mean() < 0.6
        torch.testing.assert_close(tokens[~zeros], 2 * expected[~zeros])
        hidden = torch.randn(4, 5, 32)
        assert 0.4 < (model.blocks[0].mlp(hidden) == 0).float().mean() < 0.6


def test_every_layer_norm_uses_the_configured_eps():
    model = ViT(ViTConfig(**SMALL, norm_eps=1e-12))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-12 for m in norms)


def test_attention_maps_are_softmax_of_each_blocks_normalised_queries_and_keys():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL)).eval()
    with torch.no_grad():  # sharper than the near-uniform start, and non-trivial norms
        for block in model.blocks:
            block.attn.qkv.weight.normal_(std=0.3)
            block.norm1.weight.normal_()
            block.norm1.bias.normal_()
    x = torch.randn(2, 3, 16, 16)
    maps = model.attention_maps(x)
    heads, d = 4, 8
    with torch.no_grad():
        tokens = model.embed(x)
        for block, weights in zip(model.blocks, maps, strict=True):
            h = torch.nn.functional.layer_norm(tokens, (32,), block.norm1.weight,
                                               block.norm1.bias, eps=block.norm1.eps)
            qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias  # (B, T, 3·32)
            q, k = (qkv[..., i * 32:(i + 1) * 32].unflatten(-1, (heads, d)).transpose(1, 2)
                    for i in range(2))  # (B, H, T, d)
            expected = (q @ k.transpose(-2, -1) / d**0.5).softmax(-1)
            torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)
            tokens = block(tokens)


def test_qkv_bias_setting_reaches_every_block():
    with_bias = ViT(ViTConfig(**SMALL))
    without = ViT(ViTConfig(**SMALL, qkv_bias=False))
    assert all(block.attn.qkv.bias is None for block in without.blocks)
    assert count_parameters(with_bias) - count_parameters(without) == 2 * 3 * 32


def test_count_parameters_leaves_out_frozen_ones_when_asked():
    model = ViT(ViTConfig(**SMALL))
    total = count_parameters(model)
    model.head.requires_grad_(False)  # 32·5 weights + 5 biases
    assert count_parameters(model) == total - 165
    assert count_parameters(model, trainable_only=False) == total


def test_drop_path_drops_each_residual_branch_on_its_own():
    torch.manual_seed(0)
    block = EncoderBlock(16, 2, 32, drop_path=0.5)
    with torch.no_grad():
        block.attn.proj.weight.normal_()  # both branches well away from zero
        block.mlp.fc2.weight.normal_()
        x = torch.randn(64, 3, 16)
        block.eval()
        a = block.attn(block.norm1(x))[0]
        def mlp(y):
            return block.mlp(block.norm2(y))
        # attention dropped or kept (×2), then the MLP dropped or kept (×2)
        candidates = torch.stack([x, x + 2 * mlp(x), x + 2 * a,
                                  x + 2 * a + 2 * mlp(x + 2 * a)])  # (4, B, T, D)
        out = block.train()(x)
    close = ((out - candidates).abs() < 1e-5).all(-1).all(-1)  # (4, B)
    assert close.sum(0).tolist() == [1] * 64  # each sample is one of the four cases
    assert close.any(1).all()  # and every case occurs


def test_config_dict_rebuilds_the_same_config():
    config = ViTConfig(**SMALL, pool="cls", pos_embed="sincos", norm_eps=1e-12, drop_path=0.1)
    assert ViTConfig(**config_dict(config)) == config


def test_token_drop_draws_a_subset_for_each_image_on_its_own():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL, token_drop=0.5))  # keeps 8 of 16 patch tokens
    x = torch.randn(1, 3, 16, 16).expand(8, -1, -1, -1)  # the same image eight times
    with torch.no_grad():
        every = model.eval().embed(x[:1])[0]  # (16, D)
        kept = model.train().embed(x)  # (8, 8, D)
    which = [frozenset((k[:, None] == every).all(-1).any(0).nonzero()[:, 0].tolist()) for k in kept]
    assert all(len(w) == 8 for w in which)
    assert len(set(which)) > 1  # 12,870 possible subsets: eight equal ones would be chance


def test_mlp_width_is_truncated_as_in_timm():
    # int(embed_dim · mlp_ratio), the rule that checkpoints with such ratios were made with
    config = ViTConfig(**SMALL | dict(embed_dim=64), mlp_ratio=2.7)  # 172.8
    assert config.mlp_hidden == 172
    assert ViT(config).blocks[0].mlp.fc1.out_features == 172
