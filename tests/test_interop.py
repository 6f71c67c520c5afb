"""Weight conversion: each library's model with random weights gives the same outputs as ours."""

import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the Hub

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from vitlib import ViT, ViTConfig, resize_pos_embed
from vitlib.interop import (
    detect_format,
    from_hf,
    from_timm,
    from_torchvision,
    load_google_npz,
    load_pretrained,
    load_state_dict_checked,
)

TOL = 1e-5
SMALL = dict(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
CONFIG = ViTConfig(**SMALL, mlp_ratio=4.0, pool="cls")  # timm's defaults at the small size


def _random(model: nn.Module) -> nn.Module:
    """Every parameter random (no zero biases or unit norms that would hide a swapped key)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def _timm(**overrides) -> nn.Module:
    timm = pytest.importorskip("timm")
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    return _random(timm.models.vision_transformer.VisionTransformer(**{**kwargs, **overrides}))


def _torchvision(**overrides) -> nn.Module:
    kwargs = dict(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48,
                  mlp_dim=96, num_classes=10)
    return _random(TorchvisionViT(**{**kwargs, **overrides}))


def _hf(
    kind: str = "ViTForImageClassification", config: str = "ViTConfig", **overrides
) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    kwargs = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                  num_attention_heads=3, intermediate_size=96, num_labels=10)
    hf_config = getattr(transformers, config)(**{**kwargs, **overrides})
    return _random(getattr(transformers, kind)(hf_config))


# --- timm -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, pool",
    [
        (dict(), "cls"),
        (dict(act_layer="gelu"), "cls"),  # timm's own exact GELU module
        (dict(no_embed_class=True), "cls"),  # class token without a position
        (dict(class_token=False, global_pool="avg", fc_norm=False, mlp_ratio=2.0,
              qkv_bias=False), "mean"),
    ],
    ids=["cls", "timm-gelu", "cls-no-embed-class", "avg"],
)
def test_timm_same_logits(kwargs, pool):
    ref = _timm(**kwargs)
    ours = from_timm(ref)
    c = ours.config
    assert (c.pool, c.num_heads, c.depth, c.embed_dim, c.patch_size) == (pool, 3, 2, 48, 8)
    assert (c.mlp_ratio, c.qkv_bias, c.norm_eps) == (
        kwargs.get("mlp_ratio", 4.0), kwargs.get("qkv_bias", True), 1e-6
    )
    x = _images()
    with torch.no_grad():
        assert _max_diff(ours(x), ref(x)) <= TOL
        assert _max_diff(ours.forward_features(x), ref.forward_features(x)) <= TOL


def test_timm_state_dict_needs_config():
    ref = _timm()
    with pytest.raises(ValueError, match=r"num_heads.*embed_dim=48|embed_dim=48.*num_heads"):
        from_timm(ref.state_dict())
    with pytest.raises(ValueError, match=r"num_heads from \[1, 2, 3, 4, 6, 8, 12, 16, 24\]"):
        from_timm(ref.state_dict())  # the divisors of 48 up to 32
    ours = from_timm(ref.state_dict(), CONFIG)
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_timm_state_dict_square_table_is_read_with_the_config():
    """25 rows and a class token: a 5×5 grid whose class token has no position
    (no_embed_class), or a 4×6 grid and the class token's slot. Only a config for a 5×5 grid
    tells the first."""
    non_square = _timm(img_size=(32, 48)).state_dict()
    for config in (None, CONFIG):
        with pytest.raises(ValueError, match=r"ambiguous: either a 5×5 .* or 24 patches"):
            from_timm(non_square, config)
    ref = _timm(img_size=40, no_embed_class=True)
    ours = from_timm(ref.state_dict(), replace(CONFIG, image_size=40))
    with torch.no_grad():
        assert _max_diff(ours(_images(40)), ref(_images(40))) <= TOL


@pytest.mark.parametrize(
    "kwargs, feature",
    [
        (dict(init_values=1e-5), "layer scale"),
        (dict(reg_tokens=2), "register tokens"),
        (dict(class_token=False, global_pool="avg"), "fc_norm"),
        (dict(qk_norm=True), "query-key normalisation"),
        (dict(global_pool="avg"), "global_pool='avg' with class_token=True"),
        (dict(pos_embed="none"), "position embedding"),
        (dict(act_layer="gelu_tanh"), "activation"),
        (dict(pre_norm=True), "before the blocks"),
        (dict(norm_layer="rmsnorm"), "the final norm RmsNorm"),
        (dict(norm_layer="rmsnorm"), "the norm layer RmsNorm"),  # the blocks' norms as well
        (dict(scale_attn_norm=True), "a norm inside attention"),
        (dict(scale_mlp_norm=True), "a norm inside the MLP"),
        (dict(embed_norm_layer="layernorm"), "a norm after the patch embedding"),
    ],
)
def test_timm_unsupported_features_are_named(kwargs, feature):
    with pytest.raises(ValueError, match=feature) as error:
        from_timm(_timm(**kwargs))
    if "norm_layer" in kwargs:  # a final norm of another kind is not a norm after pooling
        assert "after pooling" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, feature",
    [
        (dict(init_values=1e-5), "layer scale"),
        (dict(reg_tokens=2), "register tokens"),
        (dict(class_token=False, global_pool="avg"), "a LayerNorm after pooling"),
        (dict(qk_norm=True), "query-key normalisation"),
        (dict(pre_norm=True), "a LayerNorm before the blocks"),
        (dict(scale_attn_norm=True), "a norm inside attention"),
        (dict(scale_mlp_norm=True), "a norm inside the MLP"),
        (dict(embed_norm_layer="layernorm"), "a norm after the patch embedding"),
        (dict(global_pool="map"), "attention pooling"),
    ],
)
def test_timm_state_dict_features_are_named(kwargs, feature):
    """Without the model, the key names alone tell these features."""
    with pytest.raises(ValueError, match=feature):
        from_timm(_timm(**kwargs).state_dict(), CONFIG)


def test_timm_post_norm_blocks_are_refused():
    """ResPostBlock has the same weights as Block but normalises after each residual branch."""
    timm = pytest.importorskip("timm")
    ref = _timm(block_fn=timm.models.vision_transformer.ResPostBlock)
    with pytest.raises(ValueError, match=r"blocks of kind \('ResPostBlock', 'Attention'"):
        from_timm(ref)


def test_timm_hybrid_backbone_is_named():
    timm = pytest.importorskip("timm")
    hybrid = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=32,
                               num_classes=10)
    for convert in (from_timm, load_pretrained):
        with pytest.raises(ValueError, match="convolutional backbone .*timm hybrid"):
            convert(hybrid)


def test_timm_distillation_token_is_named():
    timm = pytest.importorskip("timm")
    deit = _random(timm.models.deit.VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10))
    for convert in (from_timm, load_pretrained):
        with pytest.raises(ValueError, match="distillation token"):
            convert(deit)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_layer_norm_eps_is_read_from_the_model(library):
    build, convert = {"timm": (_timm, from_timm),
                      "torchvision": (_torchvision, from_torchvision)}[library]
    ref = build(norm_layer=partial(nn.LayerNorm, eps=1e-2))
    ours = convert(ref)
    assert ours.config.norm_eps == 1e-2
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL
    with pytest.raises(ValueError, match=f"config.norm_eps=1e-06 contradicts the {library} model"):
        convert(ref, CONFIG)


# --- torchvision ----------------------------------------------------------------------------

def test_torchvision_same_logits():
    ref = _torchvision()
    ours = from_torchvision(ref)
    assert (ours.config.num_heads, ours.config.mlp_ratio, ours.config.pool) == (3, 2.0, "cls")
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_torchvision_pre_logits_is_refused_unless_head_dropped():
    ref = _torchvision(representation_size=32)
    with pytest.raises(ValueError, match="pre-logits"):
        from_torchvision(ref)
    backbone = from_torchvision(ref, replace(CONFIG, mlp_ratio=2.0, num_classes=0))
    assert backbone(_images()).shape == (2, 48)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_torchvision_model_without_classes_converts_to_its_backbone():
    """torchvision's num_classes=0 keeps an empty Linear head (0 outputs), which vitlib drops."""
    ref = _torchvision(num_classes=0)
    ours = from_torchvision(ref)
    assert ours.config.num_classes == 0
    ref.heads = nn.Identity()  # the features the empty head is applied to
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_torchvision_conv_stem_is_named():
    from torchvision.models.vision_transformer import ConvStemConfig

    ref = _torchvision(conv_stem_configs=[ConvStemConfig(out_channels=16, kernel_size=3,
                                                         stride=2)] * 3)
    for convert in (from_torchvision, load_pretrained):
        with pytest.raises(ValueError, match="a convolutional stem"):
            convert(ref)
    with pytest.raises(ValueError, match="a convolutional stem"):
        from_torchvision(ref.state_dict(), replace(CONFIG, mlp_ratio=2.0))


def test_torchvision_older_mlp_key_names():
    """torchvision's published weight files name the MLP layers mlp.linear_1 and mlp.linear_2."""
    ref = _torchvision()
    old = {key.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): value
           for key, value in ref.state_dict().items()}
    assert "encoder.layers.encoder_layer_1.mlp.linear_2.bias" in old
    ours = from_torchvision(old, replace(CONFIG, mlp_ratio=2.0))
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_mlp_width_that_no_float_ratio_times_width_gives():
    """51 / 42 · 42 rounds down to 50 in floating point: the ratio read from the weights must
    still give an MLP of 51."""
    ref = _torchvision(hidden_dim=42, mlp_dim=51)
    ours = from_torchvision(ref)
    assert int(ours.config.embed_dim * ours.config.mlp_ratio) == 51
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


