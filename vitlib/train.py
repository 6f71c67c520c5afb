"""Training a ViT on CIFAR-10: ``train(model_config, train_config, data)``.

``train`` also takes a module instead of a config: a pre-trained ViT to fine-tune, or another
image classifier (a CNN to compare with), trained in place with the same engine.

The data path: the whole uint8 training split lives on the device (all of CIFAR-10 is 150 MB);
each epoch a seeded permutation picks the batches by slicing, and ``vitlib.augment`` augments
them on the device. No DataLoader and no per-image Python loop, on a GPU or a CPU alike.

Each step: AdamW (no weight decay on norms, biases, position embedding and class token; or,
with ``optimizer="muon"``, Muon for the Transformer blocks' weight matrices: ``vitlib.muon``),
linear warm-up times a cosine decay, label smoothing, mixed precision chosen by the hardware,
gradient clipping and an optional moving average of the weights (EMA). Every ``eval_every``
epochs: validation, and an atomic checkpoint from which ``resume=`` continues exactly. Ctrl-C
saves a checkpoint first; a NaN loss stops with advice. Under ``torchrun`` the same code trains on
several processes with DistributedDataParallel. ``fast_step=True`` runs each step through
``vitlib.fast.TrainStep`` instead (bf16 weights and activations, one process): the same loop,
the same bookkeeping.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .augment import Augment, AugmentConfig, normalize
from .checkpoint import CHECKPOINT_NAME, check_out_dir, load_checkpoint, save_checkpoint
from .data import CIFAR10, CIFAR10_MEAN, CIFAR10_STD, Split, train_val_split
from .fast import (
    COMPILE_MODES,
    TrainStep,
    check_attention,
    synchronize,
    update_ema,
    widest_float,
)
from .model import ViT, ViTConfig, config_dict, count_parameters, get_config
from .muon import MuonAdamW

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "muon")
DEVICE_TYPES = ("cpu", "cuda", "mps")  # the kinds of device a run may use
# ViTConfig fields a resumed run may change: regularisation and the start, not the weights' shape
FREE_ON_RESUME = ("dropout", "attn_dropout", "drop_path", "token_drop", "attn_init")
SYNC_EVERY = 10  # steps between checks of the loss, the clock and Ctrl-C (one sync each)
COMPILE_STEPS = 3  # with compile: the first steps of a run compile (and record CUDA graphs)
WHITEN_IMAGES = 5000  # training images whose patches set the whitened patch embedding


class _Range(NamedTuple):
    """The values a float setting may take: finite, from low to high, ends included unless
    marked open."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            text = "positive" if self.open_low else f"{self.low:g} or more"
        else:
            text = (f"in {'(' if self.open_low else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.open_high else ']'}")
        return text + self.note


_RANGES = {
    "lr": _Range(0, open_low=True),
    "weight_decay": _Range(0),
    "muon_lr_ratio": _Range(0, open_low=True, note=" (1 = the same lr as AdamW's)"),
    "warmup_epochs": _Range(0, note=" (0 = no warm-up)"),
    "min_lr_ratio": _Range(0, 1, note=" (the share of lr the cosine ends at)"),
    "label_smoothing": _Range(0, 1, open_high=True),
    "grad_clip": _Range(0, note=" (0 = off)"),
    "ema_decay": _Range(0, 1, open_high=True, note=" (0 = off; e.g. 0.999)"),
    "layer_decay": _Range(0, 1, open_low=True, note=" (1 = the same lr everywhere)"),
    "token_drop_until": _Range(0, 1, open_low=True,
                               note=" (the share of the run with token dropping; 1 = all)"),
}


