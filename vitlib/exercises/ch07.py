"""Checks for the exercises of notebook 07 (data and augmentation)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlib.augment import _rectangles, mixup_cutmix, random_crop

from .checking import CheckResult, check, counted, forbidden
from .compare import tensor_problem

_STATS_TOLERANCE = 5e-6  # channel statistics: float32 rounding stays far below, float16 above


def _seed() -> int:
    return random.randrange(2**31)


def _three_values(what: str, value: object) -> Tensor:
    """The student's per-channel statistic as a (3,) float64 tensor (or a ValueError)."""
    try:
        values = torch.as_tensor(value, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"the {what} should be 3 numbers, one per channel ({error})") from None
    if values.numel() != 3:
        raise ValueError(f"the {what} should hold 3 numbers, one per channel, got "
                         f"{values.numel()}")
    return values


def check_channel_stats(channel_stats: Callable[[Tensor], tuple], quiet: bool = False
                        ) -> CheckResult:
    """``channel_stats(images) -> (mean, std)``: for uint8 images (N, 3, H, W), the mean and
    standard deviation of each channel over all pixels of all images, on the [0, 1] scale."""

    def test() -> str | None:
        g = torch.Generator().manual_seed(_seed())
        # a few images, then 2 images of 2×2, where dividing by N − 1 instead of N shows (7 %)
        for n, size in ((random.randint(6, 12), random.choice([8, 16])), (2, 2)):
            brightness = torch.randint(0, 120, (n, 1, 1, 1), generator=g)  # images differ
            noise = torch.randint(0, 136, (n, 3, size, size), generator=g)
            images = (brightness + noise).to(torch.uint8)
            x = images.double() / 255
            want_mean = x.mean(dim=(0, 2, 3))
            want_std = x.std(dim=(0, 2, 3), correction=0)
            answer = channel_stats(images.clone())
            if not isinstance(answer, (tuple, list)) or len(answer) != 2:
                return (f"channel_stats should return a pair (mean, std), got "
                        f"{type(answer).__name__}")
            mean, std = (_three_values(name, v) for name, v in zip(("mean", "std"), answer,
                                                                    strict=True))
            if mean.max() > 1.5 or std.max() > 1.5:
                return (f"your values {mean.tolist()} / {std.tolist()} are on the 0..255 scale, "
                        "the check wants the [0, 1] scale of CIFAR10_MEAN and CIFAR10_STD")
            if not torch.allclose(mean, want_mean, atol=1e-3):
                return (f"for {n} images of {size}×{size} the channel means are "
                        f"{[round(v, 4) for v in want_mean.tolist()]}, you got "
                        f"{[round(v, 4) for v in mean.tolist()]}")
            if size == 2 and torch.allclose(std.double(), x.std(dim=(0, 2, 3)), atol=1e-4):
                return (f"for {n} images of {size}×{size} your standard deviations divide by "
                        "N − 1 (PyTorch's default, correction=1); the formula of section 3 "
                        "divides by N, the number of values: correction=0")
            if not torch.allclose(std, want_std, atol=1e-3):
                return (f"for {n} images of {size}×{size} (with different brightness) the channel "
                        f"standard deviations are {[round(v, 4) for v in want_std.tolist()]}, "
                        f"you got {[round(v, 4) for v in std.tolist()]}")
            # float32 is off by 1e-6 at most here; float16 keeps about 3 digits, off by ~1e-4
            error = max((mean - want_mean).abs().max().item(), (std - want_std).abs().max().item())
            if error > _STATS_TOLERANCE:
                return (f"for {n} images of {size}×{size} your means and standard deviations are "
                        f"close, but off by up to {error:.2g}: far more than float32 rounding. "
                        "Compute them in float32 or float64 (float16 and bfloat16 keep only 3 or "
                        "2 significant digits) and return them unrounded")
        return None

    return check(
        "channel_stats", test,
        "convert to floats in [0, 1] (images.float() / 255) and reduce over every axis except "
        "the channel one: x.mean(dim=(0, 2, 3)) and x.std(dim=(0, 2, 3), correction=0). Averaging "
        "one std per image leaves out how much the images differ from each other; float16 is "
        "too coarse for statistics",
        quiet,
    )


