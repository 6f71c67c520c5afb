"""The notebooks' shared support: course.setup, course.load_data, course.check_shape, viz."""

import random
import urllib.error

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import vitlib
import vitlib.data
from vitlib import course, viz


@pytest.fixture(autouse=True)
def agg_backend():
    plt.switch_backend("Agg")  # no windows, whatever the machine
    yield
    plt.close("all")


# --- setup ----------------------------------------------------------------------------------


def test_setup_reports_device_and_versions_on_one_line(capsys):
    device = course.setup(seed=0)
    out = capsys.readouterr().out
    assert isinstance(device, torch.device)
    assert out.count("\n") == 1
    assert torch.__version__ in out and vitlib.__version__ in out
    assert ("cpu" in out) == (device.type == "cpu")


def test_setup_seeds_python_numpy_and_torch(capsys):
    def draws():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    course.setup(seed=7)
    first = draws()
    course.setup(seed=7)
    assert draws() == first
    course.setup(seed=8)
    assert draws() != first


def test_pick_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert course.pick_device().type == "cuda"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert course.pick_device().type == "cuda"  # a CUDA GPU first, even beside MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert course.pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert course.pick_device().type == "cpu"


def test_setup_names_the_gpu_it_picked(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Example GPU 80GB")
    assert course.setup(seed=3).type == "cuda"
    out = capsys.readouterr().out
    assert "Example GPU 80GB" in out and "seed 3" in out


def test_check_shape_returns_tensor_or_says_what_differs(capsys):
    x = torch.zeros(2, 3)
    assert course.check_shape(x, (2, 3), "tokens") is x
    assert "tokens" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"expected shape \(3, 2\), got \(2, 3\)"):
        course.check_shape(x, (3, 2), "tokens")


def test_format_bytes_picks_a_readable_unit():
    assert course.format_bytes(512) == "512 bytes"
    assert course.format_bytes(4 * 64 * 64) == "16.0 KiB"
    assert course.format_bytes(4 * 4096**2) == "64.0 MiB"
    assert course.format_bytes(3 * 2**30) == "3.0 GiB"
    # each unit from its first whole one on
    assert course.format_bytes(1023) == "1,023 bytes"
    assert course.format_bytes(1024) == "1.0 KiB"
    assert course.format_bytes(1024**2) == "1.0 MiB"
    assert course.format_bytes(1024**3) == "1.0 GiB"
    assert course.format_bytes(1024**2 - 1) == "1.0 MiB"  # not "1,024.0 KiB"
    assert course.format_bytes(1024**3 - 1) == "1.0 GiB"
    assert course.format_bytes(1023.7) == "1.0 KiB"


# --- load_data ------------------------------------------------------------------------------


@pytest.fixture
def no_data_anywhere(monkeypatch, tmp_path):
    """A working directory with no project data folder, and no VITLIB_DATA."""
    monkeypatch.delenv("VITLIB_DATA", raising=False)
    monkeypatch.setenv("VITLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_smoke_mode_without_data_uses_made_up_images(no_data_anywhere, capsys):
    data = course.load_data(smoke=True)
    assert "made-up" in capsys.readouterr().out
    assert data.train.images.dtype == torch.uint8
    assert tuple(data.train.images.shape) == (512, 3, 32, 32)
    assert len(data.test) == 256 and len(data.classes) == 10


def test_smoke_mode_with_a_missing_data_path_uses_made_up_images(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path / "missing.tar.gz"))
    monkeypatch.setenv("VITLIB_CACHE", str(tmp_path / "cache"))
    data = course.load_data(smoke=True, n_synthetic=(20, 10))
    out = capsys.readouterr().out
    assert "missing.tar.gz" in out and "made-up" in out
    assert (len(data.train), len(data.test)) == (20, 10)


def test_full_mode_downloads_and_raises_when_that_fails(monkeypatch):
    calls = []

    def no_copy_anywhere(source=None, **kwargs):
        calls.append(kwargs)
        raise FileNotFoundError("no CIFAR-10 here; set VITLIB_DATA")

    monkeypatch.setattr(vitlib.data, "load_cifar10", no_copy_anywhere)
    with pytest.raises(FileNotFoundError, match="VITLIB_DATA"):
        course.load_data(smoke=False)
    assert calls[-1]["download"] is True and calls[-1]["progress"] is True
    course.load_data(smoke=True)  # falls back instead, and quietly
    assert calls[-1]["download"] is False and calls[-1]["progress"] is False


def test_real_data_is_loaded_when_present(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("VITLIB_DATA", raising=False)
    monkeypatch.setenv("VITLIB_CACHE", str(tmp_path / "elsewhere"))  # cache_dir comes first
    for split, count in (("train", 3), ("test", 2)):
        for name in ("circles", "squares"):
            folder = tmp_path / "tiny" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (32, 32), (40 * i, 100, 200)).save(folder / f"{i}.png")
    data = course.load_data(smoke=True, source=tmp_path / "tiny", cache_dir=tmp_path / "cache")
    assert "made-up" not in capsys.readouterr().out
    assert data.classes == ["circles", "squares"]
    assert (len(data.train), len(data.test)) == (6, 4)
    assert list((tmp_path / "cache").rglob("*.pt"))  # the cache went where it was asked
    assert not (tmp_path / "elsewhere").exists()


# --- viz ------------------------------------------------------------------------------------


def assert_labelled(ax, title=None):
    assert ax.get_title(), "every plot needs a title"
    assert ax.get_xlabel() and ax.get_ylabel(), "every plot needs labelled axes"
    if title is not None:
        assert ax.get_title() == title


