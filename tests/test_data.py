"""vitlib.data: every source layout, the cache, safe archive reading, helpful errors, splits."""

import io
import os
import pickle
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlib import data
from vitlib.data import (
    CIFAR10_CLASSES,
    Split,
    default_source,
    load_cifar10,
    synthetic_cifar,
    train_val_split,
)

PER_BATCH = 6  # images in each fake pickled batch
posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX files and permissions")


# --- fake data ------------------------------------------------------------------------------

def fake_batches(bytes_keys: bool = False) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Pickled batches named and keyed like the real ones, and the arrays inside them."""
    rng = np.random.default_rng(0)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    files, arrays = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, PER_BATCH).tolist()
        batch = {key("batch_label"): name, key("labels"): labels, key("data"): images,
                 key("filenames"): [f"{i}.png" for i in range(PER_BATCH)]}
        files[name] = pickle.dumps(batch, protocol=2)
        arrays[name] = (images, labels)
    files["batches.meta"] = pickle.dumps(
        {key("label_names"): list(CIFAR10_CLASSES), key("num_vis"): 3072}, protocol=2)
    return files, arrays


def write_batches(folder: Path, bytes_keys: bool = False) -> dict:
    folder.mkdir(parents=True)
    files, arrays = fake_batches(bytes_keys)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return arrays


def expected_batches(arrays: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train = [arrays[f"data_batch_{i}"] for i in range(1, 6)]
    train_x = torch.from_numpy(np.concatenate([x for x, _ in train])).view(-1, 3, 32, 32)
    train_y = torch.tensor([y for _, ys in train for y in ys])
    test_x = torch.from_numpy(arrays["test_batch"][0]).view(-1, 3, 32, 32)
    return train_x, train_y, test_x, torch.tensor(arrays["test_batch"][1])


def write_image_tree(root: Path, classes=CIFAR10_CLASSES, per_class=(2, 1), fmt="png",
                     size=32) -> dict[str, np.ndarray]:
    """root/{train,test}/<class>/<i>.<fmt> of random pixels; returns path -> (H, W, 3) array."""
    rng = np.random.default_rng(1)
    pixels = {}
    for split, count in zip(("train", "test"), per_class, strict=True):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                path = root / split / c / f"{i:04d}.{fmt}"
                Image.fromarray(array).save(path, **({"quality": 95} if fmt == "jpg" else {}))
                pixels[f"{split}/{c}/{i:04d}.{fmt}"] = array
    return pixels


def make_tar(path: Path, folder: Path, arcname: str, fmt=tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w", format=fmt) as tar:
        tar.add(folder, arcname=arcname)
    return path


def check_image_split(split: Split, pixels: dict, prefix: str, classes: list[str]) -> None:
    names = sorted((k for k in pixels if k.startswith(prefix)),
                   key=lambda k: (classes.index(k.split("/")[1]), k))
    assert split.images.dtype == torch.uint8 and split.images.shape == (len(names), 3, 32, 32)
    for i, name in enumerate(names):
        assert torch.equal(split.images[i], torch.from_numpy(pixels[name]).permute(2, 0, 1))
        assert split.labels[i] == classes.index(name.split("/")[1])


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --- each layout ----------------------------------------------------------------------------

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_batches_folder_and_torchvision_root(tmp_path, cache, bytes_keys):
    arrays = write_batches(tmp_path / "root" / "cifar-10-batches-py", bytes_keys)
    train_x, train_y, test_x, test_y = expected_batches(arrays)
    for source in (tmp_path / "root" / "cifar-10-batches-py", tmp_path / "root"):
        d = load_cifar10(source, cache_dir=cache)
        assert torch.equal(d.train.images, train_x) and torch.equal(d.train.labels, train_y)
        assert torch.equal(d.test.images, test_x) and torch.equal(d.test.labels, test_y)
        assert d.classes == CIFAR10_CLASSES and d.train.labels.dtype == torch.int64


def test_batches_pickled_with_protocol_5(tmp_path, cache):
    files, arrays = fake_batches()
    (tmp_path / "b").mkdir()
    for name, blob in files.items():  # protocol 5 pickles arrays through numpy's _frombuffer
        (tmp_path / "b" / name).write_bytes(pickle.dumps(pickle.loads(blob), protocol=5))
    d = load_cifar10(tmp_path / "b", cache_dir=cache)
    train_x, train_y, test_x, test_y = expected_batches(arrays)
    assert torch.equal(d.train.images, train_x) and torch.equal(d.test.labels, test_y)


def test_label_names_pickled_as_bytes(tmp_path, cache):
    write_batches(tmp_path / "b")
    names = {"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    (tmp_path / "b" / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))
    assert load_cifar10(tmp_path / "b", cache_dir=cache).classes == CIFAR10_CLASSES


def test_class_names_come_from_batches_meta(tmp_path, cache):
    write_batches(tmp_path / "b")
    names = [f"kind {i}" for i in range(10)]
    (tmp_path / "b" / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    assert load_cifar10(tmp_path / "b", cache_dir=cache).classes == names


def test_python_tarball(tmp_path, cache):
    arrays = write_batches(tmp_path / "cifar-10-batches-py", bytes_keys=True)
    archive = make_tar(tmp_path / "cifar-10-python.tar.gz", tmp_path / "cifar-10-batches-py",
                       "cifar-10-batches-py", fmt=tarfile.GNU_FORMAT)
    d = load_cifar10(archive, cache_dir=cache)
    train_x, train_y, test_x, test_y = expected_batches(arrays)
    assert torch.equal(d.train.images, train_x) and torch.equal(d.test.labels, test_y)
    assert len(d.train) == 5 * PER_BATCH and len(d.test) == PER_BATCH


def test_image_folder_png_exact(tmp_path, cache):
    pixels = write_image_tree(tmp_path / "tree")
    d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    assert d.classes == CIFAR10_CLASSES
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)
    check_image_split(d.test, pixels, "test/", CIFAR10_CLASSES)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_image_archive_with_wrapper_folder(tmp_path, cache, suffix):
    pixels = write_image_tree(tmp_path / "tree")
    archive = make_tar(tmp_path / f"images{suffix}", tmp_path / "tree", "cifar10")
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)
    check_image_split(d.test, pixels, "test/", CIFAR10_CLASSES)


def test_long_member_names_go_through_tarfile(tmp_path, cache):
    """Paths over 100 characters need pax headers, which the fast reader leaves to tarfile."""
    pixels = write_image_tree(tmp_path / "tree", per_class=(1, 1))
    wrapper = "w" * 120
    archive = make_tar(tmp_path / "long.tar.gz", tmp_path / "tree", wrapper)
    assert data._ustar_members(data.gzip.decompress(archive.read_bytes()), archive) is None
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)


@pytest.mark.parametrize("wrapper", [82, 101])
def test_long_member_names_split_in_ustar_headers(tmp_path, cache, wrapper):
    """Plain ustar stores a path of over 100 characters as a prefix and a name: with a wrapper
    folder of 82 characters most image paths are split, a few (test/cat/..., test/dog/...) are
    not; with 101, a folder's whole path goes into the prefix and its name field is empty."""
    pixels = write_image_tree(tmp_path / "tree", per_class=(1, 1))
    archive = make_tar(tmp_path / "long.tar", tmp_path / "tree", "w" * wrapper,
                       fmt=tarfile.USTAR_FORMAT)
    assert data._ustar_members(archive.read_bytes(), archive) is not None  # the fast reader
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)
    check_image_split(d.test, pixels, "test/", CIFAR10_CLASSES)


