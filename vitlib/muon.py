"""Muon for a ViT's weight matrices, AdamW for everything else, in one optimizer.

AdamW scales each weight's step by that weight's own gradient history. Muon (Jordan et al.,
2024) treats a weight matrix as a whole: it keeps SGD momentum of the matrix's gradient and
steps along the nearest *orthogonal* matrix to that momentum (the momentum's SVD U S Vᵀ with
every singular value set to 1: U Vᵀ). Directions that the gradient barely touches then move as
far as the dominant ones, which lets a large batch make more progress per step.

A few Newton–Schulz iterations approximate U Vᵀ with matrix products only, so they run fast
in bfloat16 on a GPU; matrices that share their short side go through them together, as one
batch (a ViT's block matrices all do: one batch for all of them). The step
is scaled to the size of a typical AdamW step (Liu et al., 2025, "Muon is Scalable for LLM
Training"), so the learning rate and weight decay tuned for AdamW carry over; a multiple of
that learning rate often does better (``vitlib.train.TrainConfig.muon_lr_ratio``).

Only the Transformer blocks' 2-D weights take Muon steps; the patch embedding, position
embedding, head, norms and biases take AdamW steps, as in the published recipes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

# the quintic iteration's coefficients (Jordan et al., 2024): chosen to push small singular
# values up fast, at the cost of leaving them near 1 rather than at 1 (after 5 steps 0.7-1.2
# for a random 192 x 576 matrix; a square one's smallest, near 0 to start with, stay lower)
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
RMS_MATCH = 0.2  # a Muon step's root-mean-square size, about that of an AdamW step


def orthogonalize(matrices: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately U Vᵀ for each matrix U S Vᵀ of a stack (..., m, n): the same singular
    vectors with the singular values brought near 1. Computed in ``dtype`` (default: bfloat16
    on a GPU that has it natively, float32 elsewhere); the result has that dtype."""
    if matrices.ndim < 2:
        raise ValueError(f"orthogonalize needs matrices (..., m, n), got shape "
                         f"{tuple(matrices.shape)}")
    dtype = dtype or _working_dtype(matrices)
    shape = matrices.shape
    x = matrices.to(dtype).reshape(-1, *shape[-2:])  # (B, m, n)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X Xᵀ is then the smaller square
        x = x.mT
    # divide by the Frobenius norm: every singular value ≤ 1, where the iteration converges
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-7)
    a, b, c = NEWTON_SCHULZ
    for _ in range(steps):  # X <- (a + b·XXᵀ + c·(XXᵀ)²) X: each singular value s -> p(s)
        gram = x @ x.mT  # (B, m, m), m ≤ n
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·G + c·G²
        x = torch.baddbmm(x, poly, x, beta=a)  # a·X + (b·G + c·G²)·X
    return (x.mT if tall else x).reshape(shape)


def orthogonalize_each(matrices: list[Tensor], steps: int = 5,
                       dtype: torch.dtype | None = None) -> list[Tensor]:
    """``orthogonalize`` for 2-D matrices of any shapes: the results in order, each contiguous
    and in its matrix's shape and dtype. Matrices that share their short side m go through the
    iteration as one batch, each turned wide (m × n) and zero-padded to the batch's longest n:
    zero columns stay zero through the iteration and add nothing to X Xᵀ, so the padding
    changes no result, and a model's matrices take a few dozen kernels instead of that many
    per shape."""
    batches: dict[int, dict[torch.Size, list[int]]] = {}  # short side -> shape -> indices
    for i, m in enumerate(matrices):
        if m.ndim != 2:
            raise ValueError(f"orthogonalize_each needs 2-D matrices, got shape "
                             f"{tuple(m.shape)} at index {i}")
        batches.setdefault(min(m.shape), {}).setdefault(m.shape, []).append(i)
    out: list[Tensor] = list(matrices)
    for short, shapes in batches.items():
        first = matrices[next(iter(shapes.values()))[0]]
        work = dtype or _working_dtype(first)
        sizes = [len(idx) for idx in shapes.values()]  # the batch's rows, shape by shape
        batch = first.new_zeros(sum(sizes), short, max(max(s) for s in shapes), dtype=work)
        for (shape, idx), rows in zip(shapes.items(), batch.split(sizes), strict=True):
            stacked = torch.stack([matrices[i] for i in idx])  # (k, *shape)
            rows[:, :, :max(shape)] = stacked.mT if shape[0] > shape[1] else stacked
        batch = orthogonalize(batch, steps, work)  # (count, short, n), already wide
        for (shape, idx), rows in zip(shapes.items(), batch.split(sizes), strict=True):
            part = rows[:, :, :max(shape)]
            part = part.mT if shape[0] > shape[1] else part
            results = part.new_empty(part.shape, dtype=matrices[idx[0]].dtype).copy_(part)
            for i, result in zip(idx, results.unbind(), strict=True):
                out[i] = result
    return out


