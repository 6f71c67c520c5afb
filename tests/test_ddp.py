"""torchrun with 2 CPU processes (gloo) matches 1 process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitlib.checkpoint import load_checkpoint

# a tiny fixed run: no augmentation, no dropout, no token dropping (the cpu recipe has it), so
# the only randomness is the shared shuffle
ARGS = ["-m", "vitlib", "train", "--smoke", "--epochs", "2", "--batch-size", "32",
        "--crop-padding", "0", "--no-flip", "--token-drop", "0", "--threads", "1", "--quiet",
        "--device", "cpu"]  # gloo on the CPU even beside a GPU (two processes, maybe one GPU)


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *map(str, args)]


def run(command: list[str], out) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *ARGS, "--out", str(out)], capture_output=True,
                            text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    run([sys.executable], tmp_path / "one")
    run(torchrun(), tmp_path / "two")
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert two["progress"]["world_size"] == 2 and len(two["rng"]) == 2
    assert one["progress"]["step"] == two["progress"]["step"] == 16  # 256 images / 32, 2 epochs
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(one["history"]["epochs"], two["history"]["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=1 / 64)  # one image at most
    assert two["history"]["test_loss"] == pytest.approx(one["history"]["test_loss"], rel=1e-3)


# an epoch of 14 steps on 2 processes with token dropping; "interrupt" stops it at step 10 (as
# a Ctrl-C would), "resume" continues it. Each process writes the tokens its first step keeps
# of each image, and the run's epoch records
RUN_WITH_TOKEN_DROP = """
import json, os, sys
import torch
from vitlib import train as T
from vitlib.augment import AugmentConfig
from vitlib.data import synthetic_cifar
from vitlib.model import ViT, ViTConfig

mode, out = sys.argv[1], sys.argv[2]
kept = []
real_keep = ViT._keep_random_tokens

def keep(self, x):
    if not kept:  # the draw _keep_random_tokens is about to make
        state = torch.get_rng_state()
        kept.append(torch.rand(x.shape[:2]).argsort(dim=1)[:, :8].tolist())
        torch.set_rng_state(state)
    return real_keep(self, x)

ViT._keep_random_tokens = keep
if mode == "interrupt":
    real_check = T._Run._check

    def check(self, stop, started, time_before):
        stop.requested = stop.requested or self.step == 10
        return real_check(self, stop, started, time_before)

    T._Run._check = check
model = ViTConfig(embed_dim=16, depth=1, num_heads=2, patch_size=8, token_drop=0.5)
config = T.TrainConfig(epochs=1, batch_size=32, lr=2e-3, warmup_epochs=0.5, val_size=64,
                       augment=AugmentConfig(crop_padding=0, flip=False), num_threads=1,
                       device="cpu", out_dir=out, progress=False, quiet=True)
try:
    epochs = T.train(model, config, synthetic_cifar(n_train=512, n_test=64, seed=0),
                     resume=out if mode == "resume" else None).epochs
except KeyboardInterrupt:
    epochs = None
with open(f"{out}/{mode}_rank{os.environ['RANK']}.json", "w") as file:
    json.dump({"kept": kept[0] if kept else None, "epochs": epochs}, file)
"""


@pytest.fixture(scope="module")
def token_drop_runs(tmp_path_factory) -> Path:
    """A folder with a straight run in a/ and in b/ one stopped mid-epoch, then resumed."""
    root = tmp_path_factory.mktemp("ddp")
    script = root / "run.py"
    script.write_text(RUN_WITH_TOKEN_DROP)
    repo = str(Path(__file__).resolve().parents[1])  # the script runs outside the checkout
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    for mode in ("straight", "interrupt", "resume"):
        out = root / ("a" if mode == "straight" else "b")
        out.mkdir(exist_ok=True)
        result = subprocess.run(torchrun(script, mode, out), capture_output=True, text=True,
                                timeout=240, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    return root


def written(root: Path, mode: str, rank: int) -> dict:
    """What process ``rank`` of the run ``mode`` wrote: the kept tokens, the epoch records."""
    out = root / ("a" if mode == "straight" else "b")
    return json.loads((out / f"{mode}_rank{rank}.json").read_text())


@pytest.mark.slow
def test_each_process_drops_tokens_of_its_own(token_drop_runs):
    rank0, rank1 = (written(token_drop_runs, "straight", rank)["kept"] for rank in (0, 1))
    assert len(rank0) == len(rank1) == 16  # each process's half of the batch of 32
    assert rank0 != rank1


@pytest.mark.slow
def test_two_processes_resume_mid_epoch_to_the_same_record_and_weights(token_drop_runs):
    root = token_drop_runs
    assert written(root, "interrupt", 0)["epochs"] is None  # stopped by the Ctrl-C
    [straight], [resumed] = (written(root, mode, 0)["epochs"] for mode in ("straight", "resume"))
    assert resumed["step"] == straight["step"] == 14
    assert resumed["train_acc"] == straight["train_acc"]
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    assert resumed["val_acc"] == straight["val_acc"]
    a, b = load_checkpoint(root / "a"), load_checkpoint(root / "b")
    for key, value in a["model"].items():  # the same token draws in each process after resuming
        assert torch.equal(b["model"][key], value), key