@dataclass
class TrainConfig:
    epochs: int = 100  # passes over the training images (an upper limit with time_budget_s)
    batch_size: int = 512  # global batch, split evenly across processes under torchrun
    lr: float = 1e-3  # peak learning rate, used as given (not rescaled with the batch size)
    weight_decay: float = 0.05  # AdamW decay, except on norms, biases, pos_embed, cls_token
    optimizer: str = "adamw"  # "muon": Muon for a ViT's block matrices, AdamW for the rest
    muon_lr_ratio: float = 4.0  # with "muon": the block matrices' lr (and so their decay) as a
    # multiple of lr; 1: AdamW-sized steps. 4: between the best of the CPU settings measured,
    # 2 to 8 (benchmarks/NOTES.md)
    warmup_epochs: float = 5.0  # linear warm-up from 0 to lr over this many epochs
    min_lr_ratio: float = 0.01  # the cosine decay ends at lr · min_lr_ratio
    label_smoothing: float = 0.1  # share of the target spread evenly over all classes
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = off
    ema_decay: float = 0.0  # per-step moving average of the weights (e.g. 0.999); 0 = off
    layer_decay: float = 1.0  # ViT fine-tuning: block i of L learns at lr·layer_decay^(L−i)
    token_drop_until: float = 1.0  # a ViT with token_drop drops tokens for this share of the
    # run (by the schedule's progress), then trains on all of them
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # on-device augmentation
    whiten_patches: bool = False  # start a ViT's patch embedding from the whitened principal
    # directions of the training images' patches (PatchEmbed.whiten_; not on resuming)
    repeat_aug: int = 1  # repeated augmentation: a batch holds batch_size / repeat_aug images,
    # each augmented repeat_aug times; an epoch keeps its steps, so it sees 1/repeat_aug of them
    precision: str = "auto"  # "auto": bf16 on GPUs with it, else fp16; fp32 on CPU
    compile: bool = False  # torch.compile the model (faster GPU steps after a slow first one)
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" adds CUDA graphs
    fast_step: bool = False  # use vitlib.fast.TrainStep: bf16 weights and activations, 1 process
    attention: str | None = None  # fast_step only: force an attention kernel ("flash", ...)
    seed: int = 0  # seeds the weights, the validation split, the shuffling, the augmentation
    val_size: int = 5000  # training images held out for validation; 0 = no validation
    eval_every: int = 1  # validate and checkpoint every this many epochs (and after the last)
    time_budget_s: float | None = None  # stop after this many seconds of steps; cosine fits it
    num_threads: int | None = None  # CPU threads; None = PyTorch's default; 0 = timed choice
    device: str = "auto"  # "auto" (a CUDA GPU if there is one, else the CPU), "cuda", "cpu"
    out_dir: str | None = "runs/train"  # checkpoint and history files; None = write nothing
    max_train_samples: int | None = None  # train on a random subset this big (smoke runs)
    max_eval_samples: int | None = None  # validate and test on random subsets this big
    progress: bool = True  # a tqdm progress bar for each epoch
    quiet: bool = False  # print nothing at all

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_every", "repeat_aug"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.repeat_aug != 0:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of repeat_aug "
                             f"{self.repeat_aug}, so that every batch holds whole groups of "
                             "copies; change one of them")
        for name, allowed in _RANGES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got "
                             f"{self.compile_mode!r}")
        if self.time_budget_s is not None and not 0 < self.time_budget_s < math.inf:
            raise ValueError(
                f"time_budget_s must be positive, got {self.time_budget_s}; "
                "use None for no time limit"
            )
        if not 0 <= self.seed < 2**32:  # the per-epoch seeds derived from it fit in 64 bits
            raise ValueError(f"seed must be in [0, 2^32), got {self.seed}")
        if self.num_threads is not None and self.num_threads < 0:
            raise ValueError(f"num_threads must be None, 0 (choose by timing) or more, got "
                             f"{self.num_threads}")
        if self.val_size < 0:
            raise ValueError(f"val_size must be 0 (no validation) or more, got {self.val_size}")
        if self.fast_step and self.precision == "fp16":
            raise ValueError("fast_step runs in bf16 or fp32, not fp16; use precision='bf16' "
                             "(or 'fp32'), or fast_step=False for fp16 with a gradient scaler")
        check_attention(self.attention)

    def to_dict(self) -> dict:
        """Plain dict (the augmentation config nested as a dict), for checkpoints and JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of ``to_dict``; keys that are not fields (from other versions) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if isinstance(values.get("augment"), dict):
            aug_known = {f.name for f in fields(AugmentConfig)}
            aug = {k: v for k, v in values["augment"].items() if k in aug_known}
            values["augment"] = AugmentConfig(**aug)
        return cls(**values)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --- the record of a run --------------------------------------------------------------------


@dataclass
class History:
    """What a run measured: one record per epoch, the test result, where the files are.

    An epoch record holds ``epoch`` (fractional for a partial last epoch), ``step``, ``lr``,
    ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (None without validation),
    ``images_per_s`` and ``train_time_s`` (training seconds so far; evaluation, checkpoints
    and the compiling first steps excluded).
    """

    epochs: list[dict] = field(default_factory=list)  # one record per (validated) epoch
    test_loss: float | None = None  # on the test split, after training
    test_acc: float | None = None  # fraction correct on the test split, after training
    compile_s: float = 0.0  # seconds of the first steps, which compile (not in train_time_s)
    stop_reason: str = ""  # "epochs", "time budget" or "interrupted"
    checkpoint: str | None = None  # path of the last checkpoint written

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> History:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``history.json``, ``history.csv`` (one row per epoch) and ``history.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        columns = list(dict.fromkeys(k for record in self.epochs for k in record))
        with open(out / "history.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.epochs)
        if self.epochs:
            self.plot().savefig(out / "history.png", dpi=100)

    def plot(self):
        """A figure with two panels: loss and accuracy per epoch, train and validation."""
        from matplotlib.figure import Figure  # no pyplot: works headless and in notebooks

        from .viz import plot_lines

        fig = Figure(figsize=(10, 3.8), layout="constrained")
        loss_ax, acc_ax = fig.subplots(1, 2)
        for ax, key, ylabel in ((loss_ax, "loss", "cross-entropy"), (acc_ax, "acc", "accuracy")):
            for part in ("train", "val"):
                points = [(r["epoch"], r[f"{part}_{key}"]) for r in self.epochs
                          if r.get(f"{part}_{key}") is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    plot_lines(list(xs), {part: list(ys)}, title=f"{ylabel} per epoch",
                               xlabel="epoch", ylabel=ylabel, ax=ax)
        if self.test_acc is not None:
            fig.suptitle(f"test accuracy {self.test_acc:.1%}")
        return fig


# --- pieces of a step -----------------------------------------------------------------------


def learning_rate(config: TrainConfig, step: int, warmup_steps: int, progress: float) -> float:
    """The learning rate at optimizer step ``step`` (0-based): a linear warm-up over
    ``warmup_steps`` times a cosine from 1 down to ``min_lr_ratio`` as ``progress`` (the
    finished fraction of the run) goes from 0 to 1."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return config.lr * warmup * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def lr_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Each parameter's share of the learning rate under layer-wise decay: 1 for the head and
    the final norm, ``layer_decay ** (L - i)`` for block i of L, ``layer_decay ** (L + 1)`` for
    the patch embedding, position embedding and class token. All 1 when ``layer_decay`` is 1."""
    names = [name for name, _ in model.named_parameters()]
    if layer_decay == 1:
        return dict.fromkeys(names, 1.0)
    if not isinstance(model, ViT):
        raise ValueError(f"layer_decay needs a vitlib ViT (it scales the lr by block), got a "
                         f"{type(model).__name__}; use layer_decay=1.0 for other models")
    depth = model.config.depth
    scales = {}
    for name in names:
        parts = name.split(".")
        if parts[0] == "blocks":
            layer = int(parts[1]) + 1  # 1 … L
        elif parts[0] in ("patch_embed", "pos_embed", "cls_token"):
            layer = 0
        else:  # the final norm and the head
            layer = depth + 1
        scales[name] = layer_decay ** (depth + 1 - layer)
    return scales


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (``requires_grad``; frozen ones are left out), with
    weight decay on the weight matrices only: not on norms, biases (1-D), the position
    embedding or the class token. With ``config.optimizer == "muon"``, a ViT's weight matrices
    inside its blocks take Muon steps instead (``vitlib.muon.MuonAdamW``), at
    ``config.muon_lr_ratio`` times the learning rate. Each param group carries ``"lr_scale"``
    (``lr_scales``, times that ratio for Muon): the trainer sets its lr to the scheduled lr
    times that."""
    muon = config.optimizer == "muon"
    if muon and not isinstance(model, ViT):
        raise ValueError(f"optimizer 'muon' steps a vitlib ViT's block matrices, got a "
                         f"{type(model).__name__}; use optimizer 'adamw' for other models")
    scales = lr_scales(model, config.layer_decay)
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or name.split(".")[-1] in ("pos_embed", "cls_token")
        in_block = muon and name.startswith("blocks.") and param.ndim == 2
        groups.setdefault((not skip, scales[name], in_block), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters (requires_grad is False "
                         "everywhere); unfreeze at least the head")
    param_groups = []
    for (decay, scale, in_block), params in sorted(
            groups.items(), key=lambda kv: (-kv[0][1], not kv[0][0], kv[0][2])):
        if in_block:
            scale *= config.muon_lr_ratio
        param_groups.append({"params": params, "weight_decay": config.weight_decay if decay
                             else 0.0, "lr_scale": scale, "lr": config.lr * scale,
                             **({"muon": in_block} if muon else {})})
    if muon:
        return MuonAdamW(param_groups, lr=config.lr)
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(param_groups, lr=config.lr, fused=fused or None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on GPUs with bfloat16 arithmetic (Ampere and later), 'fp16' on older
    GPUs (where bfloat16 is only emulated, and slow), 'fp32' elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA GPU; use 'fp32' (or 'bf16') on a CPU")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision ('fp32' gives a no-op context)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    batch_size: int = 1000,
    precision: str = "auto",
    tta: str | None = None,
) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and accuracy ``acc`` of ``model`` on ``split``, on the
    model's device. ``tta="flip"`` averages the logits of each image and its mirror image."""
    if tta not in (None, "flip"):
        raise ValueError(f"tta must be None or 'flip', got {tta!r}")
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size].to(device, non_blocking=True)
        labels = split.labels[start:start + batch_size].to(device, non_blocking=True)
        x = normalize(images, CIFAR10_MEAN, CIFAR10_STD)  # (B, 3, H, W) float
        with autocast(device, precision):
            logits = model(x).float()
            if tta == "flip":
                logits = (logits + model(x.flip(-1)).float()) / 2
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(-1) == labels).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


