"""Time to accuracy: a named recipe of ``vitlib.train`` against the clock, for one or more
seeds; prints validation accuracy against training seconds and the final test accuracy.

    python benchmarks/time_to_accuracy.py                       # recipe cifar_fast, 120 s
    python benchmarks/time_to_accuracy.py --recipe cifar_fast_30 --seeds 3
    python benchmarks/time_to_accuracy.py --smoke               # seconds on a CPU, made-up data
    python benchmarks/time_to_accuracy.py --recipe cifar_fast_30 --drop-path 0.1
    python benchmarks/time_to_accuracy.py --recipe cifar_fast_30 --deadline 300 \
        --variant "drop-path=--drop-path 0.1" --variant "batch 512=--batch-size 512 --lr 1.4e-3"

The flags of ``python -m vitlib train`` that change a recipe (``--lr``, ``--drop-path``,
``--erase``, ...) change it here too. Each ``--variant "NAME=FLAGS"`` is a further run of the
recipe with FLAGS on top, at the same budget, in the same process; a table compares them at
the end. ``--deadline`` skips the runs that would end after it.

The training is ``vitlib.train.train`` with the recipe's settings (``vitlib.train.RECIPES``).
Its clock counts training steps only; data loading, compilation (the first steps) and
evaluation are reported apart. At the end, four variants (raw or averaged weights, with or
without flip test-time augmentation) are scored on the validation split (held out of the
training images); the best there is the one reported on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitlib.__main__ import add_recipe_flags, apply_recipe_flags
from vitlib.bench import write_json
from vitlib.checkpoint import CHECKPOINT_NAME, load_checkpoint
from vitlib.data import load_cifar10, synthetic_cifar
from vitlib.model import ViT, ViTConfig
from vitlib.train import (
    RECIPES,
    History,
    TrainConfig,
    evaluate,
    get_recipe,
    pick_device,
    split_data,
    train,
)

SMOKE_MODEL = {"embed_dim": 32, "depth": 1, "num_heads": 2}
SMOKE_TRAIN = {"epochs": 2, "batch_size": 64, "val_size": 64, "warmup_epochs": 1,
               "eval_every": 1, "time_budget_s": None, "compile": False}
SMOKE_DATA = {"n_train": 1088, "n_test": 128}  # room for a variant's batch of 1024 after validation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=list(RECIPES), default="cifar_fast")
    p.add_argument("--budget", type=float, help="seconds of training (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=1, help="runs, with seeds --seed, --seed + 1, ...")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--data", help="CIFAR-10 path or 'synthetic' (default: $VITLIB_DATA)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="also run the recipe with these recipe flags on top (repeatable)")
    p.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="skip the runs that would end more than SECONDS after the start "
                   "(estimated from the run before)")
    p.add_argument("--out", help="keep each run's checkpoint and history in OUT/VARIANT/seed_N "
                   "(default: a temporary folder)")
    p.add_argument("--json", help="write the results to this file (after every run)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, made-up data, 2 epochs, no compilation unless --compile")
    add_recipe_flags(p)
    return p


class _VariantParser(argparse.ArgumentParser):
    """Parses a variant's FLAGS; raises ValueError instead of exiting."""

    def error(self, message: str):
        raise ValueError(message)


def parse_variants(specs: list[str]) -> list[tuple[str, str, argparse.Namespace]]:
    """``NAME=FLAGS`` strings -> (name, flags, parsed flags); the recipe itself comes first,
    as "recipe" with no flags."""
    parser = _VariantParser(prog="--variant", add_help=False, allow_abbrev=False)
    add_recipe_flags(parser)
    variants = [("recipe", "", parser.parse_args([]))]
    for spec in specs:
        name, sep, flags = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--variant {spec!r} has no name; write it as NAME=FLAGS, e.g. "
                             f"--variant \"drop-path=--drop-path 0.1\"")
        if name in [v[0] for v in variants]:
            raise ValueError(f"--variant name {name!r} is used twice; give each its own name")
        try:
            variants.append((name, flags.strip(), parser.parse_args(shlex.split(flags))))
        except ValueError as err:
            raise ValueError(f"--variant {name!r}: {err}") from None
    return variants