def test_jpeg_tree_matches_pil(tmp_path, cache, monkeypatch):
    pixels = write_image_tree(tmp_path / "tree", per_class=(2, 1), fmt="jpg")
    archive = make_tar(tmp_path / "j.tar.gz", tmp_path / "tree", ".")
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    assert d.train.images.shape == (20, 3, 32, 32) and d.test.images.shape == (10, 3, 32, 32)
    first = np.asarray(Image.open(tmp_path / "tree" / "train" / "airplane" / "0000.jpg"))
    decoded = d.train.images[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(decoded - first).max() <= 2  # two JPEG decoders agree to rounding
    assert np.abs(decoded - pixels["train/airplane/0000.jpg"]).mean() > 1  # and it is lossy
    monkeypatch.setattr(data, "_jpeg_decoder", lambda: None)  # without torchvision's decoder
    with_pil = load_cifar10(archive, cache_dir=tmp_path / "cache2", progress=False)
    assert (with_pil.train.images.int() - d.train.images.int()).abs().max() <= 2


def test_other_classes_load_sorted(tmp_path, cache):
    pixels = write_image_tree(tmp_path / "tree", classes=["zebra", "apple", "mango"])
    d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    assert d.classes == ["apple", "mango", "zebra"]
    check_image_split(d.train, pixels, "train/", d.classes)


def test_hidden_and_non_image_files_are_ignored(tmp_path, cache):
    pixels = write_image_tree(tmp_path / "tree", per_class=(1, 1))
    (tmp_path / "tree" / "train" / "cat" / "._0000.png").write_bytes(b"resource fork")
    (tmp_path / "tree" / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)


def test_folder_wrapping_the_tree_next_to_hidden_folders(tmp_path, cache):
    pixels = write_image_tree(tmp_path / "outer" / "cifar10", per_class=(1, 1))
    (tmp_path / "outer" / ".ipynb_checkpoints").mkdir()
    d = load_cifar10(tmp_path / "outer", cache_dir=cache, progress=False)
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)
    check_image_split(d.test, pixels, "test/", CIFAR10_CLASSES)


