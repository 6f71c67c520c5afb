"""Checks for the exercises of notebook 01 (self-attention)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import Tensor

from vitlib.attention import scaled_dot_product_attention

from .checking import CheckResult, check, forbidden
from .compare import tensor_problem

_SOFTMAX_FUNCTIONS = [
    *((owner, name) for owner in (torch, torch.Tensor, torch.nn.functional, torch.special)
      for name in ("softmax", "log_softmax")),
    (torch, "_softmax"), (torch, "_log_softmax"),
    (torch.nn.functional, "scaled_dot_product_attention"),
]


def check_attention(attention: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
                    quiet: bool = False) -> CheckResult:
    """``attention(q, k, v) -> (O, A)`` with A = softmax(QKᵀ/√d) and O = AV, computed without
    PyTorch's softmax."""

    def test() -> str | None:
        cases = [((2, 5, 4), 5, 4, 1.0), ((3, 2, 6, 16), 7, 8, 1.0), ((1, 1, 3), 9, 2, 1.0),
                 ((2, 6, 4), 6, 4, 100.0)]  # the last one has scores in the hundreds
        for shape_q, n_keys, d_v, scale in cases:
            q = scale * torch.randn(shape_q)
            k = torch.randn(*shape_q[:-2], n_keys, shape_q[-1])
            v = torch.randn(*shape_q[:-2], n_keys, d_v)
            want_out, want_attn = scaled_dot_product_attention(q, k, v)
            with forbidden("compute attention without softmax, taking the exponentials and "
                           "normalising each row yourself", *_SOFTMAX_FUNCTIONS):
                answer = attention(q.clone(), k.clone(), v.clone())
            if not isinstance(answer, (tuple, list)) or len(answer) != 2:
                return f"attention should return a pair (O, A), got {type(answer).__name__}"
            out, attn = answer
            atol = 1e-5 * max(1.0, scale / 10)  # float32 rounding grows with the scores
            problem = tensor_problem(f"A for q of shape {tuple(q.shape)}", attn, want_attn, atol)
            problem = problem or tensor_problem(f"O for q of shape {tuple(q.shape)}", out,
                                                want_out, atol)
            if problem:
                return problem
        return None

    return check(
        "attention", test,
        "scores = q @ k.transpose(-2, -1) / math.sqrt(d) with d = q.shape[-1]; then a softmax "
        "of your own over the last dimension (the keys), so each row of A sums to 1: "
        "exps = scores.exp(), divided by exps.sum(dim=-1, keepdim=True); subtract each row's "
        "maximum before exp (scores.amax(dim=-1, keepdim=True)) so that large scores do not "
        "overflow to inf; finally O = A @ v",
        quiet,
    )


def check_causal_mask(causal_mask: Callable[[int], Tensor], quiet: bool = False) -> CheckResult:
    """``causal_mask(n) -> (n, n)`` boolean mask, True where query i may attend key j (j ≤ i)."""

    def test() -> str | None:
        for n in (1, 4, random.randint(5, 12)):
            want = torch.ones(n, n, dtype=torch.bool).tril()
            problem = tensor_problem(f"causal_mask({n})", causal_mask(n), want)
            if problem:
                return problem
        return None

    return check(
        "causal_mask", test,
        "row i is a query, column j a key; True (may attend) where j <= i, i.e. on and below the "
        "diagonal: torch.ones(n, n, dtype=torch.bool).tril()",
        quiet,
    )


def check_attention_entropy(entropy: Callable[[Tensor], Tensor],
                            quiet: bool = False) -> CheckResult:
    """``entropy(A) -> (..., Nq)``: each row's entropy −Σⱼ Aᵢⱼ log Aᵢⱼ in nats, with 0·log 0 = 0."""

    def test() -> str | None:
        n = random.randint(4, 9)
        q, k = torch.randn(2, 3, n, 8), torch.randn(2, 3, n, 8)
        full = scaled_dot_product_attention(q, k, k)[1]  # (2, 3, n, n)
        causal = scaled_dot_product_attention(q, k, k, torch.ones(n, n, dtype=torch.bool).tril())[1]
        cases = {"a softmax attention matrix": full,
                 "a causal attention matrix (with exact zeros)": causal,
                 "a uniform row": torch.full((1, n), 1.0 / n)}
        for what, attn in cases.items():
            want = -torch.special.xlogy(attn, attn).sum(-1)
            problem = tensor_problem(f"the entropy of {what}", entropy(attn), want)
            if problem:
                return problem
        return None

    return check(
        "attention_entropy", test,
        "sum -A * log(A) over the last dimension (the keys), with natural log; a weight of exactly "
        "0 contributes 0 (torch.special.xlogy(A, A) does that), and a uniform row over n keys "
        "gives log(n)",
        quiet,
    )