def settings(args: argparse.Namespace, variant: argparse.Namespace | None = None
             ) -> tuple[ViTConfig, TrainConfig]:
    """The recipe with the command line's changes, then the variant's; validation stays at
    about 10 points along the run when ``--budget`` shortens or lengthens the recipe's."""
    model_config, config = get_recipe(args.recipe)
    if args.smoke:
        model_config = dataclasses.replace(model_config, **SMOKE_MODEL)
    changes: dict = {"progress": False}
    if args.budget is not None:
        changes["time_budget_s"] = args.budget
        if config.time_budget_s:
            changes["eval_every"] = max(1, round(config.eval_every * args.budget
                                                 / config.time_budget_s))
    if args.smoke:  # tiny sizes, under the budget when one is given
        changes = SMOKE_TRAIN | changes
    config = dataclasses.replace(config, **changes)
    model_config, config = apply_recipe_flags(args, model_config, config)
    if variant is not None:
        model_config, config = apply_recipe_flags(variant, model_config, config)
    return model_config, config


def score_variants(checkpoint: Path, data, config: TrainConfig) -> dict[str, dict[str, float]]:
    """Validation and test accuracy of the raw and averaged (EMA) weights of a finished run,
    each with and without flip test-time augmentation."""
    state = load_checkpoint(checkpoint)
    _, val, test = split_data(data, config)
    device = pick_device(config.device)
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
    try:
        history = train(model_config, config, data)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM at a time limit: report what was saved
        path = out / CHECKPOINT_NAME
        saved = History.from_dict(load_checkpoint(path)["history"]) if path.is_file() else None
        if saved is None or not saved.epochs:
            raise
        history = dataclasses.replace(saved, stop_reason="interrupted", checkpoint=str(path))
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
        "epochs": last["epoch"], "steps": last["step"],
        "images_per_s": run_images_per_s(history.epochs),
        "stop_reason": history.stop_reason, "curve": curve, "final": final, "chosen": chosen,
        "test_acc": final[chosen]["test"], "final_eval_s": eval_s,
    }