def split_data(data: CIFAR10, config: TrainConfig) -> tuple[Split, Split | None, Split]:
    """The (train, validation, test) splits a run uses: ``val_size`` training images held out
    (None without validation), then the ``max_*_samples`` subsets."""
    c = config
    if c.val_size >= len(data.train):
        raise ValueError(
            f"val_size {c.val_size} leaves no training images out of {len(data.train)}; "
            "use a smaller val_size (0 = no validation)"
        )
    train, val = train_val_split(data.train, c.val_size, c.seed) if c.val_size else (
        data.train, None)
    test = data.test
    if c.max_train_samples is not None and c.max_train_samples < len(train):
        train = train.subset(c.max_train_samples, seed=c.seed)
    if c.max_eval_samples is not None:
        if val is not None and c.max_eval_samples < len(val):
            val = val.subset(c.max_eval_samples, seed=c.seed)
        if c.max_eval_samples < len(test):
            test = test.subset(c.max_eval_samples, seed=c.seed)
    return train, val, test


# --- processes, devices and signals ---------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    rank: int  # this process's number, 0 logs, evaluates and saves
    world_size: int  # number of training processes
    device: torch.device  # where this process computes
    owns_group: bool  # this run started the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device ``name`` means: "auto" is this process's GPU if PyTorch sees one, else the
    CPU; "cuda" is this process's GPU (``local_rank``); anything else as PyTorch reads it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU; use 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no Apple GPU (MPS); use "
                         "'cpu'")
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"cannot train on device {name!r}; use 'auto', 'cpu', 'cuda' or 'mps'")
    return device


