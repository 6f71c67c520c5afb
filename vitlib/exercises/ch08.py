"""Checks for the exercises of notebook 08 (the training loop)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlib.model import ViT, ViTConfig
from vitlib.train import TrainConfig, learning_rate, make_optimizer

from .checking import CheckResult, check
from .compare import tensor_problem


def check_learning_rate(
    lr_at: Callable[[int, int, int, float, float], float], quiet: bool = False
) -> CheckResult:
    """``lr_at(step, total_steps, warmup_steps, peak_lr, min_lr_ratio) -> float``: the learning
    rate of optimizer step ``step`` (0-based) as ``vitlib.train.learning_rate`` computes it, a
    linear warm-up times a cosine from 1 down to ``min_lr_ratio`` over the whole run."""

    def test() -> str | None:
        runs = [(100, 10, 1e-3, 0.01), (50, 0, 3e-4, 0.0), (random.randint(20, 400), 0, 1.0, 0.1)]
        total = random.randint(30, 300)
        runs.append((total, random.randint(1, total // 3), random.choice([5e-4, 2e-3]), 0.05))
        for total, warmup, peak, ratio in runs:
            config = TrainConfig(lr=peak, min_lr_ratio=ratio)
            steps = sorted({0, 1, warmup - 1, warmup, total // 2, total - 1,
                            *random.sample(range(total), 5)} - {-1})
            for step in steps:
                want = learning_rate(config, step, warmup, (step + 1) / total)
                got = lr_at(step, total, warmup, peak, ratio)
                if not isinstance(got, (int, float)) or isinstance(got, bool):
                    return (f"lr_at should return a Python number, got {type(got).__name__} "
                            "(use math.cos, or call float() on a tensor)")
                if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                    return (f"for {total} steps, {warmup} warm-up steps, peak {peak:g} and "
                            f"min_lr_ratio {ratio:g}, the learning rate at step {step} is "
                            f"{want:.6g}, you gave {got:.6g}")
        return None

    return check(
        "learning_rate", test,
        "two factors multiplied: the warm-up min(1, (step + 1) / warmup_steps) (1 when "
        "warmup_steps is 0; the + 1 makes the very first step learn a little), and the cosine "
        "min_lr_ratio + (1 - min_lr_ratio) · ½(1 + cos(π · (step + 1) / total_steps)), which "
        "goes from about 1 at step 0 to exactly min_lr_ratio at the last step, total_steps - 1 "
        "(the fraction of the run done once the step is taken); the product is scaled by peak_lr",
        quiet,
    )


def check_smoothed_cross_entropy(
    smoothed_cross_entropy: Callable[[Tensor, Tensor, float], Tensor], quiet: bool = False
) -> CheckResult:
    """``smoothed_cross_entropy(logits, labels, smoothing)``: logits (B, K), integer labels (B,)
    -> the mean loss over the batch, as ``F.cross_entropy(logits, labels,
    label_smoothing=smoothing)``, with the same gradient."""

    def test() -> str | None:
        cases = [(8, 10, 0.1, 3.0), (5, 3, 0.0, 3.0), (16, 10, 0.3, 3.0), (4, 7, 0.2, 300.0)]
        cases.append((random.randint(2, 32), random.randint(2, 20), random.random() / 2, 5.0))
        for batch, classes, smoothing, scale in cases:
            logits = scale * torch.randn(batch, classes, dtype=torch.float64)
            labels = torch.randint(0, classes, (batch,))
            mine = logits.clone().requires_grad_()
            theirs = logits.clone().requires_grad_()
            want = F.cross_entropy(theirs, labels, label_smoothing=smoothing)
            want.backward()
            got = smoothed_cross_entropy(mine, labels.clone(), smoothing)
            what = (f"the loss for {batch} images, {classes} classes, smoothing {smoothing:.2f}"
                    + (" and large logits (hundreds)" if scale > 10 else ""))
            if isinstance(got, Tensor) and got.ndim != 0:
                return (f"{what} should be one number (a 0-d tensor, the mean over the batch), "
                        f"got shape {tuple(got.shape)}")
            # relative to the loss, which reaches the hundreds: a target built in float32
            # (F.one_hot(labels, K).float()) rounds it by about 1e-7 of its size
            problem = tensor_problem(what, got, want.detach(),
                                     atol=1e-6 * max(1.0, abs(want.item())))
            if problem:
                return problem
            if not got.requires_grad:
                return (f"{what} has the right value but no gradient: it must stay a tensor "
                        "computed from logits (no .item(), .detach() or torch.no_grad)")
            got.backward()
            problem = tensor_problem(f"the gradient of {what} with respect to the logits",
                                     mine.grad, theirs.grad, atol=1e-6)
            if problem:
                return problem
        return None

    return check(
        "smoothed_cross_entropy", test,
        "take log-probabilities with logits.log_softmax(dim=-1) (stable for large logits, unlike "
        "softmax().log()); the target puts 1 - ε + ε/K on the true class and ε/K on every class "
        "(the true one included), so the loss is (1 - ε)·(-log p_y) + ε·mean over all K "
        "classes of (-log p_c), averaged over the batch",
        quiet,
    )


class _SmallCNN(nn.Module):
    """A model with other kinds of parameters: a conv, a BatchNorm and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _reference_split(model: nn.Module) -> tuple[set[str], set[str]]:
    """The names in ``make_optimizer``'s groups with and without weight decay."""
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = set(), set()
    for group in make_optimizer(model, TrainConfig(weight_decay=0.05)).param_groups:
        target = decay if group["weight_decay"] > 0 else no_decay
        target.update(names[id(p)] for p in group["params"])
    return decay, no_decay


