"""Augmentation speed: images per second of ``vitlib.augment.Augment`` for a few settings,
eager and compiled (``Augment(compile=True)``: the batch's random numbers drawn in one call,
the rest one compiled graph), on the current device.

    python benchmarks/augment_speed.py                     # batch 1024, on the GPU if any
    python benchmarks/augment_speed.py --batch 256 --device cpu --steps 5
    python benchmarks/augment_speed.py --setting cifar_fast     # one setting
    python benchmarks/augment_speed.py --smoke                  # seconds: tiny, eager only

The training step of the time-to-accuracy recipe takes about 10 µs per image at the target
speed (benchmarks/NOTES.md), so the augmentation has to cost well under that.
"""

from __future__ import annotations

import argparse
import time

import torch

from vitlib.augment import Augment, AugmentConfig
from vitlib.course import pick_device
from vitlib.fast import synchronize
from vitlib.train import RECIPES

SETTINGS = {
    "crop + flip": AugmentConfig(),
    "cifar_fast": RECIPES["cifar_fast"][1].augment,
    "gpu (all)": RECIPES["gpu"][1].augment,
}


def images_per_second(augment: Augment, images, labels, steps: int) -> tuple[float, float]:
    """(seconds of the first call, images/s over ``steps`` later calls)."""
    device = images.device
    started = time.perf_counter()
    augment(images, labels, 10)
    synchronize(device)
    first = time.perf_counter() - started
    augment(images, labels, 10)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        augment(images, labels, 10)
    synchronize(device)
    return first, steps * len(images) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50, help="timed calls after warm-up")
    p.add_argument("--device", help="cpu or cuda (default: a GPU if there is one)")
    p.add_argument("--eager-only", action="store_true", help="skip the compiled rows")
    p.add_argument("--setting", action="append", choices=list(SETTINGS),
                   help="measure only this setting (repeatable; default: all)")
    p.add_argument("--smoke", action="store_true", help="batch 32, 2 steps, eager only")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.eager_only = 32, 2, True
    device = torch.device(args.device) if args.device else pick_device()
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"{name} · torch {torch.__version__} · batch {args.batch}")
    print(f"{'setting':<14} {'mode':<9} {'first call s':>12} {'images/s':>12} {'µs/image':>9}")
    for setting in args.setting or SETTINGS:
        config = SETTINGS[setting]
        for compiled in (False, True)[:1 if args.eager_only else 2]:
            augment = Augment(config, seed=0, compile=compiled)
            first, speed = images_per_second(augment, images, labels, args.steps)
            mode = "compiled" if compiled else "eager"
            print(f"{setting:<14} {mode:<9} {first:>12.2f} {speed:>12,.0f} {1e6 / speed:>9.2f}")


if __name__ == "__main__":
    main()