def run_images_per_s(epochs: list[dict]) -> float:
    """Training images/s of the whole run: the epochs' rates weighted by their training time,
    so the compiling steps are left out as each epoch's rate leaves them out."""
    images, before = 0.0, 0.0
    for record in epochs:
        images += record["images_per_s"] * (record["train_time_s"] - before)
        before = record["train_time_s"]
    return images / max(before, 1e-9)


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation of the runs' test accuracy (std 0 for one run)."""
    accs = [run["test_acc"] for run in runs]
    return {"test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}


def comparison_table(variants: list[dict]) -> str:
    """One line per variant that ran: test mean ± std, validation, speed, epochs, flags."""
    width = max(len("variant"), *(len(v["name"]) for v in variants))
    lines = [f"{'variant':<{width}} {'test (mean ± std)':>19} {'val':>7} {'images/s':>10} "
             f"{'epochs':>7}  flags"]
    for v in variants:
        if not v["runs"]:
            lines.append(f"{v['name']:<{width}} {'skipped':>19}")
            continue
        runs = v["runs"]
        val = statistics.mean(run["final"][run["chosen"]]["val"] for run in runs)
        speed = statistics.mean(run["images_per_s"] for run in runs)
        epochs = statistics.mean(run["epochs"] for run in runs)
        acc = f"{v['test_acc_mean']:.2%} ± {v['test_acc_std']:.2%}"
        lines.append(f"{v['name']:<{width}} {acc:>19} {val:7.2%} {speed:10,.0f} {epochs:7.1f}  "
                     f"{v['flags'] or '(the recipe)'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    try:
        variants = [(name, flags, *settings(args, parsed))
                    for name, flags, parsed in parse_variants(args.variant)]
    except ValueError as err:  # a bad flag value, or a setting the configs refuse
        parser.error(str(err))
    for name, _, _, config in variants:
        if config.val_size == 0:
            which = "" if name == "recipe" else f" (variant {name!r})"
            parser.error(f"--val-size 0{which}: the script chooses the reported weights on the "
                         "validation split (raw or averaged, with or without flip), so it needs "
                         "a val_size above 0")
    started = time.perf_counter()
    _, _, _, config = variants[0]
    device = pick_device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    budget = f"{config.time_budget_s:g} s" if config.time_budget_s else "none (epochs only)"
    print(f"device: {name} · torch {torch.__version__} · recipe {args.recipe} · "
          f"budget {budget} · seeds {args.seed}..{args.seed + args.seeds - 1}"
          + (f" · {len(variants)} variants" if len(variants) > 1 else ""))

    if args.data == "synthetic" or (args.smoke and args.data is None):
        data = synthetic_cifar(**SMOKE_DATA)
    else:
        data = load_cifar10(args.data, progress=False)
    data_s = time.perf_counter() - started
    print(f"data: {len(data.train)} train (of which {config.val_size} validation) / "
          f"{len(data.test)} test images, loaded in {data_s:.1f} s")

    result = {"recipe": args.recipe, "device": name, "torch": torch.__version__,
              "data_s": data_s, "variants": []}
    last_run_s = 0.0  # wall seconds of the run before: the estimate for the next
    interrupted = False  # a run stopped by a signal ends the script
    with tempfile.TemporaryDirectory() as scratch:
        for variant, flags, model_config, config in variants:
            record = {"name": variant, "flags": flags, "model": dataclasses.asdict(model_config),
                      "train": config.to_dict(), "runs": []}
            result["variants"].append(record)
            label = args.recipe + ("" if variant == "recipe" else f" + {variant}")
            for seed in range(args.seed, args.seed + args.seeds):
                elapsed = time.perf_counter() - started
                if args.deadline is not None and elapsed + last_run_s > args.deadline:
                    print(f"{label} seed {seed}: skipped, it would end after the "
                          f"{args.deadline:.0f} s deadline ({elapsed:.0f} s gone)")
                    continue
                folder = variant if len(variants) > 1 else ""
                out = Path(args.out or scratch) / folder / f"seed_{seed}"
                print(f"{label}, seed {seed}:")
                run_started = time.perf_counter()
                run = run_seed(model_config, dataclasses.replace(config, seed=seed), data, out)
                last_run_s = time.perf_counter() - run_started
                record["runs"].append(run)
                record |= summarise(record["runs"])
                print(f"RESULT recipe {label} seed {seed}: test {run['test_acc']:.2%} "
                      f"({run['chosen']}, chosen on val {run['final'][run['chosen']]['val']:.2%}) "
                      f"after {run['train_s']:.1f} s of training ({run['steps']} steps, "
                      f"{run['epochs']:.1f} epochs, {run['images_per_s']:,.0f} images/s, stopped "
                      f"by {run['stop_reason']}); data {data_s:.1f} s, compile "
                      f"{run['compile_s']:.1f} s; {name}")
                if args.json:
                    write_json(args.json, result)
                interrupted = run["stop_reason"] == "interrupted"
                if interrupted:
                    break
            if record["runs"]:
                n = len(record["runs"])
                print(f"RESULT recipe {label}: test {record['test_acc_mean']:.2%} ± "
                      f"{record['test_acc_std']:.2%} (mean ± std over {n} seed"
                      f"{'s' * (n > 1)}); {name}")
            if interrupted:
                print("interrupted: the run above was scored from its last checkpoint; "
                      "no further runs")
                break
    if not args.out:
        print("(the checkpoints and histories above were in a temporary folder, now deleted; "
              "--out DIR keeps them)")
    if len(variants) > 1:
        print()
        print(comparison_table(result["variants"]))
    if args.json:
        write_json(args.json, result)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