@posix_only
def test_links_and_pipes_that_are_no_image_files_are_skipped(tmp_path, cache):
    pixels = write_image_tree(tmp_path / "tree", per_class=(1, 1))
    cat = tmp_path / "tree" / "train" / "cat"
    (cat / ".#notes.txt").symlink_to("user@host.1234:1700000000")  # an editor's lock file
    (cat / "gone.png").symlink_to(tmp_path / "deleted.png")
    os.mkfifo(cat / "pipe.png")
    # a reader that opened the pipe would get an empty file from this writer, not hang
    writer = threading.Thread(target=lambda: open(cat / "pipe.png", "wb").close(), daemon=True)
    writer.start()
    try:
        d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    finally:
        os.close(os.open(cat / "pipe.png", os.O_RDONLY | os.O_NONBLOCK))  # lets the writer end
        writer.join()
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)


def test_linked_class_folders_are_followed(tmp_path, cache, monkeypatch):
    pixels = write_image_tree(tmp_path / "tree", per_class=(1, 1))
    (tmp_path / "tree" / "train" / "cat").rename(tmp_path / "cats")
    (tmp_path / "tree" / "train" / "cat").symlink_to(tmp_path / "cats", target_is_directory=True)
    (tmp_path / "cats" / "loop").symlink_to(tmp_path / "tree", target_is_directory=True)
    d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    check_image_split(d.train, pixels, "train/", CIFAR10_CLASSES)  # the cycle read no file twice
    check_image_split(d.test, pixels, "test/", CIFAR10_CLASSES)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "_decode_images", no_decoding)
    os.utime(tmp_path / "cats" / "0000.png", ns=(0, 10**18))  # a file behind the link changes
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10(tmp_path / "tree", cache_dir=cache)


def test_16_bit_greyscale_png_is_scaled_to_8_bits(tmp_path, cache):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(1, 1))
    grey = np.random.default_rng(2).integers(0, 65536, (32, 32), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "tree" / "train" / "a" / "0000.png")
    d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    high_bytes = torch.from_numpy(grey >> 8).to(torch.uint8)
    assert torch.equal(d.train.images[0], high_bytes.expand(3, -1, -1))


def test_images_of_more_than_8_bits_of_unknown_range_are_refused(tmp_path, cache):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(1, 1))
    floats = Image.fromarray(np.full((32, 32), 1000.0, dtype=np.float32))
    floats.save(tmp_path / "tree" / "train" / "a" / "0000.png", format="TIFF")  # misnamed
    with pytest.raises(ValueError, match=r"train/a/0000.png has floating-point pixels \(PIL mode F"
                       r"\).*8 bits per channel"):
        load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)


# --- default source -------------------------------------------------------------------------

def test_default_source(tmp_path, monkeypatch):
    monkeypatch.delenv("VITLIB_DATA", raising=False)
    monkeypatch.delenv("VITLIB_CACHE", raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # found from a subfolder of the project too
    with pytest.raises(ValueError, match="VITLIB_DATA.*VITLIB_DATA=/path/to/cifar-10-python.tar.gz"
                       ".*data.*download=True"):
        default_source()
    assert default_source(download=True) == tmp_path / "data"
    monkeypatch.setenv("VITLIB_DATA", "cifar10-jepg.tar.gz")  # a typo is never downloaded into
    with pytest.raises(FileNotFoundError, match="VITLIB_DATA=cifar10-jepg.tar.gz names .* does"):
        default_source(download=True)
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "runs"))  # a folder, but not CIFAR-10
    with pytest.raises(ValueError, match="runs is not a CIFAR-10 folder.*VITLIB_DATA names it, so "
                       "nothing is downloaded into it.*unset it") as error:
        load_cifar10(download=True)
    assert "pass download=True" not in str(error.value)
    assert list((tmp_path / "runs").iterdir()) == []  # nothing downloaded into it
    monkeypatch.delenv("VITLIB_DATA")
    write_batches(tmp_path / "data" / "cifar-10-batches-py")
    (tmp_path / "data" / "cache").mkdir()
    assert default_source() == tmp_path / "data"
    d = load_cifar10()  # reads data/, caches in data/cache
    assert len(d.train) == 5 * PER_BATCH and list((tmp_path / "data" / "cache").glob("*.pt"))
    monkeypatch.setenv("VITLIB_DATA", "elsewhere/x.tar.gz")  # relative to the project
    with pytest.raises(FileNotFoundError, match="elsewhere/x.tar.gz, which does not exist"):
        load_cifar10()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.tar.gz").write_bytes(b"")
    assert default_source() == tmp_path / "elsewhere" / "x.tar.gz"


