"""The throughput benchmark and the time-to-accuracy script, at tiny sizes on the CPU."""

import argparse
import builtins
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitlib import bench
from vitlib.data import synthetic_cifar
from vitlib.model import ViT, ViTConfig, get_config
from vitlib.train import History, TrainConfig, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_prints_a_table_with_each_pipeline(tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--rows", "typical,timm,fast", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("pipeline"):].splitlines()
    assert [line.split()[0] for line in table[2:]] == ["typical", "timm", "fast"]
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"typical", "timm", "fast"}
    assert all(r["images_per_s"] > 0 and r["batch_size"] == 16 for r in rows.values())
    assert report["attention"]["choice"] in ("flash", "math")  # what a CPU has


@pytest.fixture
def trainer_runs(monkeypatch) -> list:
    """The (TrainConfig, History) of each ``vitlib.train.train`` call the bench makes."""
    runs = []
    real_train = bench.train

    def spy(model, config, data):
        history = real_train(model, config, data)
        runs.append((config, history))
        return history

    monkeypatch.setattr(bench, "train", spy)
    return runs


def test_trainer_row_times_the_training_engine_itself(trainer_runs, tmp_path):
    assert bench.main(["--smoke", "--rows", "trainer", "--json", str(tmp_path / "b.json")]) == 0
    [(config, history)] = trainer_runs
    _, recipe = bench.get_recipe("cifar_fast")
    assert config.fast_step and config.ema_decay == recipe.ema_decay and config.lr == recipe.lr
    assert config.augment.mixup_alpha == 0 and config.augment.num_ops == 0  # crop + flip only
    assert config.max_train_samples == 2 * 16 and config.epochs == 2  # smoke: 2 steps, 1 window
    assert [r["step"] for r in history.epochs] == [2, 4]  # a warm-up epoch, a timed one
    [row] = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["name"] == "trainer" and row["spread"] == 0.0
    assert row["images_per_s"] == pytest.approx(history.epochs[1]["images_per_s"], rel=1e-9)


def test_trainer_row_uses_the_batches_a_split_holds(trainer_runs):
    # CIFAR-10's 50,000 images hold 48 batches of 1024, fewer than the default --steps 50
    config = get_config("vit_cifar_tiny", **bench.SMOKE_MODEL)
    args = argparse.Namespace(steps=50, batch_size=16, repeats=1)
    row = bench.trainer_row(config, synthetic_cifar(n_train=200).train, torch.device("cpu"),
                            args, compile_mode=None, attention=None)
    [(train_config, history)] = trainer_runs
    assert train_config.max_train_samples == 12 * 16  # 200 images: 12 whole batches
    assert [r["step"] for r in history.epochs] == [12, 24]
    assert row.images_per_s == pytest.approx(history.epochs[1]["images_per_s"], rel=1e-9)
    with pytest.raises(ValueError, match="a batch of 16 images, got 8"):
        bench.trainer_row(config, synthetic_cifar(n_train=8).train, torch.device("cpu"), args,
                          compile_mode=None, attention=None)


def test_trainer_row_warms_up_with_compilation_and_times_each_later_epoch(monkeypatch):
    def epoch(images_per_s, train_time_s):
        return {"images_per_s": images_per_s, "train_time_s": train_time_s}

    seen = []

    def fake_train(model_config, config, data):
        seen.append(config)
        return History(epochs=[epoch(100.0, 2.0), epoch(800.0, 2.02), epoch(1600.0, 2.03)],
                       compile_s=5.0)

    monkeypatch.setattr(bench, "train", fake_train)
    config = get_config("vit_cifar_tiny", **bench.SMOKE_MODEL)
    args = argparse.Namespace(steps=2, batch_size=16, repeats=2)
    row = bench.trainer_row(config, synthetic_cifar(n_train=64).train, torch.device("cpu"),
                            args, compile_mode=None, attention=None)
    [train_config] = seen
    assert train_config.epochs == 3 and train_config.max_train_samples == 32  # 1 + 2 windows
    assert row.warmup_s == 7.0  # compiling steps and the first epoch
    # windows of 16 / 800 and 16 / 1600 s per step: their median is 15 ms
    assert row.images_per_s == pytest.approx(16 / 0.015)
    assert row.spread == pytest.approx(0.01 / 0.015)


class _Killed(BaseException):
    """A process killed in the middle of a write."""


