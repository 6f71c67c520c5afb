"""Checks for the exercises of notebook 09 (training fast on a GPU)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vitlib.fast import update_ema
from vitlib.model import ViTConfig, flops_per_image, get_config
from vitlib.muon import NEWTON_SCHULZ

from .checking import CheckResult, check
from .compare import tensor_problem

FP16_MAX = torch.finfo(torch.float16).max  # 65504, the largest finite float16


def ema_warmup_decay(decay: float, step: int) -> float:
    """The decay the trainer uses after optimizer step ``step`` (0-based): short at first."""
    return min(decay, (1 + step) / (10 + step))


def _reference_ema_run(weights: Tensor, decay: float) -> Tensor:
    """The EMA after the last row of ``weights`` (T + 1, n), computed with ``update_ema``."""
    model = nn.Linear(weights.shape[1], 1, bias=False)
    ema = nn.Linear(weights.shape[1], 1, bias=False)
    with torch.no_grad():
        ema.weight.copy_(weights[0])
        for step, row in enumerate(weights[1:]):
            model.weight.copy_(row)
            update_ema(ema, model, ema_warmup_decay(decay, step))
    return ema.weight.detach()[0]


def check_ema_run(ema_run: Callable[[Tensor, float], Tensor], quiet: bool = False) -> CheckResult:
    """``ema_run(weights, decay) -> Tensor (n,)``: ``weights`` (T + 1, n) holds the weights
    before training (row 0) and after each of T optimizer steps; the answer is the moving
    average after the last step, started at row 0, with the trainer's warm-up of the decay."""

    def test() -> str | None:
        # the warm-up (1 + t) / (10 + t) stays below decay in the first three runs; it passes
        # 0.5 at t = 9 and 0.9 at t = 81, where the decay takes over
        for steps, n, decay in ((1, 3, 0.9), (5, 4, 0.99), (random.randint(20, 60), 6, 0.95),
                                (12, 3, 0.5), (random.randint(100, 150), 4, 0.9)):
            # a wandering weight vector, of size about 1 whatever the length of the run
            weights = torch.randn(steps + 1, n).cumsum(0) / math.sqrt(steps + 1)
            got = ema_run(weights.clone(), decay)
            problem = tensor_problem(
                f"ema_run(weights of shape {tuple(weights.shape)}, decay={decay})",
                got, _reference_ema_run(weights, decay), atol=1e-5,
            )
            if problem:
                return problem
        return None

    return check(
        "ema_run", test,
        "start from ema = weights[0]; after step t (t = 0, 1, ...) the new weights are "
        "weights[t + 1], and ema = d·ema + (1 − d)·weights[t + 1] with "
        "d = min(decay, (1 + t) / (10 + t)). The old average gets the weight d, close to 1",
        quiet,
    )


def reference_mfu(config: ViTConfig, batch_size: int, step_time_s: float,
                  peak_tflops: float) -> float:
    """Model FLOPs utilisation of a training step: matrix-product FLOPs per second over the
    device's peak rate (training = 3 × the forward FLOPs of ``flops_per_image``)."""
    return 3 * flops_per_image(config) * batch_size / step_time_s / (peak_tflops * 1e12)


def check_mfu(mfu: Callable[[ViTConfig, int, float, float], float],
              quiet: bool = False) -> CheckResult:
    """``mfu(config, batch_size, step_time_s, peak_tflops) -> float``: the fraction (0..1) of
    the device's peak matrix-product rate that one training step of that time achieves."""

    def test() -> str | None:
        cases = [
            (get_config("vit_cifar_tiny"), 1024, 0.012, 989.4),
            (get_config("vit_cifar_cpu"), 64, 0.25, 0.1),
            (get_config("vit_b_16"), 256, random.uniform(0.3, 0.6), 312.0),
            (get_config("vit_cifar_small"), random.choice([128, 256]), 0.05, 125.0),
        ]
        for config, batch, seconds, peak in cases:
            want = reference_mfu(config, batch, seconds, peak)
            got = mfu(config, batch, seconds, peak)
            if not isinstance(got, (int, float)) or not math.isclose(got, want, rel_tol=1e-3):
                return (f"a step of {batch} images of a ViT with embed_dim={config.embed_dim}, "
                        f"depth={config.depth} in {seconds:.3g} s on a {peak:g} TFLOP/s device "
                        f"has an MFU of {want:.4f}, you computed {got!r}")
        return None

    return check(
        "mfu", test,
        "FLOPs of one step = 3 × flops_per_image(config) × batch_size (the backward pass costs "
        "about twice the forward); divide by the step time for FLOP/s, then by the peak in "
        "FLOP/s (TFLOP/s × 1e12). The answer is a fraction, e.g. 0.3 for 30 %",
        quiet,
    )