def test_default_source_passes_over_archives_without_cifar10(tmp_path, monkeypatch):
    monkeypatch.delenv("VITLIB_DATA", raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "runs").mkdir(parents=True)
    tar_with(tmp_path / "data" / "backup.tar.gz", [(tarfile.TarInfo("notes/a.txt"), b"x")])
    (tmp_path / "data" / "broken.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match=r"no CIFAR-10 data found in .*data \(skipped, .*: "
                       r"backup.tar.gz, broken.tgz, runs/\)"):
        default_source()
    write_image_tree(tmp_path / "tree", per_class=(1, 1))
    make_tar(tmp_path / "data" / "mine.tar", tmp_path / "tree", ".")
    assert default_source() == tmp_path / "data" / "mine.tar"
    make_tar(tmp_path / "data" / "zoo.tar", tmp_path / "tree", ".")
    make_tar(tmp_path / "data" / "cifar10-jpeg.tar.gz", tmp_path / "tree", ".")
    assert default_source() == tmp_path / "data" / "cifar10-jpeg.tar.gz"  # the known name first


# --- cache ----------------------------------------------------------------------------------

def test_second_load_reads_the_cache(tmp_path, cache, monkeypatch):
    write_image_tree(tmp_path / "tree", per_class=(1, 1))
    archive = make_tar(tmp_path / "a.tar.gz", tmp_path / "tree", "tree")
    first = load_cifar10(archive, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data, "_decode_images", no_decoding)
    second = load_cifar10(archive, cache_dir=cache)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert first.classes == second.classes

    os.utime(archive, ns=(0, 10**18))  # a changed source is decoded again
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10(archive, cache_dir=cache)


def test_loaded_data_records_where_it_came_from(tmp_path, cache):
    write_batches(tmp_path / "b")
    decoded = load_cifar10(tmp_path / "b", cache_dir=cache)
    cached = load_cifar10(tmp_path / "b", cache_dir=cache)
    assert decoded.source == cached.source == "b"  # a name: checkpoints keep no local paths
    assert synthetic_cifar(8, 8).source == "made-up images"


def test_cache_keeps_one_file_per_source(tmp_path, cache):
    for folder in ("x", "y"):  # two sources of the same name
        write_batches(tmp_path / folder / "b")
        load_cifar10(tmp_path / folder / "b", cache_dir=cache)
    first_x = data._cache_file("batches-folder", tmp_path / "x" / "b", cache)
    assert len(list(cache.iterdir())) == 2 and first_x.is_file()
    killed = first_x.with_name(first_x.name + ".0123.tmp")  # from a process killed while saving
    killed.write_bytes(b"half a cache")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    writing = first_x.with_name(first_x.name + ".4567.tmp")  # another process saving now
    writing.write_bytes(b"half a cache")
    os.utime(tmp_path / "x" / "b" / "data_batch_1", ns=(0, 10**18))  # x changes
    load_cifar10(tmp_path / "x" / "b", cache_dir=cache)
    caches = {data._cache_file("batches-folder", tmp_path / folder / "b", cache)
              for folder in ("x", "y")}
    assert set(cache.iterdir()) == caches | {writing}  # first_x and killed are gone


def test_cache_removes_files_in_the_first_naming_of_its_source_only(tmp_path, cache):
    cache.mkdir(parents=True, exist_ok=True)
    first_naming = cache / "b-0123456789abcdef.pt"  # <source name>-<one hash>.pt, never read
    others = [cache / name for name in (
        "bb-0123456789abcdef.pt",  # another source's name
        "b-0123456789abcdef.pt.bak", "b-not-a-hash-at-all.pt", "b-0123456789ABCDEF.pt",
    )]
    for file in [first_naming, *others]:
        file.write_bytes(b"an old cache")
    write_batches(tmp_path / "b")
    load_cifar10(tmp_path / "b", cache_dir=cache)
    assert not first_naming.exists()
    assert all(file.exists() for file in others)


def test_cache_notices_a_file_replaced_with_the_same_time(tmp_path, cache):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(1, 1))
    load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    image = tmp_path / "tree" / "train" / "a" / "0000.png"
    stat = image.stat()
    image.write_bytes(png_bytes(255))  # other contents, of another size ...
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... but the old time (cp -p)
    d = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    assert bool((d.train.images[0] == 255).all())


