"""Loading other libraries' Vision Transformer weights into vitlib's ``ViT``.

Supported sources (plain ViTs: pre-norm blocks, learned position embedding, final LayerNorm on
all tokens, then the class token or the mean of the tokens, then a linear head):

- timm ``VisionTransformer``: class-token models, and ``class_token=False, global_pool='avg',
  fc_norm=False`` models (our ``pool='mean'``)                              -> ``from_timm``
- torchvision ``vit_b_16``-family ``VisionTransformer``                     -> ``from_torchvision``
- Hugging Face ``ViTModel`` and ``ViTForImageClassification``, with the key names of
  transformers 5 or the older ones most Hub checkpoints carry, and the models laid out like
  them (``HF_MODEL_TYPES``: ViT MSN, ViT MAE's encoder, DPT's, I-JEPA)     -> ``from_hf``
- Google's ``.npz`` checkpoints of google-research/vision_transformer and big_vision
                                                                            -> ``load_google_npz``

Each converter renames keys with its format's table, refuses features vitlib's ViT does not
have with a ``ValueError`` naming them, reads the config from the source, builds a ``ViT`` and
loads it with ``load_state_dict_checked``. ``load_pretrained`` picks the converter for you.
The result is a float32 model on the CPU, whatever the source's device and dtype: move it with
``.to(device)`` before comparing it with a source on a GPU.
Nothing here downloads or imports timm, torchvision or transformers: a model is read through
its ``state_dict()`` and a few attributes.
"""

from __future__ import annotations

import math
import operator
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from .model import ViT, ViTConfig

StateDict = Mapping[str, Tensor]

# --- key tables: a source name prefix -> vitlib's name -------------------------------------
# Block tables rename the part after the block prefix, whose group is the block index.
# timm's VisionTransformer already uses vitlib's names, so it needs no table.

TORCHVISION_KEYS = {
    "conv_proj.": "patch_embed.proj.",
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.": "norm.",
    "heads.head.": "head.",
}
TORCHVISION_BLOCK = r"encoder\.layers\.encoder_layer_(\d+)\."
TORCHVISION_BLOCK_KEYS = {
    "ln_1.": "norm1.",
    "self_attention.in_proj_": "attn.qkv.",  # in_proj_weight: rows [q; k; v], as ours
    "self_attention.out_proj.": "attn.proj.",
    "ln_2.": "norm2.",
    "mlp.0.": "mlp.fc1.",
    "mlp.3.": "mlp.fc2.",
    "mlp.linear_1.": "mlp.fc1.",  # the same weights in torchvision's older weight files
    "mlp.linear_2.": "mlp.fc2.",
}

