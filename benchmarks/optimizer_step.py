"""The optimizer step alone: milliseconds and kernels per step of AdamW and of Muon + AdamW
(``vitlib.train.make_optimizer``) for a model preset, with random gradients.

    python benchmarks/optimizer_step.py                     # vit_cifar_tiny, GPU if there is one
    python benchmarks/optimizer_step.py --model vit_cifar_cpu --device cpu
    python benchmarks/optimizer_step.py --smoke             # vit_cifar_cpu, 5 steps

On a GPU, "kernels" counts what one step runs on the device (kernels, copies and fills, as
``python -m vitlib bench --profile`` counts them); on a CPU, the top-level ATen operators,
each about one kernel launch on a GPU. A step of a few hundred small kernels costs launch
time that the model's step may or may not hide.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from vitlib.bench import device_events
from vitlib.fast import synchronize
from vitlib.model import create_model
from vitlib.train import OPTIMIZERS, TrainConfig, make_optimizer


def kernels_per_step(optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """Device kernels (CUDA) or top-level ATen operators (elsewhere) of one ``step()``."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        optimizer.step()
        synchronize(device)
    if cuda:
        return len(device_events(prof, torch.autograd.DeviceType.CUDA))
    return sum(e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
               for e in prof.events())


def measure(name: str, model_name: str, device: torch.device, steps: int) -> tuple[float, int]:
    """(milliseconds per step, kernels per step) of optimizer ``name`` on a fresh model."""
    torch.manual_seed(0)
    model = create_model(model_name).to(device)
    optimizer = make_optimizer(model, TrainConfig(optimizer=name))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(3):  # warm-up: the state is made on the first step
        optimizer.step()
    kernels = kernels_per_step(optimizer, device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps * 1e3, kernels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_cifar_tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="the small model for 5 steps")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.steps = "vit_cifar_cpu", 5
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model} on {device} ({card}), torch {torch.__version__}, {args.steps} steps")
    print(f"{'optimizer':<10} {'ms/step':>9} {'kernels':>8}")
    for name in OPTIMIZERS:
        ms, kernels = measure(name, args.model, device, args.steps)
        print(f"{name:<10} {ms:>9.3f} {kernels:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