def test_cache_notices_an_image_moved_to_another_class(tmp_path, cache):
    tree = tmp_path / "tree"
    for name in ("train/a/0.png", "train/a/1.png", "train/b/0.png", "test/a/0.png",
                 "test/b/0.png"):  # identical files with identical times
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(png_bytes(7))
        os.utime(tree / name, ns=(10**18, 10**18))
    first = load_cifar10(tree, cache_dir=cache, progress=False)
    assert torch.bincount(first.train.labels).tolist() == [2, 1]
    (tree / "train" / "a" / "1.png").rename(tree / "train" / "b" / "1.png")  # relabelled
    second = load_cifar10(tree, cache_dir=cache, progress=False)
    assert torch.bincount(second.train.labels).tolist() == [1, 2]


@posix_only
def test_cache_file_is_as_readable_as_the_umask_allows(tmp_path, cache):
    write_batches(tmp_path / "b")
    umask = os.umask(0o022)
    try:
        load_cifar10(tmp_path / "b", cache_dir=cache)
    finally:
        os.umask(umask)
    (cache_file,) = cache.iterdir()
    assert cache_file.stat().st_mode & 0o777 == 0o644  # others sharing the cache can read it


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    write_batches(tmp_path / "b")
    monkeypatch.setenv("VITLIB_CACHE", str(tmp_path / "env-cache"))
    load_cifar10(tmp_path / "b")
    assert len(list((tmp_path / "env-cache").glob("*.pt"))) == 1


def test_failed_cache_write_leaves_no_partial_file(tmp_path, cache, monkeypatch):
    write_batches(tmp_path / "b")
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a cache")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match="could not write the cache"):
        d = load_cifar10(tmp_path / "b", cache_dir=cache)
    assert len(d.train) == 5 * PER_BATCH  # the load itself still works
    assert list(cache.iterdir()) == []

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a cache")
        raise KeyboardInterrupt

    def zip_writer_disk_full(obj, f, *args, **kwargs):  # how torch.save reports a full disk
        f.write(b"half a cache")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", zip_writer_disk_full)
    with pytest.warns(UserWarning, match="could not write the cache.*unexpected pos"):
        d = load_cifar10(tmp_path / "b", cache_dir=cache)
    assert len(d.train) == 5 * PER_BATCH
    assert list(cache.iterdir()) == []

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        load_cifar10(tmp_path / "b", cache_dir=cache)
    assert list(cache.iterdir()) == []

    monkeypatch.setattr(torch, "save", real_save)
    load_cifar10(tmp_path / "b", cache_dir=cache)
    (cache_file,) = cache.iterdir()
    cache_file.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable cache"):
        d = load_cifar10(tmp_path / "b", cache_dir=cache)
    assert len(d.test) == PER_BATCH


# --- safety ---------------------------------------------------------------------------------

def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, blob in members:
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob) if blob else None)
    return path