# --- Hugging Face ---------------------------------------------------------------------------

def test_hf_vit_model_tokens_equal_last_hidden_state():
    ref = _hf("ViTModel")
    ours = from_hf(ref)  # the pooler is skipped
    assert (ours.config.num_classes, ours.config.norm_eps) == (0, 1e-12)
    x = _images()
    with torch.no_grad():
        assert _max_diff(ours.forward_features(x), ref(x).last_hidden_state) <= TOL


@pytest.mark.parametrize(
    "kind, config, overrides",
    [
        ("ViTForImageClassification", "ViTConfig", {}),
        ("ViTForImageClassification", "ViTConfig", dict(hidden_act="gelu_python")),  # erf GELU
        ("ViTMSNForImageClassification", "ViTMSNConfig", {}),
        ("IJepaForImageClassification", "IJepaConfig", {}),  # no class token, keys "ijepa."
    ],
    ids=["vit", "vit-gelu-python", "vit-msn", "ijepa"],
)
def test_hf_classifier_same_logits(kind, config, overrides):
    ref = _hf(kind, config, **overrides)
    ours = from_hf(ref)
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images()).logits) <= TOL


@pytest.mark.parametrize(
    "kind, config", [("ViTMAEModel", "ViTMAEConfig"), ("DPTModel", "DPTConfig")]
)
def test_hf_encoders_laid_out_like_vit_give_the_same_tokens(kind, config):
    """ViT MAE's encoder (nothing masked, and ascending noise keeps the patches in order) and
    DPT's ViT backbone convert like a ViTModel."""
    mae = kind == "ViTMAEModel"
    ref = _hf(kind, config, **(dict(mask_ratio=0.0) if mae else {}))
    ours = from_hf(ref)
    x = _images()
    kwargs = dict(noise=torch.arange(16.0).expand(2, 16)) if mae else {}
    with torch.no_grad():
        assert _max_diff(ours.forward_features(x), ref(x, **kwargs).last_hidden_state) <= TOL


