"""Checks for the exercises of notebook 10 (ViT vs CNN: inductive bias and data hunger)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checking import CheckResult, check
from .compare import in_float64, int_problem, yes_no_problem


def _formula_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """The output size of ``nn.Conv2d`` (no dilation), by the formula of its documentation."""
    return (size + 2 * padding - kernel) // stride + 1


def _output_size_problem(conv_output_size: Callable[[int, int, int, int], int], size: int,
                         kernel: int, stride: int, padding: int, want: int) -> str | None:
    got = conv_output_size(size, kernel, stride, padding)
    problem = int_problem(f"conv_output_size({size}, {kernel}, {stride}, {padding})", got)
    if problem:
        return problem
    if got != want:
        return (f"for size={size}, kernel={kernel}, stride={stride}, padding={padding} "
                f"nn.Conv2d gives {want} × {want}, you said {got!r}")
    return None


def check_conv_output_size(conv_output_size: Callable[[int, int, int, int], int],
                           quiet: bool = False) -> CheckResult:
    """``conv_output_size(size, kernel, stride, padding) -> int``: the height (= width) of the
    output of a convolution on a size × size input, as ``nn.Conv2d`` computes it."""

    def test() -> str | None:
        cases = [(32, 3, 1, 1), (32, 3, 2, 1), (32, 4, 4, 0), (224, 16, 16, 0), (7, 3, 2, 0),
                 (33, 3, 2, 1), (28, 5, 1, 0), (10, 1, 3, 0),
                 (random.randint(8, 64), random.choice([1, 3, 5, 7]), random.randint(1, 4),
                  random.randint(0, 3))]
        for size, kernel, stride, padding in cases:
            image = torch.zeros(1, 1, size, size)
            want = F.conv2d(image, torch.zeros(1, 1, kernel, kernel), stride=stride,
                            padding=padding).shape[-1]
            problem = _output_size_problem(conv_output_size, size, kernel, stride, padding, want)
            if problem:
                return problem
        # then every small case, so that a rounding that is right only for some sizes shows
        for size, kernel, stride, padding in itertools.product(range(1, 25), range(1, 8),
                                                               range(1, 6), range(4)):
            if size + 2 * padding >= kernel:
                want = _formula_output_size(size, kernel, stride, padding)
                problem = _output_size_problem(conv_output_size, size, kernel, stride, padding,
                                               want)
                if problem:
                    return problem
        return None

    return check(
        "conv_output_size", test,
        "pad the input by `padding` on each side (size + 2·padding), count the positions where "
        "the kernel fits entirely (size + 2·padding − kernel + 1 with stride 1), and with a "
        "stride keep every stride-th of them: (size + 2·padding − kernel) // stride + 1, rounded "
        "down with //",
        quiet,
    )


def _measured_receptive_field(layers: list[tuple[int, int]]) -> int:
    """How wide the span of input positions is that one output position of a stack of 1-D
    convolutions (all weights 1, no padding) depends on, found by back-propagating from the first
    output."""
    x = torch.zeros(1, 1, 512, requires_grad=True)
    out = x
    for kernel, stride in layers:
        out = F.conv1d(out, torch.ones(1, 1, kernel), stride=stride)
    out[0, 0, 0].backward()
    seen = (x.grad[0, 0] != 0).nonzero().flatten()
    return int(seen.max() - seen.min() + 1)


def check_receptive_field(receptive_field: Callable[[list[tuple[int, int]]], int],
                          quiet: bool = False) -> CheckResult:
    """``receptive_field(layers) -> int``: how many pixels wide the patch of the input is that
    one output pixel of a stack of convolutions sees; ``layers`` lists (kernel, stride) from the
    input up."""

    def test() -> str | None:
        cases = [[(3, 1)], [(3, 1)] * 2, [(3, 1)] * 5, [(5, 1), (3, 1)], [(3, 2), (3, 1)],
                 [(3, 1), (3, 2), (3, 1), (3, 2), (3, 1)], [(4, 4), (3, 1)], [(7, 2), (3, 2)],
                 [(1, 2), (3, 1)], [(3, 1), (1, 2), (3, 1)], [(3, 3), (3, 3), (2, 1)],
                 [(random.choice([1, 3, 5]), random.randint(1, 2)) for _ in range(4)]]
        for layers in cases:
            want = _measured_receptive_field(layers)
            got = receptive_field(list(layers))
            problem = int_problem(f"receptive_field({layers})", got)
            if problem:
                return problem
            if got != want:
                return f"a stack of (kernel, stride) {layers} sees {want} pixels, you said {got!r}"
        return None

    return check(
        "receptive_field", test,
        "keep two numbers while going up the stack: the field r (start 1) and the jump j, the "
        "distance in input pixels between neighbouring positions of the current layer (start "
        "1). A layer with kernel k adds (k − 1)·j to r, then multiplies j by its stride: a "
        "stride does not widen its own layer's view, but every layer above it",
        quiet,
    )


def check_param_counts(param_counts: Callable[[int, int, int, int, int], tuple[int, int]],
                       quiet: bool = False) -> CheckResult:
    """``param_counts(in_chans, out_chans, kernel, height, width) -> (conv, dense)``: the
    parameters (with biases) of a kernel × kernel convolution from in_chans to out_chans channels
    and of a fully connected layer that maps the same height × width image to the same output
    (out_chans × height × width numbers)."""

    def test() -> str | None:
        cases = [(3, 16, 3, 32, 32), (1, 1, 3, 8, 8), (64, 64, 3, 16, 16), (3, 8, 5, 28, 28),
                 (2, 5, 3, 6, 10), (4, 3, 1, 12, 5),  # images that are not square
                 (random.randint(1, 8), random.randint(1, 32), random.choice([1, 3, 5]),
                  random.randint(4, 40), random.randint(4, 40))]
        for c_in, c_out, kernel, height, width in cases:
            conv = nn.Conv2d(c_in, c_out, kernel, device="meta")  # meta: shapes without memory
            dense = nn.Linear(c_in * height * width, c_out * height * width, device="meta")
            want = (sum(p.numel() for p in conv.parameters()),
                    sum(p.numel() for p in dense.parameters()))
            got = param_counts(c_in, c_out, kernel, height, width)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                return f"param_counts should return a pair (conv, dense), got {got!r:.80}"
            problem = (int_problem("the conv's parameter count", got[0])
                       or int_problem("the dense layer's parameter count", got[1]))
            if problem:
                return problem
            if tuple(got) != want:
                return (f"for in_chans={c_in}, out_chans={c_out}, kernel={kernel} on a "
                        f"{height}×{width} image: conv {want[0]:,}, dense {want[1]:,}; you said "
                        f"conv {got[0]!r}, dense {got[1]!r}")
        return None

    return check(
        "param_counts", test,
        "the conv has one kernel × kernel filter per (input, output) channel pair plus one bias "
        "per output channel, whatever the image size; the dense layer has one weight per (input "
        "number, output number) pair, with in_chans·height·width inputs and "
        "out_chans·height·width outputs, plus one bias per output",
        quiet,
    )


def _translation_cases(channels: int) -> list[tuple[str, Callable[[Tensor], Tensor], bool]]:
    """(description, function on images (B, C, H, W) keeping H and W, whether shifting the input
    with wrap-around shifts the output the same way)."""
    circular = nn.Conv2d(channels, 4, 3, padding=1, padding_mode="circular").double()
    zero_padded = nn.Conv2d(channels, 4, 3, padding=1).double()
    position_map = torch.randn(1, 4, 16, 16, dtype=torch.float64)
    tiny_position_map = 1e-3 * torch.randn(1, 4, 16, 16, dtype=torch.float64)  # moves ~1e-3
    second = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular").double()
    cases = [
        ("a 3×3 conv with wrap-around (circular) padding", circular, True),
        ("a ReLU", torch.relu, True),
        ("two circular convs with a ReLU between them",
         nn.Sequential(circular, nn.ReLU(), second), True),
        ("subtracting each channel's mean over the image",
         lambda x: x - x.mean(dim=(2, 3), keepdim=True), True),
        ("a 3×3 conv with zero padding (the borders differ)", zero_padded, False),
        ("a circular conv plus a learned table, one value per pixel (a position embedding)",
         lambda x: circular(x) + position_map, False),
        ("a circular conv plus a tiny table, one value around 0.001 per pixel",
         lambda x: circular(x) + tiny_position_map, False),
        ("mirroring the image left-right", lambda x: x.flip(-1), False),
        ("a cumulative sum down the rows", lambda x: x.cumsum(dim=2), False),
    ]
    return [(what, in_float64(function), want) for what, function, want in cases] + [
        # in float32: rounding moves the last bits (== fails), but only relative to each value
        ("a softmax down each column of pixels", lambda x: x.softmax(dim=2), True),
    ]


def check_translation_equivariance(
    is_equivariant: Callable[[Callable[[Tensor], Tensor], Tensor, tuple[int, int]], bool],
    quiet: bool = False,
) -> CheckResult:
    """``is_equivariant(f, x, shift) -> bool``: whether f(x shifted by shift = (rows, cols),
    with wrap-around) equals f(x) shifted by the same amount, up to float rounding."""

    def test() -> str | None:
        x = torch.randn(2, 3, 16, 16)
        shift = (random.randint(1, 7), random.randint(9, 15))
        with torch.no_grad():
            return yes_no_problem("is_equivariant", _translation_cases(channels=3),
                                  lambda f: is_equivariant(f, x.clone(), shift))

    return check(
        "translation_equivariance", test,
        "shift with torch.roll(x, shift, dims=(2, 3)) (rows and columns, wrapping around), then "
        "compare f of the shifted images with f(x) shifted the same way (shift the output too: "
        "that is equivariance; comparing with f(x) itself tests invariance) using "
        "torch.allclose (its default tolerance, or atol=1e-5), not ==: summing in another order "
        "changes the last bits of a float; a looser tolerance misses a small position table",
        quiet,
    )


def check_low_rank_factors(low_rank_factors: Callable[[Tensor, int], tuple[Tensor, Tensor]],
                           quiet: bool = False) -> CheckResult:
    """``low_rank_factors(m, rank) -> (a, b)``: for m of shape (p, q), a (p, rank) and
    b (q, rank) whose product a @ b.T is the closest matrix of that rank to m (the least sum of
    squared differences), as mimetic initialisation needs for each head's W_Q W_Kᵀ."""

    def test() -> str | None:
        generator = torch.Generator().manual_seed(random.randint(0, 2**31 - 1))
        cases = [(16, 16, 4), (64, 64, 16), (12, 20, 3), (20, 12, 5), (8, 8, 8)]
        for p, q, rank in cases:
            m = torch.randn(p, q, generator=generator, dtype=torch.float64)
            if p == q:
                m = m / p**0.5 + 0.7 * torch.eye(p, dtype=torch.float64)  # like a mimetic target
            got = low_rank_factors(m.clone(), rank)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                return f"low_rank_factors should return a pair (a, b), got {type(got).__name__}"
            a, b = (torch.as_tensor(f, dtype=torch.float64) for f in got)
            if a.shape != (p, rank) or b.shape != (q, rank):
                return (f"for m of shape ({p}, {q}) and rank {rank} the factors should be "
                        f"({p}, {rank}) and ({q}, {rank}), got {tuple(a.shape)} and "
                        f"{tuple(b.shape)}")
            singular = torch.linalg.svdvals(m)
            best = singular[rank:].square().sum().sqrt().item()  # Eckart–Young
            error = (m - a @ b.T).norm().item()
            if not error <= best + 1e-6 * (1 + singular[0].item()):
                return (f"for a ({p}, {q}) matrix and rank {rank}, ‖m − a bᵀ‖ is {error:.4f}; "
                        f"the best rank-{rank} approximation reaches {best:.4f}")
        return None

    return check(
        "low_rank_factors", test,
        "take the singular value decomposition u, s, vt = torch.linalg.svd(m), so that "
        "m = u · diag(s) · vt with s sorted largest first; keep the first `rank` columns of u, "
        "rows of vt and values of s, and split each kept singular value between the two "
        "factors: a = u[:, :rank] · √s[:rank], b = vt[:rank].T · √s[:rank] (so that "
        "a @ b.T = u[:, :rank] · diag(s[:rank]) · vt[:rank])",
        quiet,
    )
