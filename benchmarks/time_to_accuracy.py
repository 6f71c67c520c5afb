"""Time to accuracy: train a plain ViT on CIFAR-10 against the clock, print accuracy against
training seconds.

    python benchmarks/time_to_accuracy.py                       # recipe cifar_fast, 120 s
    python benchmarks/time_to_accuracy.py --recipe cifar_fast_30
    python benchmarks/time_to_accuracy.py --smoke               # seconds on a CPU, made-up data

The clock counts training steps only. Reported apart: data loading, compilation, a short
calibration (steps at learning rate 0, which leave the weights as they are) that measures the
step time so the cosine schedule can end exactly at the budget, and evaluation.
Settings are chosen on the validation split (held out of the training images), and so is
the reported variant (raw or averaged weights, with or without flip test-time augmentation);
the test split is only reported.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from vitlib.augment import Augment, AugmentConfig
from vitlib.data import load_cifar10, synthetic_cifar, train_val_split
from vitlib.fast import TrainStep, update_ema
from vitlib.model import ViT, count_parameters, get_config
from vitlib.train import TrainConfig, evaluate, learning_rate, make_optimizer

# name -> (model preset, settings); batch 1024 and lr 2e-3 are for one H100/H200
RECIPES: dict[str, tuple[str, TrainConfig]] = {
    "cifar_fast": ("vit_cifar_tiny", TrainConfig(
        batch_size=1024, lr=2e-3, weight_decay=0.05, warmup_epochs=8, min_lr_ratio=0.01,
        label_smoothing=0.1, grad_clip=1.0, ema_decay=0.999, time_budget_s=120,
        augment=AugmentConfig(num_ops=1, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.5),
    )),
    "cifar_fast_30": ("vit_cifar_tiny", TrainConfig(  # fewer epochs: lighter regularisation
        batch_size=1024, lr=2e-3, weight_decay=0.05, warmup_epochs=3, min_lr_ratio=0.01,
        label_smoothing=0.1, grad_clip=1.0, ema_decay=0.998, time_budget_s=30,
        augment=AugmentConfig(num_ops=1),
    )),
}
SMOKE_MODEL = {"embed_dim": 32, "depth": 1, "num_heads": 2}
SMOKE_TRAIN = {"batch_size": 64, "val_size": 64, "warmup_epochs": 1, "time_budget_s": None}
COMPILE_STEPS = 3  # steps that compile and record the CUDA graphs
CALIBRATION_STEPS = 30  # timed steps at learning rate 0 that measure the step time
CHECK_EVERY = 50  # steps between looks at the clock (each one waits for the device)
BUDGET_SHARE = 0.98  # plan the steps to fill this share of the budget (the clock has jitter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=list(RECIPES), default="cifar_fast")
    p.add_argument("--budget", type=float, help="seconds of training (default: the recipe's)")
    p.add_argument("--steps", type=int, help="train this many steps instead of a time budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="CIFAR-10 path or 'synthetic' (default: $VITLIB_DATA)")
    p.add_argument("--compile-mode", help="torch.compile mode, or 'none' for eager "
                   "(default: reduce-overhead = CUDA graphs on a GPU, none on a CPU)")
    p.add_argument("--attention", help="attention kernel: flash, efficient, cudnn or math "
                   "(default: PyTorch's choice); `python -m vitlib bench` measures them")
    p.add_argument("--evals", type=int, default=10, help="evaluations along the run")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, made-up data, 4 steps, no compilation on a CPU")
    return p


class Batches:
    """Each epoch a seeded permutation of the resident uint8 images, in batches, augmented on
    the device. ``restart()`` begins again from the first batch of the first epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                 num_classes: int) -> None:
        self.images, self.labels = images, labels
        self.config, self.num_classes = config, num_classes
        self.augment = Augment(config.augment, seed=config.seed)
        self.steps_per_epoch = len(labels) // config.batch_size
        self.restart()

    def restart(self) -> None:
        device = self.images.device
        self.order_generator = torch.Generator(device).manual_seed(self.config.seed)
        self.augment.generator(device).manual_seed(self.config.seed)
        self.batch = self.steps_per_epoch  # start a new epoch at the next call

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch == self.steps_per_epoch:
            self.order = torch.randperm(len(self.labels), device=self.images.device,
                                        generator=self.order_generator)
            self.batch = 0
        size = self.config.batch_size
        index = self.order[self.batch * size:(self.batch + 1) * size]
        self.batch += 1
        return self.augment(self.images[index], self.labels[index], self.num_classes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset, config = RECIPES[args.recipe]
    model_config = get_config(preset, **(SMOKE_MODEL if args.smoke else {}))
    config = dataclasses.replace(config, seed=args.seed, **(SMOKE_TRAIN if args.smoke else {}))
    budget = args.budget if args.budget is not None else config.time_budget_s
    steps = args.steps or (4 if args.smoke else None)
    evals = min(args.evals, 2) if args.smoke else args.evals
    if steps is None and budget is None:
        raise SystemExit("give a time budget (--budget SECONDS) or a step count (--steps N)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile_mode = args.compile_mode or ("reduce-overhead" if device.type == "cuda" else "none")
    compile_mode = None if compile_mode == "none" else compile_mode
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} · torch {torch.__version__} · recipe {args.recipe} · seed {args.seed}")

    started = time.perf_counter()
    if args.data == "synthetic" or (args.smoke and args.data is None):
        data = synthetic_cifar(n_train=512, n_test=128)
    else:
        data = load_cifar10(args.data, progress=False)
    data_s = time.perf_counter() - started
    train, val = train_val_split(data.train, config.val_size, config.seed)
    images, labels = train.images.to(device), train.labels.to(device)
    print(f"data: {len(train)} train / {len(val)} val / {len(data.test)} test images, "
          f"loaded in {data_s:.1f} s")

    torch.manual_seed(config.seed)
    model = ViT(model_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = make_optimizer(model, config)
    step = TrainStep(model, optimizer, data.num_classes, precision="bf16",
                     compile_mode=compile_mode, attention=args.attention,
                     label_smoothing=config.label_smoothing, grad_clip=config.grad_clip)
    batches = Batches(images, labels, config, data.num_classes)
    m = model_config
    print(f"model: ViT d={m.embed_dim} depth={m.depth} heads={m.num_heads} mlp×{m.mlp_ratio:g} "
          f"patch={m.patch_size}, {count_parameters(model) / 1e6:.2f} M parameters; batch "
          f"{config.batch_size}, lr {config.lr:g}, compile {compile_mode}, "
          f"attention {args.attention or 'default'}")
    print(f"augment: {dataclasses.asdict(config.augment)}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step(index: int, lr: float) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, _ = step(*batches())
        decay = min(config.ema_decay, (1 + index) / (10 + index))  # short memory at first
        update_ema(ema, model, decay)
        return loss

    # Compile, then time steps at learning rate 0: the weights stay as they are (Adam's moments
    # are reset afterwards), and the measured step time fixes the number of steps.
    started = time.perf_counter()
    for i in range(COMPILE_STEPS):
        train_step(i, 0.0)
    sync()
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    calibration = 1 if args.smoke else CALIBRATION_STEPS
    for i in range(calibration):
        train_step(i, 0.0)
    sync()
    step_s = (time.perf_counter() - started) / calibration
    optimizer.state.clear()
    batches.restart()
    total = steps or max(1, int(BUDGET_SHARE * budget / step_s))
    warmup = round(config.warmup_epochs * batches.steps_per_epoch)
    print(f"compile + CUDA graphs: {compile_s:.1f} s; calibration: {step_s * 1e3:.2f} ms per "
          f"step = {config.batch_size / step_s:,.0f} images/s -> {total} steps "
          f"({total / batches.steps_per_epoch:.1f} epochs), warm-up {warmup} steps")

    evals = {round(total * (i + 1) / evals) for i in range(evals)}
    curve, clock, eval_s = [], 0.0, 0.0
    loss_sum, loss_count = torch.zeros((), device=device), 0
    reason = "steps"
    sync()
    segment = time.perf_counter()
    for index in range(total):
        lr = learning_rate(config, index, warmup, index / total)
        loss_sum += train_step(index, lr)
        loss_count += 1
        done = index + 1
        if done % CHECK_EVERY and done not in evals:
            continue
        sync()
        clock += time.perf_counter() - segment
        over = budget is not None and steps is None and clock > budget
        if done in evals or over:
            started = time.perf_counter()
            point = {"time_s": round(clock, 2), "step": done,
                     "epoch": round(done / batches.steps_per_epoch, 2),
                     "train_loss": loss_sum.item() / loss_count}
            for label, net in (("", model), ("_ema", ema)):
                point["val" + label] = evaluate(net, val, precision="bf16")["acc"]
                point["test" + label] = evaluate(net, data.test, precision="bf16")["acc"]
            curve.append(point)
            loss_sum.zero_()
            loss_count = 0
            eval_s += time.perf_counter() - started
            print(f"t={clock:7.1f} s  step {done:>6}/{total}  epoch {point['epoch']:6.1f}  "
                  f"loss {point['train_loss']:.3f}  val {point['val']:6.2%} "
                  f"(ema {point['val_ema']:6.2%})  test {point['test']:6.2%} "
                  f"(ema {point['test_ema']:6.2%})", flush=True)
        if over:
            reason = "time budget (the calibration underestimated the step time)"
            break
        segment = time.perf_counter()

    started = time.perf_counter()
    final = {}
    for label, net in (("model", model), ("ema", ema)):
        for tta in (None, "flip"):
            key = label + ("+flip" if tta else "")
            final[key] = {split: evaluate(net, part, precision="bf16", tta=tta)["acc"]
                          for split, part in (("val", val), ("test", data.test))}
    eval_s += time.perf_counter() - started
    chosen = max(final, key=lambda k: final[k]["val"])
    print("final: " + "  ".join(f"{k} val {v['val']:.2%} test {v['test']:.2%}"
                                for k, v in final.items()))
    print(f"RESULT recipe {args.recipe} seed {args.seed}: test {final[chosen]['test']:.2%} "
          f"({chosen}, chosen on val {final[chosen]['val']:.2%}) after {clock:.1f} s of "
          f"training ({done} steps, {done / batches.steps_per_epoch:.1f} epochs, stopped by "
          f"{reason}); data {data_s:.1f} s, compile {compile_s:.1f} s, calibration "
          f"{step_s * calibration:.1f} s, evaluation {eval_s:.1f} s; {name}")
    if args.json:
        result = {
            "recipe": args.recipe, "seed": args.seed, "device": name, "torch": torch.__version__,
            "model": dataclasses.asdict(model_config), "train": config.to_dict(),
            "compile_mode": compile_mode, "attention": args.attention, "data_s": data_s,
            "compile_s": compile_s, "step_ms": step_s * 1e3, "steps": done, "train_s": clock,
            "eval_s": eval_s, "stop_reason": reason, "curve": curve, "final": final,
            "chosen": chosen,
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
