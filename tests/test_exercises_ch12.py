"""Each exercise check of notebook 12 passes a right answer and fails wrong ones with a hint."""

import pytest
import torch
import torch.nn.functional as F

import vitlib
from vitlib import unpatchify
from vitlib.exercises import ch12


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- attention rollout ----------------------------------------------------------------------


def rollout_right(maps):
    eye = torch.eye(maps[0].shape[-1])
    result = eye
    for attn in maps:
        a = attn.mean(dim=1) + eye
        result = (a / a.sum(dim=-1, keepdim=True)) @ result
    return result


def rollout_without_residual(maps):
    result = torch.eye(maps[0].shape[-1])
    for attn in maps:
        result = attn.mean(dim=1) @ result
    return result


def rollout_wrong_order(maps):
    eye = torch.eye(maps[0].shape[-1])
    result = eye
    for attn in maps:
        a = attn.mean(dim=1) + eye
        result = result @ (a / a.sum(dim=-1, keepdim=True))
    return result


def rollout_not_renormalised(maps):
    eye = torch.eye(maps[0].shape[-1])
    result = eye
    for attn in maps:
        result = (attn.mean(dim=1) + eye) @ result
    return result


@pytest.mark.parametrize("wrong", [rollout_without_residual, rollout_wrong_order,
                                   rollout_not_renormalised])
def test_attention_rollout(wrong):
    assert passes(ch12.check_attention_rollout(rollout_right, quiet=True))
    result = ch12.check_attention_rollout(wrong, quiet=True)
    assert fails_with_hint(result) and "torch.eye" in result.message


# --- mean attention distance ----------------------------------------------------------------


def centres(grid):
    return torch.tensor([(i // grid[1], i % grid[1]) for i in range(grid[0] * grid[1])],
                        dtype=torch.float32)


def distance_right(attn, grid, patch_size):
    d = torch.cdist(centres(grid), centres(grid)) * patch_size
    return (attn * d).sum(dim=-1).mean(dim=(0, 2))


def distance_in_patches(attn, grid, patch_size):
    return distance_right(attn, grid, 1)


def distance_manhattan(attn, grid, patch_size):
    d = torch.cdist(centres(grid), centres(grid), p=1) * patch_size
    return (attn * d).sum(dim=-1).mean(dim=(0, 2))


def distance_column_major(attn, grid, patch_size):
    pos = torch.tensor([(i % grid[0], i // grid[0]) for i in range(grid[0] * grid[1])],
                       dtype=torch.float32)
    d = torch.cdist(pos, pos) * patch_size
    return (attn * d).sum(dim=-1).mean(dim=(0, 2))


@pytest.mark.parametrize("wrong", [distance_in_patches, distance_manhattan,
                                   distance_column_major])
def test_mean_attention_distance(wrong):
    assert passes(ch12.check_mean_attention_distance(distance_right, quiet=True))
    result = ch12.check_mean_attention_distance(wrong, quiet=True)
    assert fails_with_hint(result) and "Euclidean" in result.message


# --- tubelet tokens -------------------------------------------------------------------------


def tokens_right(frames, image_size, tubelet_size, patch_size):
    return (frames // tubelet_size) * (image_size // patch_size) ** 2


def tokens_every_frame(frames, image_size, tubelet_size, patch_size):
    return frames * (image_size // patch_size) ** 2


def tokens_one_side(frames, image_size, tubelet_size, patch_size):
    return (frames // tubelet_size) * (image_size // patch_size)


def tokens_float(frames, image_size, tubelet_size, patch_size):
    return frames / tubelet_size * (image_size / patch_size) ** 2 + 0.5


@pytest.mark.parametrize("wrong", [tokens_every_frame, tokens_one_side, tokens_float])
def test_tubelet_tokens(wrong):
    assert passes(ch12.check_tubelet_tokens(tokens_right, quiet=True))
    result = ch12.check_tubelet_tokens(wrong, quiet=True)
    assert fails_with_hint(result) and "product" in result.message


def test_tubelet_tokens_wants_an_int():
    as_float = ch12.check_tubelet_tokens(lambda *args: float(tokens_right(*args)), quiet=True)
    assert fails_with_hint(as_float) and "should be an int, got 1568.0" in as_float.message
    array = ch12.check_tubelet_tokens(lambda *args: torch.zeros(2), quiet=True)
    assert fails_with_hint(array) and "should be an int, got a tensor" in array.message


# --- segmentation logits --------------------------------------------------------------------


def logits_right(tokens, linear, patch_size, grid, num_classes):
    B, p, (gh, gw) = tokens.shape[0], patch_size, grid
    x = linear(tokens).reshape(B, gh, gw, num_classes, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, num_classes, gh * p, gw * p)


def logits_unpatchify(tokens, linear, patch_size, grid, num_classes):
    return vitlib.unpatchify(linear(tokens), patch_size, grid, num_classes)


def logits_patches_unpatchify(tokens, linear, patch_size, grid, num_classes):
    return vitlib.patches.unpatchify(linear(tokens), patch_size, grid, num_classes)


def logits_imported_unpatchify(tokens, linear, patch_size, grid, num_classes):
    return unpatchify(linear(tokens), patch_size, grid, num_classes)  # imported before the check


def logits_fold(tokens, linear, patch_size, grid, num_classes):
    size = (grid[0] * patch_size, grid[1] * patch_size)
    return F.fold(linear(tokens).transpose(1, 2), size, patch_size, stride=patch_size)


def logits_plain_reshape(tokens, linear, patch_size, grid, num_classes):
    B = tokens.shape[0]
    return linear(tokens).reshape(B, num_classes, grid[0] * patch_size, grid[1] * patch_size)


def logits_channels_last(tokens, linear, patch_size, grid, num_classes):
    B, p = tokens.shape[0], patch_size
    x = linear(tokens).reshape(B, grid[0], grid[1], p, p, num_classes)  # (p, p, K) per token
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, num_classes, grid[0] * p, grid[1] * p)


@pytest.mark.parametrize("wrong", [logits_plain_reshape, logits_channels_last])
def test_segmentation_logits(wrong):
    assert passes(ch12.check_segmentation_logits(logits_right, quiet=True))
    result = ch12.check_segmentation_logits(wrong, quiet=True)
    assert fails_with_hint(result) and "unpatchify" in result.message


@pytest.mark.parametrize("library", [logits_unpatchify, logits_patches_unpatchify,
                                     logits_imported_unpatchify, logits_fold])
def test_segmentation_logits_refuses_the_library(library):
    result = ch12.check_segmentation_logits(library, quiet=True)
    assert fails_with_hint(result) and "is not allowed in this exercise" in result.message
    tokens, linear = torch.randn(2, 4, 6), torch.nn.Linear(6, 3 * 2 * 2)
    with torch.no_grad():  # the library answers are right, and work again after the check
        assert torch.allclose(library(tokens, linear, 2, (2, 2), 3),
                              logits_right(tokens, linear, 2, (2, 2), 3), atol=1e-6)


def test_segmentation_logits_reports_an_exception():
    def crashes(tokens, linear, patch_size, grid, num_classes):
        raise RuntimeError("boom")

    result = ch12.check_segmentation_logits(crashes, quiet=True)
    assert fails_with_hint(result) and "RuntimeError: boom" in result.message