def test_bench_json_is_never_left_half_written(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--rows", "compiled", "--json", str(out)])
    real_write = Path.write_text

    def killed_while_writing(path, text, *args, **kwargs):
        real_write(path, text[:len(text) // 2])
        raise _Killed

    monkeypatch.setattr(Path, "write_text", killed_while_writing)
    with pytest.raises(_Killed):
        bench.main(["--smoke", "--rows", "typical", "--json", str(out)])
    monkeypatch.undo()
    assert [r["name"] for r in json.loads(out.read_text())["rows"]] == ["compiled"]


@pytest.mark.parametrize("error", [ImportError, RuntimeError])
def test_a_timm_that_cannot_be_imported_skips_the_timm_row(error, monkeypatch, capsys):
    # a timm built for another torch or torchvision can fail on import with other errors
    real_import = builtins.__import__

    def import_(name, *args, **kwargs):
        if name.split(".")[0] == "timm":
            raise error("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_)
    assert bench.main(["--smoke", "--rows", "timm,typical"]) == 0
    printed = capsys.readouterr().out
    assert "timm not importable" in printed and "timm: skipped" in printed
    assert "typical: " in printed and "timm: failed" not in printed


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["--typical-batch", "0"], "argument --typical-batch: must be at least 1, got 0"),
    (["--timm-batch", "-8"], "argument --timm-batch: must be at least 1, got -8"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--profile-steps", "0"], "argument --profile-steps: must be at least 1, got 0"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
    (["--steps", "2.5"], "argument --steps: expected a whole number, got '2.5'"),
    (["--deadline", "-1"], "argument --deadline: must be more than 0 seconds, got -1"),
    (["--deadline", "0"], "argument --deadline: must be more than 0 seconds, got 0"),
    (["--deadline", "nan"], "argument --deadline: must be more than 0 seconds, got nan"),
    (["--attention", "bogus"], "argument --attention: invalid choice: 'bogus'"),
    (["--fast-compile-mode", "fastest"], "argument --fast-compile-mode: invalid choice"),
    (["--device", "gpu"], "argument --device: unknown device 'gpu'; use auto, cpu, cuda, "
     "cuda:N or mps"),
    (["--device", "meta"], "argument --device: cannot run on device 'meta'"),
])
def test_bad_sizes_kernels_and_devices_are_refused_before_any_row_runs(flags, message,
                                                                        capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--smoke", "--rows", "typical", *flags])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "typical" not in captured.out


def test_the_parser_takes_no_warmup_no_workers_and_the_bench_devices():
    parse = bench.build_parser().parse_args
    args = parse(["--warmup", "0", "--workers", "0", "--deadline", "0.5"])
    assert (args.warmup, args.workers, args.deadline) == (0, 0, 0.5)
    for attention in ("auto", "default", *bench.ATTENTION_BACKENDS):
        assert parse(["--attention", attention]).attention == attention
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse(["--device", device]).device == device


def test_smoke_sizes_fill_only_the_sizes_not_given(tmp_path, monkeypatch):
    def parse(argv):
        args = bench.fill_sizes(bench.build_parser().parse_args(argv))
        return {name: getattr(args, name) for name in bench.SIZES}

    assert parse([]) == bench.SIZES and parse(["--smoke"]) == bench.SMOKE_SIZES
    assert parse(["--smoke", "--workers", "2", "--profile-steps", "5"]) == (
        bench.SMOKE_SIZES | {"workers": 2, "profile_steps": 5})
    assert parse(["--batch-size", "64"]) == bench.SIZES | {"batch_size": 64}
    timed = []  # (warmup, steps, repeats) of each row
    real_time_steps = bench.time_steps

    def spy(step, device, warmup, steps, repeats):
        timed.append((warmup, steps, repeats))
        return real_time_steps(step, device, warmup, steps, repeats)

    monkeypatch.setattr(bench, "time_steps", spy)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--rows", "typical", "--typical-batch", "8", "--steps", "3",
                       "--warmup", "0", "--json", str(out)]) == 0
    assert timed == [(0, 3, 1)]  # the smoke run's single window
    [row] = json.loads(out.read_text())["rows"]
    assert row["batch_size"] == 8


def test_a_failed_row_makes_the_run_exit_1_and_the_others_are_kept(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # 256 made-up images hold no batch of 1000: the compiled row fails, the typical one runs
    assert bench.main(["--smoke", "--rows", "typical,compiled", "--batch-size", "1000",
                       "--json", str(out)]) == 1
    assert [r["name"] for r in json.loads(out.read_text())["rows"]] == ["typical"]
    printed = capsys.readouterr().out
    assert "compiled: failed" in printed
    table = printed[printed.index("pipeline"):].splitlines()
    assert [line.split()[0] for line in table[2:-1]] == ["typical"]
    assert table[-1].startswith("failed: compiled")


def test_rows_skipped_at_the_deadline_are_not_failures(capsys):
    assert bench.main(["--smoke", "--rows", "typical", "--deadline", "1e-9"]) == 0
    assert "typical: skipped, past the" in capsys.readouterr().out


class _FakeClock:
    """time.perf_counter for the bench or the script: advanced by the fake steps and runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_each_window_is_timed_alone_after_the_warmup(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "synchronize", lambda device: None)
    seconds = [4.0, 6.0] + [0.5] * 4 + [1.5] * 4  # two compiling steps, then two windows of 4

    def step():
        clock.now += seconds.pop(0)

    warmup_s, windows = bench.time_steps(step, torch.device("cpu"), warmup=2, steps=4, repeats=2)
    assert seconds == []  # 2 + 2 × 4 steps
    assert warmup_s == 10.0 and windows == [0.5, 1.5]  # seconds per step of each window


def test_a_row_is_its_median_window_and_the_spread_of_the_windows():
    row = bench._row("compiled", "c", 64, 12.0, [0.5, 0.25, 2.0])  # seconds per step
    assert row.images_per_s == 128.0  # 64 images in the median 0.5 s
    assert row.spread == 3.5  # (2 − 0.25) / 0.5
    assert (row.batch_size, row.warmup_s) == (64, 12.0)


def test_rows_report_their_own_batch_and_the_unprofiled_step_in_pipeline_order(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("timm")
    monkeypatch.setattr(bench, "time_steps", lambda step, device, warmup, steps, repeats: (
        3.0, [0.004, 0.002, 0.012]))  # seconds per step: median 4 ms
    monkeypatch.setattr(bench, "profile_steps", lambda step, device, steps: {
        "steps": steps, "wall_ms": 9.0, "busy_ms": None, "kernels": 1.0, "kinds": {}, "top": []})
    drawn = []  # the batch size of the batches each row draws, in the order the rows run

    class Batches(bench.DeviceBatches):
        def __init__(self, split, batch_size, device, **options):
            drawn.append(batch_size)
            super().__init__(split, batch_size, device, **options)

    monkeypatch.setattr(bench, "DeviceBatches", Batches)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--rows", "compiled,timm", "--timm-batch", "8", "--batch-size",
                       "16", "--profile", "compiled", "--json", str(out)]) == 0
    assert drawn == [16, 8]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["compiled"]["batch_size"] == 16 and rows["timm"]["batch_size"] == 8
    assert rows["compiled"]["images_per_s"] == pytest.approx(16 / 0.004)
    assert rows["timm"]["images_per_s"] == pytest.approx(8 / 0.004)
    assert rows["compiled"]["spread"] == pytest.approx(2.5)  # (12 − 2) / 4 ms
    assert rows["compiled"]["warmup_s"] == 3.0
    assert rows["compiled"]["profile"]["step_ms"] == pytest.approx(4.0)  # not the profiled 9
    assert rows["timm"]["profile"] is None
    printed = capsys.readouterr().out
    table = [line.split() for line in printed[printed.index("pipeline"):].splitlines()[2:]]
    assert [line[0] for line in table] == ["timm", "compiled"]  # ROWS' order, not the run's
    assert table[0][2] == "2,000" and table[1][2] == "4,000"
    assert table[1][5] == "2.00"  # × timm


def test_the_deadline_counts_from_the_start_of_the_command(monkeypatch, capsys):
    # importing timm and loading the data take a time-limited run's time too
    clock = _FakeClock()
    monkeypatch.setattr(bench, "time", clock)

    def slow_timm_version():
        clock.now += 4.0
        return None

    real_data = bench.synthetic_cifar

    def slow_data(**sizes):
        clock.now += 6.0
        return real_data(**sizes)

    def timed(step, device, warmup, steps, repeats):
        clock.now += 3.0
        return 1.0, [0.01]

    monkeypatch.setattr(bench, "_timm_version", slow_timm_version)
    monkeypatch.setattr(bench, "synthetic_cifar", slow_data)
    monkeypatch.setattr(bench, "time_steps", timed)
    # typical starts at 10 s, before the 12 s deadline, and ends at 13 s: too late for compiled
    assert bench.main(["--smoke", "--rows", " typical, compiled ,", "--deadline", "12"]) == 0
    printed = capsys.readouterr().out
    assert "typical: 1,600 images/s" in printed  # batch 16 in 10 ms
    assert "compiled: skipped, past the 12 s deadline" in printed


@pytest.mark.parametrize("content, message", [
    ("folder", "is a folder; name a file in it, e.g. --json"),
    ("missing folder", "there is no folder"),
    ("not json\n", "is not JSON (JSONDecodeError"),
    ('{"rows": [{"speed": 1}]}', "holds JSON, but not a bench run's rows"),
    ("[]", "holds JSON, but not a bench run's rows"),
])
def test_a_json_path_that_cannot_hold_results_is_refused_in_a_line_naming_it(
    content, message, tmp_path, capsys
):
    from vitlib.__main__ import main as cli

    path = tmp_path / "bench.json"
    if content == "folder":
        path.mkdir()
    elif content == "missing folder":
        path = tmp_path / "nowhere" / "bench.json"
    else:
        path.write_text(content)
    assert cli(["bench", "--smoke", "--rows", "typical", "--json", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"python -m vitlib bench: error: --json {path}") and message in err
    assert "\n" not in err and "typical" not in captured.out  # before any row ran


def _gpu_check(tmp_path: Path, bench_rc: int = 0, bench_json: dict | None = None,
               tta120_rc: int = 0, args: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """Run benchmarks/gpu_check.sh (with ``args``) with a stand-in for Python that records its
    calls; the first bench writes ``bench_json`` (if any) and exits with ``bench_rc``, the
    120 s recipe exits with ``tta120_rc``. Returns (the calls, the script's output)."""
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    written = tmp_path / "bench_written.json"
    written.write_text(json.dumps(bench_json or {}))
    write = f"cp {written} $OUT/bench.json;" if bench_json else ""
    stub.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
case "$*" in
    -c*json*) exec {sys.executable} "$@" ;;
    *typical,fast,trainer*) {write} exit {bench_rc} ;;
    *"--recipe cifar_fast --budget"*) exit {tta120_rc} ;;