def png_bytes(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.png", "train/../../evil.png", "/abs/evil.png"])
def test_archive_refuses_paths_leaving_its_folder(tmp_path, cache, name):
    archive = tar_with(tmp_path / "bad.tar.gz", [(tarfile.TarInfo("train/cat/ok.png"), png_bytes()),
                                                  (tarfile.TarInfo(name), png_bytes())])
    with pytest.raises(ValueError, match=f"refusing archive member '{name}'.*leaves"):
        load_cifar10(archive, cache_dir=cache)


def test_archive_refuses_links(tmp_path, cache):
    link = tarfile.TarInfo("train/cat/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tar_with(tmp_path / "link.tar.gz", [(link, b"")])
    with pytest.raises(ValueError, match="'train/cat/link.png'.*is a link"):
        load_cifar10(archive, cache_dir=cache)


@pytest.mark.parametrize("wrapper", ["tree", "w" * 120])  # the fast reader, and tarfile
def test_later_archive_member_replaces_an_earlier_one(tmp_path, cache, wrapper):
    archive = tar_with(tmp_path / "a.tar.gz", [
        (tarfile.TarInfo(f"{wrapper}/train/a/0.png"), png_bytes(0)),
        (tarfile.TarInfo(f"{wrapper}/test/a/0.png"), png_bytes(0)),
        (tarfile.TarInfo(f"./{wrapper}/train/a/0.png"), png_bytes(255)),  # as `tar uf` adds it
    ])
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    assert len(d.train) == 1 and bool((d.train.images == 255).all())


@pytest.mark.parametrize("wrapper", ["tree", "w" * 120])
def test_hard_link_to_an_earlier_member_reads_its_contents(tmp_path, cache, wrapper):
    link = tarfile.TarInfo(f"{wrapper}/train/a/1.png")
    link.type, link.linkname = tarfile.LNKTYPE, f"./{wrapper}/train/a/0.png"
    archive = tar_with(tmp_path / "a.tar.gz", [
        (tarfile.TarInfo(f"{wrapper}/train/a/0.png"), png_bytes(255)), (link, b""),
        (tarfile.TarInfo(f"{wrapper}/test/a/0.png"), png_bytes(0)),
    ])
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    assert len(d.train) == 2 and bool((d.train.images == 255).all())


@pytest.mark.parametrize(("target", "error"), [
    ("train/a/later.png", "'train/a/1.png'.*hard link to 'train/a/later.png'.*--hard-dereference"),
    ("../outside.png", "'train/a/1.png'.*links to '../outside.png', which leaves"),
    ("/etc/passwd", "'train/a/1.png'.*links to '/etc/passwd', which leaves"),
])
def test_archive_refuses_other_hard_links(tmp_path, cache, target, error):
    link = tarfile.TarInfo("train/a/1.png")
    link.type, link.linkname = tarfile.LNKTYPE, target
    archive = tar_with(tmp_path / "a.tar.gz", [(tarfile.TarInfo("train/a/0.png"), png_bytes()),
                                               (link, b""),
                                               (tarfile.TarInfo("train/a/later.png"), png_bytes())])
    with pytest.raises(ValueError, match=error):
        load_cifar10(archive, cache_dir=cache)


def test_hidden_files_and_folders_in_an_archive_are_ignored(tmp_path, cache):
    archive = tar_with(tmp_path / "a.tar.gz", [
        (tarfile.TarInfo("train/a/0.png"), png_bytes(1)),
        (tarfile.TarInfo("train/a/._0.png"), b"macOS resource fork"),
        (tarfile.TarInfo("train/.ipynb_checkpoints/0.png"), png_bytes(2)),
        (tarfile.TarInfo("test/a/0.png"), png_bytes(3)),
    ])
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    assert d.classes == ["a"] and len(d.train) == 1 and bool((d.train.images == 1).all())


def test_archive_with_two_image_trees_is_refused(tmp_path, cache):
    archive = tar_with(tmp_path / "a.tar.gz", [
        (tarfile.TarInfo(f"{tree}/{split}/a/0.png"), png_bytes())
        for tree in ("old", "new") for split in ("train", "test")
    ])
    with pytest.raises(ValueError, match=r"several image-folder trees \(new, old\)"):
        load_cifar10(archive, cache_dir=cache, progress=False)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_archives_made_by_the_tar_command(tmp_path, cache):
    write_image_tree(tmp_path / "tree", per_class=(1, 1))
    cat = tmp_path / "tree" / "test" / "cat"
    (cat / "0001.png").hardlink_to(cat / "0000.png")  # archived as a link to the other name
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "cf", archive, "-C", tmp_path / "tree", "."], check=True)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    white.save(tmp_path / "tree" / "test" / "dog" / "0000.png")
    subprocess.run(["tar", "rf", archive, "-C", tmp_path / "tree", "./test/dog/0000.png"],
                   check=True)  # a second, later copy of the dog image
    with tarfile.open(archive) as tar:
        assert any(tar.getmember(f"./test/cat/{name}").islnk() for name in ("0000.png", "0001.png"))
    d = load_cifar10(archive, cache_dir=cache, progress=False)
    cats = CIFAR10_CLASSES.index("cat")
    assert len(d.test) == 11 and torch.equal(d.test.images[cats], d.test.images[cats + 1])
    assert bool((d.test.images[CIFAR10_CLASSES.index("dog") + 1] == 255).all())


@pytest.mark.parametrize(("wrapper", "fmt"), [("tree", tarfile.USTAR_FORMAT),  # the fast reader
                                           ("w" * 120, tarfile.PAX_FORMAT)])  # and tarfile