def _start_process(config: TrainConfig) -> _Process:
    """Pick the device; under torchrun (WORLD_SIZE > 1) also join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(config.device, local_rank)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"this process (LOCAL_RANK {local_rank}) wants GPU {device}, but PyTorch sees "
                f"{count} GPU(s); start at most {count} process(es) per machine (torchrun "
                f"--nproc_per_node={count}), or use device 'cpu'"
            )
        torch.cuda.set_device(device)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns_group = True
    rank = dist.get_rank() if world_size > 1 else 0
    return _Process(rank, world_size, device, owns_group)


class _StopRequest:
    """While active, the first Ctrl-C (SIGINT, also a notebook's interrupt) or SIGTERM only
    asks the loop to stop at the next step boundary; a second Ctrl-C interrupts at once."""

    def __init__(self, announce: bool) -> None:
        self.requested = False
        self.announce = announce
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nstopping after this step to save a checkpoint "
                  "(press Ctrl-C again to stop at once)", flush=True)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _ThreadChooser:
    """CPU threads chosen by timing: at the start of each epoch a few steps run with all
    threads, a few with one, and the faster count is kept for the rest of the epoch. On a CPU
    that other programs share, threads that wait for each other can make all of them slower
    than one (measured here: 4-5 times slower on 2 busy cores)."""

    def __init__(self, steps: int = 4) -> None:
        self.options = [torch.get_num_threads(), 1]
        self.steps = steps  # per option; the first after a switch is not timed
        self.chosen = self.options[0]
        self.start_epoch()

    def start_epoch(self) -> None:
        self.step, self.seconds = 0, [0.0] * len(self.options)

    @property
    def probing(self) -> bool:
        return self.step < self.steps * len(self.options)

    @contextmanager
    def timed_step(self):
        if not self.probing:
            yield
            return
        option = self.step // self.steps
        torch.set_num_threads(self.options[option])
        started = time.perf_counter()
        yield
        if self.step % self.steps:
            self.seconds[option] += time.perf_counter() - started
        self.step += 1
        if not self.probing:
            self.chosen = self.options[self.seconds.index(min(self.seconds))]
            torch.set_num_threads(self.chosen)


# --- the run --------------------------------------------------------------------------------


class _Run:
    """The state of one training run and the loop that advances it."""

    def __init__(
        self, model: ViTConfig | nn.Module, config: TrainConfig, data: CIFAR10, proc: _Process
    ) -> None:
        self.config, self.proc = config, proc
        device = proc.device
        if config.batch_size % proc.world_size != 0:
            raise ValueError(
                f"batch_size {config.batch_size} does not split evenly over "
                f"{proc.world_size} processes; use a multiple of {proc.world_size}"
            )
        self.precision = resolve_precision(config.precision, device)
        self.show = proc.is_main and not config.quiet
        if config.out_dir is not None and proc.is_main:
            check_out_dir(config.out_dir)

        train_split, self.val, self.test = split_data(data, config)
        if len(train_split) < config.batch_size:
            raise ValueError(
                f"batch_size {config.batch_size} is larger than the {len(train_split)} "
                "training images; use a smaller batch_size (or more data)"
            )
        self.images = train_split.images.to(device)  # (N, 3, H, W) uint8, resident
        self.labels = train_split.labels.to(device)
        self.steps_per_epoch = len(train_split) // config.batch_size  # last partial batch dropped
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.num_classes = data.num_classes
        self.source = getattr(data, "source", "")  # kept in checkpoints, for their readers

        torch.manual_seed(config.seed)  # the same initial weights in every process
        if isinstance(model, ViTConfig):
            model = ViT(model)
        elif not isinstance(model, nn.Module):
            raise TypeError(f"train() takes a ViTConfig or an nn.Module, got a "
                            f"{type(model).__name__}")
        # the shape a checkpoint records (None: not a vitlib ViT, so load_model cannot rebuild it)
        self.model_config = model.config if isinstance(model, ViT) else None
        if config.token_drop_until < 1 and not (self.model_config and self.model_config.token_drop):
            raise ValueError(
                f"token_drop_until={config.token_drop_until:g} has no effect: this model drops "
                "no tokens (token_drop=0, or not a vitlib ViT); build it with a token_drop "
                "(e.g. --token-drop 0.5), or leave token_drop_until at 1"
            )
        self.model = model.to(device)
        if config.whiten_patches:
            if not isinstance(model, ViT):
                raise ValueError(f"whiten_patches starts a vitlib ViT's patch embedding, and this "
                                 f"model is a {type(model).__name__}; set it to False")
            # a seeded draw (the same in every process, all classes), (n, 3, H, W) uint8
            sample = train_split.subset(min(WHITEN_IMAGES, len(train_split)), seed=config.seed)
            model.patch_embed.whiten_(normalize(sample.images.to(device), CIFAR10_MEAN,
                                                CIFAR10_STD))
        if proc.rank > 0:  # dropout, drop-path and token-drop masks of its own in each process
            torch.manual_seed(config.seed + 1_000_003 * proc.rank)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.ema_decay else None
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.augment = Augment(config.augment, CIFAR10_MEAN, CIFAR10_STD, seed=config.seed,
                               compile=config.compile)
        self.generator = self.augment.generator(device)  # reseeded each epoch, saved mid-epoch
        self.fast_step = self._make_fast_step() if config.fast_step else None
        net: nn.Module = self.model
        if proc.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        if config.compile and self.fast_step is None:  # TrainStep compiles its own step
            net = torch.compile(net, mode=config.compile_mode)
        self.net = net

        self.epoch = 0  # finished epochs
        self.batch = 0  # finished batches of the current epoch
        self.step = 0  # finished optimizer steps
        self.lr = 0.0  # the scheduled learning rate of the last step (group scales aside)
        self.train_time = 0.0  # seconds spent in training steps (evaluation excluded)
        self.sums = self._zero_sums()
        self.history = History()
        self._first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
        self._saved_on_interrupt = False
        self._steps_to_compile = COMPILE_STEPS if config.compile else 0  # timed apart
        use_chooser = config.num_threads == 0 and device.type == "cpu"
        self.threads = _ThreadChooser() if use_chooser and torch.get_num_threads() > 1 else None

    def _make_fast_step(self) -> TrainStep:
        c = self.config
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            raise ValueError(
                "fast_step runs on bf16 copies of the weights and buffers, so BatchNorm's "
                "running statistics would never update; use fast_step=False for this model"
            )
        if self.proc.world_size > 1:
            raise ValueError(
                f"fast_step trains in one process, but this run has {self.proc.world_size} "
                "(torchrun); use fast_step=False to train with DistributedDataParallel"
            )
        if self.precision == "fp16":
            raise ValueError(
                "fast_step runs in bf16 or fp32, and precision 'auto' chose fp16 on this GPU "
                "(no bf16 support); set precision='fp32', or fast_step=False"
            )
        return TrainStep(
            self.model, self.optimizer, self.num_classes,
            precision="bf16" if self.precision == "bf16" else "fp32",
            compile_mode=c.compile_mode if c.compile else None, attention=c.attention,
            label_smoothing=c.label_smoothing, grad_clip=c.grad_clip,
        )

    def _zero_sums(self) -> dict[str, Tensor]:
        """Running totals of the current epoch (this process's share), kept on the device."""
        device = self.proc.device
        return {
            "loss": torch.zeros((), device=device),
            "correct": torch.zeros((), device=device, dtype=torch.long),
            "seen": torch.zeros((), device=device, dtype=torch.long),
            "timed": torch.zeros((), device=device, dtype=torch.long),  # seen in timed steps
            "time": torch.zeros((), device=device, dtype=widest_float(device)),
        }

    def _sums_of_all_processes(self) -> dict[str, Tensor]:
        """A copy of the epoch's running totals, each added up over the processes; "time", the
        same in every process, as it is."""
        sums = {k: v.clone() for k, v in self.sums.items()}
        if self.proc.world_size > 1:
            for key in ("loss", "correct", "seen", "timed"):
                dist.all_reduce(sums[key])
        return sums

    # --- checkpoints ---

    def state(self) -> dict:
        """Everything needed to continue exactly, as plain tensors, dicts, lists and numbers.
        Collective: every process must call it (each contributes its random-generator states
        and its share of the epoch's sums)."""
        rng = {"torch": torch.get_rng_state(), "augment": self.generator.get_state()}
        if self.proc.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.proc.device)
        rngs = [rng]
        if self.proc.world_size > 1:
            rngs = [None] * self.proc.world_size
            dist.all_gather_object(rngs, {k: v.cpu() for k, v in rng.items()})
        return {
            "model_config": config_dict(self.model_config) if self.model_config else None,
            "model_class": type(self.model).__name__,
            "train_config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "progress": {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                         "train_time_s": self.train_time, "world_size": self.proc.world_size,
                         "train_images": len(self.images), "train_source": self.source},
            "epoch_sums": {k: v.cpu() for k, v in self._sums_of_all_processes().items()},
            "rng": rngs,
            "history": self.history.to_dict(),
        }

    def save(self) -> str | None:
        """Write the checkpoint (main process); returns its path, or None without out_dir."""
        if self.config.out_dir is None:
            return None
        path = str(Path(self.config.out_dir) / CHECKPOINT_NAME)
        self.history.checkpoint = path
        state = self.state()
        if self.proc.is_main:
            save_checkpoint(state, path)
        if self.proc.world_size > 1:
            dist.barrier()
        return path

    def restore(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint written by ``save``."""
        state = load_checkpoint(path)
        saved_class = state.get("model_class", "ViT")
        if saved_class != type(self.model).__name__:
            raise ValueError(
                f"checkpoint {path} holds a {saved_class}, but this run trains a "
                f"{type(self.model).__name__}; resume with the same model, or start a new run "
                "in another out_dir"
            )
        saved = ViTConfig(**state["model_config"]) if state["model_config"] else None
        diff = ", ".join(
            f"{k}: checkpoint {v!r} vs now {getattr(self.model_config, k)!r}"
            for k, v in (config_dict(saved).items() if saved is not None else ())
            if k not in FREE_ON_RESUME and getattr(self.model_config, k) != v
        )
        if diff:
            raise ValueError(
                f"checkpoint {path} holds a different model shape ({diff}); resume with the "
                "same preset and overrides, or start a new run in another --out folder"
            )
        saved_config = state.get("train_config") or {}
        # the settings the optimizer's state and the schedule's step count depend on, with their
        # values before they were saved
        kept = {"optimizer": "adamw", "layer_decay": 1.0, "batch_size": self.config.batch_size}
        if self.config.optimizer == "muon":
            kept["muon_lr_ratio"] = self.config.muon_lr_ratio
        for name, before in kept.items():
            was, now = saved_config.get(name, before), getattr(self.config, name)
            if was != now:
                show = repr if isinstance(was, str) else "{:g}".format
                raise ValueError(
                    f"checkpoint {path} was trained with {name} {show(was)}, this run asks for "
                    f"{show(now)}; resume with {name}={show(was)}, or start a new run in another "
                    "out_dir"
                )
        progress = state["progress"]
        images = progress.get("train_images", len(self.images))  # not recorded before
        if images != len(self.images):
            raise ValueError(
                f"checkpoint {path} trained on {images} training images, this run has "
                f"{len(self.images)}; resume with the same data and split (data source, "
                "max_train_samples, val_size), or start a new run in another out_dir"
            )
        device = self.proc.device
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self._load_optimizer(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = progress["epoch"], progress["batch"], progress["step"]
        self.train_time = progress["train_time_s"]
        fresh = self._zero_sums()
        epoch_sums = state["epoch_sums"]  # without "timed" before it was kept: all were timed
        saved_sums = {"timed": epoch_sums["seen"].clone(), **epoch_sums}
        sums = {k: v.to(device, fresh[k].dtype) for k, v in saved_sums.items()}
        # the totals of all processes: counted once, by the main process, with any number of them
        self.sums = sums if self.proc.is_main else {**fresh, "time": sums["time"]}
        self.history = History.from_dict(state["history"])
        rngs = state["rng"]
        # a generator's state fits only a generator of its kind (a CPU one and a CUDA one differ)
        same_kind = rngs[0]["augment"].shape == self.generator.get_state().shape
        if len(rngs) == self.proc.world_size and same_kind:
            rng = rngs[self.proc.rank]
            torch.set_rng_state(rng["torch"])
            self.generator.set_state(rng["augment"])
            if "cuda" in rng and device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], device)
        elif self.show:
            change = (f"written by {len(rngs)} process(es), resumed on {self.proc.world_size}"
                      if len(rngs) != self.proc.world_size else
                      f"written on another kind of device, resumed on {device.type}")
            tqdm.write(f"note: checkpoint {change}; the random draws will differ from an "
                       "uninterrupted run")

    def _load_optimizer(self, saved: dict) -> None:
        """The checkpoint's optimizer state (moments, step counts) under this run's weight decay
        and lr scales: the settings its checkpoints record from now on."""
        settings = [(g["weight_decay"], g["lr_scale"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)  # takes the saved groups' settings too
        for group, (decay, scale) in zip(self.optimizer.param_groups, settings, strict=True):
            group["weight_decay"], group["lr_scale"] = decay, scale

    # --- the loop ---

    def _permutation(self) -> Tensor:
        """This epoch's order of the training images: the same in every process. With
        ``repeat_aug`` r, each image of the first n/r of a shuffle appears r times in a row."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + self.epoch)
        n, r = len(self.labels), self.config.repeat_aug
        order = torch.randperm(n, generator=generator)
        if r > 1:
            order = order[:-(-n // r)].repeat_interleave(r)[:n]
        return order.to(self.proc.device)

    def _progress(self, steps: int) -> float:
        """The fraction of the run finished after ``steps`` steps: by steps, or by time with a
        time budget."""
        done = steps / self.total_steps
        if self.config.time_budget_s:
            done = max(done, self.train_time / self.config.time_budget_s)
        return done

    def _set_token_drop(self) -> None:
        """The model's token dropping for the next step: its config's share until
        ``token_drop_until`` of the run, none after. The switch changes the compiled step's
        shapes, so its next steps compile again, timed apart like the first ones."""
        if self.model_config is None or not self.model_config.token_drop:
            return
        on = self._progress(self.step) < self.config.token_drop_until  # before this step
        rate = self.model_config.token_drop if on else 0.0
        if self.model.token_drop != rate:
            self.model.token_drop = rate
            if self.config.compile:
                self._steps_to_compile = COMPILE_STEPS

    def _train_step(self, images: Tensor, labels: Tensor) -> None:
        """One optimizer step, then the bookkeeping: EMA, the epoch's sums, the NaN watch."""
        c = self.config
        # the progress at the step's end: the last step trains at the cosine's floor
        lr = learning_rate(c, self.step, self.warmup_steps, self._progress(self.step + 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before layer_decay: 1
        self.lr = lr
        inputs, targets = self.augment(images, labels, self.num_classes)
        loss, correct = (self.fast_step or self._plain_step)(inputs, targets)
        if self.ema is not None:
            decay = min(c.ema_decay, (1 + self.step) / (10 + self.step))  # short memory at first
            update_ema(self.ema, self.model, decay)

        self.sums["loss"] += loss.float() * len(labels)
        self.sums["correct"] += correct
        self.sums["seen"] += len(labels)
        bad = ~torch.isfinite(loss) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(bad, self.step, self._first_bad_step)
        self.step += 1

    def _plain_step(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Forward, backward and optimizer step under autocast (and DDP, and fp16 scaling);
        returns the detached loss and the number of images whose top class is the target's."""
        c = self.config
        with autocast(self.proc.device, self.precision):
            logits = self.net(inputs)  # (B, num_classes)
            loss = F.cross_entropy(logits, targets, label_smoothing=c.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        hard = targets.argmax(-1) if targets.ndim == 2 else targets  # mixed targets: top class
        return loss.detach(), (logits.argmax(-1) == hard).sum()

    def _check(self, stop: _StopRequest, started: float, time_before: float) -> str | None:
        """Sync point: update the clock, raise on a NaN loss, and say whether to stop."""
        bad_step = self._first_bad_step.item()  # waits for the device to finish
        self.train_time = time_before + time.perf_counter() - started
        flags = torch.tensor(
            [float(stop.requested), float(bad_step), self.train_time],
            dtype=widest_float(self.proc.device), device=self.proc.device,
        )
        if self.proc.world_size > 1:  # the same decision in every process
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        requested, bad_step, self.train_time = flags.tolist()
        if bad_step >= 0:
            self._diverged(int(bad_step))
        if requested:
            return "interrupted"
        budget = self.config.time_budget_s
        if budget is not None and self.train_time >= budget:
            return "time budget"
        return None

    def _diverged(self, bad_step: int) -> None:
        c = self.config
        lr = learning_rate(c, bad_step, self.warmup_steps, self._progress(bad_step + 1))
        saved = (f"the last good checkpoint {Path(c.out_dir) / CHECKPOINT_NAME} is untouched"
                 if c.out_dir and (Path(c.out_dir) / CHECKPOINT_NAME).exists()
                 else "no checkpoint was written")
        hints = ["a lower lr (e.g. half)"]
        if c.grad_clip <= 0:
            hints.append("gradient clipping (grad_clip=1.0)")
        if self.precision == "fp16":
            hints.append("bf16 or fp32 instead of fp16 (fp16 overflows easily)")
        raise TrainingDiverged(
            f"the loss became NaN or infinite at step {bad_step} (epoch {self.epoch + 1}, "
            f"lr {lr:.3g}); training stopped and {saved}. Try {', or '.join(hints)}"
        )

    def _train_epoch(self, stop: _StopRequest) -> str | None:
        """Train until the end of the epoch; returns why it stopped early, or None."""
        c, proc = self.config, self.proc
        order = self._permutation()
        if self.threads is not None:
            self.threads.start_epoch()
        if self.batch == 0:
            self.sums = self._zero_sums()
            self.generator.manual_seed((c.seed * 100_003 + self.epoch) * 1009 + 1 + proc.rank)
        local = c.batch_size // proc.world_size
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch, leave=False, unit="step",
                   desc=f"epoch {self.epoch + 1}", disable=not (self.show and c.progress))
        started, time_before, reason = time.perf_counter(), self.train_time, None
        while self.batch < self.steps_per_epoch and reason is None:
            first = self.batch * c.batch_size + proc.rank * local  # this process's part
            index = order[first:first + local]
            self._set_token_drop()
            compiling = self._steps_to_compile > 0
            if compiling:
                synchronize(self.proc.device)
                compile_started = time.perf_counter()
            with self.threads.timed_step() if self.threads is not None else nullcontext():
                self._train_step(self.images[index], self.labels[index])
            if compiling:  # off the training clock: into history.compile_s
                synchronize(self.proc.device)
                spent = time.perf_counter() - compile_started
                self.history.compile_s += spent
                started += spent
                self._steps_to_compile -= 1
            else:
                self.sums["timed"] += len(index)
            self.batch += 1
            bar.update()
            if self.step % SYNC_EVERY == 0 or self.batch == self.steps_per_epoch:
                reason = self._check(stop, started, time_before)
                bar.set_postfix(loss=f"{self.sums['loss'].item() / self.sums['seen'].item():.3f}",
                                lr=f"{self.lr:.2e}")
        bar.close()
        self.sums["time"] += self.train_time - time_before
        return reason

    def _end_epoch(self, validate: bool) -> dict:
        """Record the finished (or partial) epoch, with validation on the main process."""
        sums = self._sums_of_all_processes()
        seen = max(int(sums["seen"]), 1)
        record = {
            "epoch": round(self.epoch + self.batch / self.steps_per_epoch, 4),
            "step": self.step,
            "lr": self.lr,
            "train_loss": sums["loss"].item() / seen,
            "train_acc": sums["correct"].item() / seen,
            "val_loss": None,
            "val_acc": None,
            "images_per_s": int(sums["timed"]) / max(float(sums["time"]), 1e-9),
            "train_time_s": self.train_time,
        }
        if self.threads is not None:
            record["threads"] = self.threads.chosen
        if validate and self.val is not None and self.proc.is_main:
            result = evaluate(self.ema or self.model, self.val, precision=self.precision)
            record["val_loss"], record["val_acc"] = result["loss"], result["acc"]
        if self.proc.world_size > 1:
            shared = [record]
            dist.broadcast_object_list(shared, src=0)
            record = shared[0]
        self.history.epochs.append(record)
        if self.show:
            n = record.get("threads")
            threads = f" ({n} thread{'s' * (n > 1)})" if n else ""
            val = (f"  val loss {record['val_loss']:.3f}  val acc {record['val_acc']:6.2%}"
                   if record["val_acc"] is not None else "")
            budget = self.config.time_budget_s
            of = f" of {_minutes(budget)}" if budget else ""
            tqdm.write(
                f"epoch {record['epoch']:g}{'' if budget else f'/{self.config.epochs}'}  "
                f"loss {record['train_loss']:.3f}  train acc {record['train_acc']:6.2%}{val}  "
                f"lr {record['lr']:.2e}  {record['images_per_s']:.0f} img/s{threads}  "
                f"[{_minutes(self.train_time)}{of}]"
            )
        return record

    def fit(self) -> History:
        c = self.config
        if self.show:
            tqdm.write(self._describe())
        reason = None
        with (_StopRequest(announce=self.show) as stop, self._report_hard_stop(),
              self._token_drop_restored()):
            while self.epoch < c.epochs and reason is None:
                if c.time_budget_s is not None and self.train_time >= c.time_budget_s:
                    reason = "time budget"
                    break
                reason = self._train_epoch(stop)
                finished = self.batch == self.steps_per_epoch
                if finished:
                    self.epoch, self.batch = self.epoch + 1, 0
                saved = False
                if finished or reason == "time budget":
                    last = reason == "time budget" or self.epoch == c.epochs
                    saved = last or self.epoch % c.eval_every == 0
                    self._end_epoch(validate=saved)
                    if saved:
                        self.save()
                alone = self.proc.world_size == 1  # several processes decide at sync points
                if reason == "interrupted" or (stop.requested and alone):  # Ctrl-C in validation
                    self._interrupted(saved)
        self.history.stop_reason = reason or "epochs"
        self._test()
        return self.history

    @contextmanager
    def _token_drop_restored(self):
        """The model leaves the run with its config's token dropping, however the run ends."""
        try:
            yield
        finally:
            if self.model_config is not None:
                self.model.token_drop = self.model_config.token_drop

    @contextmanager
    def _report_hard_stop(self):
        """On a KeyboardInterrupt that did not wait for a step to end (a second Ctrl-C), say
        which checkpoint is left to resume from."""
        try:
            yield
        except KeyboardInterrupt:
            if self.show and not self._saved_on_interrupt:
                path = Path(self.config.out_dir or ".") / CHECKPOINT_NAME
                left = (f"the last checkpoint {path} "
                        f"({_where(load_checkpoint(path)['progress'])}) is kept; continue with "
                        f"`python -m vitlib train --resume {path}` (and the same --data)"
                        if self.config.out_dir and path.exists() else "no checkpoint was saved")
                tqdm.write(f"training stopped at once in step {self.step}; {left}")
            raise

    def _interrupted(self, saved: bool) -> None:
        path = str(Path(self.config.out_dir) / CHECKPOINT_NAME) if saved else self.save()
        if self.show:
            where = (f"checkpoint saved to {path}; continue with `python -m vitlib train "
                     f"--resume {path}` (and the same --data) or train(..., resume={path!r})"
                     if path else "no checkpoint written (out_dir is None)")
            tqdm.write(f"training interrupted at step {self.step}; {where}")
        self._saved_on_interrupt = True
        raise KeyboardInterrupt

    def _test(self) -> None:
        c, test = self.config, self.test
        if self.proc.is_main:
            result = evaluate(self.ema or self.model, test, precision=self.precision)
            self.history.test_loss, self.history.test_acc = result["loss"], result["acc"]
        path = self.save()
        if self.proc.is_main and c.out_dir is not None:
            self.history.save(c.out_dir)
        if self.show:
            where = f"\ncheckpoint {path}, history {c.out_dir}/history.{{json,csv,png}}"
            tqdm.write(
                f"test acc {self.history.test_acc:.2%} (loss {self.history.test_loss:.3f}) on "
                f"{len(test)} test images after {_minutes(self.train_time)} of training "
                f"(stopped by: {self.history.stop_reason})" + (where if path else "")
            )

    def _describe(self) -> str:
        m, c = self.model_config, self.config
        device = self.proc.device.type
        if device == "cuda":
            device = torch.cuda.get_device_name(self.proc.device)
        elif device == "cpu":
            n = torch.get_num_threads()
            device = (f"CPU, {n} thread{'s' * (n > 1)}" if self.threads is None else
                      f"CPU, 1 or {n} threads (the faster, per epoch)")
        budget = f", time budget {_minutes(c.time_budget_s)}" if c.time_budget_s else ""
        repeats = f" ({c.batch_size // c.repeat_aug} images × {c.repeat_aug})" * (c.repeat_aug > 1)
        procs = f" × {self.proc.world_size} processes" if self.proc.world_size > 1 else ""
        val = len(self.val) if self.val is not None else 0
        what = (f"ViT d={m.embed_dim} depth={m.depth} heads={m.num_heads} patch={m.patch_size}"
                + (f" token_drop={m.token_drop:g}" if m.token_drop else "")
                + (f" for {c.token_drop_until:.0%} of the run" if c.token_drop_until < 1 else "")
                if m is not None else type(self.model).__name__)
        trainable = count_parameters(self.model)
        frozen = count_parameters(self.model, trainable_only=False) - trainable
        frozen_note = f", {frozen / 1e6:.2f} M frozen" if frozen else ""
        return (
            f"{what} ({trainable / 1e6:.2f} M trainable parameters"
            f"{frozen_note}) on {device}{procs}, "
            f"{self.precision}\n{len(self.labels)} train / {val} val images, batch "
            f"{c.batch_size}{repeats}, lr {c.lr:g}, up to {c.epochs} epochs{budget}"
        )


def _where(progress: dict) -> str:
    """Where a checkpoint's run stopped, from its progress: "step 25, end of epoch 1" or
    "step 30, batch 5 of epoch 2"."""
    epoch, batch = progress["epoch"], progress["batch"]
    within = f"end of epoch {epoch}" if batch == 0 else f"batch {batch} of epoch {epoch + 1}"
    return f"step {progress['step']}, {within}"


def _minutes(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def train(
    model: ViTConfig | nn.Module,
    train_config: TrainConfig,
    data: CIFAR10,
    *,
    resume: str | os.PathLike | None = None,
) -> History:
    """Train a ``ViT(model)`` on ``data`` and return its ``History``.

    ``model`` may also be a module mapping normalised images (B, 3, H, W) to logits
    (B, num_classes): it is trained in place from its current weights (fine-tuning, or another
    architecture); parameters with ``requires_grad=False`` stay frozen. ``load_model`` rebuilds
    ViTs only: for another module, load ``load_checkpoint(path)["model"]`` into it yourself.

    The checkpoint (``out_dir/checkpoint.pt``) is rewritten after every validated epoch
    (every ``eval_every``), after the last and on Ctrl-C; ``resume``
    (a checkpoint or a run folder) continues a run exactly where it stopped: the same weights
    and metrics as a run without the break, except under a time budget, where the clock
    decides. Ctrl-C saves a checkpoint and then raises ``KeyboardInterrupt``; a NaN or
    infinite loss raises ``TrainingDiverged`` and leaves the last checkpoint as it was.
    """
    config = train_config
    proc = _start_process(config)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        run = _Run(model, config, data, proc)
        if resume is not None:
            run.restore(resume)
        return run.fit()
    finally:
        if proc.owns_group:
            dist.destroy_process_group()
        torch.set_num_threads(previous_threads)


def changed_settings(state: dict, model_config: ViTConfig, config: TrainConfig
                     ) -> dict[str, tuple[object, object]]:
    """The settings in which a checkpoint's run (``state``, as ``load_checkpoint`` gives it)
    differs from ``model_config`` and ``config``: name -> (checkpoint's value, this value).
    Where a run writes and what it prints do not count; a setting the checkpoint lacks (one
    from an older version) counts as None."""
    saved = {**(state["model_config"] or {}), **state["train_config"]}
    wanted = {**config_dict(model_config), **config.to_dict()}
    return {name: (saved.get(name), value) for name, value in wanted.items()
            if name not in ("out_dir", "progress", "quiet") and saved.get(name) != value}


# --- recipes --------------------------------------------------------------------------------

_GPU_AUGMENT = AugmentConfig(num_ops=1, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.5)

# name -> (model, settings); get_recipe(name) hands out copies
RECIPES: dict[str, tuple[ViTConfig, TrainConfig]] = {
    # GPU: vit_cifar_tiny with strong augmentation; about 15,000 images/s on an H200 in bf16
    # (with AdamW), so 100 epochs take about 5 minutes there. Muon for the block matrices at
    # twice the lr, as in cifar_fast
    "gpu": (get_config("vit_cifar_tiny"), TrainConfig(
        epochs=100, batch_size=512, lr=1e-3, weight_decay=0.05, warmup_epochs=5,
        label_smoothing=0.1, ema_decay=0.999, optimizer="muon", muon_lr_ratio=2.0,
        out_dir="runs/gpu", augment=replace(_GPU_AUGMENT, erase_prob=0.25),
    )),
    # CPU: 5 minutes of vit_cifar_cpu, sized by measurement on a shared 2-core CPU
    # (2026-11-27): at equal CPU time, width 64 and depth 2 was among the best of 16 shapes
    # (the best with half the time), and batch 64 at lr 1e-3 beat batch 128 and 256. Dropping
    # half of the tokens in training fits 11-13 epochs into the 5 minutes instead of 6-7:
    # 61.0 % test against 56.4 % without (mean of 2 seeds; the same CPU, quiet). The whitened
    # patch embedding at the start: 71.5 % against 67.6 % (2 seeds, about 32 epochs each;
    # the same CPU, 2026-12-03, chosen on validation: 72.1 % against 68.5 %). Muon for the
    # block matrices (default ratio 4): 74.1 % against 72.0 % (2 seeds; the same CPU, the same
    # day; validation 74.5 against 72.8 %), in 12 % fewer epochs
    "cpu": (get_config("vit_cifar_cpu", token_drop=0.5), TrainConfig(
        epochs=100, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5,
        label_smoothing=0.1, time_budget_s=300, augment=AugmentConfig(), num_threads=0,
        whiten_patches=True, optimizer="muon", out_dir="runs/cpu",
    )),
    # GPU time to accuracy, 120 s of steps on one H100/H200 (benchmarks/NOTES.md): the fast
    # step with CUDA graphs; validation every 20 epochs, about 10 times at the predicted speed.
    # Muon for the block matrices at twice the lr: in 200 epochs of batch 1024 with this
    # augmentation on a 2-core CPU (vit_cifar_cpu, 2026-12-03), 65.0 % test against 55.9 %
    # with AdamW (ratios 1, 4, 8: 63.4, 63.8, 62.5 %); not yet run on a GPU
    "cifar_fast": (get_config("vit_cifar_tiny"), TrainConfig(
        epochs=1000, batch_size=1024, lr=2e-3, weight_decay=0.05, warmup_epochs=8,
        min_lr_ratio=0.01, label_smoothing=0.1, grad_clip=1.0, ema_decay=0.999,
        optimizer="muon", muon_lr_ratio=2.0,
        augment=_GPU_AUGMENT, fast_step=True, compile=True, compile_mode="reduce-overhead",
        time_budget_s=120, eval_every=20, out_dir="runs/cifar_fast",
    )),
    # the same in 30 s: fewer epochs, so lighter regularisation (no mixing) and a shorter EMA,
    # and attention that starts local (mimetic start, sin-cos positions), chosen on validation
    # on one H100 (2026-11-28, torch 2.11, seed 0): 80.1 % against 78.2 and 78.4 % in two runs
    # of the random start with learned positions (test: 80.1 % against 78.0 and 79.0 %). Muon
    # at its default ratio 4: on a 2-core CPU (vit_cifar_cpu, 2026-12-03) in 3,120 steps, about
    # as many as here, 63.8 % test against 52.3 % with AdamW (ratio 8: 60.0 %), and at batch
    # 1024 for 190 steps 55.6 % against 41.4 % (ratio 8: 52.1 %); not yet run on a GPU
    "cifar_fast_30": (get_config("vit_cifar_tiny", attn_init="mimetic", pos_embed="sincos"),
                      TrainConfig(
        epochs=1000, batch_size=1024, lr=2e-3, weight_decay=0.05, warmup_epochs=3,
        min_lr_ratio=0.01, label_smoothing=0.1, grad_clip=1.0, ema_decay=0.998, optimizer="muon",
        augment=AugmentConfig(num_ops=1), fast_step=True, compile=True,
        compile_mode="reduce-overhead", time_budget_s=30, eval_every=5,
        out_dir="runs/cifar_fast_30",
    )),
}


def get_recipe(name: str) -> tuple[ViTConfig, TrainConfig]:
    """The model config and a copy of the settings of the recipe ``name`` (see ``RECIPES``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    model, config = RECIPES[name]
    return model, copy.deepcopy(config)


def recipe(device: str | torch.device) -> tuple[ViTConfig, TrainConfig]:
    """The model and settings ``python -m vitlib train`` uses when given no arguments: the
    recipe "gpu" on a CUDA device, else "cpu"."""
    return get_recipe("gpu" if torch.device(device).type == "cuda" else "cpu")
