"""Comparing a student's tensor with the reference, in words a student can act on."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def in_float64(function: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``function`` computed in float64 and rounded back to the input's dtype. Reordering or
    shifting the input of such a function changes its float32 result by one last bit at most, so
    any sensible tolerance (torch.allclose's default too) sees an equivariant function as one,
    while a change of 1e-4 stays plain to see."""
    return lambda x: function(x.double()).to(x.dtype)


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


def _describe(value: object) -> str:
    """A short description of a value for a message: its shape when it is an array."""
    if isinstance(value, Tensor) or type(value).__name__ == "ndarray":
        kind = "tensor" if isinstance(value, Tensor) else "NumPy array"
        single = " (.item() gives its number)" if math.prod(value.shape) == 1 else ""
        return f"a {kind} of shape {tuple(value.shape)}{single}"
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} (a {type(value).__name__})"


def int_problem(what: str, got: object) -> str | None:
    """None when ``got`` is a whole number (a Python or NumPy int; not a bool, a float or a
    tensor), else a sentence saying what it is instead."""
    if isinstance(got, numbers.Integral) and not isinstance(got, bool):
        return None
    return f"{what} should be an int, got {_describe(got)}"


def shape_problem(what: str, got: object, expected: tuple[int, ...]) -> str | None:
    """None when ``got`` is the shape ``expected`` as a tuple, list or torch.Size of ints,
    else a sentence saying what it is instead."""
    if not isinstance(got, (tuple, list, torch.Size)) or len(got) != len(expected):
        return f"{what} is {got!r:.80}, expected {expected}"
    for size in got:
        problem = int_problem(f"every size in {what}", size)
        if problem:
            return problem
    if tuple(got) != tuple(expected):
        return f"{what} is {tuple(got)}, expected {expected}"
    return None


def as_bool(answer: object) -> bool | None:
    """A Python, NumPy or one-element tensor boolean as a bool; None for anything else."""
    if isinstance(answer, Tensor) and answer.numel() == 1 and answer.dtype == torch.bool:
        return bool(answer)
    if isinstance(answer, bool) or type(answer).__name__ == "bool_":
        return bool(answer)
    return None


def yes_no_problem(
    function_name: str,
    cases: Iterable[tuple[str, object, bool]],
    answer: Callable[[object], object],
) -> str | None:
    """None when ``answer(case)`` is the right True/False for every ``(what, case, right)``,
    else a sentence about the first one it gets wrong (``function_name`` names the student's
    function)."""
    for what, case, want in cases:
        got = as_bool(answer(case))
        if got is None:
            return f"{function_name} should return True or False"
        if got != want:
            return f"for {what} it answered {got}, but the right answer is {want}"
    return None