def test_hf_state_dict_needs_config_with_its_layer_norm_eps():
    ref = _hf()
    with pytest.raises(ValueError, match=r"num_heads=\.\.\., norm_eps=1e-12"):
        from_hf(ref.state_dict())
    ours = from_hf(ref.state_dict(), replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12))
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images()).logits) <= TOL


def test_hf_older_key_names():
    """Most Hub checkpoints carry the names of transformers 4: encoder.layer.i.attention...."""
    ref = _hf()
    renames = [
        ("vit.layers.", "vit.encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    old = {}
    for key, value in ref.state_dict().items():
        for new_name, old_name in renames:
            key = key.replace(new_name, old_name)
        old[key] = value
    assert "vit.encoder.layer.1.attention.attention.value.bias" in old
    config = replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12)
    ours = from_hf(old, config)
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images()).logits) <= TOL


def test_hf_other_activation_is_refused():
    with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
        from_hf(_hf(hidden_act="gelu_new"))


def test_hf_head_dim_other_than_width_over_heads_is_refused():
    with pytest.raises(ValueError, match="head_dim=8, not hidden_size / num_attention_heads"):
        from_hf(_hf("ViTModel", head_dim=8))


def test_hf_mask_token_is_skipped():
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48,
                                       num_hidden_layers=2, num_attention_heads=3,
                                       intermediate_size=96)
    ref = _random(transformers.ViTModel(hf_config, use_mask_token=True))
    assert "embeddings.mask_token" in ref.state_dict()
    ours = from_hf(ref)
    x = _images()
    with torch.no_grad():
        assert _max_diff(ours.forward_features(x), ref(x).last_hidden_state) <= TOL


