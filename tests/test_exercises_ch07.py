"""Each exercise check of notebook 07 passes a right answer and fails wrong ones with a hint."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlib.exercises import ch07
from vitlib.exercises.checking import counted


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- channel statistics ---------------------------------------------------------------------


def stats_right(images):
    x = images.float() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def stats_sample_std(images):
    x = images.float() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def stats_as_lists(images):
    mean, std = stats_right(images)
    return mean.tolist(), std.tolist()


def stats_0_255(images):
    x = images.float()
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def stats_per_image_std(images):
    x = images.float() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(2, 3)).mean(dim=0)


def stats_over_channels(images):
    x = images.float() / 255
    return x.mean(dim=(0, 1)), x.std(dim=(0, 1))


@pytest.mark.parametrize("right", [stats_right, stats_as_lists])
def test_channel_stats_right(right):
    assert passes(ch07.check_channel_stats(right, quiet=True))


@pytest.mark.parametrize("wrong", [stats_0_255, stats_per_image_std, stats_over_channels,
                                   stats_sample_std])
def test_channel_stats_wrong(wrong):
    assert fails_with_hint(ch07.check_channel_stats(wrong, quiet=True))


def stats_in_float16(images):
    x = images.half() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def stats_in_bfloat16(images):
    x = images.bfloat16() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def stats_in_float64(images):
    x = images.double() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)


def stats_one_pass_variance(images):
    x = images.float() / 255
    mean = x.mean(dim=(0, 2, 3))
    return mean, ((x * x).mean(dim=(0, 2, 3)) - mean * mean).sqrt()


def stats_from_integer_sums(images):
    count = images.numel() // images.shape[1]
    total = images.sum(dim=(0, 2, 3), dtype=torch.int64)
    squares = (images.long() ** 2).sum(dim=(0, 2, 3))
    mean = total / count
    return mean / 255, (squares / count - mean**2).sqrt() / 255


@pytest.mark.parametrize("right", [stats_in_float64, stats_one_pass_variance,
                                   stats_from_integer_sums])
def test_channel_stats_other_right_answers(right):
    for _ in range(20):
        assert passes(ch07.check_channel_stats(right, quiet=True))


def test_channel_stats_refuses_half_precision():
    for _ in range(5):
        result = ch07.check_channel_stats(stats_in_float16, quiet=True)
        assert fails_with_hint(result) and "float32 or float64" in result.message
        assert fails_with_hint(ch07.check_channel_stats(stats_in_bfloat16, quiet=True))


def test_channel_stats_names_the_correction():
    result = ch07.check_channel_stats(stats_sample_std, quiet=True)
    assert "correction=0" in result.message


def test_channel_stats_names_the_scale():
    result = ch07.check_channel_stats(stats_0_255, quiet=True)
    assert "0..255" in result.message


# --- zero-padded crop -----------------------------------------------------------------------


def crop_right(images, padding, generator):
    B, _, H, W = images.shape
    offsets = torch.randint(2 * padding + 1, (2 * B,), generator=generator).view(2, B)
    padded = F.pad(images, (padding,) * 4)
    return torch.stack([padded[b, :, oy:oy + H, ox:ox + W]
                        for b, (oy, ox) in enumerate(offsets.T.tolist())])


def crop_reflect(images, padding, generator):
    B, _, H, W = images.shape
    offsets = torch.randint(2 * padding + 1, (2 * B,), generator=generator).view(2, B)
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    return torch.stack([padded[b, :, oy:oy + H, ox:ox + W]
                        for b, (oy, ox) in enumerate(offsets.T.tolist())])


def crop_axes_swapped(images, padding, generator):
    B, _, H, W = images.shape
    offsets = torch.randint(2 * padding + 1, (2 * B,), generator=generator).view(2, B)
    padded = F.pad(images, (padding,) * 4)
    return torch.stack([padded[b, :, oy:oy + H, ox:ox + W]
                        for b, (ox, oy) in enumerate(offsets.T.tolist())])


def crop_centre(images, padding, generator):
    return images


def crop_padding_4(images, padding, generator):
    return crop_right(images, 4, generator)


def crop_padding_2(images, padding, generator):
    return crop_right(images, 2, generator)


def crop_as_float(images, padding, generator):
    return crop_right(images.float(), padding, generator)


def test_zero_pad_crop():
    assert passes(ch07.check_zero_pad_crop(crop_right, quiet=True))
    for wrong in (crop_reflect, crop_axes_swapped, crop_centre, crop_padding_4, crop_padding_2):
        assert fails_with_hint(ch07.check_zero_pad_crop(wrong, quiet=True))
    as_float = ch07.check_zero_pad_crop(crop_as_float, quiet=True)
    assert fails_with_hint(as_float) and "dtype" in as_float.message


def crop_two_draws(images, padding, generator):
    B, _, H, W = images.shape
    rows = torch.randint(2 * padding + 1, (B,), generator=generator)
    cols = torch.randint(2 * padding + 1, (B,), generator=generator)  # a second call
    padded = F.pad(images, (padding,) * 4)
    offsets = zip(rows.tolist(), cols.tolist(), strict=True)
    return torch.stack([padded[b, :, oy:oy + H, ox:ox + W] for b, (oy, ox) in enumerate(offsets)])


def crop_one_draw_per_offset(images, padding, generator):
    B, _, H, W = images.shape
    draws = [int(torch.randint(2 * padding + 1, (), generator=generator)) for _ in range(2 * B)]
    padded = F.pad(images, (padding,) * 4)
    return torch.stack([padded[b, :, draws[b]:draws[b] + H, draws[B + b]:draws[B + b] + W]
                        for b in range(B)])


def crop_grid_of_draws(images, padding, generator):
    B, _, H, W = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, B), generator=generator)  # one call
    padded = F.pad(images, (padding,) * 4)
    return torch.stack([padded[b, :, oy:oy + H, ox:ox + W]
                        for b, (oy, ox) in enumerate(offsets.T.tolist())])


def crop_with_random_(images, padding, generator):
    B, _, H, W = images.shape
    offsets = torch.empty(2, B, dtype=torch.long).random_(0, 2 * padding + 1, generator=generator)
    padded = F.pad(images, (padding,) * 4)
    return torch.stack([padded[b, :, oy:oy + H, ox:ox + W]
                        for b, (oy, ox) in enumerate(offsets.T.tolist())])


@pytest.mark.parametrize("right", [crop_grid_of_draws, crop_with_random_])
def test_zero_pad_crop_other_right_answers(right):
    assert passes(ch07.check_zero_pad_crop(right, quiet=True))


@pytest.mark.parametrize("separate", [crop_two_draws, crop_one_draw_per_offset])
def test_zero_pad_crop_wants_one_draw(separate):
    result = ch07.check_zero_pad_crop(separate, quiet=True)
    assert fails_with_hint(result) and "in one call" in result.message


def test_separate_draws_give_the_same_numbers_on_the_cpu():
    # why the check counts the calls: the images alone cannot tell the two apart here
    one = torch.randint(9, (10,), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    two = torch.cat([torch.randint(9, (5,), generator=g), torch.randint(9, (5,), generator=g)])
    assert torch.equal(one, two)


def test_counted_sees_calls_through_earlier_references():
    randint, previous = torch.randint, sys.getprofile()
    with counted("randint", "random_") as calls:
        randint(3, (2,))
        torch.empty(2).random_(0, 3)
        torch.zeros(2).sum()
    assert calls == ["randint", "random_"] and sys.getprofile() is previous


# --- soft-target cross-entropy --------------------------------------------------------------


def soft_ce_right(logits, targets):
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def soft_ce_mean_over_all(logits, targets):
    return -(targets * F.log_softmax(logits, dim=-1)).mean()


def soft_ce_argmax(logits, targets):
    return F.cross_entropy(logits, targets.argmax(dim=-1))


def soft_ce_log_of_logits(logits, targets):
    return -(targets * logits.log_softmax(dim=0)).sum(dim=-1).mean()


def soft_ce_logsumexp(logits, targets):
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    return -(targets * log_probs).sum(dim=-1).mean()


def soft_ce_log_of_softmax(logits, targets):
    return -(targets * logits.softmax(dim=-1).log()).sum(dim=-1).mean()


def soft_ce_module(logits, targets):
    return nn.CrossEntropyLoss()(logits, targets)


@pytest.mark.parametrize("right", [soft_ce_right, soft_ce_logsumexp])
def test_soft_cross_entropy_right(right):
    assert passes(ch07.check_soft_cross_entropy(right, quiet=True))


def test_soft_cross_entropy():
    for wrong in (soft_ce_mean_over_all, soft_ce_argmax, soft_ce_log_of_logits,
                  soft_ce_log_of_softmax):
        assert fails_with_hint(ch07.check_soft_cross_entropy(wrong, quiet=True))
    for library in (F.cross_entropy, soft_ce_module):
        result = ch07.check_soft_cross_entropy(library, quiet=True)
        assert fails_with_hint(result) and "cross_entropy is not allowed" in result.message
    logits, targets = torch.randn(2, 3), torch.full((2, 3), 1 / 3)
    assert torch.allclose(F.cross_entropy(logits, targets), soft_ce_right(logits, targets))


# --- cutmix label weight --------------------------------------------------------------------


def weight_right(top, left, height, width, image_size):
    rows = max(0, min(top + height, image_size) - max(top, 0))
    cols = max(0, min(left + width, image_size) - max(left, 0))
    return 1 - rows * cols / image_size**2


def weight_unclipped(top, left, height, width, image_size):
    return 1 - height * width / image_size**2


def weight_pasted_share(top, left, height, width, image_size):
    return 1 - weight_right(top, left, height, width, image_size)


def weight_negative_lengths(top, left, height, width, image_size):
    rows = min(top + height, image_size) - max(top, 0)
    cols = min(left + width, image_size) - max(left, 0)
    return 1 - rows * cols / image_size**2


def weight_negative_area(top, left, height, width, image_size):
    rows = min(top + height, image_size) - max(top, 0)
    cols = min(left + width, image_size) - max(left, 0)
    return 1 - max(0, rows * cols) / image_size**2  # two negative lengths make a positive area


def test_cutmix_weight():
    assert passes(ch07.check_cutmix_weight(weight_right, quiet=True))
    for wrong in (weight_unclipped, weight_pasted_share, weight_negative_lengths,
                  weight_negative_area):
        assert fails_with_hint(ch07.check_cutmix_weight(wrong, quiet=True))
