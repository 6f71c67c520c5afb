"""Command line: ``python -m vitlib train | eval | bench``.

    python -m vitlib train                      # the recipe for this machine (GPU or CPU)
    python -m vitlib train --recipe cifar_fast  # a named recipe (vitlib.train.RECIPES)
    python -m vitlib train --smoke              # a tiny run in seconds, on made-up images
    python -m vitlib train --epochs 50 --out runs/mine
    python -m vitlib train --resume runs/mine   # continue where it stopped
    python -m vitlib eval runs/mine --tta flip  # test accuracy of a checkpoint
    torchrun --nproc_per_node=4 -m vitlib train # several GPUs

Data comes from ``--data``, else ``$VITLIB_DATA``, else the project's ``data/`` folder, else
it is downloaded into ``data/`` (never into a folder named by ``--data`` or ``$VITLIB_DATA``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

import torch

from .fast import ATTENTION_BACKENDS, COMPILE_MODES
from .model import ATTN_INITS, POS_EMBEDS, PRESETS, ViTConfig, get_config
from .train import DEVICE_TYPES, OPTIMIZERS, PRECISIONS, RECIPES, TrainConfig, pick_device

SMOKE_MODEL = {"embed_dim": 32, "depth": 1, "num_heads": 2}  # the model of --smoke runs
SMOKE_TRAIN = {  # TrainConfig fields of --smoke runs
    "epochs": 1, "batch_size": 64, "warmup_epochs": 0.0, "val_size": 64,
    "max_train_samples": 256, "max_eval_samples": 128, "progress": False,
    "time_budget_s": None, "eval_every": 1, "compile": False, "out_dir": "runs/smoke",
}
SYNTHETIC = {"n_train": 512, "n_test": 256, "seed": 0}  # the made-up data of --data synthetic

# flags that change a recipe (shared with benchmarks/time_to_accuracy.py), flag -> field;
# None = not given, keep the recipe's value
MODEL_FLAGS = {  # ViTConfig fields
    "drop_path": "drop_path", "token_drop": "token_drop", "attn_init": "attn_init",
    "pos_embed": "pos_embed",
}
RECIPE_FLAGS = {  # TrainConfig fields
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs",
    "min_lr_ratio": "min_lr_ratio", "label_smoothing": "label_smoothing",
    "grad_clip": "grad_clip", "ema_decay": "ema_decay", "precision": "precision",
    "compile": "compile", "compile_mode": "compile_mode", "fast_step": "fast_step",
    "attention": "attention", "val_size": "val_size", "eval_every": "eval_every",
    "token_drop_until": "token_drop_until", "repeat_aug": "repeat_aug",
    "whiten_patches": "whiten_patches", "optimizer": "optimizer",
    "muon_lr_ratio": "muon_lr_ratio",
}
AUGMENT_FLAGS = {  # AugmentConfig fields
    "crop_padding": "crop_padding", "flip": "flip", "trivial_augment": "num_ops",
    "magnitude": "magnitude", "mixup": "mixup_alpha", "cutmix": "cutmix_alpha",
    "mix_prob": "mix_prob", "erase": "erase_prob",
}
# flags of the train command only: where and how a run is housed (TrainConfig fields)
RUN_FLAGS = {
    "seed": "seed", "threads": "num_threads", "device": "device", "out": "out_dir",
    "max_train_samples": "max_train_samples", "max_eval_samples": "max_eval_samples",
}


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that change a recipe's model regularisation, optimisation, step and
    augmentation (``MODEL_FLAGS``, ``RECIPE_FLAGS``, ``AUGMENT_FLAGS``)."""
    p = parser.add_argument_group("recipe")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate of the model")
    p.add_argument("--token-drop", type=float,
                   help="share of patch tokens each training image drops at random (0-1)")
    p.add_argument("--token-drop-until", type=float, metavar="SHARE",
                   help="drop tokens for this share of the run only, then keep all (0-1]")
    p.add_argument("--attn-init", choices=ATTN_INITS,
                   help="attention weights at the start (mimetic: Q·Kᵀ ≈ I, V·O ≈ −I)")
    p.add_argument("--pos-embed", choices=POS_EMBEDS,
                   help="position embedding: a trained table or fixed 2-D sin-cos")
    p.add_argument("--whiten-patches", action=argparse.BooleanOptionalAction,
                   help="start the patch embedding from the whitened patches of the data")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay (AdamW's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="adamw, or muon: Muon for the blocks' weight matrices, AdamW for the rest")
    p.add_argument("--muon-lr-ratio", type=float, metavar="RATIO",
                   help="with --optimizer muon: the Muon matrices' lr as a multiple of --lr")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length in epochs")
    p.add_argument("--min-lr-ratio", type=float, help="final lr as a fraction of the peak")
    p.add_argument("--label-smoothing", type=float, help="label smoothing")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip (0 = off)")
    p.add_argument("--ema-decay", type=float, help="weight moving average decay (0 = off)")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")
    p.add_argument("--compile-mode", choices=COMPILE_MODES,
                   help="torch.compile mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--fast-step", action=argparse.BooleanOptionalAction,
                   help="bf16 weights and activations in one compiled step (one process)")
    p.add_argument("--attention", choices=list(ATTENTION_BACKENDS),
                   help="attention kernel of the fast step (default: PyTorch's choice)")
    p.add_argument("--val-size", type=int, help="training images held out for validation")
    p.add_argument("--eval-every", type=int,
                   help="validate and save the checkpoint every N epochs (and after the last)")
    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--crop-padding", type=int, help="random crop padding in pixels (0 = off)")
    aug.add_argument("--flip", action=argparse.BooleanOptionalAction, help="random flips")
    aug.add_argument("--trivial-augment", type=int, metavar="N",
                     help="TrivialAugment ops per image (0 = off)")
    aug.add_argument("--magnitude", type=float, help="TrivialAugment top strength in [0, 1]")
    aug.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup alpha (0 = off)")
    aug.add_argument("--cutmix", type=float, metavar="ALPHA", help="cutmix alpha (0 = off)")
    aug.add_argument("--mix-prob", type=float, help="chance an image is mixed")
    aug.add_argument("--erase", type=float, metavar="PROB", help="random erasing probability")
    aug.add_argument("--repeat-aug", type=int, metavar="N",
                     help="repeated augmentation: each image N times per batch (1 = off)")


# flags that only matter with another setting: (flag, whether the settings make it inert, the
# setting it needs)
NEEDS = (
    ("attention", lambda c: not c.fast_step, "--fast-step"),
    ("compile_mode", lambda c: not c.compile, "--compile"),
    ("muon_lr_ratio", lambda c: c.optimizer != "muon", "--optimizer muon"),
    ("magnitude", lambda c: c.augment.num_ops == 0, "--trivial-augment N"),
    ("mix_prob", lambda c: not c.augment.mixing, "--mixup or --cutmix"),
)


def apply_recipe_flags(
    args: argparse.Namespace, model_config: ViTConfig, config: TrainConfig
) -> tuple[ViTConfig, TrainConfig]:
    """``model_config`` and ``config`` with the recipe flags that were given put in; a flag
    that would do nothing with the resulting settings is refused."""
    given = _given(args, RECIPE_FLAGS)
    if augment := _given(args, AUGMENT_FLAGS):
        given["augment"] = dataclasses.replace(config.augment, **augment)
    config = dataclasses.replace(config, **given)
    for flag, inert, needs in NEEDS:
        if getattr(args, flag, None) is not None and inert(config):
            raise ValueError(f"--{flag.replace('_', '-')} does nothing in this run: it needs "
                             f"{needs}, which the recipe and flags leave off; add it, or drop "
                             f"--{flag.replace('_', '-')}")
    return dataclasses.replace(model_config, **_given(args, MODEL_FLAGS)), config


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """{field: value} of the flags in ``flags`` (flag -> field) that were given."""
    return {field: getattr(args, flag) for flag, field in flags.items()
            if getattr(args, flag) is not None}


def whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def device_name(text: str) -> str:
    """An argparse type: auto, or a device to run on (cpu, cuda, cuda:N or mps)."""
    if text != "auto":
        try:
            kind = torch.device(text).type
        except RuntimeError:
            kind = None
        if kind not in DEVICE_TYPES:
            what = "unknown device" if kind is None else "cannot run on device"
            raise argparse.ArgumentTypeError(
                f"{what} {text!r}; use auto, cpu, cuda, cuda:N or mps")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vitlib", description="Train and evaluate Vision Transformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = commands.add_parser(
        "train", help="train a ViT on CIFAR-10",
        description="Train a ViT on CIFAR-10. With no flags: the recipe for this machine "
        "(vit_cifar_tiny on a GPU; vit_cifar_cpu for 5 minutes on a CPU). Flags override it.",
    )
    t.add_argument("--recipe", choices=list(RECIPES),
                   help="named settings (default: gpu on a GPU, else cpu)")
    t.add_argument("--preset", choices=list(PRESETS),
                   help="model preset, in place of the recipe's model (and of its token "
                   "dropping: add --token-drop to keep it)")
    t.add_argument("--data", help="CIFAR-10 path (archive or folder), or 'synthetic'")
    t.add_argument("--out", help="output folder for checkpoint and history (default: "
                   "runs/PRESET with --preset, runs/smoke with --smoke, else runs/RECIPE)")
    t.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help="continue from a checkpoint or run folder (default: the --out folder, "
                   "given or default)")
    t.add_argument("--smoke", action="store_true",
                   help="tiny model, 256 images, 1 epoch, made-up data unless --data")
    t.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop after this much training time, lr schedule fitted (0 = no limit)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int,
                   help="CPU threads (0 = the faster of 1 and all, timed each epoch)")
    t.add_argument("--device", type=device_name, help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--max-train-samples", type=whole_number(1), help="train on a random subset")
    t.add_argument("--max-eval-samples", type=whole_number(1),
                   help="validate and test on random subsets")
    t.add_argument("--quiet", action="store_true", help="print nothing (errors aside)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bars (training or data decoding)")
    add_recipe_flags(t)
    t.set_defaults(func=run_train)

    e = commands.add_parser("eval", help="test accuracy of a checkpoint",
                            description="Accuracy of a trained checkpoint on the test split.")
    e.add_argument("checkpoint", help="checkpoint file or run folder")
    e.add_argument("--data", help="CIFAR-10 path (archive or folder), or 'synthetic'")
    e.add_argument("--tta", choices=["flip"], help="test-time augmentation")
    e.add_argument("--batch-size", type=whole_number(1), default=1000,
                   help="images per forward pass (default: 1000)")
    e.add_argument("--device", type=device_name, default="auto",
                   help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--max-samples", type=whole_number(1), help="evaluate on a random subset")
    e.set_defaults(func=run_eval)

    commands.add_parser("bench", add_help=False, help="GPU throughput benchmark "
                        "(python -m vitlib bench --help for its options)")
    return parser


def load_data(source: str | None, *, smoke: bool = False, quiet: bool = False):
    """CIFAR-10 from ``source`` (None: $VITLIB_DATA, data/, else a download into data/), or
    made-up images for 'synthetic' and for smoke runs without a source."""
    from .data import load_cifar10, synthetic_cifar

    if source == "synthetic" or (smoke and source is None):
        if smoke and source is None and os.environ.get("RANK", "0") == "0" and not quiet:
            print("smoke run on made-up images (pass --data to use CIFAR-10)")
        return synthetic_cifar(**SYNTHETIC)
    try:  # a mistyped --data or $VITLIB_DATA is an error, never a folder to download into
        return load_cifar10(source, download=source is None, progress=not quiet)
    except RuntimeError as err:  # the download failed (offline)
        raise ValueError(str(err)) from err


def run_train(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .train import get_recipe, recipe, train

    model_config, config = get_recipe(args.recipe) if args.recipe else recipe(
        pick_device(args.device or "auto"))
    if args.preset is not None:
        model_config = get_config(args.preset)
    if args.smoke:
        config = dataclasses.replace(config, **SMOKE_TRAIN)
        if args.preset is None:
            model_config = dataclasses.replace(model_config, **SMOKE_MODEL)

    if args.time_budget is not None and not 0 <= args.time_budget < float("inf"):
        raise ValueError(f"--time-budget must be 0 (no limit) or more seconds, got "
                         f"{args.time_budget:g}")
    if args.resume is not None:
        for flag, what in (("recipe", "names the settings of a new run"),
                           ("whiten_patches", "sets a new run's first patch embedding")):
            if getattr(args, flag):
                raise ValueError(f"--{flag.replace('_', '-')} {what}, and --resume continues "
                                 "the checkpoint's own settings; drop one of the two")
    # where a new run with these flags writes, and so where --resume looks by default
    default_out = f"runs/{args.preset}" if args.preset is not None and not args.smoke else (
        config.out_dir)
    resume = None
    if args.resume is not None:
        resume = args.resume or (args.out or default_out)
        saved = load_checkpoint(resume)
        if saved["model_config"] is None:  # its class is the caller's: only Python can rebuild it
            raise ValueError(
                f"checkpoint {resume} holds a {saved.get('model_class', 'module')}, and the "
                "command line resumes vitlib ViTs only; resume other modules from Python with "
                f"train(model, config, data, resume={resume!r})"
            )
        config = TrainConfig.from_dict(saved["train_config"])
        config = dataclasses.replace(config, progress=True, quiet=False)
        if args.preset is None:  # keep the checkpoint's shape unless another is asked for
            model_config = ViTConfig(**saved["model_config"])
        if args.out is None and args.resume:
            config = dataclasses.replace(config, out_dir=str(_run_folder(args.resume)))

    model_config, config = apply_recipe_flags(args, model_config, config)
    given = _given(args, RUN_FLAGS)
    if args.time_budget is not None:
        given["time_budget_s"] = args.time_budget or None
    if args.smoke or args.no_progress:
        given["progress"] = False
    if args.quiet:
        given["quiet"] = True
    if args.out is None and resume is None:
        given["out_dir"] = default_out
    config = dataclasses.replace(config, **given)
    if resume is not None and not config.quiet:
        _note_if_finished(saved["progress"], config)
    if resume is None and not args.smoke and config.out_dir is not None:
        _refuse_overwrite(config.out_dir)

    data = load_data(args.data, smoke=args.smoke, quiet=config.quiet or args.no_progress)
    train(model_config, config, data, resume=resume)
    return 0


def _refuse_overwrite(out_dir: str) -> None:
    """Refuse an output folder that holds an earlier run, which a new run would overwrite (the
    engine checks that the folder can hold checkpoints, before it trains)."""
    from pathlib import Path

    from .checkpoint import CHECKPOINT_NAME

    if (Path(out_dir) / CHECKPOINT_NAME).is_file():
        raise ValueError(
            f"{out_dir} already holds a run ({CHECKPOINT_NAME}); continue it with --resume, or "
            f"start a new one in another folder with --out DIR (or delete {out_dir} first)"
        )


def _note_if_finished(progress: dict, config: TrainConfig) -> None:
    """Say so when the run to resume has nothing left to train: its epochs or time are spent."""
    budget = config.time_budget_s
    if os.environ.get("RANK", "0") != "0":  # one note under torchrun
        return
    if progress["epoch"] >= config.epochs:
        more = f"pass --epochs N with N over {config.epochs}"
    elif budget and progress["train_time_s"] >= budget:
        more = f"pass --time-budget SECONDS over {budget:g} (0 = no limit)"
    else:
        return
    print(f"note: this run has already finished ({progress['epoch']} epochs, "
          f"{progress['train_time_s']:.0f} s of training), so it is only tested again; "
          f"to train further, {more}")


def _run_folder(path: str):
    from pathlib import Path

    path = Path(path)
    return path if path.is_dir() else path.parent


def run_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
    from .train import evaluate

    path, device = resolve_checkpoint(args.checkpoint), pick_device(args.device or "auto")
    state = load_checkpoint(path, map_location=device)
    model = model_from_checkpoint(state, path, device=device)
    data = load_data(args.data)
    test = data.test
    if args.max_samples is not None and args.max_samples < len(test):
        test = test.subset(args.max_samples)
    result = evaluate(model, test, batch_size=args.batch_size, tta=args.tta)
    tta = f", test-time augmentation: {args.tta}" if args.tta else ""
    print(f"test accuracy {result['acc']:.2%} (loss {result['loss']:.3f}) on {len(test)} "
          f"images{tta}; checkpoint {path}")
    if note := _training_data_note(state, len(data.train), args.data):
        print(note)
    return 0


def _training_data_note(state: dict, available: int, source: str | None) -> str | None:
    """A note when the checkpoint ``state`` was trained on other images than the training
    split of the data it is evaluated on (``available`` training images): a subset of them (a
    --smoke or --max-train-samples run), or a different number (another data source). None
    when they match, or when the checkpoint does not record enough to tell."""
    config, progress = state.get("train_config") or {}, state.get("progress") or {}
    if "val_size" not in config:  # which images a run here would get cannot be told
        return None
    subset, val_size = config.get("max_train_samples"), config["val_size"] or 0
    usable = available - val_size if val_size < available else available  # what a run here gets
    trained = progress.get("train_images")  # recorded since resuming checks it
    if trained is None and subset is not None:  # older checkpoints: at most max_train_samples
        trained = min(subset, usable)
    if not isinstance(trained, int) or trained == usable:
        return None
    data = f" --data {shlex.quote(source)}" if source is not None else ""
    recorded = progress.get("train_source")  # recorded since 2026-12-03
    images = f"{trained:,} {recorded}" if recorded == "made-up images" else (
        f"{trained:,} images of {recorded}" if recorded else f"{trained:,} images")
    if all(config.get(k) == SMOKE_TRAIN[k] for k in ("max_train_samples", "max_eval_samples")):
        made_up = "" if recorded is not None else " (made-up ones unless it was given --data)"
        return (f"note: this checkpoint is from a --smoke run, a quick check trained on "
                f"{images}{made_up}, not on the {available:,} training images of this data, "
                f"so a low accuracy here is expected; to train a real model run "
                f"`python -m vitlib train{data}`")
    if subset is not None and trained < usable:
        return (f"note: this checkpoint was trained on only {images} "
                f"(--max-train-samples {subset}), not on the {available:,} training images of "
                f"this data, so a low accuracy here is expected; to train on all of them run "
                f"`python -m vitlib train{data}` without --max-train-samples")
    return (f"note: this checkpoint was trained on {images}, and this data has "
            f"{available:,} training images: it was trained on other data (or another split); "
            f"evaluate it with the --data it was trained on, or train on this data with "
            f"`python -m vitlib train{data}`")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main  # imported only when asked for

        command, run = "bench", lambda: bench_main(argv[1:]) or 0
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    from .train import TrainingDiverged

    try:
        return run()
    except (ValueError, FileNotFoundError) as err:
        print(f"python -m vitlib {command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"python -m vitlib {command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