@pytest.mark.parametrize(
    "kind, config, overrides, named",
    [
        ("SwinModel", "SwinConfig", dict(patch_size=4, depths=[1, 1], window_size=2,
                                         num_attention_heads=[3, 3]), "model_type='swin'"),
        ("CLIPVisionModel", "CLIPVisionConfig", {}, "model_type='clip_vision_model'"),
        ("DeiTModel", "DeiTConfig", {}, "a distillation token"),
        ("DeiTForImageClassificationWithTeacher", "DeiTConfig", {}, "a distillation token"),
        ("Dinov2ForImageClassification", "Dinov2Config", dict(mlp_ratio=2), "layer scale"),
        ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dict(mlp_ratio=2),
         "register tokens"),
        ("BeitForImageClassification", "BeitConfig", dict(use_relative_position_bias=True),
         "relative position bias"),
        ("DPTModel", "DPTConfig", dict(is_hybrid=True), "a convolutional backbone"),
    ],
)
def test_hf_other_models_are_refused_naming_what_they_have(kind, config, overrides, named):
    model = _hf(kind, config, **overrides)
    with pytest.raises(ValueError, match=named):
        load_pretrained(model)
    if "model_type" not in named:  # a feature the weights show
        with pytest.raises(ValueError, match=named):
            from_hf(model.state_dict(), replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12))


def test_hf_missing_key_bias_is_named():
    beit = _hf("BeitModel", "BeitConfig", layer_scale_init_value=0.0, use_mean_pooling=False,
               use_absolute_position_embeddings=True)
    with pytest.raises(ValueError, match=r"no matching blocks\.0\.attn\.k\.bias.*BEiT"):
        from_hf(beit.state_dict(), replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12))


# --- Google .npz ----------------------------------------------------------------------------