def reference_loss_scale(grads: Tensor) -> float:
    """The largest power of two S with max |g|·S ≤ the largest finite float16 (65504)."""
    largest = grads.detach().abs().max().double().item()
    k = math.floor(math.log2(FP16_MAX / largest))
    while largest * 2.0 ** (k + 1) <= FP16_MAX:  # guard against rounding in log2
        k += 1
    while largest * 2.0**k > FP16_MAX:
        k -= 1
    return 2.0**k


def check_loss_scale(loss_scale: Callable[[Tensor], float], quiet: bool = False) -> CheckResult:
    """``loss_scale(grads) -> float``: the largest power of two S such that every gradient
    times S still fits in float16 (|g|·S ≤ 65504)."""

    def test() -> str | None:
        magnitudes = [1e-7, 1e-3, 1.0, 3e4, 1e6, 10 ** random.uniform(-8, 2)]
        cases = [torch.randn(random.randint(5, 50)) * magnitude for magnitude in magnitudes]
        # the largest gradient negative; 16376·4 = 65504 exactly fits; 16380·4 does not
        cases += [torch.tensor([-3e4, 1.0]), torch.tensor([16376.0, -2.0]),
                  torch.tensor([16380.0, 3.0])]
        for grads in cases:
            want = reference_loss_scale(grads)
            got = loss_scale(grads.clone())
            if isinstance(got, Tensor) and got.numel() == 1:
                got = got.item()
            if not isinstance(got, (int, float)):
                return f"loss_scale should return a number, got {type(got).__name__}"
            if got != want:
                which = (f"the gradients {grads.tolist()}" if grads.numel() <= 3 else
                         f"gradients up to {grads.abs().max().item():.3g} in size")
                return (f"for {which} the largest safe power of two is {want:g} "
                        f"(2^{int(math.log2(want))}), you said {got:g}")
        return None

    return check(
        "loss_scale", test,
        "only the largest gradient can overflow: S must satisfy max|g|·S ≤ 65504 "
        "(torch.finfo(torch.float16).max, not bfloat16's). Take the largest k with "
        "2^k ≤ 65504 / max|g| (math.floor of math.log2) and return 2.0**k; k may be negative",
        quiet,
    )


def reference_newton_schulz_values(values: Tensor, steps: int) -> Tensor:
    """Where ``steps`` Newton–Schulz steps of ``vitlib.muon`` take singular values ``values``
    of a matrix already divided by its Frobenius norm: s -> a·s + b·s³ + c·s⁵, repeated."""
    a, b, c = NEWTON_SCHULZ
    s = values.double()
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s.to(values.dtype)


def check_newton_schulz_values(newton_schulz_values: Callable[[Tensor, int], Tensor],
                               quiet: bool = False) -> CheckResult:
    """``newton_schulz_values(values, steps) -> Tensor``: the singular values after ``steps``
    Newton–Schulz steps, each in the place of the value it came from."""

    def test() -> str | None:
        cases = [(torch.tensor([1.0, 0.5, 0.1]), 1), (torch.tensor([0.9, 1e-3]), 5),
                 (torch.rand(random.randint(4, 12)), random.randint(2, 8)),
                 (torch.tensor([0.0, 0.3]), 3)]
        for values, steps in cases:
            got = newton_schulz_values(values.clone(), steps)
            problem = tensor_problem(f"newton_schulz_values({values.tolist()}, steps={steps})",
                                     got, reference_newton_schulz_values(values, steps),
                                     atol=1e-4)
            if problem:
                return problem
        return None

    return check(
        "newton_schulz_values", test,
        f"each step maps every singular value s to a·s + b·s³ + c·s⁵ with (a, b, c) = "
        f"{NEWTON_SCHULZ}; apply it `steps` times, value by value (a loop, or tensor "
        "arithmetic on all of them at once). The singular vectors do not change, so no "
        "matrix is needed",
        quiet,
    )
