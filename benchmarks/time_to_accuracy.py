"""Time to accuracy: a named recipe of ``vitlib.train`` against the clock, for one or more
seeds; prints validation accuracy against training seconds and the final test accuracy.

    python benchmarks/time_to_accuracy.py                       # recipe cifar_fast, 120 s
    python benchmarks/time_to_accuracy.py --recipe cifar_fast_30 --seeds 3
    python benchmarks/time_to_accuracy.py --smoke               # seconds on a CPU, made-up data

The training is ``vitlib.train.train`` with the recipe's settings (``vitlib.train.RECIPES``).
Its clock counts training steps only; data loading, compilation (the first steps) and
evaluation are reported apart. At the end, four variants (raw or averaged weights, with or
without flip test-time augmentation) are scored on the validation split (held out of the
training images); the best there is the one reported on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitlib.checkpoint import load_checkpoint
from vitlib.data import load_cifar10, synthetic_cifar
from vitlib.model import ViT, ViTConfig, get_config
from vitlib.train import RECIPES, TrainConfig, evaluate, get_recipe, split_data, train

SMOKE_MODEL = {"embed_dim": 32, "depth": 1, "num_heads": 2}
SMOKE_TRAIN = {"epochs": 2, "batch_size": 64, "val_size": 64, "warmup_epochs": 1,
               "eval_every": 1, "time_budget_s": None, "compile": False}
SMOKE_DATA = {"n_train": 512, "n_test": 128}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=list(RECIPES), default="cifar_fast")
    p.add_argument("--budget", type=float, help="seconds of training (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=1, help="runs, with seeds --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--data", help="CIFAR-10 path or 'synthetic' (default: $VITLIB_DATA)")
    p.add_argument("--compile-mode", help="torch.compile mode, or 'none' for eager "
                   "(default: the recipe's, reduce-overhead = CUDA graphs)")
    p.add_argument("--attention", help="attention kernel: flash, efficient, cudnn or math "
                   "(default: PyTorch's choice); `python -m vitlib bench` measures them")
    p.add_argument("--token-drop", type=float, default=0.0,
                   help="share of patch tokens each training image drops (ViTConfig.token_drop)")
    p.add_argument("--out", help="keep each seed's checkpoint and history in OUT/seed_N "
                   "(default: a temporary folder)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, made-up data, 2 epochs, no compilation unless "
                   "--compile-mode")
    return p


def settings(args: argparse.Namespace) -> tuple[ViTConfig, TrainConfig]:
    """The recipe with the command line's changes; validation stays at about 10 points along
    the run when ``--budget`` shortens or lengthens it."""
    preset, config = get_recipe(args.recipe)
    model_config = get_config(preset, **(SMOKE_MODEL if args.smoke else {}),
                              token_drop=args.token_drop)
    changes: dict = {"progress": False}
    if args.budget is not None and config.time_budget_s:
        changes["eval_every"] = max(1, round(config.eval_every * args.budget
                                             / config.time_budget_s))
        changes["time_budget_s"] = args.budget
    if args.smoke:
        changes |= SMOKE_TRAIN
    if args.compile_mode is not None:
        changes["compile"] = args.compile_mode != "none"
        if changes["compile"]:
            changes["compile_mode"] = args.compile_mode
    if args.attention is not None:
        changes["attention"] = args.attention
    return model_config, dataclasses.replace(config, **changes)


def score_variants(checkpoint: Path, data, config: TrainConfig) -> dict[str, dict[str, float]]:
    """Validation and test accuracy of the raw and averaged (EMA) weights of a finished run,
    each with and without flip test-time augmentation."""
    state = load_checkpoint(checkpoint)
    _, val, test = split_data(data, config)
    device = torch.device("cuda" if torch.cuda.is_available() and config.device != "cpu"
                          else "cpu")
    scores = {}
    for label in ("model", "ema"):
        if state[label] is None:
            continue
        model = ViT(ViTConfig(**state["model_config"]))
        model.load_state_dict(state[label])
        model.to(device)
        for tta in (None, "flip"):
            scores[label + ("+flip" if tta else "")] = {
                name: evaluate(model, split, precision=config.precision, tta=tta)["acc"]
                for name, split in (("val", val), ("test", test))
            }
    return scores


def run_seed(model_config: ViTConfig, config: TrainConfig, data, out: Path) -> dict:
    """One training run and its report: the validation curve, the variants, the choice."""
    torch.compiler.reset()  # compile afresh: earlier seeds' graphs guard on their own models
    config = dataclasses.replace(config, out_dir=str(out))
    history = train(model_config, config, data)
    last = history.epochs[-1]
    curve = [{"time_s": round(r["train_time_s"], 2), "epoch": r["epoch"], "step": r["step"],
              "train_loss": r["train_loss"], "val_acc": r["val_acc"]}
             for r in history.epochs if r["val_acc"] is not None]
    for point in curve:
        print(f"  t={point['time_s']:7.1f} s  epoch {point['epoch']:7.2f}  step "
              f"{point['step']:>6}  loss {point['train_loss']:.3f}  val {point['val_acc']:6.2%}")
    started = time.perf_counter()
    final = score_variants(Path(history.checkpoint), data, config)
    eval_s = time.perf_counter() - started
    chosen = max(final, key=lambda k: final[k]["val"])
    print("  final: " + "  ".join(f"{k} val {v['val']:.2%} test {v['test']:.2%}"
                                  for k, v in final.items()))
    return {
        "seed": config.seed, "compile_s": history.compile_s, "train_s": last["train_time_s"],
        "epochs": last["epoch"], "steps": last["step"], "images_per_s": last["images_per_s"],
        "stop_reason": history.stop_reason, "curve": curve, "final": final, "chosen": chosen,
        "test_acc": final[chosen]["test"], "final_eval_s": eval_s,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    model_config, config = settings(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name} · torch {torch.__version__} · recipe {args.recipe} · "
          f"budget {config.time_budget_s} s · seeds {args.seed}..{args.seed + args.seeds - 1}")

    started = time.perf_counter()
    if args.data == "synthetic" or (args.smoke and args.data is None):
        data = synthetic_cifar(**SMOKE_DATA)
    else:
        data = load_cifar10(args.data, progress=False)
    data_s = time.perf_counter() - started
    print(f"data: {len(data.train)} train (of which {config.val_size} validation) / "
          f"{len(data.test)} test images, loaded in {data_s:.1f} s")

    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seed, args.seed + args.seeds):
            out = Path(args.out or scratch) / f"seed_{seed}"
            print(f"seed {seed}:")
            run = run_seed(model_config, dataclasses.replace(config, seed=seed), data, out)
            runs.append(run)
            print(f"RESULT recipe {args.recipe} seed {seed}: test {run['test_acc']:.2%} "
                  f"({run['chosen']}, chosen on val {run['final'][run['chosen']]['val']:.2%}) "
                  f"after {run['train_s']:.1f} s of training ({run['steps']} steps, "
                  f"{run['epochs']:.1f} epochs, {run['images_per_s']:,.0f} images/s, stopped "
                  f"by {run['stop_reason']}); data {data_s:.1f} s, compile "
                  f"{run['compile_s']:.1f} s; {name}")

    accs = [run["test_acc"] for run in runs]
    mean = statistics.mean(accs)
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"RESULT recipe {args.recipe}: test {mean:.2%} ± {std:.2%} (mean ± std over "
          f"{len(accs)} seed{'s' * (len(accs) > 1)}); {name}")
    if args.json:
        result = {
            "recipe": args.recipe, "device": name, "torch": torch.__version__,
            "model": dataclasses.asdict(model_config), "train": config.to_dict(),
            "data_s": data_s, "runs": runs, "test_acc_mean": mean, "test_acc_std": std,
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
