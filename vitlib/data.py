"""CIFAR-10 as uint8 tensors: read from any common layout, decoded once, cached on disk.

Accepted sources (the layout is detected):

- torchvision's root folder, holding ``cifar-10-batches-py/`` (``download=True`` fills it)
- the ``cifar-10-batches-py/`` folder itself, or the ``cifar-10-python.tar.gz`` archive
- an image-folder tree ``train/<class>/*.jpg|png`` + ``test/<class>/*``, as a folder or a
  ``.tar.gz`` / ``.tgz`` / ``.tar`` archive, possibly wrapped in one top-level folder

Archives are read in memory, never extracted. The decoded tensors are cached under
``data/cache/`` (or ``$VITLIB_CACHE``), so only the first load decodes images.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import io
import lzma
import os
import pickle
import re
import secrets
import shutil
import tarfile
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of the 50,000 training images
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # per-channel standard deviation of the same

IMAGE_SIZE = 32
_BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CACHE_VERSION = 2  # bump when the cache contents change
_ACCEPTED = (
    "accepted sources: torchvision's CIFAR-10 root folder (holding cifar-10-batches-py/), "
    "a cifar-10-batches-py/ folder, cifar-10-python.tar.gz, or an image-folder tree "
    "train/<class>/*.jpg + test/<class>/*.jpg as a folder or a .tar.gz/.tgz/.tar archive"
)


@dataclass
class Split:
    """One part of a dataset: images (N, 3, 32, 32) uint8 and labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, 3, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}; convert floats in [0, 1] with "
                "(x * 255).round().to(torch.uint8)"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}; "
                "pass one label per image"
            )
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, selection: int | Tensor | list[int], seed: int = 0) -> Split:
        """``n`` samples drawn at random (seeded, so the same every time), or the samples at
        the given indices. Samples from image folders come sorted by class, so taking the
        first ``n`` would give one class only: draw them instead."""
        if isinstance(selection, int):
            if not 0 < selection <= len(self):
                raise ValueError(f"cannot draw {selection} samples from a split of {len(self)}")
            generator = torch.Generator().manual_seed(seed)
            selection = torch.randperm(len(self), generator=generator)[:selection]
        index = torch.as_tensor(selection, dtype=torch.long)
        return Split(self.images[index], self.labels[index])


@dataclass
class CIFAR10:
    """A dataset with a train and a test split and its class names (label i is classes[i])."""

    train: Split
    test: Split
    classes: list[str]
    source: str = ""  # where the images came from (a file or folder name, or "made-up images")

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- where the data is ----------------------------------------------------------------------