esac
""")
    stub.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PY": str(stub)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", *args], cwd=ROOT, env=env,
                          text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, done.stdout
    return calls.read_text().splitlines(), done.stdout


def test_gpu_check_ignores_the_files_of_an_earlier_run(tmp_path):
    # an old fast row would hide a failed one (no rerun without CUDA graphs), and the old
    # kernel choice would be forced on the time-to-accuracy runs
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text(json.dumps(
        {"rows": [{"name": "fast"}], "attention": {"choice": "cudnn"}}))
    (out / "steps.log").write_text("RESULT recipe cifar_fast seed 0: test 99.00% (old)\n")
    calls, printed = _gpu_check(tmp_path)
    again = [call for call in calls if "--rows fast,trainer" in call]  # the fast row again,
    assert again and "--attention default" in again[0]  # with PyTorch's kernel
    assert not any("--attention" in call for call in calls if "time_to_accuracy" in call)
    assert "(old)" not in printed


@pytest.mark.parametrize("fast_row, flag", [
    ({"name": "fast", "attention": "efficient"}, "--attention efficient"),
    ({"name": "fast", "attention": None}, None),  # PyTorch's choice: no flag
    ({"name": "typical", "attention": None}, None),  # no fast row: no flag
])
def test_gpu_check_trains_with_the_kernel_the_fast_row_ran_with(tmp_path, fast_row, flag):
    # not the bench's first choice: the fast row may have failed with it
    calls, _ = _gpu_check(tmp_path, bench_json={"rows": [fast_row],
                                                 "attention": {"choice": "flex"}})
    runs = [call for call in calls if "time_to_accuracy" in call]
    assert runs and not any("flex" in call for call in runs)
    assert all((flag in call) if flag else ("--attention" not in call) for call in runs)


@pytest.mark.parametrize("args, plain", [((), "--compile-mode default"), (("--cpu-smoke",), "")])
def test_gpu_check_reruns_a_failed_recipe_without_cuda_graphs_where_it_compiles(tmp_path, args,
                                                                              plain):
    calls, _ = _gpu_check(tmp_path, tta120_rc=1, args=args)
    runs = [call for call in calls if "--recipe cifar_fast --budget" in call]
    assert len(runs) == 2  # the recipe, then its rerun
    assert ("--compile-mode default" in runs[1]) == bool(plain)


def test_gpu_check_treats_a_step_killed_after_its_cap_as_timed_out(tmp_path):
    # timeout -k: SIGKILL (exit 137) for a step still running 10 s after SIGTERM; like 124, no
    # time is left for a rerun
    calls, _ = _gpu_check(tmp_path, bench_rc=137)
    assert not any("--rows fast,trainer" in call for call in calls)
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    timeouts = re.findall(r"\btimeout\b.*", code)
    assert timeouts and all(t.startswith("timeout -k ") for t in timeouts)


@pytest.mark.parametrize("script", ["gpu_check.sh", "compiler_settings.sh"])
def test_gpu_scripts_expand_empty_arrays_for_old_bash(script):
    # under set -u, bash before 4.4 stops at an empty "${A[@]}" (unbound variable): SMOKE is
    # empty on the GPU machine, ATTENTION_FLAG when no kernel was chosen
    text = (ROOT / "benchmarks" / script).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.findall(r"\$\{\w+\[@\]", code)
    assert re.findall(r'(?<!\+)"\$\{\w+\[@\]\}"', code) == []


def test_compiler_settings_runs_each_setting_in_its_own_environment(tmp_path):
    stub = tmp_path / "python"
    calls = tmp_path / "calls.txt"
    stub.write_text(f"""#!/usr/bin/env bash
