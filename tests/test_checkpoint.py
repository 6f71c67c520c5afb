"""Checkpoints: atomic writes, safe loading, clear errors for files that are not ours."""

import os
from pathlib import Path

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


def test_temporary_file_is_written_next_to_the_checkpoint(tmp_path, monkeypatch):
    # a rename is atomic only within one file system, so the temporary file shares the folder
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src).parent, Path(dst).parent))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(model_state(0), tmp_path / "run" / CHECKPOINT_NAME)
    assert renames == [(tmp_path / "run", tmp_path / "run")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files via /proc")
def test_temporary_file_is_closed_before_the_rename(tmp_path, monkeypatch):
    # some systems (Windows) cannot rename a file that is still open
    still_open = []
    real_replace = os.replace

    def replace(src, dst):
        fds = os.listdir("/proc/self/fd")
        targets = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in fds}
        still_open.append(os.path.realpath(src) in targets)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(model_state(0), tmp_path / CHECKPOINT_NAME)
    assert still_open == [False]


def test_load_checkpoint_puts_tensors_on_map_location(tmp_path):
    path = save_checkpoint(model_state(0), tmp_path / CHECKPOINT_NAME)
    state = load_checkpoint(path, map_location="meta")  # "meta" stands in for a GPU
    assert {t.device.type for t in state["model"].values()} == {"meta"}


def test_load_model_moves_the_model_to_map_location(tmp_path, monkeypatch):
    save_checkpoint(model_state(0), tmp_path / CHECKPOINT_NAME)
    targets = []
    real_to = ViT.to

    def to(self, *args, **kwargs):
        targets.append(args or tuple(kwargs.values()))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(ViT, "to", to)
    load_model(tmp_path, map_location=torch.device("cpu"))
    assert any(args and torch.device(args[0]) == torch.device("cpu") for args in targets)


def test_run_folder_resolves_to_its_checkpoint_among_other_files(tmp_path):
    for name, seed in (("a.pt", 1), ("best.pt", 2), (CHECKPOINT_NAME, 3)):
        save_checkpoint(model_state(seed), tmp_path / name)
    assert resolve_checkpoint(tmp_path) == tmp_path / CHECKPOINT_NAME
    assert torch.equal(load_model(tmp_path).head.weight, model_state(3)["model"]["head.weight"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CHECKPOINT_NAME).mkdir()  # a folder of that name is no checkpoint
    with pytest.raises(FileNotFoundError, match=f"without a {CHECKPOINT_NAME}"):
        resolve_checkpoint(tmp_path / "other")


def test_paths_may_start_at_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    out = check_out_dir("~/runs/mine")
    assert out == tmp_path / "runs" / "mine" and out.is_dir()
    save_checkpoint(model_state(0), out / CHECKPOINT_NAME)
    assert resolve_checkpoint("~/runs/mine") == out / CHECKPOINT_NAME
    assert resolve_checkpoint(f"~/runs/mine/{CHECKPOINT_NAME}") == out / CHECKPOINT_NAME


def test_check_out_dir_refuses_a_folder_it_cannot_write(tmp_path):
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):  # the superuser writes anyway: take a read-only system folder
            if not os.path.isdir("/proc/self"):
                pytest.skip("no folder here refuses writes")
            out = Path("/proc")
        with pytest.raises(ValueError, match="cannot write checkpoints into"):
            check_out_dir(out)
    finally:
        (tmp_path / "read-only").chmod(0o700)


def test_check_out_dir_refuses_no_folder_at_all():
    with pytest.raises(ValueError, match="empty text"):
        check_out_dir("")


def test_check_out_dir_keeps_an_existing_checkpoint(tmp_path):
    path = save_checkpoint(model_state(0), tmp_path / CHECKPOINT_NAME)
    before = path.read_bytes()
    assert check_out_dir(tmp_path) == tmp_path  # a resumed run checks its folder again
    assert path.read_bytes() == before and os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_checkpoints_of_an_older_layout_or_another_format_are_refused(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": "vitlib-checkpoint", "version": 0, **model_state(0)}, path)
    with pytest.raises(ValueError, match="layout version 0, this vitlib reads version 1"):
        load_checkpoint(path)
    torch.save({"format": "other-checkpoint", "version": 1, **model_state(0)}, path)
    with pytest.raises(ValueError, match="not a vitlib checkpoint"):
        load_checkpoint(path)
