"""The command line: python -m vitlib train | eval | bench."""

import dataclasses
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from vitlib.__main__ import SMOKE_MODEL, SYNTHETIC, build_parser, main
from vitlib.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from vitlib.data import synthetic_cifar
from vitlib.model import ViTConfig, get_config
from vitlib.train import TrainConfig, TrainingDiverged, train

SMOKE = ["train", "--smoke", "--threads", "1"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One smoke run through the real entry point, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("smoke")
    result = subprocess.run(
        [sys.executable, "-m", "vitlib", *SMOKE, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout and "val acc" in result.stdout
    assert "test acc" in result.stdout and f"checkpoint {out / CHECKPOINT_NAME}" in result.stdout
    return out


def test_smoke_train_writes_checkpoint_and_history(smoke_run):
    for name in (CHECKPOINT_NAME, "history.json", "history.csv", "history.png"):
        assert (smoke_run / name).stat().st_size > 0, name
    state = load_checkpoint(smoke_run)
    assert state["model_config"]["depth"] == 1 and state["progress"]["epoch"] == 1
    rows = (smoke_run / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 2


def test_eval_prints_accuracy(smoke_run, capsys):
    assert main(["eval", str(smoke_run), "--data", "synthetic", "--tta", "flip"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test accuracy ") and "on 256 images" in out and "flip" in out


def test_eval_uses_its_sample_count_batch_size_and_tta(smoke_run, monkeypatch, capsys):
    import vitlib.train

    seen, evaluate = [], vitlib.train.evaluate

    def spy(model, split, **options):
        seen.append((len(split), options["batch_size"], options.get("tta")))
        return evaluate(model, split, **options)

    monkeypatch.setattr(vitlib.train, "evaluate", spy)
    args = ["eval", str(smoke_run), "--data", "synthetic", "--max-samples", "1",
            "--batch-size", "1", "--tta", "flip"]
    assert main(args) == 0
    assert seen == [(1, 1, "flip")] and "on 1 images" in capsys.readouterr().out


def test_eval_of_a_smoke_checkpoint_says_what_it_was_trained_on(smoke_run, capsys):
    assert main(["eval", str(smoke_run), "--data", "synthetic"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("test accuracy ")
    assert lines[1].startswith("note: this checkpoint is from a --smoke run, a quick check "
                               "trained on 256 made-up images, not on the 512 training images "
                               "of this data")
    assert lines[1].endswith("to train a real model run `python -m vitlib train --data synthetic`")


@pytest.mark.parametrize(
    ("max_train_samples", "n_train", "note"),
    [
        (None, 512, None),  # trained on all the training images of this data: nothing to say
        (128, 512, "trained on only 128 made-up images (--max-train-samples 128), not on the "
                   "512 training images of this data"),
        (None, 1024, "trained on 448 made-up images, and this data has 1,024 training images: "
                     "it was trained on other data (or another split)"),
    ],
)
def test_eval_notes_a_checkpoint_trained_on_other_images(max_train_samples, n_train, note,
                                                         tmp_path, monkeypatch, capsys):
    model = dataclasses.replace(get_config("vit_cifar_cpu"), **SMOKE_MODEL)
    train(model, TrainConfig(epochs=1, batch_size=64, val_size=64, device="cpu", num_threads=1,
                             max_train_samples=max_train_samples, out_dir=str(tmp_path),
                             progress=False, quiet=True), synthetic_cifar(**SYNTHETIC))
    monkeypatch.setitem(SYNTHETIC, "n_train", n_train)  # other data than it was trained on
    assert main(["eval", str(tmp_path), "--data", "synthetic"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test accuracy ")
    if note is None:
        assert len(lines) == 1
    else:
        assert len(lines) == 2 and lines[1].startswith("note: ") and note in lines[1]


@pytest.mark.parametrize(("missing", "note"), [
    (("train_source",), "trained on 256 images (made-up ones unless it was given --data), not"),
    (("train_source", "train_images"), "trained on 256 images (made-up ones unless it was given"),
    (("train_config",), None),
])
def test_eval_of_an_older_checkpoint_notes_only_what_it_records(missing, note, smoke_run,
                                                                 tmp_path, capsys):
    state = load_checkpoint(smoke_run)
    for key in missing:
        del (state if key == "train_config" else state["progress"])[key]
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert main(["eval", str(tmp_path), "--data", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test accuracy ")
    assert ("note:" in out) == (note is not None)
    assert note is None or note in out


def test_resume_continues_with_more_epochs(smoke_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes((smoke_run / CHECKPOINT_NAME).read_bytes())
    assert main([*SMOKE, "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    state = load_checkpoint(out)
    assert state["progress"]["epoch"] == 2 and state["train_config"]["epochs"] == 2
    assert not state["train_config"]["progress"]  # --smoke: no progress bars


def test_resume_of_a_checkpoint_file_continues_in_its_folder(smoke_run, tmp_path, monkeypatch):
    run = tmp_path / "mine"
    run.mkdir()
    (run / CHECKPOINT_NAME).write_bytes((smoke_run / CHECKPOINT_NAME).read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main([*SMOKE, "--resume", str(run / CHECKPOINT_NAME), "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(run)["progress"]["epoch"] == 2
    assert not (tmp_path / "runs").exists()  # not the default folder of a new run


def test_resume_keeps_the_checkpoints_model_and_settings_without_their_flags(tmp_path, capsys):
    assert main([*SMOKE, "--out", str(tmp_path), "--lr", "0.002", "--quiet"]) == 0
    args = ["train", "--resume", str(tmp_path), "--data", "synthetic", "--epochs", "2",
            "--threads", "1", "--no-progress"]
    assert main(args) == 0
    assert "epoch 2/2" in capsys.readouterr().out  # --quiet was the first run's, not this one's
    state = load_checkpoint(tmp_path)
    assert state["model_config"]["depth"] == 1 and state["progress"]["epoch"] == 2
    config = state["train_config"]
    assert config["lr"] == 0.002 and config["max_train_samples"] == 256


def test_named_recipe_with_flags_on_top(tmp_path, capsys):
    args = [*SMOKE, "--recipe", "cifar_fast", "--precision", "fp32", "--out", str(tmp_path),
            "--token-drop", "0.5", "--token-drop-until", "0.6", "--erase", "0.25",
            "--attn-init", "mimetic", "--pos-embed", "sincos", "--repeat-aug", "2",
            "--whiten-patches", "--optimizer", "muon", "--muon-lr-ratio", "2"]
    assert main(args) == 0
    assert "test acc" in capsys.readouterr().out
    state = load_checkpoint(tmp_path)
    config = state["train_config"]
    assert config["fast_step"] and config["batch_size"] == 64  # the recipe, then --smoke
    assert config["augment"]["mixup_alpha"] == 0.8 and not config["compile"]
    assert config["augment"]["erase_prob"] == 0.25 and config["token_drop_until"] == 0.6
    assert config["repeat_aug"] == 2 and config["whiten_patches"]
    assert config["optimizer"] == "muon" and config["muon_lr_ratio"] == 2
    # and the checkpoint holds Muon's momentum
    assert any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    assert state["model_config"]["token_drop"] == 0.5
    assert state["model_config"]["attn_init"] == "mimetic"
    assert state["model_config"]["pos_embed"] == "sincos"


def test_run_flags_override_the_smoke_settings(tmp_path):
    args = [*SMOKE, "--seed", "3", "--max-train-samples", "128", "--max-eval-samples", "64",
            "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    state = load_checkpoint(tmp_path)
    assert state["train_config"]["seed"] == 3 and state["progress"]["train_images"] == 128
    assert state["train_config"]["max_eval_samples"] == 64


def test_smoke_run_with_a_preset_trains_that_model_in_the_smoke_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*SMOKE, "--recipe", "gpu", "--preset", "vit_cifar_cpu", "--quiet"]) == 0
    saved = load_checkpoint(tmp_path / "runs" / "smoke")["model_config"]
    assert ViTConfig(**saved) == get_config("vit_cifar_cpu")  # not the recipe's model
    assert not (tmp_path / "runs" / "vit_cifar_cpu").exists()  # that folder is for real runs


def test_a_smoke_run_may_replace_an_earlier_smoke_run(smoke_run, tmp_path, monkeypatch):
    (tmp_path / "runs" / "smoke").mkdir(parents=True)
    earlier = (smoke_run / CHECKPOINT_NAME).read_bytes()
    (tmp_path / "runs" / "smoke" / CHECKPOINT_NAME).write_bytes(earlier)
    monkeypatch.chdir(tmp_path)
    assert main([*SMOKE, "--quiet"]) == 0
    assert (tmp_path / "runs" / "smoke" / CHECKPOINT_NAME).read_bytes() != earlier


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--smoke", "--data", "/no/such/cifar.tar.gz"], "does not exist"),
        (["train", "--smoke", "--resume", "/no/such/checkpoint.pt"], "does not exist"),
        (["train", "--smoke", "--epochs", "0"], "epochs must be at least 1"),
        (["train", "--smoke", "--batch-size", "4096"], "is larger than the"),
        (["eval", "/no/such/run"], "does not exist"),
    ],
)
def test_bad_input_gets_a_clear_error(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m vitlib {args[0]}: error: ") and message in err


def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, bogus)
    assert main([*SMOKE, "--resume", str(bogus)]) == 2
    assert "not a vitlib checkpoint" in capsys.readouterr().err


def test_resume_with_another_preset_is_refused(smoke_run, tmp_path, capsys):
    args = [*SMOKE, "--resume", str(smoke_run), "--preset", "vit_cifar_tiny",
            "--out", str(tmp_path)]
    assert main(args) == 2
    assert "different model shape" in capsys.readouterr().err


def test_unknown_preset_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "vit_huge_42"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'vit_huge_42'" in capsys.readouterr().err


def test_bench_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("vitlib.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "vitlib.bench", fake)
    assert main(["bench", "--help", "--steps", "3"]) == 0
    assert seen == [["--help", "--steps", "3"]]


def test_bench_reports_a_missing_data_source_as_one_line(tmp_path, capsys):
    assert main(["bench", "--rows", "typical", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m vitlib bench: error: ") and "nothing" in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--smoke", "--device", "gpu"], "unknown device 'gpu'"),
        (["train", "--smoke", "--device", "meta"], "cannot run on device 'meta'"),
        (["train", "--smoke", "--max-train-samples", "0"], "must be at least 1, got 0"),
        (["eval", "runs/x", "--batch-size", "0"], "must be at least 1, got 0"),
        (["eval", "runs/x", "--max-samples", "-1"], "must be at least 1, got -1"),
        (["eval", "runs/x", "--max-samples", "2.5"], "expected a whole number, got '2.5'"),
    ],
)
def test_bad_flag_values_are_rejected_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_flag_takes_the_devices_a_run_can_use(device):
    assert build_parser().parse_args(["train", "--device", device]).device == device
    assert build_parser().parse_args(["eval", "runs/x", "--device", device]).device == device


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (TrainingDiverged("the loss is nan at step 3"), 1,
         "python -m vitlib train: the loss is nan at step 3"),
        (KeyboardInterrupt(), 130, ""),
    ],
)
def test_exit_status_of_a_run_that_diverges_or_is_interrupted(error, code, message, tmp_path,
                                                               monkeypatch, capsys):
    import vitlib.train

    def stop(*args, **kwargs):
        raise error

    monkeypatch.setattr(vitlib.train, "train", stop)
    assert main([*SMOKE, "--out", str(tmp_path)]) == code
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--attention", "math"], "--attention does nothing in this run: it needs --fast-step"),
        (["--compile-mode", "reduce-overhead"], "--compile-mode does nothing in this run"),
        (["--magnitude", "0.5"], "it needs --trivial-augment N"),
        (["--mix-prob", "0.5"], "it needs --mixup or --cutmix"),
        (["--optimizer", "adamw", "--muon-lr-ratio", "2"], "it needs --optimizer muon"),
        (["--lr", "nan"], "lr must be positive, got nan"),
        (["--ema-decay", "1.5"], "ema_decay must be in [0, 1)"),
        (["--time-budget", "inf"], "--time-budget must be 0 (no limit) or more seconds"),
        (["--out", ""], "the output folder is empty text"),
        (["--recipe", "cpu", "--resume", "runs/x"], "--recipe names the settings of a new run, "
                                                    "and --resume continues"),
        (["--whiten-patches", "--resume", "runs/x"], "--whiten-patches sets a new run's first "
                                                     "patch embedding, and --resume continues"),
    ],
)
def test_flags_that_would_do_nothing_or_harm_are_refused_before_training(flags, message,
                                                                        capsys):
    assert main([*SMOKE, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "epoch 1/1" not in err


def test_an_earlier_run_is_not_overwritten(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"an earlier run")
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path), "--threads", "1"]) == 2
    assert "already holds a run (checkpoint.pt); continue it with --resume" in (
        capsys.readouterr().err)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == b"an earlier run"


@pytest.mark.parametrize("where", ["a_file", "a_file/below", "checkpoint_is_a_folder"])
def test_an_output_folder_that_cannot_hold_checkpoints_is_refused_first(where, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "checkpoint_is_a_folder" / CHECKPOINT_NAME).mkdir(parents=True)
    assert main([*SMOKE, "--out", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert "cannot write checkpoints into" in err and "choose another output folder" in err


def test_negative_time_budget_names_the_flag(capsys):
    assert main([*SMOKE, "--time-budget", "-5"]) == 2
    assert "--time-budget must be 0 (no limit) or more seconds" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_eval_on_cuda_without_a_gpu_says_so(smoke_run, capsys):
    assert main(["eval", str(smoke_run), "--data", "synthetic", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "not a readable" not in err


def test_mistyped_vitlib_data_is_an_error_not_a_download(smoke_run, tmp_path, monkeypatch,
                                                          capsys):
    import vitlib.data

    def no_download(root):
        pytest.fail(f"tried to download into {root}")

    monkeypatch.setattr(vitlib.data, "_download", no_download)
    typo = tmp_path / "cifar10-jepg"
    monkeypatch.setenv("VITLIB_DATA", str(typo))
    assert main(["eval", str(smoke_run)]) == 2
    assert "does not exist" in capsys.readouterr().err and not typo.exists()


def test_a_run_without_smoke_never_trains_on_made_up_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "no-cifar-here"))
    args = ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "64",
            "--val-size", "64", "--max-train-samples", "64", "--time-budget", "0",
            "--threads", "1", "--quiet"]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_quiet_prints_nothing(tmp_path, capsys):
    assert main([*SMOKE, "--quiet", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_resume_with_preset_looks_in_the_preset_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = ["train", "--preset", "vit_cifar_cpu", "--data", "synthetic", "--device", "cpu",
           "--threads", "1", "--no-progress", "--val-size", "64", "--max-train-samples", "128",
           "--max-eval-samples", "64", "--time-budget", "0", "--epochs", "1"]
    assert main(run) == 0
    assert (tmp_path / "runs" / "vit_cifar_cpu" / CHECKPOINT_NAME).is_file()
    assert main([*run, "--resume", "--epochs", "2"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "runs" / "vit_cifar_cpu")["progress"]["epoch"] == 2


def test_resume_of_a_finished_run_says_how_to_train_further(smoke_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes((smoke_run / CHECKPOINT_NAME).read_bytes())
    assert main([*SMOKE, "--out", str(out), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_resume_of_a_module_that_is_not_a_vit_says_to_resume_from_python(tmp_path, capsys):
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10))
    train(cnn, TrainConfig(epochs=1, batch_size=64, val_size=64, max_train_samples=128,
                           device="cpu", num_threads=1, out_dir=str(tmp_path), progress=False,
                           quiet=True), synthetic_cifar(n_train=512, n_test=64))
    assert main(["train", "--resume", str(tmp_path), "--data", "synthetic", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds a Sequential, and the command line resumes vitlib ViTs only" in err
    assert "train(model, config, data, resume=" in err