def _google_arrays(model: nn.Module, layout: str) -> dict[str, np.ndarray]:
    """A timm model's weights in Flax layout, named as in Google's checkpoints."""
    big = layout == "big_vision"
    mha, ln2, mlp = (
        ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big
        else ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    )
    d, h = model.embed_dim, model.blocks[0].attn.num_heads
    a = {
        "embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),  # HWIO
        "embedding/bias": model.patch_embed.proj.bias,
        "pos_embedding" if big else "Transformer/posembed_input/pos_embedding": model.pos_embed,
        "Transformer/encoder_norm/scale": model.norm.weight,
        "Transformer/encoder_norm/bias": model.norm.bias,
        "head/kernel": model.head.weight.T,
        "head/bias": model.head.bias,
    }
    if model.cls_token is not None:
        a["cls"] = model.cls_token
    blocks = []
    for block in model.blocks:
        b = {
            "LayerNorm_0/scale": block.norm1.weight,
            "LayerNorm_0/bias": block.norm1.bias,
            f"{mha}/out/kernel": block.attn.proj.weight.T.reshape(h, d // h, d),
            f"{mha}/out/bias": block.attn.proj.bias,
            f"{ln2}/scale": block.norm2.weight,
            f"{ln2}/bias": block.norm2.bias,
        }
        for name, w, bias in zip(("query", "key", "value"), block.attn.qkv.weight.chunk(3),
                                 block.attn.qkv.bias.chunk(3), strict=True):
            b[f"{mha}/{name}/kernel"] = w.T.reshape(d, h, d // h)
            b[f"{mha}/{name}/bias"] = bias.reshape(h, d // h)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            b[f"{mlp}/Dense_{r}/kernel"] = fc.weight.T
            b[f"{mlp}/Dense_{r}/bias"] = fc.bias
        blocks.append(b)
    if big:  # big_vision scans the blocks: one array per name, stacked over depth
        stacked = {k: torch.stack([b[k] for b in blocks]) for k in blocks[0]}
        a |= {f"Transformer/encoderblock/{k}": v for k, v in stacked.items()}
        a = {f"params/{k}": v for k, v in a.items()}
    else:
        a |= {f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks)
              for k, v in b.items()}
    return {k: v.detach().numpy().copy() for k, v in a.items()}


@pytest.mark.parametrize(
    "layout, kwargs",
    [
        ("vision_transformer", dict()),
        ("big_vision", dict(class_token=False, global_pool="avg", fc_norm=False)),
    ],
)
def test_google_npz_same_logits_as_timm_loader(tmp_path, layout, kwargs):
    timm = pytest.importorskip("timm")
    path = tmp_path / "vit.npz"
    np.savez(path, **_google_arrays(_timm(**kwargs), layout))
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, **kwargs
    ).eval()
    timm.models.vision_transformer._load_weights(ref, str(path))
    ours = load_google_npz(path)
    assert ours.config == replace(CONFIG, pool="cls" if not kwargs else "mean")
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_google_npz_pre_logits_and_map_head(tmp_path):
    ref = _timm()
    arrays = _google_arrays(ref, "vision_transformer")
    pre_logits = {"pre_logits/kernel": np.ones((48, 48), np.float32),
                  "pre_logits/bias": np.zeros(48, np.float32)}
    with pytest.raises(ValueError, match="pre-logits.*num_classes=0"):
        load_google_npz({**arrays, **pre_logits})
    backbone = load_google_npz({**arrays, **pre_logits}, replace(CONFIG, num_classes=0))
    x = _images()
    with torch.no_grad():
        assert _max_diff(backbone.forward_features(x), ref.forward_features(x)) <= TOL
    with pytest.raises(ValueError, match="MAPHead"):
        load_google_npz({**arrays, "MAPHead_0/probe": np.zeros((1, 1, 48), np.float32)})


def test_google_npz_attention_kernels_are_checked():
    arrays = _google_arrays(_timm(), "vision_transformer")
    flat = {k: v.reshape(48, 48) if k.endswith(("query/kernel", "key/kernel", "value/kernel"))
            else v for k, v in arrays.items()}
    with pytest.raises(ValueError, match=r"encoderblock_0/.*/query/kernel has shape \(48, 48\)"):
        load_google_npz(flat)
    for name, shape in [("out", (6, 8, 48)), ("query", (48, 6, 8))]:
        key = f"Transformer/encoderblock_1/MultiHeadDotProductAttention_1/{name}/kernel"
        with pytest.raises(ValueError, match=f"{key} has 6 heads of 8 .* has 3 of 16"):
            load_google_npz({**arrays, key: arrays[key].reshape(shape)})


def test_google_npz_big_vision_class_token_has_no_position():
    """big_vision adds the position table before prepending the class token: its table has
    no slot for it, as timm's no_embed_class."""
    ref = _timm(no_embed_class=True)
    arrays = _google_arrays(ref, "big_vision")
    assert arrays["params/pos_embedding"].shape == (1, 16, 48) and "params/cls" in arrays
    ours = load_google_npz(arrays)
    assert ours.config.pool == "cls" and not ours.pos_embed[0, 0].any()
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_google_npz_training_state_prefix_is_removed():
    ref = _timm()
    arrays = {f"opt/target/{k}": v for k, v in _google_arrays(ref, "vision_transformer").items()}
    ours = load_google_npz(arrays)
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL


# --- config given with a model --------------------------------------------------------------

def test_config_must_agree_with_the_model():
    """A model fixes num_heads and norm_eps: a config saying otherwise is refused, not obeyed."""
    with pytest.raises(ValueError, match="config.num_heads=6 contradicts the timm model, which "
                                         "has num_heads=3; pass a config with num_heads=3"):
        from_timm(_timm(), replace(CONFIG, num_heads=6))
    with pytest.raises(ValueError, match="config.num_heads=6 contradicts the torchvision"):
        load_pretrained(_torchvision(), replace(CONFIG, mlp_ratio=2.0, num_heads=6))
    hf = _hf()
    with pytest.raises(ValueError, match="config.norm_eps=1e-06 .* norm_eps=1e-12"):
        from_hf(hf, replace(CONFIG, mlp_ratio=2.0))  # ViTConfig's default, not the model's
    ours = from_hf(hf, replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12, dropout=0.1))
    with torch.no_grad():
        assert _max_diff(ours(_images()), hf(_images()).logits) <= TOL
    with pytest.raises(ValueError, match="config.num_heads=6 contradicts the google"):
        load_google_npz(_google_arrays(_timm(), "vision_transformer"),
                        replace(CONFIG, num_heads=6))


