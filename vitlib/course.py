"""What every course notebook does first: seed and pick a device, then load the images it shows."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import vitlib
from vitlib.data import project_dir

if TYPE_CHECKING:
    from vitlib.data import CIFAR10


def pick_device() -> torch.device:
    """The fastest device here: a CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and PyTorch's random generators (all GPUs included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup(seed: int = 0) -> torch.device:
    """Seed everything, pick the device, print it with the versions in use; return the device."""
    seed_everything(seed)
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"device: {name} · torch {torch.__version__} · vitlib {vitlib.__version__} · seed {seed}"
    )
    return device


def load_data(
    smoke: bool,
    source: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    n_synthetic: tuple[int, int] = (512, 256),
) -> CIFAR10:
    """CIFAR-10 for a notebook: ``vitlib.data.load_cifar10`` with the smoke-mode fallback.

    The data comes from ``source``, else the ``VITLIB_DATA`` environment variable, else the
    project's ``data/`` folder. Outside smoke mode a missing copy is downloaded (and offline the
    error says what to do). In smoke mode nothing is downloaded: with no data at hand it prints
    that it uses made-up images (``n_synthetic`` = train and test sizes) instead of failing.
    """
    from vitlib.data import load_cifar10, synthetic_cifar

    try:
        return load_cifar10(source, cache_dir=cache_dir, download=not smoke, progress=not smoke)
    except (FileNotFoundError, ValueError) as error:
        if not smoke:
            raise
        n_train, n_test = n_synthetic
        print(
            f"No CIFAR-10 found ({error}).\n"
            f"Smoke mode: using {n_train} + {n_test} made-up 32×32 images instead; "
            "set VITLIB_DATA to a CIFAR-10 copy to see real ones."
        )
        return synthetic_cifar(n_train=n_train, n_test=n_test, seed=0)


def check_shape(x: torch.Tensor, expected: tuple[int, ...], what: str = "tensor") -> torch.Tensor:
    """Assert that ``x`` has shape ``expected``, print it, and return ``x`` (to use inline)."""
    if tuple(x.shape) != tuple(expected):
        raise AssertionError(f"{what}: expected shape {tuple(expected)}, got {tuple(x.shape)}")
    print(f"{what:<40} {tuple(x.shape)} ✓")
    return x


def format_bytes(n: float) -> str:
    """A byte count in readable units: '512 bytes', '4.0 KiB', '1.5 MiB', '2.0 GiB'."""
    if round(n) < 1024:  # the unit is chosen by the number as printed
        return f"{n:,.0f} bytes"
    for unit in ["KiB", "MiB"]:
        n /= 1024
        if round(n, 1) < 1024:
            return f"{n:,.1f} {unit}"
    return f"{n / 1024:,.1f} GiB"


def runs_dir() -> Path:
    """The project's ``runs/`` folder (git-ignored), wherever in the project a notebook runs;
    ``runs/`` in the working directory outside a checkout (Colab)."""
    return project_dir() / "runs"


@contextmanager
def online(what: str) -> Iterator[None]:
    """Run a download; offline, its OSError (a URLError, the model hubs' errors) becomes one
    RuntimeError that says what needed the internet."""
    try:
        yield
    except OSError as error:
        raise RuntimeError(f"{what} needs the internet, and the download failed "
                           f"({type(error).__name__}: {error}); run it online, or skip it "
                           "(each notebook says how)") from error