def check_zero_pad_crop(pad_crop: Callable[[Tensor, int, torch.Generator], Tensor],
                        quiet: bool = False) -> CheckResult:
    """``pad_crop(images, padding, generator)``: pad each image of (B, C, H, W) with
    ``padding`` black pixels on every side and cut out an H × W window at a random offset,
    drawing the offsets as ``vitlib.augment.random_crop`` does (same seed, same output)."""

    def test() -> str | None:
        for padding in (1, 2, 4):
            seed, b = _seed(), random.randint(4, 9)
            images = torch.randint(1, 256, (b, 3, 7, 6), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(seed + 1))
            want = random_crop(images, padding, torch.Generator().manual_seed(seed),
                               padding_mode="zeros")
            with counted("randint", "random_") as draws:
                got = pad_crop(images.clone(), padding, torch.Generator().manual_seed(seed))
            what = (f"pad_crop(images of shape {tuple(images.shape)}, padding {padding}, seeded "
                    "generator)")
            problem = tensor_problem(what, got, want, atol=0)
            if problem:
                return problem
            if got.dtype != images.dtype:
                return (f"{what} has dtype {got.dtype}, but the images are {images.dtype}: the "
                        "crop should keep the images' dtype")
            if len(draws) > 1:  # the same numbers on the CPU, but not from a GPU's generator
                return (f"{what} gives the right images, but draws the offsets in {len(draws)} "
                        "calls: draw all 2·B of them in one call, as draw_offsets does. The CPU's "
                        "generator happens to give the same numbers either way, a GPU's does not, "
                        "so there separate calls would not match random_crop")
        return None

    return check(
        "zero_pad_crop", test,
        "draw all offsets at once as in the notebook, offsets = torch.randint(2 * padding + 1, "
        "(2 * B,), generator=generator).view(2, B) (first row: rows, second row: columns), pad "
        "with zeros, F.pad(images, (padding,) * 4) (mode 'constant', value 0), and cut out "
        "padded[b, :, oy:oy + H, ox:ox + W] for each image, or gather the windows in one go; "
        "use the padding you are given, and keep the images' dtype (no .float())",
        quiet,
    )


def check_soft_cross_entropy(soft_cross_entropy: Callable[[Tensor, Tensor], Tensor],
                             quiet: bool = False) -> CheckResult:
    """``soft_cross_entropy(logits, targets)``: the cross-entropy of logits (B, K) against soft
    targets (B, K) whose rows sum to 1 (mixup and cutmix's), averaged over the batch."""

    def test() -> str | None:
        for scale in (3.0, 100.0):  # logits of a few units, then in the hundreds
            seed, b, classes = _seed(), random.randint(6, 12), random.choice([3, 10])
            g = torch.Generator().manual_seed(seed)
            labels = torch.randint(0, classes, (b,), generator=g)
            shift = torch.randint(1, classes, (b // 2,), generator=g)  # partners of other classes
            labels[b - b // 2:] = ((labels[: b // 2] + shift) % classes).flip(0)
            _, targets = mixup_cutmix(torch.rand(b, 3, 8, 8, generator=g), labels, classes,
                                      mixup_alpha=0.8, cutmix_alpha=1.0, generator=g)
            logits = scale * torch.randn(b, classes, generator=g)
            want = F.cross_entropy(logits, targets)
            with forbidden("compute the loss from its formula (F.log_softmax is fine)",
                           (F, "cross_entropy")):
                got = soft_cross_entropy(logits.clone(), targets.clone())
            if isinstance(got, Tensor) and got.numel() == 1:
                got = got.reshape(())
            what = (f"the loss for a batch of {b} with {classes} classes"
                    + (" and logits in the hundreds" if scale > 10 else ""))
            problem = tensor_problem(what, got, want, atol=1e-4 * max(1.0, scale / 10))
            if problem:
                return problem
        return None

    return check(
        "soft_cross_entropy", test,
        "the loss of one image is -Σ_k t_k · log p_k with p = softmax(logits) over the classes: "
        "-(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1), then .mean() over the batch. "
        "Taking .mean() over every entry would also divide by the number of classes, and the "
        "argmax of the targets throws the partner's share away; softmax(...).log() turns tiny "
        "probabilities into log(0) = -inf when the logits are large",
        quiet,
    )


def check_cutmix_weight(cutmix_weight: Callable[[int, int, int, int, int], float],
                        quiet: bool = False) -> CheckResult:
    """``cutmix_weight(top, left, height, width, image_size) -> float``: the label weight an
    image keeps when its partner's pixels are pasted into the box (which may reach past the
    image's border and is then cut off): 1 minus the pasted fraction of the image."""

    def test() -> str | None:
        size = random.choice([16, 32])
        boxes = [(4, 4, 8, 8), (-5, 3, 12, 6), (size - 6, size - 3, 10, 10), (-3, -3, 6, 6),
                 (size + 1, 2, 5, 5), (-4, -4, size + 8, size + 8), (0, 0, size, 0),
                 (size + 2, size + 2, 4, 4)]
        for _ in range(8):
            boxes.append((random.randint(-size // 2, size), random.randint(-size // 2, size),
                          random.randint(0, size), random.randint(0, size)))
        for top, left, height, width in boxes:
            mask = _rectangles(*(torch.tensor([v]) for v in (top, left, height, width)),
                               size, size)
            want = 1 - mask.float().mean().item()
            got = cutmix_weight(top, left, height, width, size)
            if not isinstance(got, (int, float)) and not (isinstance(got, Tensor)
                                                          and got.numel() == 1):
                return f"cutmix_weight should return one number, got {got!r:.60}"
            if not math.isclose(float(got), want, abs_tol=1e-6):
                return (f"a box at top={top}, left={left} of {height}×{width} on a "
                        f"{size}×{size} image leaves the image a label weight of {want:.4f}, "
                        f"you said {float(got):.4f}")
        return None

    return check(
        "cutmix_weight", test,
        "clip the box to the image first: rows from max(top, 0) to min(top + height, size), "
        "columns likewise, and a negative length counts as 0 (rows and columns each, before "
        "multiplying: two negatives make a positive area); the pasted fraction is the clipped "
        "area / size², and the image keeps 1 minus that",
        quiet,
    )