echo "${{TORCH_LOGS:-}}|${{TORCHINDUCTOR_MIX_ORDER_REDUCTION:-}}|$*" >> {calls}
echo "fast: 1 images/s"
""")
    stub.chmod(0o755)
    inherited = ("ATTENTION", "LIMIT", "CAP", "TORCH_LOGS", "TORCHINDUCTOR_MIX_ORDER_REDUCTION")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env |= {"OUT": str(tmp_path / "out"), "PY": str(stub),
            "SETTINGS": "plain||\n\nno mix|TORCHINDUCTOR_MIX_ORDER_REDUCTION=0|--batch-size 8"}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "settings.log").write_text("fast: 99 images/s (an earlier run)\n")
    done = subprocess.run(["bash", "benchmarks/compiler_settings.sh"], cwd=ROOT, env=env,
                          text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    plain, no_mix = calls.read_text().splitlines()  # the blank line is no setting
    assert plain.startswith("output_code||-m vitlib bench --rows fast --attention flex")
    assert no_mix.startswith("|0|") and no_mix.endswith("--batch-size 8")
    summary = done.stdout.split("== summary")[1]
    assert summary.count("fast: 1 images/s") == 2 and "99 images/s" not in summary
    assert "== plain" in summary and "== no mix" in summary


def test_micro_model_runs_the_gpu_commands_with_a_tiny_eager_model():
    micro = [sys.executable, "benchmarks/micro_model.py"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    recipes = subprocess.run(
        [*micro, "-c", "from vitlib.train import RECIPES as R; "
         "print(*[(R[n][0].embed_dim, R[n][0].depth, R[n][1].compile) for n in sorted(R)])"],
        cwd=ROOT, env=env, text=True, capture_output=True, check=True).stdout
    assert "(16, 1, False) (16, 1, False)" in recipes  # cifar_fast and cifar_fast_30
    assert "(64, 2, False)" in recipes  # the cpu recipe's model is left as it is
    done = subprocess.run(
        [*micro, "-m", "vitlib", "bench", "--data", "synthetic", "--rows", "trainer", "--steps",
         "2", "--repeats", "1", "--batch-size", "32", "--no-ceilings"],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "d=16 depth=1" in done.stdout and "\ntrainer " in done.stdout

def test_bench_json_collects_rows_of_several_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--rows", "typical", "--json", str(out)])
    bench.main(["--smoke", "--rows", "compiled", "--json", str(out)])
    names = [r["name"] for r in json.loads(out.read_text())["rows"]]
    assert names == ["typical", "compiled"]
    table = capsys.readouterr().out.rsplit("pipeline", 1)[1]
    assert "typical" in table and "compiled" in table


def test_table_ratios_and_utilisation():
    rows = [bench.Row("typical", "t", 128, 5_000, 0.0, 1.0),
            bench.Row("timm", "m", 512, 25_000, 0.0, 1.0),
            bench.Row("fast", "f", 1024, 100_000, 0.01, 1.0)]
    table = bench.format_table(rows, train_flops=1e9, peak_tflops=500.0).splitlines()
    fast = table[-1].split()
    assert fast[:5] == ["fast", "1024", "100,000", "1.0", "20.00"]  # × typical
    assert fast[5] == "4.00"  # × timm
    assert fast[6] == "100.00" and fast[7] == "20.0%"  # 1e5 img/s × 1 GFLOP = 100 TFLOP/s


@pytest.mark.parametrize("name, kind", [
    ("fmha_cutlassB_bf16_aligned_64x64_k32_sm80", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("triton_poi_fused__to_copy_addmm_gelu_3", "compiled (Triton)"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_coopA_NNT", "matrix products"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x64x64", "matrix products"),
    ("aten::addmm", "matrix products"),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>", "optimizer, "
     "clipping, EMA"),
    ("aten::_foreach_norm", "optimizer, clipping, EMA"),
    ("Memcpy DtoD (Device -> Device)", "copies"),
    ("aten::native_layer_norm", "other"),
])
def test_kernels_are_grouped_by_kind(name, kind):
    assert bench.kernel_kind(name) == kind


def test_busy_time_counts_overlapping_kernels_once():
    assert bench.busy_time([(5, 6), (0, 2), (1, 3)]) == 4
    assert bench.busy_time([(0, 10), (2, 3), (9, 12)]) == 12
    assert bench.busy_time([]) == 0


def test_profile_shows_where_a_steps_time_goes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--rows", "fast", "--profile", "fast", "--json", str(out)]) == 0
    profile = json.loads(out.read_text())["rows"][0]["profile"]
    assert profile["steps"] == 2 and profile["step_ms"] > 0 and profile["kernels"] > 10
    assert profile["busy_ms"] is None  # on a CPU
    assert profile["kinds"]["matrix products"] > 0 and profile["kinds"]["attention"] > 0
    assert sum(profile["kinds"].values()) >= sum(t["ms"] for t in profile["top"]) * 0.999
    printed = capsys.readouterr().out
    assert "profile of fast, 2 steps" in printed and "matrix products" in printed
    with pytest.raises(SystemExit, match="trainer"):
        bench.main(["--smoke", "--rows", "fast", "--profile", "trainer"])
    with pytest.raises(SystemExit, match="add them to --rows"):
        bench.main(["--smoke", "--rows", "typical", "--profile", "fast"])
    timings = json.loads(out.read_text())["attention"]["timings"]
    assert "flex" not in timings  # uncompiled steps are not offered FlexAttention


def test_inductor_options_are_set_and_recorded_with_the_rows_that_compile(tmp_path):
    from torch._inductor import config as inductor_config

    # the options are the process's: restored after the test by the config's own patch (with
    # torch 2.11, pytest's monkeypatch left the option hidden, failing later reads of the config)
    saved = {"combo_kernels": inductor_config.combo_kernels,
             "triton.cudagraph_trees": inductor_config.triton.cudagraph_trees}
    out = tmp_path / "bench.json"
    with inductor_config.patch(saved):
        assert bench.main(["--smoke", "--rows", "typical", "--json", str(out), "--inductor",
                           "combo_kernels=True", "--inductor",
                           "triton.cudagraph_trees = False"]) == 0
        assert inductor_config.combo_kernels is True
        assert inductor_config.triton.cudagraph_trees is False
    assert json.loads(out.read_text())["rows"][0]["inductor"] is None  # eager: no effect
    row = bench.Row("fast", "vitlib TrainStep", 1024, 1000.0, 0.0, 1.0, attention="flex",
                    inductor={"combo_kernels": True})
    assert "TrainStep, attention: flex, inductor: combo_kernels=True" in bench.format_table(
        [row], 1e9, None)


@pytest.mark.parametrize("spec, message", [
    ("combo_kernels", "write it as NAME=VALUE"),
    ("combo_kernels=yes", "combo_kernels holds a bool"),
    ("combo_kernels=1", "combo_kernels holds a bool"),
    ("no_such_option=1", "has no Inductor option 'no_such_option'"),
    ("triton=5", "takes its options one by one"),
])
def test_bad_inductor_options_are_explained(spec, message):
    with pytest.raises(SystemExit, match=message):
        bench.main(["--smoke", "--rows", "typical", "--inductor", spec])


def test_a_failed_profile_keeps_the_rows_timing(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("profiler unavailable")

    monkeypatch.setattr(bench, "profile_steps", broken)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--rows", "fast", "--profile", "fast", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    [row] = report["rows"]
    assert row["name"] == "fast" and row["images_per_s"] > 0 and row["profile"] is None
    assert report["attention"]["timings"]["math"]["ms"] > 0  # timed by the clock instead
    assert "fast: profile failed" in capsys.readouterr().out


def _kernel(name, start, end, marked=False, cpu=False):
    """A profiler event on the device's timeline (µs), or on the CPU's."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end,
                         device_type=DeviceType.CPU if cpu else DeviceType.CUDA,
                         is_user_annotation=marked)


