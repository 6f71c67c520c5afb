"""Training throughput, side by side on one device: a typical tutorial pipeline, a tuned timm
pipeline and vitlib's fast step, all training the same ViT shape.

    python -m vitlib bench                  # every row on this machine's GPU, then the table
    python -m vitlib bench --smoke          # a few seconds on a CPU: tiny model, made-up data
    python -m vitlib bench --rows fast --profile fast   # and where its step's time goes

Rows (images per second = optimizer steps per second × batch size, data path included):

    typical   DataLoader with torchvision's CPU transforms (8 workers), fp32, eager, batch 128
    timm      timm's VisionTransformer, images resident on the device, crop + flip there,
              bf16 autocast, torch.compile, batch 512, AdamW + cosine
    compiled  vitlib's ViT with the same flags as the timm row, batch 1024, fused AdamW
    fast      vitlib's ``TrainStep``: bf16 weights and activations, CUDA graphs, the fastest
              attention kernel measured here, batch 1024
    trainer   the training engine itself, ``vitlib.train.train`` with the step of the fast
              row and the rest of recipe cifar_fast (EMA, schedule, the epoch's bookkeeping),
              crop + flip only: the fast row plus everything a real run adds

Each row runs warm-up steps (compilation included, reported apart), then ``--repeats`` timed
windows of ``--steps`` steps; the table shows the median window. The trainer row's windows are
epochs of ``--steps`` steps (on that many batches' worth of images, or all the batches the
training split holds where that is fewer), after one warm-up epoch.
The sizes above are the defaults; ``--smoke`` makes those not given small. The exit status is
1 when a row asked for failed (its error printed, the other rows measured and saved); rows
skipped (timm not importable, ``--deadline`` passed) do not count.
Model FLOPs utilisation (MFU) counts the matrix products of ``flops_per_image`` (×3 for a
training step) against the bf16 matrix-product rate measured here (``--ceilings``) or the
datasheet's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from .__main__ import SMOKE_MODEL, device_name, load_data, whole_number
from .attention import fused_attention
from .augment import Augment, AugmentConfig
from .data import CIFAR10, CIFAR10_MEAN, CIFAR10_STD, Split, synthetic_cifar
from .fast import ATTENTION_BACKENDS, COMPILE_MODES, TrainStep, attention_backend, synchronize
from .model import ViT, ViTConfig, count_parameters, flops_per_image, get_config
from .train import TrainConfig, get_recipe, make_optimizer, pick_device, train

ROWS = ("typical", "timm", "compiled", "fast", "trainer")
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense bf16, SXM parts


@dataclass
class Row:
    """One pipeline's measurement."""

    name: str  # typical, timm, compiled, fast or trainer
    description: str  # what the pipeline does, in a few words
    batch_size: int  # images per optimizer step
    images_per_s: float  # median over the timed windows
    spread: float  # (slowest − fastest window) / median, a measure of noise
    warmup_s: float  # seconds of the warm-up steps, compilation included
    attention: str | None = None  # the attention kernel forced in this row, if any
    profile: dict | None = None  # where a step's time goes (profile_steps), if asked for
    inductor: dict | None = None  # the Inductor options set for its run (--inductor), if any


# --- measuring --------------------------------------------------------------------------------


def time_steps(
    step: Callable[[], object], device: torch.device, warmup: int, steps: int, repeats: int
) -> tuple[float, list[float]]:
    """Run ``warmup`` steps, then ``repeats`` windows of ``steps`` steps.
    Returns (warm-up seconds, seconds per step of each window)."""
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    windows = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        windows.append((time.perf_counter() - started) / steps)
    return warmup_s, windows


def _row(name: str, description: str, batch_size: int, warmup_s: float, windows: list[float],
         profile: dict | None = None, attention: str | None = None) -> Row:
    per_step = statistics.median(windows)
    spread = (max(windows) - min(windows)) / per_step
    return Row(name, description, batch_size, batch_size / per_step, spread, warmup_s,
               attention=attention, profile=profile)