# --- image size -----------------------------------------------------------------------------

def test_image_size_resizes_position_embedding_only_when_asked():
    ref = _timm()
    ours = from_timm(ref, image_size=48)
    assert ours.config.image_size == 48 and ours.pos_embed.shape == (1, 1 + 36, 48)
    expected = resize_pos_embed(ref.pos_embed.detach(), (6, 6), num_prefix_tokens=1)
    assert torch.equal(ours.pos_embed.detach(), expected)
    assert ours(_images(48)).shape == (2, 10)
    with pytest.warns(UserWarning, match="using 32. Pass image_size=64"):
        kept = from_timm(ref.state_dict(), replace(CONFIG, image_size=64))
    assert kept.config.image_size == 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resized = from_timm(ref.state_dict(), replace(CONFIG, image_size=64), image_size=64)
    assert resized.config.image_size == 64 and resized(_images(64)).shape == (2, 10)


def test_every_converter_resizes_the_position_embedding(tmp_path):
    timm_model, tv, hf = _timm(), _torchvision(), _hf()
    x = _images(48)

    def resized(table: torch.Tensor) -> torch.Tensor:
        return resize_pos_embed(table.detach(), (6, 6), num_prefix_tokens=1)

    for ours in (from_torchvision(tv, image_size=48), load_pretrained(tv, image_size=48)):
        assert ours.config.image_size == 48
        assert torch.equal(ours.pos_embed.detach(), resized(tv.encoder.pos_embedding))
    for ours in (from_hf(hf, image_size=48), load_pretrained(hf, image_size=48)):
        with torch.no_grad():  # Hugging Face resizes the same way
            expected = hf(x, interpolate_pos_encoding=True).logits
            assert _max_diff(ours(x), expected) <= TOL
    arrays = _google_arrays(timm_model, "vision_transformer")
    np.savez(tmp_path / "vit.npz", **arrays)
    for ours in (load_google_npz(arrays, image_size=48),
                 load_pretrained(tmp_path / "vit.npz", image_size=48),
                 load_pretrained(timm_model.state_dict(), CONFIG, image_size=48)):
        assert ours.config.image_size == 48
        assert torch.equal(ours.pos_embed.detach(), resized(timm_model.pos_embed))