def _profile_of_gpu(monkeypatch, events: list, steps: int) -> dict:
    """bench.profile_steps of ``steps`` steps on a GPU whose profiler records ``events``."""

    class Profile:
        def __init__(self, **options):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events

    monkeypatch.setattr(torch.profiler, "profile", Profile)
    monkeypatch.setattr(bench, "synchronize", lambda device: None)
    return bench.profile_steps(lambda: None, torch.device("cuda"), steps=steps)


def test_profile_of_a_gpu_counts_kernels_not_the_spans_marked_around_them(monkeypatch):
    events = [  # µs on the device's timeline, one step
        _kernel("sm90_xmma_gemm_bf16bf16", 0, 100),
        _kernel("triton_poi_fused_gelu_0", 150, 200),  # after 50 µs idle
        _kernel("## Call CompiledFxGraph fabc ##", 0, 200, marked=True),
        _kernel("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", 300, 340),
        _kernel("Optimizer.step#AdamW.step", 290, 360, marked=True),
        _kernel("Context Sync", 340, 400),
        _kernel("aten::mm", 0, 400, cpu=True),
    ]
    p = _profile_of_gpu(monkeypatch, events, steps=1)
    assert p["busy_ms"] == pytest.approx(0.19)  # 100 + 50 + 40 µs
    assert p["kernels"] == 3
    assert p["kinds"] == pytest.approx({"matrix products": 0.1, "compiled (Triton)": 0.05,
                                        "optimizer, clipping, EMA": 0.04})
    assert [t["name"][:12] for t in p["top"]] == ["sm90_xmma_ge", "triton_poi_f", "void at::nat"]
    shown = bench.format_profile("fast", p | {"step_ms": 0.4})
    assert "device busy 0.19 ms, idle 0.21 ms (52%)" in shown


def test_a_profile_of_several_steps_is_reported_per_step(monkeypatch):
    events = []  # three steps of 1 ms each: a 600 µs matrix product, 200 µs idle, 200 µs Triton
    for start in (0, 1000, 2000):
        events += [_kernel("nvjet_tst_128x64", start, start + 600),
                   _kernel("triton_poi_fused_gelu_0", start + 800, start + 1000)]
    p = _profile_of_gpu(monkeypatch, events, steps=3)
    assert p["steps"] == 3 and p["kernels"] == 2
    assert p["busy_ms"] == pytest.approx(0.8)
    assert p["kinds"] == pytest.approx({"matrix products": 0.6, "compiled (Triton)": 0.2})
    assert [t["calls"] for t in p["top"]] == [1, 1]
    assert [t["ms"] for t in p["top"]] == pytest.approx([0.6, 0.2])