HF_PREFIX = r"^(?:vit|ijepa)\."  # the base model's, in ViTForImageClassification and the like
HF_KEYS = {  # after HF_PREFIX is removed
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "layernorm.": "norm.",
    "classifier.": "head.",
}
HF_BLOCK = r"(?:layers|encoder\.layer)\.(\d+)\."
HF_BLOCK_KEYS = {
    "layernorm_before.": "norm1.",
    "attention.q_proj.": "attn.q.",  # separate q, k, v: fused into attn.qkv afterwards
    "attention.k_proj.": "attn.k.",
    "attention.v_proj.": "attn.v.",
    "attention.o_proj.": "attn.proj.",
    "layernorm_after.": "norm2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    # the same weights under the names of transformers 4
    "attention.attention.query.": "attn.q.",
    "attention.attention.key.": "attn.k.",
    "attention.attention.value.": "attn.v.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
HF_SKIPPED = ("pooler.", "embeddings.mask_token")  # see from_hf
HF_MODEL_TYPES = ("vit", "vit_msn", "vit_mae", "dpt", "ijepa")  # config.model_type that convert
HF_ACTIVATIONS = ("gelu", "gelu_python")  # transformers' names of the exact (erf) GELU

GOOGLE_KEYS = {  # leaves "kernel" and "scale" become "weight"
    "embedding/": "patch_embed.proj.",
    "cls": "cls_token",
    "Transformer/posembed_input/pos_embedding": "pos_embed",  # vision_transformer
    "pos_embedding": "pos_embed",  # big_vision
    "Transformer/encoder_norm/": "norm.",
    "head/": "head.",
}
GOOGLE_BLOCK = r"Transformer/encoderblock_(\d+)/"
GOOGLE_BLOCK_KEYS = {  # vision_transformer numbers the modules 0, 1, 2, 3; big_vision 0, 0, 1, 0
    "LayerNorm_0/": "norm1.",
    "MultiHeadDotProductAttention_1/query/": "attn.q.",
    "MultiHeadDotProductAttention_1/key/": "attn.k.",
    "MultiHeadDotProductAttention_1/value/": "attn.v.",
    "MultiHeadDotProductAttention_1/out/": "attn.proj.",
    "LayerNorm_2/": "norm2.",
    "MlpBlock_3/Dense_0/": "mlp.fc1.",
    "MlpBlock_3/Dense_1/": "mlp.fc2.",
    "MultiHeadDotProductAttention_0/query/": "attn.q.",
    "MultiHeadDotProductAttention_0/key/": "attn.k.",
    "MultiHeadDotProductAttention_0/value/": "attn.v.",
    "MultiHeadDotProductAttention_0/out/": "attn.proj.",
    "LayerNorm_1/": "norm2.",
    "MlpBlock_0/Dense_0/": "mlp.fc1.",
    "MlpBlock_0/Dense_1/": "mlp.fc2.",
}

UNSUPPORTED = {  # a fragment of a key, in the source's names or in vitlib's (after renaming)
    # -> the feature it reveals, which vitlib's ViT does not have
    "fc_norm.": "a LayerNorm after pooling (timm fc_norm)",
    ".ls1.": "layer scale (timm init_values)",
    "reg_token": "register tokens (timm reg_tokens)",
    "dist_token": "a distillation token (timm DeiT distilled models)",
    "distillation_token": "a distillation token (Hugging Face DeiT)",
    "layer_scale": "layer scale (Hugging Face DINOv2)",
    "lambda_1": "layer scale (Hugging Face BEiT, Data2VecVision)",
    "register_tokens": "register tokens (Hugging Face Dinov2WithRegisters)",
    "relative_position_bias": "relative position bias (Hugging Face BEiT, Data2VecVision, Swin)",
    ".q_norm.": "query-key normalisation (timm qk_norm)",
    "norm_pre.": "a LayerNorm before the blocks (timm pre_norm)",
    "patch_embed.norm.": "a norm after the patch embedding (timm embed_norm_layer)",
    "attn_pool.": "attention pooling (timm global_pool='map')",
    ".attn.norm.": "a norm inside attention (timm scale_attn_norm)",
    ".mlp.norm.": "a norm inside the MLP (timm scale_mlp_norm)",
    "patch_embed.proj.conv_": "a convolutional stem (torchvision conv_stem_configs)",
    "MAPHead_0/": "attention pooling (big_vision MAPHead)",
    "conv_root/": "a ResNet stem (hybrid ViT)",
    "patch_embed.backbone.": "a convolutional backbone before the patch embedding (timm hybrid "
    "ViT)",
    "embeddings.backbone.": "a convolutional backbone (Hugging Face DPT is_hybrid)",
    "pre_logits": "a pre-logits layer before the head (to keep only the backbone, pass a config "
    "with num_classes=0)",
}

# what each converter reads from a model, besides its state dict
TIMM_ATTRIBUTES = ("blocks", "norm", "patch_embed.grid_size", "global_pool", "has_class_token")
TORCHVISION_ATTRIBUTES = ("conv_proj", "class_token", "encoder.layers", "encoder.ln")
HF_ATTRIBUTES = ("config.model_type", "config.hidden_act", "config.hidden_size",
                 "config.num_attention_heads", "config.layer_norm_eps", "config.image_size")

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")  # besides .npz
GOOGLE_ATTENTION = (
    r"Transformer/encoderblock_\d+/MultiHeadDotProductAttention_\d/(query|key|value|out)/kernel"
)

FORMATS = {  # detect_format's answer -> (a key fragment only that format has, its converter)
    "google": ("encoderblock", "load_google_npz"),
    "torchvision": ("encoder.layers.encoder_layer_", "from_torchvision"),
    "hf": ("embeddings.patch_embeddings.", "from_hf"),
    "timm": ("patch_embed.proj.", "from_timm"),
}


def detect_format(state_dict: Mapping[str, object]) -> str:
    """Which library a checkpoint comes from, by its key names: 'google', 'torchvision', 'hf',
    'timm' or 'unknown'. vitlib's own state dicts use timm's names and are reported as 'timm'."""
    for name, (fragment, _) in FORMATS.items():
        if any(fragment in key for key in state_dict):
            return name
    return "unknown"


# --- converters -----------------------------------------------------------------------------

def from_timm(
    model_or_state_dict: nn.Module | StateDict,
    config: ViTConfig | None = None,
    *,
    image_size: int | None = None,
) -> ViT:
    """A timm ``VisionTransformer`` (or its state dict) as a vitlib ``ViT`` in eval mode.

    From a model, the config is read from it; a ``config`` given with it must have the model's
    ``num_heads`` and ``norm_eps`` (LayerNorm epsilon), and sets what the weights do not fix
    (dropout, say, or ``num_classes=0`` to drop the head). A bare state dict needs ``config``
    and cannot show the number of heads, the activation or how a class-token model pools: one
    with ``global_pool='avg'`` converts as ``pool='cls'``, one with QuickGELU as GELU, without
    an error. Pass the model when you have it. Models with a class token that has no position
    (``no_embed_class``) get a zero slot in the table; in a bare state dict, a table of grid²
    rows is taken to be such a table when ``config`` has that grid, and is refused as
    ambiguous otherwise (a non-square grid plus the class token's slot can have as many rows).
    A ``module.`` prefix on every key (a DistributedDataParallel model's) is removed.

    ``image_size`` resizes the position embedding (bicubic without antialiasing, as Hugging
    Face's ``interpolate_pos_encoding``; timm's ``resample_abs_pos_embed`` antialiases by
    default, so its tables differ slightly, growing or shrinking); without it the checkpoint's
    grid is kept, whatever ``config.image_size`` says.
    """
    state_dict, known, has_cls_slot = model_or_state_dict, {}, None
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        _expect_vit(model, "timm", TIMM_ATTRIBUTES)
        _refuse("timm", _timm_module_features(model))
        _require_square("timm", "patch grid", model.patch_embed.grid_size)
        known = dict(num_heads=model.blocks[0].attn.num_heads, norm_eps=model.norm.eps)
        has_cls_slot = not getattr(model, "no_embed_class", False)
        state_dict = model.state_dict()
    state_dict = _without_ddp_prefix(state_dict)
    _expect_format(state_dict, "timm")
    return _build(state_dict, "timm", config, image_size, known, has_cls_slot)


def from_torchvision(
    model_or_state_dict: nn.Module | StateDict,
    config: ViTConfig | None = None,
    *,
    image_size: int | None = None,
) -> ViT:
    """A torchvision ``VisionTransformer`` (``vit_b_16`` and family, or its state dict, with
    the MLP key names of current or older torchvision) as a vitlib ``ViT`` in eval mode. One
    built with ``num_classes=0`` (a head with no outputs) gives vitlib's backbone,
    ``num_classes=0``. Config, ``image_size``, ``module.`` prefix: as in ``from_timm``."""
    state_dict, known = model_or_state_dict, {}
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        _expect_vit(model, "torchvision", TORCHVISION_ATTRIBUTES)
        state_dict = model.state_dict()
        known = dict(
            num_heads=model.encoder.layers[0].self_attention.num_heads,
            norm_eps=model.encoder.ln.eps,
        )
    state_dict = _without_ddp_prefix(state_dict)
    _expect_format(state_dict, "torchvision")
    state_dict = _rename(state_dict, TORCHVISION_KEYS, TORCHVISION_BLOCK, TORCHVISION_BLOCK_KEYS)
    return _build(state_dict, "torchvision", config, image_size, known, True)


def from_hf(
    model_or_state_dict: nn.Module | StateDict,
    config: ViTConfig | None = None,
    *,
    image_size: int | None = None,
) -> ViT:
    """A Hugging Face ``ViTModel`` or ``ViTForImageClassification``, or a model of another type
    in ``HF_MODEL_TYPES`` (or its state dict, keys with or without the base model's prefix
    such as ``vit.``) as a vitlib ``ViT`` in eval mode. Models of other types are refused.

    A ``ViTModel`` has no classifier and gives ``num_classes=0``: its ``last_hidden_state`` is
    our ``forward_features``. Its pooler (Dense + tanh on the class token) is skipped: vitlib's
    ViT has no such layer and ``ViTForImageClassification`` does not use one. Hugging Face's
    ``layer_norm_eps`` (1e-12 by default) becomes ``norm_eps``: a ``config`` given with a model
    must have it; with a bare state dict, put it in ``config`` yourself. Config,
    ``image_size``, ``module.`` prefix: as in ``from_timm``.
    """
    state_dict, known = model_or_state_dict, {}
    if isinstance(model_or_state_dict, nn.Module):
        _expect_vit(model_or_state_dict, "Hugging Face", HF_ATTRIBUTES)
        hf = model_or_state_dict.config
        state_dict = model_or_state_dict.state_dict()
        if hf.model_type not in HF_MODEL_TYPES:
            features = _unsupported(state_dict)
            raise ValueError(
                f"cannot convert a Hugging Face {type(model_or_state_dict).__name__} "
                f"(model_type={hf.model_type!r})"
                + (f", which uses {'; '.join(features)}" if features else "")
                + f". from_hf converts the model types {', '.join(HF_MODEL_TYPES)}"
            )
        _require_square("Hugging Face", "image_size", hf.image_size)
        if hf.hidden_act not in HF_ACTIVATIONS:
            raise ValueError(
                f"this Hugging Face model uses hidden_act={hf.hidden_act!r}; vitlib's ViT uses "
                f"the exact GELU, so only models with hidden_act in {HF_ACTIVATIONS} can be "
                "converted"
            )
        if getattr(hf, "head_dim", None) not in (None, hf.hidden_size // hf.num_attention_heads):
            raise ValueError(
                f"this Hugging Face model has head_dim={hf.head_dim}, not hidden_size / "
                "num_attention_heads; vitlib's ViT cannot hold it"
            )
        known = dict(num_heads=hf.num_attention_heads, norm_eps=hf.layer_norm_eps)
    state_dict = _without_ddp_prefix(state_dict)
    _refuse("hf", _unsupported(state_dict))  # before the format check, which hybrids fail
    _expect_format(state_dict, "hf")
    state_dict = {
        key: value
        for key, value in ((re.sub(HF_PREFIX, "", k), v) for k, v in state_dict.items())
        if not key.startswith(HF_SKIPPED)
    }
    state_dict = _rename(state_dict, HF_KEYS, HF_BLOCK, HF_BLOCK_KEYS)
    return _build(state_dict, "hf", config, image_size, known, True)


def load_google_npz(
    path_or_npz: str | os.PathLike | Mapping[str, np.ndarray],
    config: ViTConfig | None = None,
    *,
    image_size: int | None = None,
) -> ViT:
    """A Google ``.npz`` ViT checkpoint (google-research/vision_transformer or big_vision; a
    path or the loaded arrays) as a vitlib ``ViT`` in eval mode.

    The config is read from the array shapes: patch size from the patch kernel, grid from the
    position table, heads from the attention kernels (query, key, value: (D, heads, head_dim);
    out: (heads, head_dim, D), the same heads and head_dim in every block), and so on; a
    ``config`` given must have those heads. LayerNorm epsilon is Flax's 1e-6 unless ``config``
    says otherwise. A model without a class token is read as pool='mean' (their 'gap').
    Google's JAX code uses the tanh approximation of GELU; like timm and Hugging Face, vitlib
    runs the exact GELU, so outputs differ very slightly from the JAX model's.
    Config, ``image_size``: as in ``from_timm``.
    """
    if isinstance(path_or_npz, (str, os.PathLike)):
        with np.load(path_or_npz, allow_pickle=False) as npz:
            arrays = dict(npz)
    else:
        arrays = dict(path_or_npz)
    for prefix in ("opt/target/", "params/"):  # training-state and big_vision wrappers
        if any(key.startswith(prefix) for key in arrays):
            arrays = {key.removeprefix(prefix): value for key, value in arrays.items()}
    for key in [k for k in arrays if k.startswith("Transformer/encoderblock/")]:
        for i, layer in enumerate(arrays.pop(key)):  # big_vision's scanned blocks: (depth, ...)
            arrays[key.replace("encoderblock/", f"encoderblock_{i}/")] = layer
    _expect_format(arrays, "google")
    num_heads = _google_num_heads(arrays)
    has_cls_slot = "pos_embedding" not in arrays  # big_vision gives the class token no position
    state_dict = {key: _google_tensor(key, value) for key, value in arrays.items()}
    state_dict = _rename(state_dict, GOOGLE_KEYS, GOOGLE_BLOCK, GOOGLE_BLOCK_KEYS)
    state_dict = {re.sub(r"\.(kernel|scale)$", ".weight", k): v for k, v in state_dict.items()}
    known = {} if num_heads is None else dict(num_heads=num_heads)
    return _build(state_dict, "google", config, image_size, known, has_cls_slot)


def load_pretrained(
    obj: nn.Module | StateDict | str | os.PathLike,
    config: ViTConfig | None = None,
    *,
    image_size: int | None = None,
) -> ViT:
    """Any supported model, state dict or checkpoint file as a vitlib ``ViT``: picks the
    converter by the model's library or the checkpoint's key names (see ``detect_format``).

    Files, by extension (any case): ``.npz`` (Google), ``.safetensors``, or ``.pt``, ``.pth``,
    ``.bin``, ``.ckpt``, ``.tar`` read by ``torch.load`` with ``weights_only=True`` (a state
    dict, possibly under "state_dict" or "model"). A bare state dict cannot show the number of
    heads, the activation or how a class-token model pools: pass the model when you have it
    (see ``from_timm``). Config, ``image_size``: as in ``from_timm``.
    """
    if isinstance(obj, (str, os.PathLike)):
        suffix = os.path.splitext(obj)[1].lower()
        if suffix == ".npz":
            return load_google_npz(obj, config, image_size=image_size)
        if suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(
                f"cannot read {os.fspath(obj)!r}: its extension {suffix or '(none)'} is not one "
                f"of {', '.join(CHECKPOINT_SUFFIXES)} (.npz: Google's arrays; .safetensors; the "
                "others: a PyTorch state dict). Rename the file if it is one of these"
            )
        obj = _read_checkpoint(obj)
    if isinstance(obj, nn.Module):
        library = type(obj).__module__.split(".")[0]
        fmt = {"timm": "timm", "torchvision": "torchvision", "transformers": "hf"}.get(library)
        if fmt is None:
            raise ValueError(
                f"cannot convert a {type(obj).__name__} from {library!r}; supported are "
                "timm, torchvision and transformers (Hugging Face) Vision Transformers"
            )
    elif (fmt := detect_format(obj)) == "unknown":
        raise ValueError(
            f"cannot tell which library this checkpoint comes from (first keys: "
            f"{_first(list(obj))}); use from_timm, from_torchvision, from_hf or load_google_npz"
        )
    converters = {
        "timm": from_timm, "torchvision": from_torchvision, "hf": from_hf,
        "google": load_google_npz,
    }
    return converters[fmt](obj, config, image_size=image_size)


def load_state_dict_checked(model: ViT, state_dict: StateDict) -> None:
    """``model.load_state_dict`` that, when keys or shapes do not match, raises a ValueError
    listing the first few missing, unexpected and mismatched keys and saying how to fix it."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(value.shape)} (model: {tuple(expected[key].shape)})"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    problems = [
        f"{len(keys)} {what}: {_first(keys)}"
        for what, keys in [
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shapes differ", mismatched),
        ]
        if keys
    ]
    if problems:
        raise ValueError(
            f"the checkpoint does not fit this ViT: {'; '.join(problems)}. "
            + _fix_hint(model.config, state_dict)
        )
    model.load_state_dict(state_dict)


# --- shared steps ---------------------------------------------------------------------------

def _rename(
    state_dict: StateDict, keys: dict[str, str], block: str, block_keys: dict[str, str]
) -> dict[str, Tensor]:
    """Keys renamed by prefix through a format's tables; keys no entry matches stay as they are
    (to be reported as unsupported or unexpected)."""
    block_pattern = re.compile(block)
    out = {}
    for key, value in state_dict.items():
        if match := block_pattern.match(key):
            new = _swap_prefix(key[match.end():], block_keys, f"blocks.{match[1]}.")
        else:
            new = _swap_prefix(key, keys, "")
        out[new or key] = value
    return out


def _swap_prefix(name: str, table: dict[str, str], head: str) -> str | None:
    for old, new in table.items():
        if name.startswith(old):
            return head + new + name[len(old):]
    return None


def _fuse_qkv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Separate query, key and value weights of each block -> our fused qkv (rows [q; k; v])."""
    separate = re.compile(r"(blocks\.\d+\.attn\.)[qkv]\.(weight|bias)")
    out = {key: value for key, value in state_dict.items() if not separate.fullmatch(key)}
    for key in state_dict:
        if (match := separate.fullmatch(key)) and key.startswith(f"{match[1]}q."):
            parts = [state_dict.get(f"{match[1]}{n}.{match[2]}") for n in "qkv"]
            if missing := [f"{match[1]}{n}.{match[2]}" for n, part in zip("qkv", parts, strict=True)
                           if part is None]:
                raise ValueError(
                    f"{key} has no matching {' or '.join(missing)}: vitlib's ViT needs a "
                    f"{match[2]} for each of query, key and value (BEiT-style models have no "
                    "key bias), or none; the checkpoint is incomplete or of another model"
                )
            out[f"{match[1]}qkv.{match[2]}"] = torch.cat(parts)  # (3·D, ...)
    return out


def _google_tensor(name: str, array: np.ndarray) -> Tensor:
    """A Flax array in PyTorch's layout."""
    t = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if name.endswith("kernel") and t.ndim == 4:
        return t.permute(3, 2, 0, 1)  # conv (p, p, C, D) HWIO -> (D, C, p, p)
    if name.endswith("/out/kernel"):
        return t.flatten(0, -2).T  # (H, Dh, D) -> (D, H·Dh)
    if name.endswith("kernel"):
        return t.flatten(1).T  # (D_in, D_out) or query/key/value (D, H, Dh) -> (D_out, D_in)
    if name.endswith("bias"):
        return t.flatten()  # query/key/value (H, Dh) -> (H·Dh,)
    return t  # scale (D,), cls (1, 1, D), pos_embedding (1, T, D)


def _google_num_heads(arrays: Mapping[str, np.ndarray]) -> int | None:
    """The number of heads that the attention kernels of all blocks agree on (None: no
    kernels)."""
    pattern = re.compile(GOOGLE_ATTENTION)
    splits = {}  # kernel name -> (heads, head_dim)
    for key, array in arrays.items():
        if match := pattern.fullmatch(key):
            if np.ndim(array) != 3:
                raise ValueError(
                    f"{key} has shape {np.shape(array)}; attention kernels must be 3-D: "
                    "(D, heads, head_dim) for query, key and value, (heads, head_dim, D) for out"
                )
            splits[key] = np.shape(array)[:2] if match[1] == "out" else np.shape(array)[1:]
    if not splits:
        return None
    (first, split), *others = splits.items()
    for key, other in others:
        if other != split:
            raise ValueError(
                f"{key} has {other[0]} heads of {other[1]} (shape {np.shape(arrays[key])}) but "
                f"{first} has {split[0]} of {split[1]}; all attention kernels of a checkpoint "
                "must have the same heads and head_dim, so the file is malformed"
            )
    return split[0]


def _build(
    state_dict: dict[str, Tensor],
    source: str,
    config: ViTConfig | None,
    image_size: int | None,
    known: dict,
    has_cls_slot: bool | None,
) -> ViT:
    """A ViT from a state dict in vitlib's names (query, key and value fused or separate).
    ``known``: the config fields the source fixes beyond the weights' shapes, which ``config``
    must agree with. ``has_cls_slot``: whether the source's position table has the class
    token's slot (None: not known, see ``_timm_cls_slot``)."""
    empty_head = "head.weight" in state_dict and state_dict["head.weight"].shape[0] == 0
    if empty_head or (config is not None and config.num_classes == 0):  # backbone only
        head = re.compile(r"head\.|.*pre_logits")
        state_dict = {k: v for k, v in state_dict.items() if not head.match(k)}
    _refuse(source, _unsupported(state_dict))
    state_dict = _fuse_qkv(state_dict)
    if has_cls_slot is None:
        has_cls_slot = _timm_cls_slot(state_dict, config)
    state_dict = _class_token_slot(state_dict, has_cls_slot)
    found = _config_fields(state_dict)
    if config is None:
        if "num_heads" not in known:
            fields = ", ".join(f"{k}={v!r}" for k, v in found.items())
            divisors = [h for h in range(1, 33) if found["embed_dim"] % h == 0]
            eps = (", norm_eps=1e-12 (Hugging Face's default layer_norm_eps; take the one in "
                   "the model's config.json)") if source == "hf" else ""
            raise ValueError(
                f"a bare {source} state dict does not record the number of attention heads; pass "
                f"config=ViTConfig({fields}, num_heads=...{eps}) with num_heads from {divisors} "
                "as the model was trained, or pass the model itself"
            )
        config = ViTConfig(**found, **known)
    if clashes := {k: v for k, v in known.items() if getattr(config, k) != v}:
        given = ", ".join(f"config.{k}={getattr(config, k)!r}" for k in clashes)
        fixed = ", ".join(f"{k}={v!r}" for k, v in clashes.items())
        raise ValueError(
            f"{given} contradicts the {source} model, which has {fixed}; pass a config with "
            f"{fixed}, or no config to take the model's own"
        )
    if config.image_size != found["image_size"]:
        if image_size is None:
            warnings.warn(
                f"config.image_size={config.image_size} but the checkpoint's position embedding "
                f"is for {found['image_size']}×{found['image_size']} images; using "
                f"{found['image_size']}. Pass image_size={config.image_size} to resize it.",
                stacklevel=3,
            )
        config = replace(config, image_size=found["image_size"])
    model = ViT(config)
    load_state_dict_checked(model, state_dict)
    if image_size is not None and image_size != config.image_size:
        model.set_image_size(image_size)  # bicubic resize of the learned table
    return model.eval()


def _unsupported(state_dict: Mapping[str, object]) -> list[str]:
    """The UNSUPPORTED features whose key fragments occur in ``state_dict``."""
    return [f for fragment, f in UNSUPPORTED.items() if any(fragment in k for k in state_dict)]


def _timm_cls_slot(state_dict: dict[str, Tensor], config: ViTConfig | None) -> bool:
    """Whether a bare timm state dict's position table has the class token's slot. A table of
    grid² + 1 rows has it. One of n² rows is a no_embed_class model's n×n grid if ``config``'s
    grid is n×n; otherwise it may as well be a non-square grid of n² - 1 patches with the slot,
    and is refused."""
    pos, cls = state_dict.get("pos_embed"), state_dict.get("cls_token")
    if pos is None or cls is None:
        return True
    rows = pos.shape[1]
    side = math.isqrt(rows)
    if side * side != rows:
        return True
    if config is not None and config.grid_size == side:
        return False
    raise ValueError(
        f"this timm state dict's position embedding of {rows} rows, with a class token, is "
        f"ambiguous: either a {side}×{side} patch grid whose class token has no position "
        f"(no_embed_class), or {rows - 1} patches of a non-square grid and the class token's "
        f"slot, which vitlib cannot hold. Pass the timm model itself, or, for the first, a "
        f"config with image_size = {side} × patch_size (image_size= then resizes it)"
    )


def _class_token_slot(state_dict: dict[str, Tensor], has_slot: bool) -> dict[str, Tensor]:
    """A table without the class token's slot (timm no_embed_class, big_vision) gets a zero
    slot there: the class token then has no position, as in the source. ``has_slot`` says
    whether the table has it."""
    pos, cls = state_dict.get("pos_embed"), state_dict.get("cls_token")
    if pos is None or cls is None:
        return state_dict
    if has_slot:
        return state_dict
    return {**state_dict, "pos_embed": torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], 1)}