def test_non_square_models_are_refused():
    """32×48 images in patches of 8: a 4×6 grid, whose 24 + 1 positions would pass for a 5×5
    grid without the class token's slot."""
    timm_model = _timm(img_size=(32, 48))
    hf = _hf(image_size=[32, 48])
    assert timm_model.pos_embed.shape[1] == hf.vit.embeddings.position_embeddings.shape[1] == 25
    for convert in (from_timm, load_pretrained):
        with pytest.raises(ValueError, match="vitlib needs square images"):
            convert(timm_model)
    for convert in (from_hf, load_pretrained):
        with pytest.raises(ValueError, match="vitlib needs square images"):
            convert(hf)
    with pytest.raises(ValueError, match="vitlib needs square images"):
        from_hf(hf.state_dict(), replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12))


def test_non_square_grid_with_a_square_number_of_patches_is_refused():
    """16×64 images in patches of 8: a 2×8 grid, whose 16 + 1 positions are a 4×4 grid's with
    the class token's slot. Only the model tells it."""
    timm_model, hf = _timm(img_size=(16, 64)), _hf(image_size=[16, 64])
    assert timm_model.pos_embed.shape[1] == hf.vit.embeddings.position_embeddings.shape[1] == 17
    for model, convert, what in ((timm_model, from_timm, "patch grid is 2×8"),
                                 (hf, from_hf, "image_size is 16×64")):
        for convert_ in (convert, load_pretrained):
            with pytest.raises(ValueError, match=f"non-square images \\(its {what}\\)"):
                convert_(model)


def test_non_square_patches_are_refused():
    """Patches of 8×4 on 32×16 images: a square 4×4 grid of patches that are not square."""
    ref = _timm(patch_size=(8, 4), img_size=(32, 16))
    for convert in (from_timm, load_pretrained):
        with pytest.raises(ValueError, match="patches of 8×4 are not square"):
            convert(ref)


# --- bad input and dispatch -----------------------------------------------------------------

def test_wrong_converter_names_the_right_one():
    with pytest.raises(ValueError, match="torchvision checkpoint: use vitlib.interop.from_torch"):
        from_timm(_torchvision().state_dict(), CONFIG)
    with pytest.raises(ValueError, match="timm checkpoint: use vitlib.interop.from_timm"):
        from_hf(_timm().state_dict(), CONFIG)
    with pytest.raises(ValueError, match="does not look like a google checkpoint.*Vision Trans"):
        load_google_npz({"weights": np.zeros(3)})


def _resnets() -> list[nn.Module]:
    """Tiny ResNets from timm and torchvision: modules of those libraries that are not ViTs."""
    timm = pytest.importorskip("timm")
    from torchvision.models import resnet

    return [timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [1, 1, 1, 1]),
            resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1])]


@pytest.mark.parametrize("convert", [load_pretrained, from_timm, from_torchvision, from_hf])
def test_other_modules_are_refused_with_their_name(convert):
    for model in _resnets():
        with pytest.raises(ValueError, match="ResNet"):
            convert(model)


def test_checked_load_lists_keys_and_suggests_fix():
    state = _random(ViT(CONFIG)).state_dict()  # vitlib's names (the same as timm's)
    model = ViT(CONFIG)
    with pytest.raises(ValueError, match="1 missing keys: head.weight"):
        load_state_dict_checked(model, {k: v for k, v in state.items() if k != "head.weight"})
    with pytest.raises(ValueError, match="1 unexpected keys: extra.weight"):
        load_state_dict_checked(model, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"shapes differ.*Use a config with embed_dim=48"):
        load_state_dict_checked(ViT(replace(CONFIG, embed_dim=60)), state)
    with pytest.raises(ValueError, match="Use a config with pool='cls'"):
        load_state_dict_checked(ViT(replace(CONFIG, pool="mean")), state)
    with pytest.raises(ValueError, match=r"unexpected keys: pos_embed.*pos_embed='learned'"):
        load_state_dict_checked(ViT(replace(CONFIG, pos_embed="sincos")), state)
    with pytest.raises(ValueError, match="use vitlib.interop.from_torchvision"):
        load_state_dict_checked(model, _torchvision().state_dict())