def _event_time(work: Callable[[], object], repeats: int = 10) -> float:
    """Median seconds of ``work`` on the current CUDA device, timed with events."""
    work()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_ceilings(device: torch.device) -> dict[str, float]:
    """The two ceilings of a GPU: the bf16 matrix-product rate (TFLOP/s, 8192³ on random data)
    and the device-memory bandwidth (TB/s, a 2 GiB copy counting bytes read and written)."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    matmul_s = _event_time(lambda: a @ b)
    src = torch.randn(2**29, device=device)  # 2 GiB of float32
    dst = torch.empty_like(src)
    copy_s = _event_time(lambda: dst.copy_(src))
    return {"matmul_tflops": 2 * n**3 / matmul_s / 1e12,
            "copy_tbps": 2 * src.numel() * 4 / copy_s / 1e12}


def time_attention(
    batch: int, heads: int, tokens: int, head_dim: int, device: torch.device, repeats: int = 10,
    kernels: tuple[str, ...] = ATTENTION_BACKENDS,
) -> dict[str, dict[str, float] | None]:
    """Forward + backward of the model's fused attention in bf16 (CUDA) or fp32 (CPU) with
    each of ``kernels`` (FlexAttention compiled, as in a compiled step): {name: {"ms": device
    time per call (CUDA; wall time on a CPU), "error": relative error of output and gradients
    on the first samples against float64 math}}, or None where the kernel cannot run here
    (the reason printed)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v, grad = (torch.randn(batch, heads, tokens, head_dim, device=device, dtype=dtype)
                     for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def run(attend: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor,
            grad: Tensor) -> list[Tensor]:
        out = attend(q, k, v)
        return [out, *torch.autograd.grad(out, (q, k, v), grad)]

    few = [t[:4].detach().double().requires_grad_(t.requires_grad) for t in (q, k, v, grad)]
    reference = run(fused_attention, *few)
    results: dict[str, dict[str, float] | None] = {}
    for name in kernels:
        try:
            with attention_backend(name):
                attend = torch.compile(fused_attention, dynamic=False) if name == "flex" else \
                    fused_attention
                check = run(attend, q, k, v, grad)  # samples are independent: check the first
                error = max(((c[:4].double() - r).norm() / r.norm()).item()
                            for c, r in zip(check, reference, strict=True))
                ms = _ms_per_call(partial(run, attend, q, k, v, grad), device, repeats)
        except Exception as failure:  # no such kernel for this shape, dtype or device
            inner = getattr(failure, "inner_exception", None) or failure  # a compiler's cause
            lines = str(inner).strip().splitlines() or [""]
            print(f"attention {name}: not available here ({type(inner).__name__}: "
                  f"{lines[0][:160]})")
            if name == "flex":  # the generated kernel's failure is worth its traceback
                traceback.print_exception(failure)
            results[name] = None
            continue
        results[name] = {"ms": ms, "error": error}
    return results


def _ms_per_call(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Milliseconds per call of ``work``: its kernels' device time where the profiler gives it
    (a compiled call's Python overhead does not reach a compiled step), else wall time."""
    try:
        p = profile_steps(work, device, repeats)
        return p["busy_ms"] if p["busy_ms"] is not None else p["wall_ms"]
    except Exception:  # no profiler here
        _, [seconds] = time_steps(work, device, warmup=0, steps=repeats, repeats=1)
        return seconds * 1e3


def pick_attention(results: dict[str, dict[str, float] | None], tolerance: float = 2e-2) -> str:
    """The fastest kernel whose error is within ``tolerance`` (bf16 rounding is about 4e-3)."""
    good = {name: r["ms"] for name, r in results.items()
            if r is not None and r["error"] < tolerance}
    if not good:
        raise RuntimeError(f"no attention kernel gave correct results: {results}")
    return min(good, key=good.get)


# --- where a step's time goes -------------------------------------------------------------------

# kinds of kernel (CUDA) or operator (CPU), by the first of their name's parts found in it;
# "mm" last: inductor names fused kernels after the operators they follow (..._addmm_gelu), and
# "FusedAdamMathFunctor" holds an "mm" too
KERNEL_KINDS = (
    ("attention", ("fmha", "flash", "attention", "sdpa")),
    ("compiled (Triton)", ("triton",)),
    ("optimizer, clipping, EMA", ("adam", "multi_tensor", "foreach")),
    ("matrix products", ("gemm", "nvjet", "xmma", "cutlass", "mm")),
    ("copies", ("memcpy", "memset", "copy")),
)


def device_events(prof, device_type: torch.autograd.DeviceType) -> list:
    """A profile's events on ``device_type``: on a GPU its kernels, copies and fills, not the
    spans of code that are marked on the device's timeline too (the compiled graphs'
    "## Call CompiledFxGraph ##", "Optimizer.step")."""
    return [e for e in prof.events() if e.device_type == device_type
            and not e.is_user_annotation and e.name != "Context Sync"]


def kernel_kind(name: str) -> str:
    """The kind of a kernel or operator by its name (KERNEL_KINDS), else 'other'."""
    name = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in name for p in parts)), "other")


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time a device ran anything."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def profile_steps(step: Callable[[], object], device: torch.device, steps: int) -> dict:
    """Profile ``steps`` more steps of a warmed-up pipeline: ms per step under the profiler, the
    device's busy ms per step (CUDA), and the kernels' (on a CPU: the operators' own) ms per
    step by kind and by name. Tracing slows the Python side more than the kernels: compare
    the busy time with the step time measured without the profiler."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall_s = time.perf_counter() - started
    events = device_events(prof, torch.autograd.DeviceType.CUDA if on_cuda
                           else torch.autograd.DeviceType.CPU)
    per_name: dict[str, list[float]] = {}
    for e in events:
        us = e.time_range.elapsed_us() if on_cuda else e.self_cpu_time_total
        per_name.setdefault(e.name, []).append(us)
    ms = lambda us: us / 1e3 / steps
    kinds: dict[str, float] = {}
    for name, times in per_name.items():
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms(sum(times))
    top = sorted(per_name.items(), key=lambda item: -sum(item[1]))[:12]
    busy_ms = ms(busy_time([(e.time_range.start, e.time_range.end) for e in events])) \
        if on_cuda else None  # a CPU is never idle in this sense
    return {
        "steps": steps,
        "wall_ms": wall_s * 1e3 / steps,
        "busy_ms": busy_ms,
        "kernels": len(events) / steps,
        "kinds": dict(sorted(kinds.items(), key=lambda item: -item[1])),
        "top": [{"name": name, "calls": len(times) / steps, "ms": ms(sum(times))}
                for name, times in top],
    }


def format_profile(name: str, p: dict) -> str:
    """A profile_steps result as text: the totals, then kinds and top kernels in ms per step."""
    unit = "kernels" if p["busy_ms"] is not None else "operators"
    step_ms = p.get("step_ms", p["wall_ms"])  # unprofiled where the row measured it
    lines = [f"profile of {name}, {p['steps']} steps: {step_ms:.2f} ms per step "
             f"({p['wall_ms']:.2f} profiled), {p['kernels']:.0f} {unit} per step"]
    if p["busy_ms"] is not None:
        idle = step_ms - p["busy_ms"]  # below 0: the profiler slowed the kernels
        lines[0] += (f", device busy {p['busy_ms']:.2f} ms, idle {idle:.2f} ms "
                     f"({idle / step_ms:.0%})")
    lines += [f"  {kind:<26} {ms:8.3f} ms" for kind, ms in p["kinds"].items()]
    lines += [f"  {t['ms']:8.3f} ms {t['calls']:6.1f}×  {t['name'][:90]}" for t in p["top"]]
    return "\n".join(lines)


# --- the pipelines ------------------------------------------------------------------------------


class _PILImages(torch.utils.data.Dataset):
    """The tutorial way: each image becomes a PIL image and goes through CPU transforms."""

    def __init__(self, split: Split, transform: Callable) -> None:
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), as torchvision's
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _forever(loader: torch.utils.data.DataLoader):
    while True:
        yield from loader


def typical_step(model: ViT, split: Split, batch_size: int, workers: int,
                 device: torch.device) -> Callable[[], object]:
    """DataLoader + torchvision transforms on the CPU, fp32, eager, plain AdamW."""
    import torchvision.transforms as T

    transform = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])
    loader = torch.utils.data.DataLoader(
        _PILImages(split, transform), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    batches = _forever(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_step = TrainStep(model, optimizer, model.config.num_classes, precision="fp32",
                           compile_mode=None)

    def step() -> tuple[Tensor, Tensor]:
        images, labels = next(batches)
        return train_step(images.to(device, non_blocking=True), labels.to(device))

    return step


class DeviceBatches:
    """Random batches of the resident uint8 images, cropped and flipped on the device (the
    crop and flip compiled with ``compile=True``, as the trainer does when it compiles)."""

    def __init__(self, split: Split, batch_size: int, device: torch.device, seed: int = 0,
                 compile: bool = False) -> None:
        if batch_size > len(split):
            raise ValueError(f"batch size {batch_size} is larger than the {len(split)} images; "
                             "use a smaller --batch-size or more data")
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        self.batch_size = batch_size
        self.augment = Augment(AugmentConfig(crop_padding=4, flip=True), seed=seed,
                               compile=compile)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.order, self.position = self._shuffle(), 0

    def _shuffle(self) -> Tensor:
        n = len(self.labels)
        return torch.randperm(n, device=self.images.device, generator=self.generator)

    def __call__(self) -> tuple[Tensor, Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = self._shuffle(), 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.augment(self.images[index], self.labels[index])


def device_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: DeviceBatches,
    num_classes: int, **step_options,
) -> Callable[[], object]:
    """A ``TrainStep`` fed by ``batches``, with a cosine learning-rate schedule."""
    train_step = TrainStep(model, optimizer, num_classes, **step_options)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10_000)

    def step() -> tuple[Tensor, Tensor]:
        result = train_step(*batches())
        schedule.step()
        return result

    return step


def trainer_row(config: ViTConfig, split: Split, device: torch.device,
                args: argparse.Namespace, compile_mode: str | None, attention: str | None) -> Row:
    """Time ``vitlib.train.train`` itself: recipe cifar_fast with crop + flip, on a subset of
    ``--steps`` batches (fewer where the split holds fewer: CIFAR-10's 50,000 images are 48
    batches of 1024), so that each epoch is one window; the first epoch is the warm-up."""
    steps = min(args.steps, len(split) // args.batch_size)
    if steps < 1:
        raise ValueError(f"the trainer row needs a batch of {args.batch_size} images, got "
                         f"{len(split)}; use a smaller --batch-size")
    _, recipe = get_recipe("cifar_fast")
    recipe = replace(
        recipe, epochs=1 + args.repeats, batch_size=args.batch_size, val_size=0,
        max_train_samples=steps * args.batch_size, max_eval_samples=args.batch_size,
        augment=AugmentConfig(crop_padding=4, flip=True), precision="bf16",
        compile=compile_mode is not None,
        compile_mode=compile_mode or "default", attention=attention, time_budget_s=None,
        device=str(device), out_dir=None, progress=False, quiet=True,
    )
    classes = [str(k) for k in range(config.num_classes)]
    history = train(config, recipe, CIFAR10(split, split, classes))
    warmup, *timed = history.epochs
    windows = [args.batch_size / record["images_per_s"] for record in timed]  # s per step
    warmup_s = history.compile_s + warmup["train_time_s"]
    return _row("trainer", f"vitlib.train.train, recipe cifar_fast with crop+flip, "
                f"{recipe.optimizer}, compile={compile_mode}", args.batch_size, warmup_s,
                windows, attention=attention)


def timm_model(config: ViTConfig) -> nn.Module:
    """timm's VisionTransformer with the same shape (mean pooling, no class token)."""
    from timm.models.vision_transformer import VisionTransformer

    c = config
    return VisionTransformer(
        img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_chans,
        num_classes=c.num_classes, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
        mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, class_token=False, global_pool="avg",
    )


