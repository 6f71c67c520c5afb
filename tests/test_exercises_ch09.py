"""Each exercise check of notebook 09 passes a right answer and fails wrong ones with a hint."""

import math

import pytest
import torch

from vitlib import flops_per_image, get_config
from vitlib.exercises import ch09
from vitlib.muon import orthogonalize


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- EMA over a run ------------------------------------------------------------------------


def ema_run_right(weights, decay):
    ema = weights[0].clone()
    for t, w in enumerate(weights[1:]):
        d = min(decay, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * w
    return ema


def ema_run_no_warmup(weights, decay):
    ema = weights[0].clone()
    for w in weights[1:]:
        ema = decay * ema + (1 - decay) * w
    return ema


def ema_run_swapped(weights, decay):
    ema = weights[0].clone()
    for t, w in enumerate(weights[1:]):
        d = min(decay, (1 + t) / (10 + t))
        ema = (1 - d) * ema + d * w
    return ema


def ema_run_counts_from_one(weights, decay):
    ema = weights[0].clone()
    for t, w in enumerate(weights[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * w
    return ema


def ema_run_warmup_only(weights, decay):
    ema = weights[0].clone()
    for t, w in enumerate(weights[1:]):
        d = (1 + t) / (10 + t)  # never capped at decay
        ema = d * ema + (1 - d) * w
    return ema


def ema_run_lerp(weights, decay):
    ema = weights[0].clone()
    for t, w in enumerate(weights[1:]):
        ema = ema.lerp(w, 1 - min(decay, (1 + t) / (10 + t)))
    return ema


def test_ema_run_other_right_answer():
    for _ in range(20):
        assert passes(ch09.check_ema_run(ema_run_lerp, quiet=True))


@pytest.mark.parametrize("wrong", [ema_run_no_warmup, ema_run_swapped, ema_run_counts_from_one,
                                   ema_run_warmup_only, lambda weights, decay: weights[-1]])
def test_ema_run(wrong):
    assert passes(ch09.check_ema_run(ema_run_right, quiet=True))
    assert fails_with_hint(ch09.check_ema_run(wrong, quiet=True))


def test_ema_warmup_decay_is_short_at_first_and_capped():
    assert ch09.ema_warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert ch09.ema_warmup_decay(0.999, 10**6) == 0.999


# --- MFU ----------------------------------------------------------------------------------------


def mfu_right(config, batch_size, step_time_s, peak_tflops):
    return 3 * flops_per_image(config) * batch_size / step_time_s / (peak_tflops * 1e12)


def mfu_forward_only(config, batch_size, step_time_s, peak_tflops):
    return flops_per_image(config) * batch_size / step_time_s / (peak_tflops * 1e12)


def mfu_per_image(config, batch_size, step_time_s, peak_tflops):
    return 3 * flops_per_image(config) / step_time_s / (peak_tflops * 1e12)


def mfu_percent(config, batch_size, step_time_s, peak_tflops):
    return 100 * mfu_right(config, batch_size, step_time_s, peak_tflops)


@pytest.mark.parametrize("wrong", [mfu_forward_only, mfu_per_image, mfu_percent])
def test_mfu(wrong):
    assert passes(ch09.check_mfu(mfu_right, quiet=True))
    assert fails_with_hint(ch09.check_mfu(wrong, quiet=True))


def test_reference_mfu_by_hand():
    config = get_config("vit_cifar_tiny")
    # 1.108 GFLOP per training image (benchmarks/NOTES.md) × 1000 images in 1 s = 1.108 TFLOP/s
    assert ch09.reference_mfu(config, 1000, 1.0, 1.108) == pytest.approx(1.0, rel=2e-3)


# --- fp16 loss scale -------------------------------------------------------------------------


def loss_scale_right(grads):
    return 2.0 ** math.floor(math.log2(65504 / grads.abs().max().item()))


def loss_scale_bf16_max(grads):
    limit = torch.finfo(torch.bfloat16).max
    return 2.0 ** math.floor(math.log2(limit / grads.abs().max().item()))


def loss_scale_smallest_grad(grads):
    return 2.0 ** math.floor(math.log2(65504 / grads.abs().min().item()))


def loss_scale_not_a_power_of_two(grads):
    return 65504 / grads.abs().max().item()


def loss_scale_signed_max(grads):
    largest = grads.max().item()  # misses a large negative gradient
    return 2.0 ** math.floor(math.log2(65504 / largest)) if largest > 0 else 2.0**24


def loss_scale_strict(grads):
    largest = grads.abs().max().item()
    k = math.floor(math.log2(65504 / largest))
    while largest * 2.0**k >= 65504:  # < instead of ≤: refuses a product of exactly 65504
        k -= 1
    return 2.0**k


def loss_scale_ceil_minus_one(grads):
    return 2.0 ** (math.ceil(math.log2(65504 / grads.abs().max().item())) - 1)


def loss_scale_limit_2_16(grads):
    return 2.0 ** math.floor(math.log2(65536 / grads.abs().max().item()))


@pytest.mark.parametrize("wrong", [loss_scale_bf16_max, loss_scale_smallest_grad,
                                   loss_scale_not_a_power_of_two, lambda grads: 65536.0,
                                   loss_scale_signed_max, loss_scale_strict,
                                   loss_scale_ceil_minus_one, loss_scale_limit_2_16])
def test_loss_scale(wrong):
    assert passes(ch09.check_loss_scale(loss_scale_right, quiet=True))
    assert fails_with_hint(ch09.check_loss_scale(wrong, quiet=True))


def test_reference_loss_scale_at_the_edges():
    for grads, want in (([-3e4, 1.0], 2.0), ([16376.0, -2.0], 4.0), ([16380.0, 3.0], 2.0)):
        assert ch09.reference_loss_scale(torch.tensor(grads)) == want


def test_reference_loss_scale_fits_and_doubling_does_not():
    for magnitude in (1e-6, 1.0, 1e5):
        grads = torch.randn(20) * magnitude
        scale = ch09.reference_loss_scale(grads)
        assert torch.isfinite((grads.double() * scale).half()).all()
        assert grads.abs().max().item() * 2 * scale > 65504
        assert math.log2(scale) == int(math.log2(scale))


# --- Newton–Schulz on singular values ------------------------------------------------------


def newton_schulz_values_right(values, steps, powers=(1, 3, 5)):
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(steps):
        values = a * values ** powers[0] + b * values ** powers[1] + c * values ** powers[2]
    return values


def newton_schulz_values_one_step_short(values, steps):
    return newton_schulz_values_right(values, steps - 1)


def newton_schulz_values_wrong_powers(values, steps):
    return newton_schulz_values_right(values, steps, powers=(1, 2, 3))


def newton_schulz_values_sorted(values, steps):
    return newton_schulz_values_right(values, steps).sort(descending=True).values


@pytest.mark.parametrize("wrong", [newton_schulz_values_one_step_short,
                                   newton_schulz_values_wrong_powers,
                                   newton_schulz_values_sorted])
def test_newton_schulz_values(wrong):
    assert passes(ch09.check_newton_schulz_values(newton_schulz_values_right, quiet=True))
    assert fails_with_hint(ch09.check_newton_schulz_values(wrong, quiet=True))


def test_reference_newton_schulz_values_are_those_of_orthogonalize():
    # a matrix U·diag(s)·Vᵀ with ‖s‖ = 1: orthogonalize's own normalisation leaves it as it is
    values = torch.tensor([0.8, 0.5, 0.3, 0.1, 0.01]).double()
    values = values / values.norm()
    u, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(9, 5, dtype=torch.float64))
    matrix = u @ torch.diag(values) @ v.T  # (5, 9)
    for steps in (1, 3, 5):
        got = torch.linalg.svdvals(orthogonalize(matrix, steps, dtype=torch.float64))
        want = ch09.reference_newton_schulz_values(values, steps).sort(descending=True).values
        assert torch.allclose(got, want, atol=1e-9)
