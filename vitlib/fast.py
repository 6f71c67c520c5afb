"""A fast training step for GPUs: forward and loss compiled, the model run in bfloat16.

Three precisions, from the plainest to the fastest:

- ``"fp32"``: everything in float32 (what a first tutorial does);
- ``"autocast"``: float32 weights and residual stream, matrix products in bfloat16;
- ``"bf16"``: float32 master weights for the optimizer, but inside the step every weight and
  every activation is bfloat16, so the memory-bound kernels (LayerNorm, GELU, residual adds)
  move half the bytes. Norms, softmax and the loss still accumulate in float32.

The compiled part sees target *distributions* (B, K) only: integer labels are made one-hot
before it, so plain labels and mixup/cutmix targets share one compiled graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

Precision = Literal["fp32", "autocast", "bf16"]
PRECISIONS = ("fp32", "autocast", "bf16")
# torch.compile's modes; the two that end in CUDA graphs are also in CUDA_GRAPH_MODES
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

ATTENTION_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


@contextlib.contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Restrict ``F.scaled_dot_product_attention`` to one kernel ('flash', 'efficient', 'cudnn',
    'math'); None keeps PyTorch's own choice. A compiled graph keeps the kernel that was
    allowed when it was traced, so wrap the first (compiling) call as well."""
    if name is None:
        yield
        return
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; choose one of "
            f"{', '.join(ATTENTION_BACKENDS)}, or None for PyTorch's choice"
        )
    with sdpa_kernel(ATTENTION_BACKENDS[name]):
        yield


def bf16_forward(model: nn.Module, images: Tensor) -> Tensor:
    """Run ``model`` with every floating-point weight, buffer and activation in bfloat16.

    The casts are part of the autograd graph, so gradients arrive in float32 on the float32
    parameters; under ``torch.compile`` they fuse into the kernels that read the weights.
    """
    tensors = {name: p.to(torch.bfloat16) for name, p in model.named_parameters()}
    tensors |= {
        name: b.to(torch.bfloat16) for name, b in model.named_buffers() if b.is_floating_point()
    }
    return functional_call(model, tensors, (images.to(torch.bfloat16),))


class TrainStep:
    """One optimisation step: cross-entropy loss, backward, gradient clipping, optimizer step.

    ``compile_mode`` is a ``torch.compile`` mode ('default', 'reduce-overhead' = CUDA graphs,
    'max-autotune-no-cudagraphs', ...) or None for eager; the first call compiles. A call takes
    images (B, C, H, W) on the device and integer labels (B,) or target distributions
    (B, num_classes), and returns (loss, number of images whose top class is the target's top
    class) as detached tensors, without waiting for the device. Setting the learning rate is
    left to the caller (``optimizer.param_groups``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_classes: int,
        *,
        precision: Precision = "bf16",
        compile_mode: str | None = "reduce-overhead",
        attention: str | None = None,
        label_smoothing: float = 0.0,
        grad_clip: float = 0.0,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be None (eager) or one of "
                             f"{', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        if attention is not None and attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention backend {attention!r}; choose one of "
                f"{', '.join(ATTENTION_BACKENDS)}, or None for PyTorch's choice"
            )
        self.model, self.optimizer, self.num_classes = model, optimizer, num_classes
        self.precision, self.attention = precision, attention
        self.label_smoothing, self.grad_clip = label_smoothing, grad_clip
        self.cuda_graphs = compile_mode in CUDA_GRAPH_MODES
        self._loss = self._forward_loss
        if compile_mode is not None:
            self._loss = torch.compile(self._forward_loss, mode=compile_mode)

    def _forward_loss(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.precision == "bf16":
            logits = bf16_forward(self.model, images)
        elif self.precision == "autocast":
            with torch.autocast(images.device.type, dtype=torch.bfloat16):
                logits = self.model(images)
        else:
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        correct = (logits.argmax(-1) == targets.argmax(-1)).sum()
        return loss, correct

    def __call__(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if targets.ndim == 1:
            targets = F.one_hot(targets, self.num_classes).float()  # (B, K)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # last step's graph outputs are done
        with attention_backend(self.attention):
            loss, correct = self._loss(images, targets)
            loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # CUDA-graph outputs are overwritten by the next step: hand out copies
        return loss.detach().clone(), correct.clone()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for every parameter (buffers are copied)."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