# --- the table ----------------------------------------------------------------------------------


def format_table(rows: list[Row], train_flops: float, peak_tflops: float | None) -> str:
    """The results as an aligned text table, with ratios to the typical and timm rows."""
    by_name = {r.name: r for r in rows}
    header = (f"{'pipeline':<10} {'batch':>5} {'images/s':>10} {'± %':>5} {'× typical':>9} "
              f"{'× timm':>7} {'TFLOP/s':>8} {'MFU':>6} {'warm-up s':>9}  what")
    lines = [header, "-" * len(header)]
    for r in rows:
        ratios = []
        for base in ("typical", "timm"):
            other = by_name.get(base)
            ratios.append(f"{r.images_per_s / other.images_per_s:.2f}" if other else "-")
        tflops = r.images_per_s * train_flops / 1e12
        mfu = f"{tflops / peak_tflops:.1%}" if peak_tflops else "-"
        what = r.description + (f", attention: {r.attention}" if r.attention else "")
        if r.inductor:
            what += ", inductor: " + ", ".join(f"{k}={v!r}" for k, v in r.inductor.items())
        lines.append(
            f"{r.name:<10} {r.batch_size:>5} {r.images_per_s:>10,.0f} {100 * r.spread:>5.1f} "
            f"{ratios[0]:>9} {ratios[1]:>7} {tflops:>8.2f} {mfu:>6} {r.warmup_s:>9.1f}  {what}"
        )
    return "\n".join(lines)


