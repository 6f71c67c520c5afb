"""Comparing a student's tensor with the reference, in words a student can act on."""

from __future__ import annotations

import torch
from torch import Tensor


def tensor_problem(what: str, got: object, expected: Tensor, atol: float = 1e-5) -> str | None:
    """None when ``got`` is a tensor with ``expected``'s shape and values (within ``atol``),
    else a sentence saying what differs."""
    if not isinstance(got, Tensor):
        return f"{what} should be a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if got.dtype == torch.bool or expected.dtype == torch.bool:
        if got.dtype != expected.dtype:
            return f"{what} has dtype {got.dtype}, expected {expected.dtype}"
        wrong = (got != expected).sum().item()
        return None if wrong == 0 else f"{what} has {wrong} of {got.numel()} entries wrong"
    got, expected = got.detach().double(), expected.detach().double()
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        return f"{what} contains NaN values"
    error = (got - expected).abs().max().item()
    if not error <= atol:
        return f"{what} differs from the reference by up to {error:.3g}"
    return None