def _working_dtype(matrices: Tensor) -> torch.dtype:
    """bfloat16 on a GPU that has it natively, float32 elsewhere."""
    native_bf16 = matrices.is_cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float32


class MuonAdamW(torch.optim.Optimizer):
    """Muon steps for the parameter groups with ``muon=True`` (2-D matrices only), AdamW steps
    for the others. One optimizer, so a schedule that sets ``group["lr"]``, checkpoints
    (``state_dict``) and gradient scaling treat it as any other.

    Muon: momentum B ← μ·B + (1 − μ)·g; the Nesterov direction (1 − μ)·g + μ·B, orthogonalized,
    is stepped by lr · 0.2 · √max(m, n). Weight decay is decoupled in both, as in AdamW: each
    step multiplies the weights by 1 − lr · weight_decay, with the group's own lr."""

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 momentum: float = 0.95, ns_steps: int = 5) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                        momentum=momentum, ns_steps=ns_steps, muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim != 2 for p in group["params"]):
                shapes = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                raise ValueError(f"Muon steps 2-D weight matrices only, but a muon=True group "
                                 f"holds parameters of shapes {shapes}; put them in a group "
                                 "with muon=False (AdamW)")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (the base class's signature)
        """One step for every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["weight_decay"]:  # decoupled, the same in both rules
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            (self._muon_step if group["muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[Tensor]) -> None:
        lr, mu = group["lr"], group["momentum"]
        grads = [p.grad for p in params]
        bufs = [self._state(p, "momentum_buffer") for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - mu)
        directions = torch._foreach_lerp(grads, bufs, mu)  # Nesterov
        updates = orthogonalize_each(directions, group["ns_steps"])
        by_long_side: dict[int, list[int]] = {}  # the step's size depends on it
        for i, p in enumerate(params):
            by_long_side.setdefault(max(p.shape), []).append(i)
        for n, idx in by_long_side.items():
            torch._foreach_add_([params[i] for i in idx], [updates[i] for i in idx],
                                alpha=-lr * RMS_MATCH * math.sqrt(n))

    def _adamw_step(self, group: dict, params: list[Tensor]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        by_step: dict[int, list[Tensor]] = {}  # each parameter counts its own steps, as in
        for p in params:  # AdamW (one count, unless some went without a gradient)
            self.state[p]["step"] = self.state[p].get("step", 0) + 1
            by_step.setdefault(self.state[p]["step"], []).append(p)
        for step, ps in by_step.items():
            grads = [p.grad for p in ps]
            means = [self._state(p, "exp_avg") for p in ps]
            squares = [self._state(p, "exp_avg_sq") for p in ps]
            torch._foreach_lerp_(means, grads, 1 - beta1)
            torch._foreach_mul_(squares, beta2)
            torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
            denominators = torch._foreach_sqrt(squares)
            torch._foreach_div_(denominators, math.sqrt(1 - beta2 ** step))
            torch._foreach_add_(denominators, eps)
            torch._foreach_addcdiv_(ps, means, denominators, value=-lr / (1 - beta1 ** step))

    def _state(self, p: Tensor, name: str) -> Tensor:
        """The optimizer's buffer ``name`` for ``p``, zeros at first."""
        state = self.state[p]
        if name not in state:
            state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[name]