def test_tar_cut_short_on_a_block_boundary(tmp_path, cache, wrapper, fmt):
    write_image_tree(tmp_path / "tree", per_class=(1, 1))
    archive = make_tar(tmp_path / "a.tar", tmp_path / "tree", wrapper, fmt=fmt)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: -(-len(raw.rstrip(b"\0")) // 512) * 512])  # the last member's end
    with pytest.raises(ValueError, match="a.tar ends without tar's end-of-archive marker, so it "
                       r"seems cut short \(an interrupted copy or download\); copy it again"):
        load_cifar10(archive, cache_dir=cache)


def test_batches_refuse_pickled_code(tmp_path, cache):
    files, _ = fake_batches()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    files["data_batch_3"] = pickle.dumps({"data": Exploit(), "labels": []})
    (tmp_path / "b").mkdir()
    for name, blob in files.items():
        (tmp_path / "b" / name).write_bytes(blob)
    with pytest.raises(ValueError, match="data_batch_3.*not a readable CIFAR-10 batch.*system"):
        load_cifar10(tmp_path / "b", cache_dir=cache)


# --- helpful errors -------------------------------------------------------------------------

def test_missing_path(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist.*cifar-10-batches-py"):
        load_cifar10(tmp_path / "nowhere", cache_dir=cache)


def test_unknown_layouts(tmp_path, cache):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"not a CIFAR-10 folder \(found: readme.txt\).*accepted"):
        load_cifar10(tmp_path / "folder", cache_dir=cache)
    (tmp_path / "data.zip").write_bytes(b"PK\x03\x04 not a tar")
    with pytest.raises(ValueError, match="not a tar archive.*unzip it"):
        load_cifar10(tmp_path / "data.zip", cache_dir=cache)
    archive = tar_with(tmp_path / "other.tar.gz", [(tarfile.TarInfo("notes/a.txt"), b"x")])
    with pytest.raises(ValueError, match="found no CIFAR-10 data.*notes/a.txt.*accepted"):
        load_cifar10(archive, cache_dir=cache)


def test_truncated_archive(tmp_path, cache):
    write_image_tree(tmp_path / "tree", per_class=(1, 1))
    archive = make_tar(tmp_path / "a.tar.gz", tmp_path / "tree", "tree")
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar10(archive, cache_dir=cache)


def test_missing_batch(tmp_path, cache):
    write_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_4").unlink()
    with pytest.raises(ValueError, match="lacks the CIFAR-10 batches data_batch_4"):
        load_cifar10(tmp_path / "b", cache_dir=cache)


def test_classes_differ_between_splits(tmp_path, cache):
    write_image_tree(tmp_path / "tree", classes=["apple", "mango"], per_class=(1, 1))
    (tmp_path / "tree" / "test" / "mango" / "0000.png").rename(tmp_path / "x.png")
    (tmp_path / "tree" / "test" / "mango").rmdir()
    with pytest.raises(ValueError, match=r"differ between train and test.*train: \['mango'\]"):
        load_cifar10(tmp_path / "tree", cache_dir=cache)


def test_almost_cifar_classes(tmp_path, cache):
    classes = [*CIFAR10_CLASSES[:-1], "truk"]
    write_image_tree(tmp_path / "tree", classes=classes, per_class=(1, 1))
    with pytest.raises(ValueError, match=r"look like CIFAR-10 but are missing \['truck'\].*'truk'"):
        load_cifar10(tmp_path / "tree", cache_dir=cache)


def test_wrong_image_size(tmp_path, cache):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(1, 1), size=16)
    with pytest.raises(ValueError, match=r"train/a/0000.png is 16×16 pixels.*resize"):
        load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_of_wrong_height_is_named(tmp_path, cache, fmt):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(1, 1), fmt=fmt)
    Image.new("RGB", (32, 16)).save(tmp_path / "tree" / "train" / "b" / f"0000.{fmt}")
    with pytest.raises(ValueError, match=rf"train/b/0000.{fmt} is 32×16 pixels.*resize"):
        load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)


@pytest.mark.parametrize("blob", [b"not an image at all", b"\xff\xd8\xff\xe0 broken jpeg"])
def test_unreadable_image_is_named(tmp_path, cache, blob):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(2, 1))
    (tmp_path / "tree" / "train" / "b" / "bad.jpg").write_bytes(blob)
    with pytest.raises(ValueError, match="cannot read image train/b/bad.jpg"):
        load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)


def test_empty_split(tmp_path, cache):
    write_image_tree(tmp_path / "tree", classes=["a", "b"], per_class=(1, 0))
    with pytest.raises(ValueError, match="test split .* is empty"):
        load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)


# --- download -------------------------------------------------------------------------------