def measure_row(
    row: str, config: ViTConfig, train: Split, device: torch.device,
    args: argparse.Namespace, use_compile: bool, attention: str | None,
) -> Row:
    """Build one row's pipeline and time it."""
    torch.manual_seed(0)
    plain_mode = "default" if use_compile else None

    def measure(step: Callable[[], object]) -> tuple[float, list[float], dict | None]:
        warmup_s, windows = time_steps(step, device, args.warmup, args.steps, args.repeats)
        if row not in _profile_rows(args):
            return warmup_s, windows, None
        try:
            profiled = profile_steps(step, device, args.profile_steps)
        except Exception:  # the row's timing stands without its profile
            print(f"{row}: profile failed", flush=True)
            traceback.print_exc()
            return warmup_s, windows, None
        return warmup_s, windows, profiled | {"step_ms": statistics.median(windows) * 1e3}

    if row == "typical":
        model = ViT(config).to(device)
        step = typical_step(model, train, args.typical_batch, args.workers, device)
        what = f"DataLoader {args.workers} workers, CPU transforms, fp32, eager"
        return _row(row, what, args.typical_batch, *measure(step))
    if row == "timm":
        model = timm_model(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        batches = DeviceBatches(train, args.timm_batch, device)
        step = device_step(model, optimizer, batches, config.num_classes,
                           precision="autocast", compile_mode=plain_mode)
        what = f"timm model, device crop+flip, bf16 autocast, compile={plain_mode}, AdamW"
        return _row(row, what, args.timm_batch, *measure(step))
    model = ViT(config).to(device)
    optimizer = make_optimizer(model, TrainConfig())
    if row == "compiled":
        batches = DeviceBatches(train, args.batch_size, device)
        step = device_step(model, optimizer, batches, config.num_classes,
                           precision="autocast", compile_mode=plain_mode)
        what = "vitlib model, flags of the timm row, fused AdamW"
        return _row(row, what, args.batch_size, *measure(step))
    mode = args.fast_compile_mode if use_compile else None
    if row == "trainer":
        return trainer_row(config, train, device, args, mode, attention)
    batches = DeviceBatches(train, args.batch_size, device, compile=use_compile)
    _, recipe = get_recipe("cifar_fast")  # its loss options: the graph of the recipe's runs
    step = device_step(model, optimizer, batches, config.num_classes, precision="bf16",
                       attention=attention, compile_mode=mode,
                       label_smoothing=recipe.label_smoothing, grad_clip=recipe.grad_clip)
    what = (f"vitlib TrainStep: bf16 weights+activations, compile={mode}, fused AdamW, grad "
            f"clip, {'compiled' if use_compile else 'eager'} crop+flip")
    return _row(row, what, args.batch_size, *measure(step), attention=attention)


# --- the command --------------------------------------------------------------------------------


# sizes of a run, and of a --smoke run, for the flags not given on the command line
SIZES = {"steps": 50, "repeats": 3, "warmup": 15, "typical_batch": 128, "timm_batch": 512,
         "batch_size": 1024, "workers": 8, "profile_steps": 10}
SMOKE_SIZES = {"steps": 2, "repeats": 1, "warmup": 1, "typical_batch": 16, "timm_batch": 16,
               "batch_size": 16, "workers": 0, "profile_steps": 2}


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vitlib bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    positive, natural = whole_number(1), whole_number(0)

    def sizes(name: str) -> str:  # the defaults of a flag of SIZES, in its help
        return f"default {SIZES[name]}; --smoke: {SMOKE_SIZES[name]}"

    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {ROWS}")
    p.add_argument("--preset", default="vit_cifar_tiny", help="model shape (all rows)")
    p.add_argument("--data", help="CIFAR-10 path or 'synthetic' (default: $VITLIB_DATA, else "
                   "data/, else a download into data/)")
    p.add_argument("--steps", type=positive, help=f"steps per timed window ({sizes('steps')})")
    p.add_argument("--repeats", type=positive,
                   help=f"timed windows per row ({sizes('repeats')})")
    p.add_argument("--warmup", type=natural,
                   help=f"untimed steps first, compiling ({sizes('warmup')})")
    p.add_argument("--typical-batch", type=positive, help=f"({sizes('typical_batch')})")
    p.add_argument("--timm-batch", type=positive, help=f"({sizes('timm_batch')})")
    p.add_argument("--batch-size", type=positive,
                   help=f"batch of the vitlib rows ({sizes('batch_size')})")
    p.add_argument("--workers", type=natural,
                   help=f"DataLoader workers of the typical row, 0: none ({sizes('workers')})")
    p.add_argument("--attention", default="auto",
                   choices=["auto", "default", *ATTENTION_BACKENDS],
                   help="kernel of the fast row: auto (fastest correct one measured here), "
                   f"default (PyTorch's choice) or one of {', '.join(ATTENTION_BACKENDS)}")
    p.add_argument("--fast-compile-mode", default="reduce-overhead", choices=COMPILE_MODES,
                   help="torch.compile mode of the fast row (reduce-overhead: CUDA graphs)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile in the timm, compiled and fast rows (default: on CUDA)")
    p.add_argument("--ceilings", action=argparse.BooleanOptionalAction, default=None,
                   help="measure matrix-product rate and bandwidth first (default: on CUDA)")
    p.add_argument("--profile", default="", help="comma-separated rows (not trainer) whose "
                   "steps to profile after timing them: ms per step by kind of kernel, the "
                   "device's idle time, the top kernels (torch.profiler)")
    p.add_argument("--profile-steps", type=positive,
                   help=f"steps each profile covers ({sizes('profile_steps')})")
    p.add_argument("--inductor", action="append", default=[], metavar="NAME=VALUE",
                   help="set torch._inductor.config.NAME to the Python literal VALUE before "
                   "anything compiles (repeatable), e.g. combo_kernels=True or "
                   "triton.cudagraph_trees=False")
    p.add_argument("--deadline", type=_seconds, metavar="SECONDS",
                   help="skip rows that would start after this many seconds from the start "
                   "(keeps a time-limited run from losing the table)")
    p.add_argument("--json", help="write the results here; rows already in the file are kept "
                   "(same name: replaced), so several runs fill one table")
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (a GPU if PyTorch sees one), cpu, cuda, cuda:N or mps")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, made-up data unless --data, and the small sizes above "
                   "(2 steps per row) for the sizes not given: checks that it all runs")
    return p