def test_show_images_captions_with_class_names():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    fig = viz.show_images(images, torch.tensor([0, 1, 2, 1, 0]), ["cat", "dog", "owl"],
                          title="Five images", ncols=3)
    assert fig._suptitle.get_text() == "Five images"
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5
    assert [ax.get_title() for ax in shown] == ["cat", "dog", "owl", "dog", "cat"]
    with pytest.raises(ValueError, match="no images"):
        viz.show_images(images[:0])


def test_show_image_and_show_patches_are_labelled():
    image = torch.rand(3, 32, 32)
    assert_labelled(viz.show_image(image, title="An image").axes[0], "An image")
    fig = viz.show_patches(image, 8)
    ax = fig.axes[0]
    assert_labelled(ax)
    assert "16 patches" in ax.get_title()
    canvas = ax.images[0].get_array()
    assert canvas.shape[0] > 32 and canvas[:, :, 3].min() == 0  # patches drawn apart by gaps
    assert [t.get_text() for t in ax.texts] == [str(k) for k in range(16)]
    with pytest.raises(ValueError, match="divides both sides"):
        viz.show_patches(image, 5)


def test_heatmaps_mark_masked_entries_and_share_a_colour_scale():
    scores = torch.tensor([[1.0, float("-inf")], [0.5, 2.0]])
    fig = viz.heatmap(scores, title="Scores", xlabel="key", ylabel="query")
    ax = fig.axes[0]
    assert_labelled(ax, "Scores")
    assert "masked" in [t.get_text() for t in ax.texts]

    attn = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    ax = viz.attention_heatmap(attn, ["a", "b"], title="A").axes[0]
    assert_labelled(ax, "A")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]

    fig = viz.attention_heatmaps({"first": attn, "second": attn / 2}, title="Two maps")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["first", "second"]
    for ax in panels:
        assert_labelled(ax)
    assert {ax.images[0].get_clim() for ax in panels} == {(0.0, 1.0)}
    with pytest.raises(ValueError, match="2-D"):
        viz.heatmap(torch.zeros(2, 2, 2), title="t", xlabel="x", ylabel="y")


def test_plot_lines_and_histograms():
    fig = viz.plot_lines([1, 2, 4, 8], {"measured": [1, 4, 16, 64], "fit": [1, 4, 16, 64]},
                         dashed=["fit"], logx=True, logy=True, title="Growth", xlabel="N",
                         ylabel="time")
    ax = fig.axes[0]
    assert_labelled(ax, "Growth")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--"]
    with pytest.raises(ValueError, match="'short'"):
        viz.plot_lines([1, 2, 3], {"short": [1, 2]}, title="t", xlabel="x", ylabel="y")

    fig = viz.histograms({"a": torch.randn(100), "b": np.random.randn(50)}, title="Spread",
                         xlabel="value")
    ax = fig.axes[0]
    assert_labelled(ax, "Spread")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_to_numpy_takes_a_list_of_tensors_of_any_dtype():
    # losses kept as bfloat16 tensors (NumPy has no bfloat16; on a GPU, no device either)
    losses = [torch.tensor(2.5, dtype=torch.bfloat16), torch.tensor(1.5, dtype=torch.bfloat16)]
    assert viz.to_numpy(losses).tolist() == [2.5, 1.5]
    assert viz.to_numpy([1, 2.5]).tolist() == [1, 2.5]


def test_to_display_image_accepts_common_layouts():
    chw = torch.full((3, 4, 5), 255, dtype=torch.uint8)
    assert viz.to_display_image(chw).shape == (4, 5, 3)
    assert viz.to_display_image(chw).max() == 1.0
    normalised = viz.to_display_image(torch.randn(4, 5, 3) * 3)
    assert normalised.min() == 0.0 and normalised.max() == 1.0
    assert viz.to_display_image(np.zeros((4, 5))).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="show_images"):
        viz.to_display_image(torch.zeros(2, 3, 4, 5))


def test_image_mosaic_is_one_labelled_picture():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    fig = viz.image_mosaic(images, title="Mosaic", ncols=4)
    ax = fig.axes[0]
    assert_labelled(ax, "Mosaic")
    assert len(ax.images) == 1
    assert ax.images[0].get_array().shape == (3 * 34 - 2, 4 * 34 - 2, 3)
    with pytest.raises(ValueError, match="row labels"):
        viz.image_mosaic(images, title="t", ncols=4, row_labels=["a"])
    plt.close("all")


def test_online_names_what_needed_the_internet():
    with pytest.raises(RuntimeError, match=r"the weights needs the internet.*URLError"):
        with course.online("the weights"):
            raise urllib.error.URLError("no route to host")
    with course.online("nothing"):  # no download error, no complaint
        pass
    with pytest.raises(ValueError):  # other errors are not about the internet
        with course.online("the weights"):
            raise ValueError("a bad file")
    for error in (ConnectionResetError("reset by peer"), TimeoutError("timed out")):
        with pytest.raises(RuntimeError, match=type(error).__name__) as caught:
            with course.online("the model"):
                raise error
        assert caught.value.__cause__ is error  # the original stays in the traceback


def test_runs_dir_is_the_projects_from_any_folder_in_it(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert course.runs_dir() == tmp_path / "runs"
    elsewhere = tmp_path.parent / f"{tmp_path.name}_colab"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside a checkout: runs/ where the notebook runs
    assert course.runs_dir() == elsewhere / "runs"


def test_integer_images_of_any_width_are_read_as_0_to_255():
    pixels = torch.full((3, 4, 4), 128, dtype=torch.int64)
    assert np.allclose(viz.to_display_image(pixels), 128 / 255)
    assert np.allclose(viz.to_display_image(pixels.to(torch.uint8)), 128 / 255)
