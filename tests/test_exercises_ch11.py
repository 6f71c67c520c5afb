"""Each exercise check of notebook 11 passes a right answer and fails wrong ones with a hint."""

import dataclasses

import pytest
import torch
from torch import nn

from vitlib.exercises import ch11
from vitlib.finetune import replace_head


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- a new head -----------------------------------------------------------------------------


def replace_head_right(model, num_classes):
    model.head = nn.Linear(model.config.embed_dim, num_classes)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.config = dataclasses.replace(model.config, num_classes=num_classes)
    return model


def replace_head_random_init(model, num_classes):
    model.head = nn.Linear(model.config.embed_dim, num_classes)
    model.config = dataclasses.replace(model.config, num_classes=num_classes)
    return model


def replace_head_config_unchanged(model, num_classes):
    model.head = nn.Linear(model.config.embed_dim, num_classes)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


def replace_head_without_bias(model, num_classes):
    model.head = nn.Linear(model.config.embed_dim, num_classes, bias=False)
    nn.init.zeros_(model.head.weight)
    model.config = dataclasses.replace(model.config, num_classes=num_classes)
    return model


def replace_head_resets_everything(model, num_classes):
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
    return replace_head_right(model, num_classes)


def replace_head_frozen_head(model, num_classes):
    replace_head_right(model, num_classes)
    model.head.requires_grad_(False)
    return model


def replace_head_freezes_everything(model, num_classes):
    model.requires_grad_(False)
    return replace_head_right(model, num_classes)


def replace_head_unfreezes_everything(model, num_classes):
    model.requires_grad_(True)
    return replace_head_right(model, num_classes)


def replace_head_width_16(model, num_classes):
    model.head = nn.Linear(16, num_classes)  # the width of one model, not of every model
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.config = dataclasses.replace(model.config, num_classes=num_classes)
    return model


def replace_head_from_old_head(model, num_classes):
    model.head = nn.Linear(model.head.in_features, num_classes)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.config = dataclasses.replace(model.config, num_classes=num_classes)
    return model


def test_replace_head_other_right_answer():
    assert passes(ch11.check_replace_head(replace_head_from_old_head, quiet=True))


def test_replace_head_reads_the_width():
    result = ch11.check_replace_head(replace_head_width_16, quiet=True)
    assert fails_with_hint(result) and "embed_dim 24" in result.message


@pytest.mark.parametrize(
    "wrong", [replace_head_random_init, replace_head_config_unchanged, replace_head_without_bias,
              replace_head_resets_everything, lambda model, n: None, replace_head_frozen_head,
              replace_head_freezes_everything, replace_head_unfreezes_everything]
)
def test_replace_head(wrong):
    assert fails_with_hint(ch11.check_replace_head(wrong, quiet=True))


def test_replace_head_names_the_requires_grad_change():
    frozen = ch11.check_replace_head(replace_head_frozen_head, quiet=True)
    assert "does not train" in frozen.message
    unfrozen = ch11.check_replace_head(replace_head_unfreezes_everything, quiet=True)
    assert "requires_grad of the backbone's patch_embed" in unfrozen.message


# --- trainable parameters after freezing ----------------------------------------------------


def block_parameters(c):
    d, hidden = c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    qkv = 3 * d * d + (3 * d if c.qkv_bias else 0)
    return 4 * d + qkv + d * d + d + 2 * d * hidden + hidden + d


def trainable_count_right(c, last_blocks):
    return c.embed_dim * c.num_classes + c.num_classes + 2 * c.embed_dim + (
        last_blocks * block_parameters(c))


def trainable_count_no_norm(c, last_blocks):
    return trainable_count_right(c, last_blocks) - 2 * c.embed_dim


def trainable_count_always_qkv_bias(c, last_blocks):
    extra = 0 if c.qkv_bias else 3 * c.embed_dim * last_blocks
    return trainable_count_right(c, last_blocks) + extra


def trainable_count_whole_mlp_ratio(c, last_blocks):
    d = c.embed_dim
    extra = last_blocks * (2 * d + 1) * (d * int(c.mlp_ratio) - int(d * c.mlp_ratio))
    return trainable_count_right(c, last_blocks) + extra


@pytest.mark.parametrize("wrong", [trainable_count_no_norm, trainable_count_always_qkv_bias,
                                   trainable_count_whole_mlp_ratio])
def test_trainable_count(wrong):
    result = ch11.check_trainable_count(wrong, quiet=True)
    assert fails_with_hint(result) and "parameters train" in result.message


def test_trainable_count_wants_an_int():
    as_float = ch11.check_trainable_count(lambda c, n: float(trainable_count_right(c, n)), True)
    assert fails_with_hint(as_float) and "should be an int" in as_float.message


# --- layer-wise learning-rate decay ---------------------------------------------------------


def layer_of(name, depth):
    top = name.split(".")[0]
    if top == "blocks":
        return int(name.split(".")[1]) + 1
    return 0 if top in ("patch_embed", "pos_embed", "cls_token") else depth + 1


def lr_scale_right(name, depth, decay):
    return decay ** (depth + 1 - layer_of(name, depth))


def lr_scale_off_by_one(name, depth, decay):
    return decay ** (depth - layer_of(name, depth))


def lr_scale_reversed(name, depth, decay):
    return decay ** layer_of(name, depth)


def lr_scale_embeddings_like_block0(name, depth, decay):
    return decay ** (depth + 1 - max(layer_of(name, depth), 1))


def lr_scale_one_digit_block(name, depth, decay):
    layer = int(name[len("blocks.")]) + 1 if name.startswith("blocks.") else layer_of(name, depth)
    return decay ** (depth + 1 - layer)  # blocks.10 read as block 1


@pytest.mark.parametrize(
    "wrong", [lr_scale_off_by_one, lr_scale_reversed, lr_scale_embeddings_like_block0,
              lr_scale_one_digit_block]
)
def test_layer_decay(wrong):
    result = ch11.check_layer_decay(wrong, quiet=True)
    assert fails_with_hint(result) and "× lr" in result.message


def test_layer_decay_refuses_nan():
    result = ch11.check_layer_decay(lambda name, depth, decay: float("nan"), quiet=True)
    assert fails_with_hint(result) and "nan" in result.message


def test_right_answers_pass():
    assert passes(ch11.check_replace_head(replace_head_right, quiet=True))
    assert passes(ch11.check_replace_head(replace_head, quiet=True))
    assert passes(ch11.check_trainable_count(trainable_count_right, quiet=True))
    assert passes(ch11.check_layer_decay(lr_scale_right, quiet=True))


def test_a_crashing_answer_is_reported_not_raised():
    result = ch11.check_layer_decay(lambda name, depth, decay: torch.tensor([1, 2]).item(),
                                    quiet=True)
    assert fails_with_hint(result) and "raised" in result.message