def default_source(download: bool = False) -> Path:
    """The source ``load_cifar10()`` uses when given none: ``$VITLIB_DATA`` if set (it must
    exist), else a known layout inside the project's ``data/`` folder, else (with
    ``download=True``) that folder as torchvision's download root."""
    env = os.environ.get("VITLIB_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_absolute() and not path.exists():  # relative to the project, not cwd
            path = project_dir() / path
        if not path.exists():  # a typo, not a folder to download into
            raise FileNotFoundError(
                f"VITLIB_DATA={env} names {path}, which does not exist; correct the variable, "
                f"or unset it to use the project's data/ folder (or a download into it); "
                f"{_ACCEPTED}"
            )
        return path
    data_dir = project_dir() / "data"
    found, skipped = _find_layout(data_dir)
    if found is not None:
        return found
    if download:
        return data_dir
    skipped_note = (f" (skipped, holding no CIFAR-10 batches or train/<class>/ images: "
                    f"{', '.join(skipped)})" if skipped else "")
    raise ValueError(
        f"no CIFAR-10 data found in {data_dir}{skipped_note}; either (1) set the environment "
        "variable VITLIB_DATA to a cifar-10-python.tar.gz, a cifar-10-batches-py folder, or an "
        "image-folder tree or archive (e.g. VITLIB_DATA=/path/to/cifar-10-python.tar.gz), "
        f"(2) put one of those into {data_dir}, or (3) pass download=True when online"
    )


def project_dir() -> Path:
    """The nearest folder, from the working directory up, that holds a pyproject.toml."""
    cwd = Path.cwd()
    return next((p for p in (cwd, *cwd.parents) if (p / "pyproject.toml").is_file()), cwd)


def _find_layout(folder: Path) -> tuple[Path | None, list[str]]:
    """The first CIFAR-10 source found in (or as) ``folder`` (None if none), and the folders
    and archives in it that were skipped for holding no CIFAR-10 data. Names starting with
    "cifar" are tried first, the others in alphabetical order."""
    if not folder.is_dir():
        return None, []
    if _folder_layout(folder) is not None:
        return folder, []
    skipped = []
    for child in sorted(folder.iterdir(),
                        key=lambda p: (not p.name.lower().startswith("cifar"), p.name)):
        if child.name.startswith(".") or child.name == "cache":
            continue
        if child.is_dir():
            if _folder_layout(child) is not None:
                return child, skipped
            skipped.append(child.name + "/")
        elif child.is_file() and child.name.endswith(_ARCHIVE_SUFFIXES):
            if _archive_holds_cifar(child):
                return child, skipped
            skipped.append(child.name)
    return None, skipped


def _archive_holds_cifar(path: Path) -> bool:
    """Whether a tar archive holds a CIFAR-10 batch or image; it is read only up to the
    first one, so a CIFAR-10 archive answers at once."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                parts = _parts(member.name)
                if parts and (parts[-1] in _BATCH_FILES or _is_image_member(parts)):
                    return True
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        pass
    return False


def _is_image_member(parts: list[str]) -> bool:
    """Whether a path's components name an image file in {train,test}/<class>/."""
    return (len(parts) >= 3 and parts[-3] in ("train", "test") and not parts[-2].startswith(".")
            and _is_image_name(parts[-1]))


def _is_image_name(name: str) -> bool:
    """Whether a file name is one of an image, and not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _IMAGE_SUFFIXES


def _folder_layout(folder: Path) -> tuple[str, Path] | None:
    """("batches" | "images", the folder to read) for a folder in a known layout, else None."""
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
        return "batches", folder
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return "images", folder
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subfolders) == 1 and (subfolders[0] / "train").is_dir():  # one wrapping folder
        return ("images", subfolders[0]) if (subfolders[0] / "test").is_dir() else None
    return None


# --- loading --------------------------------------------------------------------------------

def load_cifar10(
    source: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    download: bool = False,
    progress: bool = True,
) -> CIFAR10:
    """Load CIFAR-10 (or any 32×32 image-folder dataset) from ``source`` (see the module
    docstring for the layouts; None means ``default_source()``).

    The first load decodes and writes a cache under ``cache_dir`` (default ``$VITLIB_CACHE``
    or the project's ``data/cache/``); later loads of the unchanged source read the cache.
    ``download=True`` fetches the original data with torchvision when no local copy is found,
    never into a folder that ``$VITLIB_DATA`` names.
    """
    from_env = source is None and bool(os.environ.get("VITLIB_DATA"))
    path = Path(source).expanduser() if source is not None else default_source(download)
    kind, path = _locate(path, download and not from_env, from_env)  # it names data, not a root
    cache_file = _cache_file(kind, path, cache_dir)
    if cache_file.is_file():
        try:
            return replace(_read_cache(cache_file), source=path.name)
        except Exception as err:  # a damaged cache is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable cache {cache_file} ({err}); decoding again",
                          stacklevel=2)
    if kind == "images-folder":
        data = _from_image_files(_folder_files(path), str(path), progress)
    elif kind == "batches-folder":
        batches = {name: (path / name).read_bytes() for name in _batch_names(path)}
        data = _from_batches(batches, str(path))
    else:
        data = _from_archive(path, progress)
    _write_cache(cache_file, data)
    return replace(data, source=path.name)


def _locate(path: Path, download: bool, from_env: bool) -> tuple[str, Path]:
    """("images-folder" | "batches-folder" | "archive", path to read), downloading if asked;
    ``from_env`` says that ``$VITLIB_DATA`` named the path, which is never downloaded into."""
    if path.is_file():
        return "archive", path
    if path.is_dir():
        layout = _folder_layout(path)
        if layout is not None:
            return f"{layout[0]}-folder", layout[1]
        if not download:
            found = sorted(p.name + "/" * p.is_dir() for p in path.iterdir())
            listing = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") or "nothing"
            remedy = (
                f"VITLIB_DATA names it, so nothing is downloaded into it: correct VITLIB_DATA, "
                f"or unset it to let download=True download into {project_dir() / 'data'}"
                if from_env else "or pass download=True to download CIFAR-10 into it"
            )
            raise ValueError(
                f"{path} is not a CIFAR-10 folder (found: {listing}); {_ACCEPTED}; {remedy}"
            )
    elif not download or path.name.endswith((*_ARCHIVE_SUFFIXES, ".zip")):
        raise FileNotFoundError(
            f"CIFAR-10 source {path} does not exist; check the path (or $VITLIB_DATA); "
            f"{_ACCEPTED}"
        )
    return "batches-folder", _download(path)


def _download(root: Path) -> Path:
    """Download CIFAR-10 into torchvision's root folder ``root``; its batches folder.

    The download goes to a private folder and its batches folder is then renamed into place,
    so processes that download at the same time (``torchrun`` on a fresh machine) never write
    the same file: the first rename wins, the others keep its folder and drop their own.
    """
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    root.mkdir(parents=True, exist_ok=True)
    target = root / "cifar-10-batches-py"
    private = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        try:
            TorchvisionCIFAR10(private, train=True, download=True)
        except Exception as err:
            raise RuntimeError(
                f"could not download CIFAR-10 into {root} ({type(err).__name__}: {err}). "
                "Offline, use a local copy instead: set VITLIB_DATA to a cifar-10-python.tar.gz, "
                "a cifar-10-batches-py folder, or an image-folder tree or .tar.gz "
                f"(train/<class>/*, test/<class>/*), or put one of those into "
                f"{project_dir() / 'data'}. In a notebook, start Jupyter with the variable set "
                "(`VITLIB_DATA=/path/to/copy jupyter lab`) or run "
                "`%env VITLIB_DATA=/path/to/copy` in a cell before loading"
            ) from err
        try:
            os.replace(private / target.name, target)
        except OSError:
            if len(_batch_names(target)) < len(_BATCH_FILES) + 1:  # not another's whole copy
                raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return target


def _batch_names(folder: Path) -> list[str]:
    return [name for name in [*_BATCH_FILES, "batches.meta"] if (folder / name).is_file()]


def _folder_files(root: Path) -> list[tuple[str, bytes]]:
    """(path relative to root, bytes) of every image file under root/train and root/test."""
    return [(path.relative_to(root).as_posix(), path.read_bytes()) for path in _image_paths(root)]


def _image_paths(root: Path) -> list[Path]:
    """The image files under root/train and root/test: regular files with an image suffix,
    outside hidden names. Links to folders are followed, except into root or a folder that
    holds the link (a cycle)."""
    paths = []

    def walk(folder: Path, ancestors: frozenset[str]) -> None:
        real = os.path.realpath(folder)
        if real in ancestors:
            return
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(Path(entry.path), ancestors | {real})
            elif _is_image_name(entry.name) and entry.is_file():  # no dangling link, no FIFO
                paths.append(Path(entry.path))

    for split in ("train", "test"):
        if (root / split).is_dir():
            walk(root / split, frozenset({os.path.realpath(root)}))
    return paths


def _from_archive(path: Path, progress: bool) -> CIFAR10:
    """Read a tar archive of pickled batches or of an image-folder tree, without extracting."""
    files = _tar_files(path)
    batches = {name.rsplit("/", 1)[-1]: data for name, data in files
               if name.rsplit("/", 1)[-1] in [*_BATCH_FILES, "batches.meta"]}
    if batches:
        return _from_batches(batches, str(path))
    return _from_image_files(files, str(path), progress)


# --- tar archives ---------------------------------------------------------------------------

def _tar_files(path: Path) -> list[tuple[str, bytes | memoryview]]:
    """(name, contents) of the regular files of a tar archive (plain, gz, bz2 or xz), as tar
    would extract them: a member replaces an earlier one of the same name, and a hard link
    gets the contents of the earlier file it links to.

    Refuses members whose path would leave the archive's folder (absolute or with ``..``),
    symbolic links, and hard links to anything else, so nothing read from an archive can
    point outside it.
    """
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            buf = gzip.decompress(raw)
        elif raw[:3] == b"BZh":
            buf = bz2.decompress(raw)
        elif raw[:6] == b"\xfd7zXZ\x00":
            buf = lzma.decompress(raw)
        else:
            buf = raw
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise ValueError(f"{path} is truncated or corrupt ({err}); copy it again") from err
    members = _ustar_members(buf, path) if buf[257:262] == b"ustar" else None
    if members is None:  # pax headers, GNU long names or an old format: let tarfile parse it
        members = _tarfile_members(buf, path)
    files: dict[str, bytes | memoryview] = {}  # by path without "." parts
    for name, kind, data, target in members:
        key = _member_path(name, name, path)
        if kind == b"1":
            data = files.get(_member_path(target, name, path))
            if data is None:
                raise ValueError(
                    f"refusing archive member {name!r} in {path}: it is a hard link to "
                    f"{target!r}, which is no earlier file of the archive; re-create the "
                    "archive with `tar --hard-dereference`"
                )
        elif kind == b"2":
            raise ValueError(
                f"refusing archive member {name!r} in {path}: it is a link to {target!r}, and a "
                "data archive must hold plain files; re-create it with `tar --dereference`"
            )
        if kind in (b"0", b"\0", b"1", b"7"):
            files[key] = data
    return list(files.items())


def _member_path(name: str, member: str, path: Path) -> str:
    """``name`` (the path of ``member`` or of its link's target) without "." parts, refused
    when it leaves the archive's folder."""
    if name.startswith(("/", "\\")) or ".." in _parts(name):
        where = "its path" if name == member else f"it links to {name!r}, which"
        raise ValueError(
            f"refusing archive member {member!r} in {path}: {where} leaves the archive's "
            "folder (absolute or containing '..'); re-create the archive with relative paths"
        )
    return "/".join(_parts(name))


def _parts(name: str) -> list[str]:
    """Components of a path inside an archive ("./train/cat/1.png" -> train, cat, 1.png)."""
    return [part for part in name.split("/") if part not in ("", ".")]


def _check_end(buf: bytes, end: int, path: Path) -> None:
    """Refuse an archive whose members do not end in tar's end-of-archive marker (a block of
    zeros), as one cut short on a block boundary does."""
    if buf[end : end + 512] != bytes(512):
        raise ValueError(
            f"{path} ends without tar's end-of-archive marker, so it seems cut short (an "
            "interrupted copy or download); copy it again"
        )


def _ustar_members(buf: bytes, path: Path) -> list[tuple[str, bytes, memoryview, str]] | None:
    """(name, type flag, contents, link target) of each member of an uncompressed ustar
    archive, parsed directly (several times faster than ``tarfile`` for 60,000 small files);
    None when the archive uses extensions this parser leaves to ``tarfile``."""
    view = memoryview(buf)
    members, pos = [], 0
    while pos + 512 <= len(buf) and buf[pos:pos + 512] != bytes(512):  # a zero block ends it
        header = buf[pos : pos + 512]
        kind = header[156:157]
        if kind not in (b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"):
            return None
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            return None
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX: long paths split in two
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        if pos + 512 + size > len(buf):
            raise ValueError(f"{path} is truncated (member {name.decode()!r}); copy it again")
        target = header[157:257].split(b"\0", 1)[0]
        members.append((name.decode("utf-8", "surrogateescape"), kind,
                        view[pos + 512 : pos + 512 + size],
                        target.decode("utf-8", "surrogateescape")))
        pos += 512 + -(-size // 512) * 512  # contents are padded to whole 512-byte blocks
    _check_end(buf, pos, path)
    return members


def _tarfile_members(buf: bytes, path: Path) -> list[tuple[str, bytes, bytes, str]]:
    """(name, type flag, contents, link target) of each member of an uncompressed tar
    archive, parsed by ``tarfile``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(buf)) as archive:
            members = [(m.name, m.type, archive.extractfile(m).read() if m.isfile() else b"",
                        m.linkname) for m in archive]
            _check_end(buf, archive.offset, path)
            return members
    except tarfile.TarError as err:
        raise ValueError(
            f"{path} is not a tar archive, so CIFAR-10 cannot be read from it; {_ACCEPTED}"
            + ("; unzip it and point to the folder" if path.suffix == ".zip" else "")
        ) from err


# --- pickled batches ------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays, never arbitrary objects."""

    _numpy = {
        "_reconstruct": np.ndarray((0,)).__reduce__()[0],
        "_frombuffer": np.ndarray((0,)).__reduce_ex__(5)[0],  # arrays in pickle protocol 5
        "scalar": np.int64(0).__reduce__()[0],
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self._numpy:
            return self._numpy[name]
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes in protocol 2
            return codecs.encode
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _unpickle(data: bytes | memoryview, name: str, where: str) -> dict:
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:
        raise ValueError(f"{name} in {where} is not a readable CIFAR-10 batch ({err})") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{name} in {where} holds a {type(batch).__name__}, not a CIFAR-10 batch")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _from_batches(files: dict[str, bytes | memoryview], where: str) -> CIFAR10:
    """CIFAR-10 from the pickled batches data_batch_1..5 and test_batch (+ batches.meta)."""
    missing = [name for name in _BATCH_FILES if name not in files]
    if missing:
        raise ValueError(
            f"{where} lacks the CIFAR-10 batches {', '.join(missing)}; download "
            "cifar-10-python.tar.gz again, or point to a complete copy"
        )
    splits = []
    for names in (_BATCH_FILES[:-1], _BATCH_FILES[-1:]):
        images, labels = [], []
        for name in names:
            batch = _unpickle(files[name], name, where)
            if "labels" not in batch or np.shape(batch.get("data"))[1:] != (3 * 32 * 32,):
                raise ValueError(
                    f"{name} in {where} is not a CIFAR-10 batch (keys: {sorted(batch)}); "
                    "CIFAR-100 and other datasets are not read by this loader"
                )
            images.append(torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8)))
            labels.append(torch.as_tensor(batch["labels"], dtype=torch.long))
        splits.append(Split(torch.cat(images).view(-1, 3, 32, 32), torch.cat(labels)))
    classes = list(CIFAR10_CLASSES)
    if "batches.meta" in files:
        classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
                   for c in _unpickle(files["batches.meta"], "batches.meta", where)["label_names"]]
    return CIFAR10(splits[0], splits[1], classes)


# --- image folders --------------------------------------------------------------------------

def _from_image_files(
    files: list[tuple[str, bytes | memoryview]], where: str, progress: bool
) -> CIFAR10:
    """CIFAR-10 from image files named [wrapper/]{train,test}/<class>/<file>."""
    found: dict[str, dict[str, list[tuple[str, bytes | memoryview]]]] = {"train": {}, "test": {}}
    prefixes = set()
    for name, data in files:
        parts = _parts(name)
        if not _is_image_member(parts):
            continue
        prefixes.add("/".join(parts[:-3]))
        found[parts[-3]].setdefault(parts[-2], []).append((name, data))
    if not found["train"] and not found["test"]:
        sample = ", ".join(name for name, _ in files[:5]) or "no files"
        raise ValueError(f"found no CIFAR-10 data in {where} (it holds {sample}); {_ACCEPTED}")
    if len(prefixes) > 1:
        raise ValueError(
            f"{where} holds several image-folder trees ({', '.join(sorted(prefixes))}); "
            "keep one train/ + test/ pair"
        )
    for split, other in (("train", "test"), ("test", "train")):
        if not found[split]:
            raise ValueError(f"the {split} split in {where} is empty; add {split}/<class>/ "
                             f"folders of images next to {other}/")
    classes = _class_order(set(found["train"]), set(found["test"]), where)
    splits = []
    for split in ("train", "test"):
        items = [(label, item) for label, c in enumerate(classes)
                 for item in sorted(found[split][c], key=lambda item: item[0])]
        labels = torch.tensor([label for label, _ in items], dtype=torch.long)
        images = _decode_images([item for _, item in items], f"{split} ({where})", progress)
        splits.append(Split(images, labels))
    return CIFAR10(splits[0], splits[1], classes)


def _class_order(train: set[str], test: set[str], where: str) -> list[str]:
    """Class names: CIFAR-10's order when the folders are exactly its classes, else sorted."""
    if train != test:
        raise ValueError(
            f"class folders differ between train and test in {where}: only in train: "
            f"{sorted(train - test) or 'none'}, only in test: {sorted(test - train) or 'none'}; "
            "give both splits the same class folders"
        )
    if train == set(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    if len(train & set(CIFAR10_CLASSES)) >= len(CIFAR10_CLASSES) // 2:  # meant to be CIFAR-10
        raise ValueError(
            f"the class folders in {where} look like CIFAR-10 but are missing "
            f"{sorted(set(CIFAR10_CLASSES) - train) or 'none'} and have extra "
            f"{sorted(train - set(CIFAR10_CLASSES)) or 'none'}; name them exactly "
            f"{', '.join(CIFAR10_CLASSES)}"
        )
    return sorted(train)


def _decode_images(
    items: list[tuple[str, bytes | memoryview]], what: str, progress: bool = True
) -> Tensor:
    """Decode (name, encoded bytes) pairs into a (N, 3, 32, 32) uint8 tensor.

    JPEGs are decoded in batches by torchvision (about three times faster than PIL); other
    formats, and any file torchvision rejects, go through PIL so errors name the file.
    """
    images = torch.empty(len(items), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    jpegs = [i for i, (_, data) in enumerate(items) if bytes(data[:3]) == b"\xff\xd8\xff"]
    decode_jpegs = _jpeg_decoder() if jpegs else None  # importing torchvision takes seconds
    if decode_jpegs is None:
        jpegs = []
    others = sorted(set(range(len(items))) - set(jpegs))
    with tqdm(total=len(items), desc=f"decoding {what}", unit="img", disable=not progress) as bar:
        for start in range(0, len(jpegs), 4096):
            chunk = jpegs[start : start + 4096]
            try:
                decoded = decode_jpegs([items[i][1] for i in chunk])
            except RuntimeError:  # find the bad file with PIL, which names it
                decoded = [_decode_with_pil(*items[i]) for i in chunk]
            for i, image in zip(chunk, decoded, strict=True):
                _check_size(items[i][0], image)
            images[torch.tensor(chunk)] = torch.stack(decoded)
            bar.update(len(chunk))
        for i in others:
            images[i] = _check_size(items[i][0], _decode_with_pil(*items[i]))
            bar.update(1)
    return images


def _jpeg_decoder():
    """torchvision's batched JPEG decoder: encoded files -> list of (3, H, W) uint8 tensors;
    None where torchvision no longer has it (it is deprecated in favour of TorchCodec)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(blobs: list[bytes | memoryview]) -> list[Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
            return decode_jpeg(tensors, mode=ImageReadMode.RGB)

    return decode


def _decode_with_pil(name: str, data: bytes | memoryview) -> Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode.startswith("I;16"):  # 16-bit grey: keep each pixel's high byte
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
            mode = image.mode
            array = np.asarray(image.convert("RGB"))
    except Exception as err:
        raise ValueError(f"cannot read image {name} ({err}); replace or delete the file") from err
    if mode in ("I", "F"):  # convert("RGB") clips these to 0..255 instead of scaling them
        raise ValueError(
            f"image {name} has {'32-bit integer' if mode == 'I' else 'floating-point'} pixels "
            f"(PIL mode {mode}), whose range is unknown; save it with 8 bits per channel"
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)


def _check_size(name: str, image: Tensor) -> Tensor:
    if tuple(image.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        h, w = image.shape[-2:]
        raise ValueError(
            f"image {name} is {w}×{h} pixels, but CIFAR-10 images are {IMAGE_SIZE}×{IMAGE_SIZE}; "
            f"resize the images to {IMAGE_SIZE}×{IMAGE_SIZE} first (e.g. PIL's "
            f"image.resize(({IMAGE_SIZE}, {IMAGE_SIZE}))) and rebuild the folder or archive"
        )
    return image


# --- cache ----------------------------------------------------------------------------------

def _cache_file(kind: str, path: Path, cache_dir: str | Path | None) -> Path:
    """Cache file named ``<source name>-<hash of its absolute path>-<hash of its files' sizes
    and modification times>.pt``, so all cache files of one source share the first part."""
    if cache_dir is None:
        cache_dir = os.environ.get("VITLIB_CACHE") or project_dir() / "data" / "cache"
    path = path.resolve()
    if kind == "archive":
        files = [path]
    elif kind == "batches-folder":
        files = [path / name for name in _batch_names(path)]
    else:
        files = _image_paths(path)
    signature = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for file in files:
        stat = file.stat()
        signature.update(
            f"|{file.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    source = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{path.name}-{source}-{signature.hexdigest()[:16]}.pt"


def _read_cache(file: Path) -> CIFAR10:
    state = torch.load(file, weights_only=True)
    return CIFAR10(
        Split(state["train_images"], state["train_labels"]),
        Split(state["test_images"], state["test_labels"]),
        list(state["classes"]),
    )


def _write_cache(file: Path, data: CIFAR10) -> None:
    """Write atomically (temporary file + rename): a crash never leaves a partial cache. The
    file is readable by whoever the umask allows, so a cache folder can be shared."""
    state = {
        "train_images": data.train.images, "train_labels": data.train.labels,
        "test_images": data.test.images, "test_labels": data.test.labels,
        "classes": data.classes,
    }
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_cache(file)
        name = file.with_name(f"{file.name}.{secrets.token_hex(8)}.tmp")
        with open(name, "xb") as f:  # mode 0o666 less the umask, unlike mkstemp's 0o600
            tmp = name
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError;
        # a read-only or full disk costs speed next time, not this load
        warnings.warn(f"could not write the cache {file} ({err}); the next load decodes again",
                      stacklevel=3)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _remove_stale_cache(file: Path) -> None:
    """Remove the other cache files of ``file``'s source (left by older versions of it), its
    temporary files older than an hour (left by a killed process), and the files of a source of
    its name in the first cache version's naming (``<source name>-<one hash>.pt``), which no
    version reads any more."""
    name, path_hash, _ = file.name.rsplit("-", 2)  # <source name>-<hash of its path>-<...>.pt
    prefix = f"{name}-{path_hash}-"
    first_naming = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.pt")
    for other in file.parent.iterdir():
        if other == file or not (other.name.startswith(prefix)
                                 or first_naming.fullmatch(other.name)):
            continue
        try:
            if other.suffix == ".pt" or (
                    other.suffix == ".tmp" and time.time() - other.stat().st_mtime > 3600):
                other.unlink()
        except OSError:  # removed by another process already, or not ours to remove
            pass


# --- splitting and made-up data -------------------------------------------------------------

def train_val_split(split: Split, val_size: int = 5000, seed: int = 0) -> tuple[Split, Split]:
    """Hold out ``val_size`` samples for validation, the same number from each class up to
    rounding (stratified), chosen with ``seed``. Returns (train, val), each in original order.

    Choose hyper-parameters on val; report the test split once, at the end.
    """
    n = len(split)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} for a split of {n}, "
                         f"got {val_size}")
    labels = split.labels.cpu()  # the split may live on a GPU; its indices are made here
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, shuffled within
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    share = counts.double() * val_size / n  # each class's exact share of the validation set
    quota = share.floor().long()
    leftover = val_size - int(quota.sum())
    quota[torch.argsort(share - quota, descending=True, stable=True)[:leftover]] += 1
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[labels[order]]  # position within its class
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[order] = rank < quota[labels[order]]
    return split.subset(torch.where(~is_val)[0]), split.subset(torch.where(is_val)[0])


def synthetic_cifar(
    n_train: int = 512, n_test: int = 256, seed: int = 0, num_classes: int = 10
) -> CIFAR10:
    """Made-up 32×32 data that a small model learns in seconds, for runs without real data.

    Class c is a wave pattern with its own colour and stripe direction, at a random phase,
    plus pixel noise.
    """
    generator = torch.Generator().manual_seed(seed)
    hue = torch.arange(num_classes) / num_classes
    palette = 0.5 + 0.5 * torch.cos(2 * torch.pi * (hue[:, None] + torch.tensor([0, 1, 2]) / 3))
    angle = torch.arange(num_classes) * torch.pi / num_classes
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def make(n: int) -> Split:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        phase = 2 * torch.pi * torch.rand(n, 1, 1, generator=generator)
        cos, sin = angle[labels].cos()[:, None, None], angle[labels].sin()[:, None, None]
        direction = xs * cos + ys * sin  # distance along the class's stripe direction
        wave = torch.sin(2 * torch.pi * direction / 8 + phase)  # (n, 32, 32)
        images = palette[labels][:, :, None, None] * (0.65 + 0.3 * wave[:, None])  # (n, 3, 32, 32)
        images = images + 0.08 * torch.randn(images.shape, generator=generator)
        return Split((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    return CIFAR10(make(n_train), make(n_test), [f"pattern {c}" for c in range(num_classes)],
                   source="made-up images")