def test_attention_timings_check_every_kernel_against_float64():
    results = bench.time_attention(2, 2, 16, 8, torch.device("cpu"), repeats=1)
    assert set(results) == {"flash", "efficient", "cudnn", "math", "flex"}
    assert results["flex"] is None  # FlexAttention has no backward pass on a CPU
    assert results["math"] is not None and results["math"]["error"] < 1e-5
    assert bench.pick_attention(results) in ("flash", "math")
    broken = {"flash": {"ms": 1.0, "error": 0.5}, "math": {"ms": 2.0, "error": 1e-3}}
    assert bench.pick_attention(broken) == "math"  # fast but wrong loses
    with pytest.raises(RuntimeError, match="no attention kernel"):
        bench.pick_attention({"flash": None})


def test_the_fastest_correct_attention_kernel_is_chosen():
    timings = {"flash": {"ms": 3.0, "error": 4e-3}, "efficient": {"ms": 1.0, "error": 5e-3},
               "cudnn": None, "math": {"ms": 2.0, "error": 1e-6}}
    assert bench.pick_attention(timings) == "efficient"
    timings["efficient"]["error"] = 0.1  # beyond bf16 rounding: wrong
    assert bench.pick_attention(timings) == "math"


def load_script(name: str):
    """benchmarks/NAME.py, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script("time_to_accuracy")


def test_the_muon_step_orthogonalizes_all_block_matrices_in_one_batch(capsys):
    # one Newton–Schulz batch for the four shapes of a block (vitlib.muon.orthogonalize_each):
    # under 100 kernels (one batch per shape took 142), and no more for a deeper model; AdamW
    # without fused or foreach kernels (the CPU default) adds some for every parameter
    optimizer_step = load_script("optimizer_step")

    def kernels(optimizer: str, depth: int) -> int:
        model = ViT(ViTConfig(image_size=8, patch_size=4, embed_dim=16, depth=depth,
                              num_heads=2, num_classes=3))
        opt = make_optimizer(model, TrainConfig(optimizer=optimizer))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()  # the state is made on the first step
        return optimizer_step.kernels_per_step(opt, torch.device("cpu"))

    assert kernels("muon", 1) == kernels("muon", 4) < 100
    assert kernels("adamw", 4) > kernels("adamw", 1)
    assert optimizer_step.main(["--smoke"]) == 0
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert [row.split()[0] for row in rows] == ["adamw", "muon"]
    assert all(float(row.split()[1]) > 0 and int(row.split()[2]) > 0 for row in rows)


def test_time_to_accuracy_smoke_reports_curves_choices_and_the_seed_spread(
    script, tmp_path, capsys
):
    out = tmp_path / "tta.json"
    assert script.main(["--smoke", "--seeds", "2", "--out", str(tmp_path / "runs"),
                        "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    [variant] = result["variants"]
    assert variant["name"] == "recipe" and variant["flags"] == ""
    assert [run["seed"] for run in variant["runs"]] == [0, 1]
    for run in variant["runs"]:
        assert [p["epoch"] for p in run["curve"]] == [1, 2]  # validated every epoch
        assert run["curve"][0]["time_s"] <= run["curve"][1]["time_s"] == round(run["train_s"], 2)
        assert set(run["final"]) == {"model", "model+flip", "ema", "ema+flip"}
        assert run["chosen"] == max(run["final"], key=lambda k: run["final"][k]["val"])
        assert run["test_acc"] == run["final"][run["chosen"]]["test"]
        assert run["images_per_s"] == pytest.approx(run["steps"] * 64 / run["train_s"])  # batch 64
        for scores in run["final"].values():
            assert 0 <= scores["val"] <= 1 and 0 <= scores["test"] <= 1
        assert (tmp_path / "runs" / f"seed_{run['seed']}" / "checkpoint.pt").is_file()
    accs = [run["test_acc"] for run in variant["runs"]]
    assert variant["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert variant["test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    printed = capsys.readouterr().out
    assert "RESULT recipe cifar_fast seed 1: test" in printed
    assert "RESULT recipe cifar_fast: test" in printed and "over 2 seeds" in printed
    assert "temporary folder" not in printed  # --out keeps them


def test_an_interrupted_run_is_scored_from_its_checkpoint(script, tmp_path, monkeypatch,
                                                          capsys):
    # gpu_check.sh stops a step at its cap with SIGTERM; the engine saves and raises
    # KeyboardInterrupt: what was trained is still scored and written, and no run follows
    real_train = script.train

    def stopped_after_one_epoch(model_config, config, data):
        real_train(model_config, dataclasses.replace(config, epochs=1), data)
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "train", stopped_after_one_epoch)
    out = tmp_path / "tta.json"
    try:
        rc = script.main(["--smoke", "--seeds", "2", "--json", str(out),
                          "--variant", "drop path=--drop-path 0.1"])
    except KeyboardInterrupt:
        pytest.fail("the interrupted run was not scored: the interruption went through")
    assert rc == 130
    [recipe] = json.loads(out.read_text())["variants"]  # the variant never started
    [run] = recipe["runs"]  # nor did the second seed
    assert run["seed"] == 0 and run["stop_reason"] == "interrupted" and run["epochs"] == 1
    assert run["test_acc"] == run["final"][run["chosen"]]["test"]
    assert "no further runs" in capsys.readouterr().out

def test_time_to_accuracy_budget_keeps_about_ten_validations(script):
    model, config = script.settings(script.build_parser().parse_args(
        ["--budget", "60", "--no-compile", "--attention", "math", "--token-drop", "0.5"]))
    assert config.time_budget_s == 60 and config.eval_every == 10  # recipe: 120 s, every 20
    assert not config.compile and config.fast_step and config.attention == "math"
    assert model.token_drop == 0.5 and model.embed_dim == 192  # the recipe's model, dropping


def test_time_to_accuracy_budget_also_limits_a_recipe_without_one(script):
    _, config = script.settings(script.build_parser().parse_args(
        ["--recipe", "gpu", "--budget", "60"]))
    assert config.time_budget_s == 60 and config.eval_every == 1  # the recipe's validations
    _, smoke = script.settings(script.build_parser().parse_args(["--smoke", "--budget", "5"]))
    assert smoke.time_budget_s == 5 and smoke.epochs == 2  # smoke sizes, under the budget


@pytest.mark.parametrize("flags", [["--val-size", "0"], ["--variant", "all=--val-size 0"]])
def test_time_to_accuracy_refuses_to_run_without_validation(script, flags, monkeypatch, capsys):
    monkeypatch.setattr(script, "run_seed", lambda *args: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--smoke", *flags])
    assert exit_info.value.code == 2
    assert "chooses the reported weights on the validation split" in capsys.readouterr().err


def test_time_to_accuracy_takes_the_train_commands_recipe_flags(script):
    model, config = script.settings(script.build_parser().parse_args(
        ["--recipe", "cifar_fast_30", "--drop-path", "0.1", "--batch-size", "512", "--lr",
         "1e-3", "--erase", "0.25", "--eval-every", "7", "--repeat-aug", "2",
         "--whiten-patches", "--optimizer", "muon"]))
    assert model.drop_path == 0.1 and config.batch_size == 512 and config.lr == 1e-3
    assert config.augment.erase_prob == 0.25 and config.augment.num_ops == 1  # the rest kept
    assert config.eval_every == 7 and config.time_budget_s == 30  # a given flag wins
    assert config.repeat_aug == 2 and config.whiten_patches and config.optimizer == "muon"


def test_variants_run_on_top_of_the_recipe_until_the_deadline(script, monkeypatch, tmp_path,
                                                               capsys):
    clock, seen = _FakeClock(), []

    def fake_run(model_config, config, data, out):
        seen.append((model_config.drop_path, config.batch_size, config.seed, out.parent.name))
        clock.now += 60.0  # every run takes a minute
        acc = 0.5 + model_config.drop_path + config.seed / 100
        return {"test_acc": acc, "chosen": "ema", "final": {"ema": {"val": acc, "test": acc}},
                "train_s": 50.0, "steps": 10, "epochs": 3.0, "images_per_s": 1000.0,
                "stop_reason": "time budget", "compile_s": 5.0}

    monkeypatch.setattr(script, "run_seed", fake_run)
    monkeypatch.setattr(script, "time", clock)
    out = tmp_path / "tta.json"
    assert script.main(["--smoke", "--seeds", "2", "--deadline", "200", "--json", str(out),
                        "--variant", "dp=--drop-path 0.1", "--variant",
                        "big batch = --batch-size 128 --drop-path 0.2"]) == 0
    # 0 s: recipe seed 0; 60 s: seed 1; 120 s: dp seed 0 (ends at 180); dp seed 1 would end at
    # 240, after the deadline, and so would everything after it
    assert seen == [(0.0, 64, 0, "recipe"), (0.0, 64, 1, "recipe"), (0.1, 64, 0, "dp")]
    variants = json.loads(out.read_text())["variants"]
    assert [v["name"] for v in variants] == ["recipe", "dp", "big batch"]
    assert variants[0]["test_acc_mean"] == pytest.approx(0.505)
    assert variants[1]["test_acc_std"] == 0.0 and variants[2]["runs"] == []
    assert variants[2]["model"]["drop_path"] == 0.2 and variants[2]["train"]["batch_size"] == 128
    printed = capsys.readouterr().out
    assert "RESULT recipe cifar_fast + dp seed 0: test 60.00%" in printed
    assert "temporary folder, now deleted; --out DIR keeps them" in printed  # no --out given
    assert "cifar_fast + big batch seed 1: skipped" in printed
    table = printed[printed.index("variant "):].splitlines()
    assert table[1].split()[:4] == ["recipe", "50.50%", "±", "0.71%"]
    assert table[2].split()[:2] == ["dp", "60.00%"] and table[2].endswith("--drop-path 0.1")
    assert table[3].split() == ["big", "batch", "skipped"]


def test_a_run_reports_its_validated_epochs_and_the_weights_best_on_validation(
    script, tmp_path, monkeypatch
):
    def epoch(n, val_acc):  # 10 steps of 64 an epoch, the first 3 compiling (not timed)
        timed = 7 if n == 1 else 10
        return {"epoch": n, "step": 10 * n, "train_loss": 1 / n, "val_acc": val_acc,
                "train_time_s": 2.5 * n, "images_per_s": timed * 64 / 2.5}

    history = script.History(epochs=[epoch(1, None), epoch(2, 0.4), epoch(3, None),
                                     epoch(4, 0.5)],  # validated every other epoch
                             compile_s=30.0, stop_reason="epochs",
                             checkpoint=str(tmp_path / "checkpoint.pt"))
    final = {"model": {"val": 0.50, "test": 0.60}, "model+flip": {"val": 0.52, "test": 0.70},
             "ema": {"val": 0.55, "test": 0.52}}
    monkeypatch.setattr(script, "train", lambda model_config, config, data: history)
    monkeypatch.setattr(script, "score_variants", lambda checkpoint, data, config: final)
    monkeypatch.setattr(torch.compiler, "reset", lambda: None)  # nothing compiled here
    run = script.run_seed(ViTConfig(), TrainConfig(batch_size=64, seed=3, eval_every=2), None,
                          tmp_path)
    assert [(p["epoch"], p["val_acc"], p["time_s"]) for p in run["curve"]] == [(2, 0.4, 5.0),
                                                                              (4, 0.5, 10.0)]
    assert run["chosen"] == "ema" and run["test_acc"] == 0.52  # best on val, not on test
    assert (run["seed"], run["train_s"], run["steps"], run["epochs"]) == (3, 10.0, 40, 4)
    assert run["images_per_s"] == pytest.approx(37 * 64 / 10.0)  # compiling steps left out
    assert run["compile_s"] == 30.0 and run["stop_reason"] == "epochs"


def test_final_scores_evaluate_each_weights_with_and_without_flip_on_val_and_test(
    script, tmp_path, monkeypatch
):
    model_config = ViTConfig(image_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                             num_classes=3)
    raw, ema = ViT(model_config), ViT(model_config)
    with torch.no_grad():
        for model, value in ((raw, 0.0), (ema, 1.0)):
            for p in model.parameters():
                p.fill_(value)
    state = {"model_config": dataclasses.asdict(model_config), "model": raw.state_dict(),
             "ema": ema.state_dict()}
    monkeypatch.setattr(script, "load_checkpoint", lambda path: state)

    def evaluate(model, split, precision, tta):  # which weights, which split, which TTA
        return {"acc": (next(model.parameters()).flatten()[0].item(), len(split), tta)}

    monkeypatch.setattr(script, "evaluate", evaluate)
    data = synthetic_cifar(n_train=100, n_test=30)
    config = TrainConfig(val_size=20, device="cpu")  # 20 held out of 100 training images
    final = script.score_variants(tmp_path / "checkpoint.pt", data, config)
    assert final == {
        "model": {"val": (0.0, 20, None), "test": (0.0, 30, None)},
        "model+flip": {"val": (0.0, 20, "flip"), "test": (0.0, 30, "flip")},
        "ema": {"val": (1.0, 20, None), "test": (1.0, 30, None)},
        "ema+flip": {"val": (1.0, 20, "flip"), "test": (1.0, 30, "flip")},
    }
    state["ema"] = None  # a run without weight averaging
    assert set(script.score_variants(tmp_path / "checkpoint.pt", data, config)) == {
        "model", "model+flip"}


def test_seeds_count_up_from_the_first_seed(script, monkeypatch, tmp_path):
    seen = []

    def fake_run(model_config, config, data, out):
        seen.append((config.seed, out.relative_to(tmp_path).as_posix()))
        acc = config.seed / 10
        return {"seed": config.seed, "test_acc": acc, "chosen": "ema",
                "final": {"ema": {"val": acc, "test": acc}}, "train_s": 1.0, "steps": 1,
                "epochs": 1.0, "images_per_s": 1.0, "stop_reason": "epochs", "compile_s": 0.0}

    monkeypatch.setattr(script, "run_seed", fake_run)
    out = tmp_path / "tta.json"
    assert script.main(["--smoke", "--seed", "5", "--seeds", "2", "--out", str(tmp_path),
                        "--json", str(out)]) == 0
    assert seen == [(5, "seed_5"), (6, "seed_6")]
    [variant] = json.loads(out.read_text())["variants"]
    assert [run["seed"] for run in variant["runs"]] == [5, 6]
    assert variant["test_acc_mean"] == pytest.approx(0.55)


def test_a_variants_flags_go_on_top_of_the_command_lines(script):
    args = script.build_parser().parse_args(
        ["--recipe", "cifar_fast_30", "--drop-path", "0.1", "--lr", "1e-3",
         "--variant", "more=--drop-path 0.2", "--variant", "lr = --lr=2e-3"])
    [(_, _, recipe), (name, flags, more), (lr_name, lr_flags, lr)] = script.parse_variants(
        args.variant)
    assert (name, flags, lr_name, lr_flags) == ("more", "--drop-path 0.2", "lr", "--lr=2e-3")
    model, config = script.settings(args, recipe)
    assert model.drop_path == 0.1 and config.lr == 1e-3
    model, config = script.settings(args, more)
    assert model.drop_path == 0.2 and config.lr == 1e-3  # the variant's flag wins, the rest stay
    model, config = script.settings(args, lr)
    assert model.drop_path == 0.1 and config.lr == 2e-3


def test_the_comparison_shows_the_chosen_weights_validation_and_mean_speed(script):
    def run(val, test, speed, epochs):
        return {"chosen": "ema", "images_per_s": speed, "epochs": epochs,
                "final": {"ema": {"val": val, "test": test}, "model": {"val": 0.1, "test": 0.9}}}

    variants = [{"name": "recipe", "flags": "", "test_acc_mean": 0.4, "test_acc_std": 0.1414,
                 "runs": [run(0.40, 0.30, 1000.0, 2.0), run(0.60, 0.50, 3000.0, 4.0)]},
                {"name": "dp", "flags": "--drop-path 0.1", "runs": []}]
    lines = script.comparison_table(variants).splitlines()
    assert lines[1].split() == ["recipe", "40.00%", "±", "14.14%", "50.00%", "2,000", "3.0",
                                "(the", "recipe)"]
    assert lines[2].split() == ["dp", "skipped"]


@pytest.mark.parametrize(("variant", "message"), [
    ("--drop-path 0.1", "has no name"),
    ("dp=--drop-pat 0.1", "'dp': unrecognized arguments: --drop-pat"),
    ("td=--token-drop 1.5", "token_drop is the share of patch tokens"),
    ("recipe=--lr 1e-3", "is used twice"),
])
def test_a_bad_variant_is_refused_before_any_training(script, variant, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--smoke", "--variant", variant])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_augment_speed_smoke_prints_a_row_per_setting(capsys):
    spec = importlib.util.spec_from_file_location(
        "augment_speed", ROOT / "benchmarks" / "augment_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke", "--device", "cpu", "--setting", "crop + flip",
                 "--setting", "cifar_fast"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("crop", "cifar_fast"))]
    assert len(rows) == 2 and all(row[-4] == "eager" for row in rows)
    assert all(float(row[-1]) > 0 and float(row[-2].replace(",", "")) > 0 for row in rows)
