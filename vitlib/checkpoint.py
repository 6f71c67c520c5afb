"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists, numbers and strings (configs are stored
as dicts, random-generator states as tensors), so loading it never runs pickled code.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import torch

from .model import ViT, ViTConfig

CHECKPOINT_NAME = "checkpoint.pt"  # the file name inside a run's output folder
FORMAT = "vitlib-checkpoint"  # marks a file as ours
VERSION = 1  # bump when the layout of the dict changes


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, then renamed over ``path``. A failure midway leaves any previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as file:
            torch.save({"format": FORMAT, "version": VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and make sure a checkpoint can be written into it, so that a
    run learns of a bad folder before it trains, not at its first checkpoint."""
    out = Path(out_dir).expanduser()
    if not str(out_dir).strip():
        raise ValueError("the output folder is empty text; name a folder (e.g. runs/mine)")
    probe = out / f".write-test.{secrets.token_hex(8)}.tmp"  # unique across processes, hosts
    try:
        out.mkdir(parents=True, exist_ok=True)
        if (out / CHECKPOINT_NAME).is_dir():
            raise IsADirectoryError(f"{out / CHECKPOINT_NAME} is a folder")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write checkpoints into {out} ({type(err).__name__}: {err}); "
                         "choose another output folder") from None
    return out


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file for ``path``: the file itself, or ``checkpoint.pt`` inside a run
    folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / CHECKPOINT_NAME).is_file():
            return path / CHECKPOINT_NAME
        raise FileNotFoundError(
            f"{path} is a folder without a {CHECKPOINT_NAME}; pass the checkpoint file, or the "
            "--out folder of a training run that finished at least one epoch"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass the {CHECKPOINT_NAME} that "
            "`python -m vitlib train --out DIR` writes into DIR (or DIR itself)"
        )
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (a file or a run folder), safely."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable vitlib checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass a {CHECKPOINT_NAME} "
            "written by `python -m vitlib train`"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a PyTorch file but not a vitlib checkpoint (no '{FORMAT}' marker); "
            f"pass a {CHECKPOINT_NAME} written by `python -m vitlib train`. For timm, "
            "torchvision or Hugging Face weights use vitlib.interop instead"
        )
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint layout version {state.get('version')}, this vitlib reads "
            f"version {VERSION}; use the vitlib version that wrote it"
        )
    return state


def load_model(
    path: str | os.PathLike, *, ema: bool = True, map_location: str | torch.device = "cpu"
) -> ViT:
    """The trained ``ViT`` stored in a checkpoint, in eval mode. With ``ema=True`` the
    moving-average weights are used when the run kept them (they are what it evaluated)."""
    return model_from_checkpoint(load_checkpoint(path, map_location), path, ema=ema,
                                 device=map_location)


def model_from_checkpoint(
    state: dict, path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"
) -> ViT:
    """``load_model`` for a ``state`` that ``load_checkpoint(path)`` has already read: the
    trained ``ViT`` on ``device``, in eval mode."""
    if state["model_config"] is None:
        raise ValueError(
            f"{path} holds a {state.get('model_class', 'model')} that is not a vitlib ViT, so "
            "load_model cannot rebuild it; build that model yourself and load "
            "load_checkpoint(path)['model'] into it with load_state_dict"
        )
    model = ViT(ViTConfig(**state["model_config"]))
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.to(device).eval()