def test_offline_download_gives_local_options(tmp_path, cache, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(RuntimeError, match="could not download.*URLError.*VITLIB_DATA.*tar.gz.*"
                       "VITLIB_DATA=/path/to/copy jupyter lab.*%env VITLIB_DATA=/path/to/copy"):
        load_cifar10(tmp_path / "root", cache_dir=cache, download=True)


def test_download_then_read(tmp_path, cache, monkeypatch):
    import torchvision.datasets

    class FakeDownload:
        def __init__(self, root, train=True, download=False):
            write_batches(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeDownload)
    d = load_cifar10(tmp_path / "root", cache_dir=cache, download=True)
    assert len(d.train) == 5 * PER_BATCH and d.classes == CIFAR10_CLASSES


def test_processes_downloading_together_never_share_a_file(tmp_path, cache, monkeypatch):
    # torchrun on a fresh machine: every process downloads; each writes its own folder, the
    # first one moved into place wins and the others keep it
    import torchvision.datasets

    roots = []

    class FakeDownload:
        def __init__(self, root, train=True, download=False):
            roots.append(Path(root))
            write_batches(Path(root) / "cifar-10-batches-py")
            if len(roots) == 1:  # another process finishes first, while this one downloads
                write_batches(tmp_path / "root" / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeDownload)
    first = load_cifar10(tmp_path / "root", cache_dir=cache, download=True)
    assert roots[0] != tmp_path / "root" and roots[0].parent == tmp_path / "root"
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["cifar-10-batches-py"]
    assert len(first.train) == 5 * PER_BATCH

# --- splits and synthetic data --------------------------------------------------------------

def numbered_split(labels: list[int]) -> Split:
    """Images whose first two pixels spell their index, so splits can be traced back."""
    n = len(labels)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) // 256
    images[:, 0, 0, 1] = torch.arange(n) % 256
    return Split(images, torch.tensor(labels))


def indices(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() * 256 + split.images[:, 0, 0, 1].long()).tolist()


def test_train_val_split():
    labels = [c for c in range(10) for _ in range(100 + 10 * c)]  # unbalanced: 100..190
    split = numbered_split(labels)
    train, val = train_val_split(split, val_size=290, seed=0)
    assert len(train) + len(val) == len(split) and len(val) == 290
    assert sorted(indices(train) + indices(val)) == list(range(len(split)))  # disjoint, complete
    expected = torch.bincount(split.labels) * 290 / len(split)
    assert (torch.bincount(val.labels, minlength=10) - expected).abs().max() < 1  # stratified
    assert torch.equal(val.labels, split.labels[indices(val)])
    assert indices(train) == sorted(indices(train)) and indices(val) == sorted(indices(val))
    again, val_again = train_val_split(split, val_size=290, seed=0)
    assert indices(val_again) == indices(val)
    assert indices(train_val_split(split, val_size=290, seed=1)[1]) != indices(val)
    with pytest.raises(ValueError, match="val_size must be between 1 and"):
        train_val_split(split, val_size=len(split))


def test_split_checks_and_subset():
    split = numbered_split([0, 1, 2, 3, 4, 5])
    assert indices(split.subset([4, 1])) == [4, 1]
    drawn = split.subset(3, seed=0)
    assert len(drawn) == 3 and indices(drawn) == indices(split.subset(3, seed=0))
    with pytest.raises(ValueError, match="uint8"):
        Split(split.images.float(), split.labels)
    with pytest.raises(ValueError, match="one label per image"):
        Split(split.images, split.labels[:3])


def test_subset_draws_at_random_by_seed():
    split = numbered_split([c for c in range(5) for _ in range(20)])  # sorted by class
    drawn = split.subset(10, seed=0)
    assert len(set(drawn.labels.tolist())) > 1  # not the first 10, all of class 0
    assert indices(split.subset(10, seed=1)) != indices(drawn)
    assert sorted(indices(split.subset(len(split)))) == list(range(len(split)))  # all, shuffled
    with pytest.raises(ValueError, match="cannot draw 101 samples from a split of 100"):
        split.subset(len(split) + 1)


def test_synthetic_cifar_is_learnable_and_seeded():
    d = synthetic_cifar(n_train=300, n_test=100, seed=0)
    assert d.train.images.shape == (300, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert len(d.test) == 100 and len(d.classes) == 10
    assert torch.bincount(d.train.labels).tolist() == [30] * 10
    assert torch.equal(d.train.images, synthetic_cifar(300, 100, seed=0).train.images)
    assert not torch.equal(d.train.images, synthetic_cifar(300, 100, seed=1).train.images)
    # a nearest-class-mean classifier already separates the classes
    x_train, x_test = d.train.images.flatten(1).float(), d.test.images.flatten(1).float()
    means = torch.stack([x_train[d.train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert (predicted == d.test.labels).float().mean() > 0.9


# --- the real shared archive ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(os.environ.get("VITLIB_DATA", "")),
                    reason="set VITLIB_DATA to the CIFAR-10 archive to run this test")
def test_real_cifar10_archive():
    d = load_cifar10(progress=False)  # from $VITLIB_DATA, cached under the project's data/cache
    assert d.classes == CIFAR10_CLASSES
    assert d.train.images.shape == (50_000, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert d.test.images.shape == (10_000, 3, 32, 32) and d.test.labels.dtype == torch.int64
    assert torch.bincount(d.train.labels).tolist() == [5000] * 10
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10
    means = d.train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.01)