def fill_sizes(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the sizes not given (None) set: SMOKE_SIZES with --smoke, else SIZES."""
    for name, value in (SMOKE_SIZES if args.smoke else SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = fill_sizes(build_parser().parse_args(argv))
    started = time.perf_counter()
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted((set(rows_wanted) | _profile_rows(args)) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if "trainer" in _profile_rows(args):
        raise SystemExit("--profile cannot profile the trainer row (it has no step of its own: "
                         "profile the fast row, whose step the trainer runs)")
    if _profile_rows(args) - set(rows_wanted):
        raise SystemExit(f"--profile {args.profile} names rows that --rows {args.rows} does not "
                         "run; add them to --rows")
    try:
        inductor = set_inductor_options(args.inductor)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    earlier = read_report(args.json) if args.json else None  # before any time is spent
    device = pick_device(args.device)
    on_cuda = device.type == "cuda"
    use_compile = on_cuda if args.compile is None else args.compile
    overrides = SMOKE_MODEL if args.smoke else {}
    config = get_config(args.preset, **overrides)

    name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
    timm_version = _timm_version()
    timm_note = f"timm {timm_version}" if timm_version else "timm not importable (no timm row)"
    print(f"device: {name} · torch {torch.__version__} · {timm_note}")
    if not on_cuda and not args.smoke:
        print("note: the benchmark is sized for a GPU (the full model, batches up to 1024); on a "
              "CPU it takes long, and --smoke checks every row in seconds")
    loaded = time.perf_counter()
    if args.data == "synthetic" or (args.smoke and args.data is None):
        data = synthetic_cifar(n_train=256, n_test=16)
    else:
        data = load_data(args.data, quiet=True)
    print(f"data: {len(data.train)} training images loaded in {time.perf_counter() - loaded:.1f} s")
    train_flops = 3 * flops_per_image(config)
    print(f"model: ViT d={config.embed_dim} depth={config.depth} heads={config.num_heads} "
          f"mlp×{config.mlp_ratio:g} patch={config.patch_size} "
          f"({count_parameters(ViT(config)) / 1e6:.2f} M parameters), "
          f"{train_flops / 1e9:.2f} GFLOP per training image (3 × forward matrix products)")

    report: dict = {"device": name, "torch": torch.__version__, "rows": []}
    if earlier is not None:
        report = earlier
    peak = DATASHEET_BF16_TFLOPS.get(next((k for k in DATASHEET_BF16_TFLOPS if k in name), ""))
    if on_cuda and (args.ceilings is None or args.ceilings):
        report["ceilings"] = measure_ceilings(device)
    if "ceilings" in report:
        c = report["ceilings"]
        print(f"ceilings measured: bf16 matrix products {c['matmul_tflops']:.0f} TFLOP/s, "
              f"copy {c['copy_tbps']:.2f} TB/s")
        peak = c["matmul_tflops"]

    def save() -> None:
        if args.json:
            write_json(args.json, report)

    attention = None if args.attention == "default" else args.attention
    if {"fast", "trainer"} & set(rows_wanted) and attention == "auto":
        heads, tokens = config.num_heads, config.num_tokens
        # FlexAttention only where the step compiles it
        kernels = tuple(k for k in ATTENTION_BACKENDS if use_compile or k != "flex")
        timings = time_attention(args.batch_size, heads, tokens, config.embed_dim // heads, device,
                                 kernels=kernels)
        listed = ", ".join(f"{k} {v['ms']:.2f} ms (error {v['error']:.1e})" if v else f"{k} n/a"
                           for k, v in timings.items())
        attention = pick_attention(timings)
        report["attention"] = {"timings": timings, "choice": attention}
        print(f"attention forward+backward, {args.batch_size}×{heads} heads×{tokens} tokens: "
              f"{listed} -> {attention}")
        save()

    rows = {r["name"]: Row(**r) for r in report["rows"]}
    failed = []  # the rows asked for that raised (skipped ones are not failures)
    for row in rows_wanted:
        if args.deadline is not None and time.perf_counter() - started > args.deadline:
            print(f"{row}: skipped, past the {args.deadline:.0f} s deadline")
            continue
        if row == "timm" and timm_version is None:
            print("timm: skipped, timm cannot be imported (pip install timm)")
            continue
        try:
            result = measure_row(row, config, data.train, device, args, use_compile, attention)
        except Exception:  # one broken row must not cost the others
            print(f"{row}: failed", flush=True)
            traceback.print_exc()
            failed.append(row)
            continue
        finally:
            if on_cuda:
                torch.cuda.empty_cache()
        if inductor and use_compile and row != "typical":  # the rows that compile
            result = replace(result, inductor=inductor)
        rows[row] = result
        print(f"{row}: {result.images_per_s:,.0f} images/s (batch {result.batch_size}, "
              f"warm-up {result.warmup_s:.1f} s)", flush=True)
        if result.profile:
            print(format_profile(row, result.profile), flush=True)
        report["rows"] = [asdict(r) for r in rows.values()]
        save()

    ordered = [rows[n] for n in ROWS if n in rows]
    print()
    print(format_table(ordered, train_flops, peak))
    if peak:
        source = "measured here" if "ceilings" in report else "datasheet"
        print(f"MFU: matrix-product FLOPs per second over {peak:.0f} TFLOP/s bf16 ({source})")
    if failed:
        print(f"failed: {', '.join(failed)} (the errors are above; the table holds the rows "
              "that ran)", flush=True)
        return 1
    return 0


def read_report(path: str | Path) -> dict | None:
    """The results a ``--json`` file already holds, or None where there is no such file yet.
    Raises a ValueError naming the file where it cannot hold results (a folder, a missing
    folder, text that is not an earlier run's JSON)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--json {path} is a folder; name a file in it, e.g. "
                         f"--json {path / 'bench.json'}")
    if not path.exists():
        if not path.parent.is_dir():
            raise ValueError(f"--json {path}: there is no folder {path.parent}; create it, or "
                             "name a file in a folder that exists")
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # unreadable; not text or not JSON
        what = "cannot be read" if isinstance(err, OSError) else "is not JSON"
        problem = f"{what} ({type(err).__name__}: {err})"
    else:
        problem = None if _holds_rows(report) else "holds JSON, but not a bench run's rows"
    if problem:
        raise ValueError(f"--json {path} {problem}; the bench adds its rows to those of earlier "
                         "runs there: move or delete the file, or name another")
    return report


def write_json(path: str | Path, report: dict) -> None:
    """Write ``report`` through a temporary file and a rename, so a run killed while writing
    (by the time limit of gpu_check.sh) leaves the last whole file for the next run."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def set_inductor_options(specs: list[str]) -> dict[str, object]:
    """Set ``torch._inductor.config`` options from "NAME=VALUE" strings, VALUE a Python literal
    and NAME possibly dotted (``triton.cudagraph_trees``); returns the options set. Raises a
    ValueError that says what to write for a malformed spec or an option Inductor lacks."""
    if not specs:
        return {}
    import ast

    from torch._inductor import config as inductor_config

    known = inductor_config.get_config_copy()  # dotted names: triton.cudagraph_trees
    options: dict[str, object] = {}
    for spec in specs:
        name, sep, text = (part.strip() for part in spec.partition("="))
        if not (sep and name and text):
            raise ValueError(f"--inductor {spec!r}: write it as NAME=VALUE, "
                             "e.g. --inductor combo_kernels=True")
        if name not in known:
            raise ValueError(f"--inductor {spec!r}: torch {torch.__version__} has no Inductor "
                             f"option {name!r} (see torch/_inductor/config.py; a section such "
                             "as triton takes its options one by one: triton.cudagraph_trees)")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: the value of a string option (checked below)
        current = known[name]
        if isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, int | float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:  # None (not set) takes any value
            ok = current is None or isinstance(value, type(current))
        try:
            json.dumps(value)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"--inductor {spec!r}: {name} holds a {type(current).__name__} "
                             f"(now {current!r}); got {value!r}")
        setattr(inductor_config, name, value)
        options[name] = value
    return options


def _holds_rows(report: object) -> bool:
    """Whether ``report`` is a bench report: a dict whose "rows" are Row fields."""
    if not (isinstance(report, dict) and isinstance(report.get("rows"), list)):
        return False
    try:
        for r in report["rows"]:
            Row(**r)
    except TypeError:  # not a mapping, or not Row's fields
        return False
    return True


def _profile_rows(args: argparse.Namespace) -> set[str]:
    return {r.strip() for r in args.profile.split(",") if r.strip()}


def _timm_version() -> str | None:
    """timm's version, or None where it is missing or fails to import (a timm built for
    another torch or torchvision can fail with any error, not only ImportError)."""
    try:
        import timm
    except Exception:
        return None
    return timm.__version__