def test_detect_format_and_load_pretrained(tmp_path):
    timm_model, tv, hf = _timm(), _torchvision(), _hf()
    cases = {"timm": timm_model, "torchvision": tv, "hf": hf}
    for name, model in cases.items():
        assert detect_format(model.state_dict()) == name
        assert isinstance(load_pretrained(model), ViT)
    assert detect_format(ViT(CONFIG).state_dict()) == "timm"  # vitlib uses timm's names
    assert detect_format(_google_arrays(timm_model, "big_vision")) == "google"
    assert detect_format({"foo.weight": torch.zeros(1)}) == "unknown"

    torch.save({"model": tv.state_dict()}, tmp_path / "tv.pt")
    ours = load_pretrained(tmp_path / "tv.pt", replace(CONFIG, mlp_ratio=2.0))
    np.savez(tmp_path / "vit.npz", **_google_arrays(timm_model, "vision_transformer"))
    from_npz = load_pretrained(tmp_path / "vit.npz")
    with torch.no_grad():
        assert _max_diff(ours(_images()), tv(_images())) <= TOL
        assert _max_diff(from_npz(_images()), timm_model(_images())) <= TOL
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(hf.state_dict(), tmp_path / "model.safetensors")
    from_file = load_pretrained(tmp_path / "model.safetensors", replace(CONFIG, mlp_ratio=2.0,
                                                                        norm_eps=1e-12))
    with torch.no_grad():
        assert _max_diff(from_file(_images()), hf(_images()).logits) <= TOL
    with pytest.raises(ValueError, match="cannot convert a Linear"):
        load_pretrained(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cannot tell which library"):
        load_pretrained({"foo.weight": torch.zeros(1)})


def test_load_pretrained_file_extensions(tmp_path):
    ref = _timm()
    with open(tmp_path / "VIT.NPZ", "wb") as file:  # np.savez would append ".npz"
        np.savez(file, **_google_arrays(ref, "vision_transformer"))
    ours = load_pretrained(tmp_path / "VIT.NPZ")
    with torch.no_grad():
        assert _max_diff(ours(_images()), ref(_images())) <= TOL
    np.save(tmp_path / "vit.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"extension \.npy is not one of .*\.pth"):
        load_pretrained(tmp_path / "vit.npy")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds a Tensor, not a state dict"):
        load_pretrained(tmp_path / "tensor.pt")
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, tmp_path / "last.ckpt")
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(ref.state_dict(), tmp_path / "MODEL.SAFETENSORS")
    for path in ("last.ckpt", "MODEL.SAFETENSORS"):  # under "state_dict"; any case
        ours = load_pretrained(tmp_path / path, CONFIG)
        with torch.no_grad():
            assert _max_diff(ours(_images()), ref(_images())) <= TOL


def test_ddp_module_prefix_is_removed(tmp_path):
    timm_model, hf = _timm(), _hf()
    ddp = {f"module.{key}": value for key, value in timm_model.state_dict().items()}
    torch.save(ddp, tmp_path / "ddp.pth")
    hf_ddp = {f"module.{key}": value for key, value in hf.state_dict().items()}
    from_hf_ddp = from_hf(hf_ddp, replace(CONFIG, mlp_ratio=2.0, norm_eps=1e-12))
    with torch.no_grad():
        for ours in (from_timm(ddp, CONFIG), load_pretrained(tmp_path / "ddp.pth", CONFIG)):
            assert _max_diff(ours(_images()), timm_model(_images())) <= TOL
        assert _max_diff(from_hf_ddp(_images()), hf(_images()).logits) <= TOL


def test_module_prefix_is_kept_unless_on_every_key():
    """Only a prefix on every key is DistributedDataParallel's; keys with and without it are
    left as they are, and do not fit."""
    state = _timm().state_dict()
    *prefixed, last = state
    mixed = {**{f"module.{key}": state[key] for key in prefixed}, last: state[last]}
    with pytest.raises(ValueError, match=r"no keys \['patch_embed\.proj\.weight'"):
        from_timm(mixed, CONFIG)