def _config_fields(state_dict: StateDict) -> dict:
    """The ViTConfig fields that the weights' shapes reveal (all but num_heads and norm_eps)."""
    needed = ["patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"]
    if absent := [key for key in needed if key not in state_dict]:
        what = "learned position embedding" if absent == ["pos_embed"] else f"keys {absent}"
        raise ValueError(
            f"the checkpoint has no {what}, which vitlib's ViT needs; only plain ViTs convert"
        )
    embed_dim, in_chans, patch_h, patch_w = state_dict["patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise ValueError(f"patches of {patch_h}×{patch_w} are not square; vitlib needs square ones")
    num_patches = state_dict["pos_embed"].shape[1] - ("cls_token" in state_dict)
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(
            f"the position embedding has {num_patches} patch positions, not a square grid; "
            "vitlib needs square images"
        )
    hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:  # rounding: nudge so int(D · ratio) == hidden
        mlp_ratio = (hidden + 0.5) / embed_dim
    return dict(
        image_size=grid * patch_h,
        patch_size=patch_h,
        in_chans=in_chans,
        num_classes=state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
        embed_dim=embed_dim,
        depth=len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")}),
        mlp_ratio=mlp_ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        pool="cls" if "cls_token" in state_dict else "mean",
    )


def _timm_module_features(model: nn.Module) -> list[str]:
    """Features of a timm model that its key names do not show and vitlib's ViT lacks."""
    block = model.blocks[0]
    attn, mlp, norm = (getattr(block, name, None) for name in ("attn", "mlp", "norm1"))
    act = getattr(mlp, "act", None)
    kinds = tuple(type(m).__name__ for m in (block, attn, mlp))
    checks = {
        f"global_pool={model.global_pool!r} with class_token={model.has_class_token}":
            (model.global_pool, model.has_class_token) not in [("token", True), ("avg", False)],
        "a norm after pooling instead of on all tokens (fc_norm=True or final_norm=False)":
            isinstance(model.norm, nn.Identity),
        f"the final norm {type(model.norm).__name__}":
            not isinstance(model.norm, (nn.LayerNorm, nn.Identity)),
        f"blocks of kind {kinds}": kinds != ("Block", "Attention", "Mlp"),
        f"the activation {act}": not (  # torch's or timm's exact GELU
            type(act).__name__ == "GELU" and getattr(act, "approximate", "none") == "none"
        ),
        f"the norm layer {type(norm).__name__}": not isinstance(norm, nn.LayerNorm),
    }
    return [feature for feature, present in checks.items() if present]


def _expect_vit(model: nn.Module, source: str, attributes: tuple[str, ...]) -> None:
    """Refuse a module that lacks the attributes its converter reads from a ``source`` ViT."""
    absent = []
    for name in attributes:
        try:
            operator.attrgetter(name)(model)
        except AttributeError:
            absent.append(name)
    if absent:
        raise ValueError(
            f"got a {type(model).__name__} (from {type(model).__module__}), which is not a "
            f"{source} Vision Transformer: it has no {', '.join(absent)}. Pass a {source} "
            "Vision Transformer (vitlib.interop lists the kinds that convert)"
        )


def _require_square(source: str, what: str, size: int | tuple[int, int] | list[int]) -> None:
    """Refuse a model built for non-square images: vitlib's position table is a square grid."""
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
        raise ValueError(
            f"this {source} model is built for non-square images (its {what} is "
            f"{height}×{width}); vitlib needs square images, so convert a model built for them"
        )


def _refuse(source: str, features: list[str]) -> None:
    if features:
        raise ValueError(
            f"this {source} model uses {'; '.join(features)}, which vitlib's ViT does not have. "
            "Only plain ViTs convert: pre-norm blocks, learned position embedding, final "
            "LayerNorm on all tokens, class token or mean pooling, linear head."
        )


def _expect_format(state_dict: Mapping[str, object], expected: str) -> None:
    if detect_format(state_dict) != expected:
        raise ValueError(
            f"this does not look like a {expected} checkpoint (first keys: "
            f"{_first(list(state_dict))}). {_format_hint(state_dict)}"
        )


def _format_hint(state_dict: Mapping[str, object]) -> str:
    fmt = detect_format(state_dict)
    if fmt == "unknown":
        return "Check that it is the state dict of a Vision Transformer."
    return f"It looks like a {fmt} checkpoint: use vitlib.interop.{FORMATS[fmt][1]}."


def _fix_hint(config: ViTConfig, state_dict: StateDict) -> str:
    """How to make a vitlib-named state dict fit: the config fields its shapes ask for."""
    if "patch_embed.proj.weight" not in state_dict:  # not in vitlib's names
        return _format_hint(state_dict)
    try:
        state_dict = dict(state_dict)
        found = _config_fields(
            _class_token_slot(state_dict, _timm_cls_slot(state_dict, config))
        )
    except ValueError as error:
        return str(error)
    if config.pos_embed != "learned":
        found["pos_embed"] = "learned"
    changes = ", ".join(f"{k}={v!r}" for k, v in found.items() if getattr(config, k) != v)
    if changes:
        return f"Use a config with {changes} to match the checkpoint."
    return "Check that the checkpoint is a plain ViT (see vitlib.interop)."


def _without_ddp_prefix(state_dict: StateDict) -> dict[str, Tensor]:
    """``state_dict`` without the ``module.`` prefix that DistributedDataParallel gives every
    key."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key.removeprefix("module."): value for key, value in state_dict.items()}
    return dict(state_dict)


def _read_checkpoint(path: str | os.PathLike) -> StateDict:
    if os.fspath(path).lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError(
                "reading .safetensors files needs the safetensors package: pip install safetensors"
            ) from error
        return load_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def _first(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
