"""Checkpoints: atomic writes, safe loading, clear errors for files that are not ours."""

import os

import pytest
import torch

from vitlib.checkpoint import (
    CHECKPOINT_NAME,
    check_out_dir,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from vitlib.model import ViT, ViTConfig, config_dict

TINY = ViTConfig(embed_dim=16, depth=1, num_heads=2, patch_size=8)


def model_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = ViT(TINY)
    return {"model_config": config_dict(TINY), "model": model.state_dict(), "ema": None}


def test_save_then_load_round_trip_with_weights_only(tmp_path):
    state = model_state(0)
    path = save_checkpoint(state, tmp_path / "run" / CHECKPOINT_NAME)
    raw = torch.load(path, weights_only=True)  # only plain types inside
    assert raw["format"] == "vitlib-checkpoint"
    loaded = load_checkpoint(path)
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert os.listdir(path.parent) == [CHECKPOINT_NAME]  # no temporary file left


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(model_state(0), path)
    before = path.read_bytes()

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")  # a crash midway through writing
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model_state(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["head.weight"],
                       model_state(0)["model"]["head.weight"])
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_save_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))  # what the file holds by then
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.getsize(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = save_checkpoint(model_state(0), tmp_path / CHECKPOINT_NAME)
    size = path.stat().st_size
    assert events == [("fsync", size), ("replace", size)]


def test_interrupted_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(model_state(0), path)
    before = path.read_bytes()

    def interrupted_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C midway through writing

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model_state(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_failed_rename_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(model_state(0), path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(model_state(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_load_model_rebuilds_the_saved_model(tmp_path):
    state = model_state(3)
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    model = load_model(tmp_path)  # a run folder works too
    torch.manual_seed(3)
    original = ViT(TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not model.training
    assert torch.equal(model(x), original(x))


def test_load_model_prefers_ema_weights(tmp_path):
    state = model_state(0)
    state["ema"] = model_state(1)["model"]
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    ema = load_model(tmp_path / CHECKPOINT_NAME)
    plain = load_model(tmp_path / CHECKPOINT_NAME, ema=False)
    assert torch.equal(ema.head.weight, state["ema"]["head.weight"])
    assert torch.equal(plain.head.weight, state["model"]["head.weight"])


def test_missing_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=f"without a {CHECKPOINT_NAME}"):
        resolve_checkpoint(tmp_path)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable vitlib checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="not a vitlib checkpoint"):
        load_checkpoint(foreign)


def test_checkpoints_of_another_layout_version_are_refused(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": "vitlib-checkpoint", "version": 2, **model_state(0)}, path)
    with pytest.raises(ValueError, match="layout version 2, this vitlib reads version 1"):
        load_checkpoint(path)


def test_check_out_dir_creates_the_folder_and_leaves_nothing_in_it(tmp_path):
    out = check_out_dir(tmp_path / "runs" / "mine")
    assert out == tmp_path / "runs" / "mine" and out.is_dir()
    assert os.listdir(out) == []  # the write test cleans up after itself
    (out / CHECKPOINT_NAME).mkdir()
    with pytest.raises(ValueError, match="cannot write checkpoints into"):
        check_out_dir(out)
    with pytest.raises(ValueError, match="empty text"):
        check_out_dir(" ")


def test_pickled_code_is_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "vitlib-checkpoint", "version": 1, "x": Payload()}, path)
    with pytest.raises(ValueError, match="not a readable vitlib checkpoint"):
        load_checkpoint(path)
