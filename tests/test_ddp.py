"""torchrun with 2 CPU processes (gloo) matches 1 process on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

from vitlib.checkpoint import load_checkpoint

# a tiny fixed run: no augmentation, no dropout, no token dropping (the cpu recipe has it), so
# the only randomness is the shared shuffle
ARGS = ["-m", "vitlib", "train", "--smoke", "--epochs", "2", "--batch-size", "32",
        "--crop-padding", "0", "--no-flip", "--token-drop", "0", "--threads", "1", "--quiet",
        "--device", "cpu"]  # gloo on the CPU even beside a GPU (two processes, maybe one GPU)


def run(command: list[str], out) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *ARGS, "--out", str(out)], capture_output=True,
                            text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    run([sys.executable], tmp_path / "one")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
        tmp_path / "two")
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert two["progress"]["world_size"] == 2 and len(two["rng"]) == 2
    assert one["progress"]["step"] == two["progress"]["step"] == 16  # 256 images / 32, 2 epochs
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(one["history"]["epochs"], two["history"]["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=1 / 64)  # one image at most
    assert two["history"]["test_loss"] == pytest.approx(one["history"]["test_loss"], rel=1e-3)