def _as_names(what: str, values: object) -> list[str]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{what} should be a list of parameter names, got "
                         f"{type(values).__name__}")
    values = list(values)
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{what} should hold parameter names (strings, as "
                             f"model.named_parameters() gives them), got a "
                             f"{type(value).__name__}")
    return values


def check_decay_split(
    decay_split: Callable[[nn.Module], tuple[list[str], list[str]]], quiet: bool = False
) -> CheckResult:
    """``decay_split(model) -> (decay_names, no_decay_names)``: the names of the trainable
    parameters that AdamW should decay and those it should not, as ``make_optimizer`` splits
    them (frozen parameters belong to neither)."""

    def test() -> str | None:
        frozen = ViT(ViTConfig(embed_dim=16, depth=2, num_heads=2, pool="cls"))
        frozen.patch_embed.requires_grad_(False)
        models = {
            "a ViT with mean pooling": ViT(ViTConfig(embed_dim=16, depth=2, num_heads=2)),
            "a ViT with a class token and no qkv bias": ViT(ViTConfig(
                embed_dim=16, depth=1, num_heads=2, pool="cls", qkv_bias=False)),
            "a ViT with a sin-cos position table (a buffer, not a parameter)": ViT(ViTConfig(
                embed_dim=16, depth=1, num_heads=2, pos_embed="sincos")),
            "a ViT whose patch embedding is frozen (requires_grad=False)": frozen,
            "a small CNN (conv, BatchNorm, linear)": _SmallCNN(),
        }
        for what, model in models.items():
            want_decay, want_no_decay = _reference_split(model)
            answer = decay_split(model)
            if not isinstance(answer, (tuple, list)) or len(answer) != 2:
                return (f"decay_split should return a pair (decay_names, no_decay_names), got "
                        f"{type(answer).__name__}")
            decay = _as_names("decay_names", answer[0])
            no_decay = _as_names("no_decay_names", answer[1])
            both = set(decay) & set(no_decay)
            if both:
                return f"for {what}, {sorted(both)} are in both lists"
            for got, want, kind in ((decay, want_decay, "decayed"),
                                    (no_decay, want_no_decay, "left undecayed")):
                if len(got) != len(set(got)):
                    return f"for {what}, the {kind} list names a parameter twice"
                extra, missing = set(got) - want, want - set(got)
                if extra:
                    return f"for {what}, {sorted(extra)} should not be {kind}"
                if missing:
                    return f"for {what}, {sorted(missing)} should be {kind}"
        return None

    return check(
        "decay_split", test,
        "walk model.named_parameters(); skip parameters with requires_grad=False; decay the "
        "weight matrices and conv kernels (param.ndim >= 2), but not the 1-D ones (biases, "
        "LayerNorm and BatchNorm weights) and not pos_embed or cls_token (compare the last part "
        "of the name, name.split('.')[-1])",
        quiet,
    )


def check_accuracy(accuracy: Callable[[Tensor, Tensor], float], quiet: bool = False
                   ) -> CheckResult:
    """``accuracy(logits, labels) -> float``: the fraction of rows of logits (B, K) whose
    largest entry is at the label's position, a number in [0, 1]."""

    def test() -> str | None:
        cases = [(12, 10), (10, 10), (7, 3), (random.randint(20, 200), random.randint(2, 20))]
        for batch, classes in cases:
            labels = torch.randint(0, classes, (batch,))
            logits = torch.randn(batch, classes)
            hits = torch.rand(batch) < 0.6  # make about 60 % right, so chance is far off
            logits[hits, labels[hits]] += 10
            want = (logits.argmax(dim=1) == labels).double().mean().item()
            got = accuracy(logits.clone(), labels.clone())
            if isinstance(got, Tensor):
                if got.numel() != 1:
                    return (f"for {batch} images and {classes} classes accuracy should be one "
                            f"number, got a tensor of shape {tuple(got.shape)}")
                got = got.item()
            if not isinstance(got, (int, float)) or isinstance(got, bool):
                return f"accuracy should return a number, got {type(got).__name__}"
            if not math.isclose(got, want, abs_tol=1e-6):
                scale = (" (a percentage? the check wants a fraction in [0, 1])"
                         if math.isclose(got, 100 * want, abs_tol=1e-4) else "")
                return (f"for {batch} images and {classes} classes the accuracy is {want:.4f}, "
                        f"you gave {got:.4f}{scale}")
        return None

    return check(
        "accuracy", test,
        "the prediction of each image is the class with the largest logit, "
        "logits.argmax(dim=1) (one per row, not per column); compare it with the labels and "
        "average the matches as floats: (pred == labels).float().mean().item()",
        quiet,
    )
