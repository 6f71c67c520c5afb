"""Run a command of the GPU plan at its real sizes with a micro model, uncompiled, on a CPU.

    PY="python benchmarks/micro_model.py" VITLIB_DATA=... bash benchmarks/gpu_check.sh
    python benchmarks/micro_model.py -m vitlib bench --rows trainer
    python benchmarks/micro_model.py benchmarks/time_to_accuracy.py --recipe cifar_fast_30

The data, batch sizes, steps and splits stay those of the GPU run; only ``vit_cifar_tiny``
(and so the ``cifar_fast`` recipes) becomes a model of 16 channels and one block, and the
recipes do not compile. A CPU then goes through every step in minutes, which catches what the
``--smoke`` runs cannot: sizes that only the real data and batches reach.
"""

from __future__ import annotations

import runpy
import sys
from dataclasses import replace

from vitlib import model, train

MICRO = {"embed_dim": 16, "depth": 1, "num_heads": 1, "mlp_ratio": 1.0}


def shrink() -> None:
    """Make ``vit_cifar_tiny`` and the recipes built on it micro, and the recipes eager."""
    full = model.PRESETS["vit_cifar_tiny"]
    model.PRESETS["vit_cifar_tiny"] = lambda: replace(full(), **MICRO)
    shape = lambda c: (c.embed_dim, c.depth, c.num_heads, c.mlp_ratio, c.patch_size)
    for name, (config, settings) in train.RECIPES.items():
        if shape(config) == shape(full()):  # its start and positions may differ
            train.RECIPES[name] = (replace(config, **MICRO), replace(settings, compile=False))


def main(argv: list[str]) -> None:
    """``-m MODULE ARGS``, ``-c CODE ARGS`` or ``SCRIPT ARGS``, as ``python`` takes them."""
    if not argv:
        raise SystemExit(__doc__)
    shrink()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(argv[1], {"__name__": "__main__"})
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
