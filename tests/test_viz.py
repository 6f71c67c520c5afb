"""What viz's plots draw: the arrays in each image, the lines' data, tick positions and labels."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vitlib import viz  # noqa: E402


@pytest.fixture(autouse=True)
def agg_backend():
    plt.switch_backend("Agg")
    yield
    plt.close("all")


def ticks(ax, axis: str) -> tuple[list[float], list[str]]:
    """An axis's tick positions and labels."""
    getter = ax.xaxis if axis == "x" else ax.yaxis
    return list(getter.get_ticklocs()), [t.get_text() for t in getter.get_ticklabels()]


# --- images ---------------------------------------------------------------------------------


def test_float_images_in_range_are_shown_as_they_are():
    chw = torch.linspace(0.2, 0.6, 3 * 2 * 4).reshape(3, 2, 4)
    assert np.allclose(viz.to_display_image(chw), chw.permute(1, 2, 0).numpy())


def test_normalised_images_are_stretched_by_one_min_and_max_for_all_channels():
    hwc = np.zeros((2, 2, 3), dtype=np.float32)
    hwc[..., 0] = [[-2.0, 2.0], [0.0, 1.0]]
    hwc[..., 1] = [[-1.0, 0.0], [0.0, 0.0]]  # a narrower range than channel 0: stays darker
    shown = viz.to_display_image(hwc)
    assert np.allclose(shown, (hwc + 2.0) / 4.0)


def test_a_one_channel_chw_image_is_shown_in_grey():
    gray = torch.linspace(0.0, 1.0, 20).reshape(1, 4, 5)
    shown = viz.to_display_image(gray)
    assert shown.shape == (4, 5, 3)
    for channel in range(3):
        assert np.allclose(shown[..., channel], gray[0].numpy())


def test_image_mosaic_places_images_row_by_row():
    values = [0, 40, 80, 120, 160]  # one flat colour per image, each 2 high and 4 wide
    images = torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(5, 3, 2, 4)
    ax = viz.image_mosaic(images, title="m", ncols=2, gap=1).axes[0]
    mosaic = np.asarray(ax.images[0].get_array())
    assert mosaic.shape == (3 * 3 - 1, 2 * 5 - 1, 3)
    for i, value in enumerate(values):
        top, left = (i // 2) * 3, (i % 2) * 5
        assert np.allclose(mosaic[top:top + 2, left:left + 4], value / 255), i
    assert np.all(mosaic[6:8, 5:9] == 1.0)  # the empty last slot stays white
    assert np.all(mosaic[2, :] == 1.0) and np.all(mosaic[:, 4] == 1.0)  # white gaps
    assert ticks(ax, "x") == ([1.5, 6.5], ["1", "2"])  # the middle of each column of images
    assert ticks(ax, "y") == ([0.5, 3.5, 6.5], ["1", "2", "3"])


def test_show_patches_keeps_each_patch_in_its_place():
    image = np.linspace(0.0, 1.0, 8 * 12 * 3).reshape(8, 12, 3)  # 2 × 3 patches of 4 pixels
    ax = viz.show_patches(image, 4).axes[0]
    canvas = np.asarray(ax.images[0].get_array())
    size, step = 8, 9  # patches drawn twice as large, one transparent pixel apart
    assert canvas.shape == (2 * step - 1, 3 * step - 1, 4)
    for row in range(2):
        for col in range(3):
            patch = image[row * 4:(row + 1) * 4, col * 4:(col + 1) * 4]
            drawn = canvas[row * step:row * step + size, col * step:col * step + size]
            assert np.allclose(drawn[..., :3], patch.repeat(2, 0).repeat(2, 1)), (row, col)
            assert np.all(drawn[..., 3] == 1.0)  # opaque
    assert np.all(canvas[size, :, 3] == 0) and np.all(canvas[:, size, 3] == 0)
    numbers = {t.get_text(): t.get_position() for t in ax.texts}
    for row in range(2):
        for col in range(3):
            x, y = numbers[str(row * 3 + col)]
            assert col * step <= x < col * step + size and row * step <= y < row * step + size
    assert ticks(ax, "x") == ([3.5, 12.5, 21.5], ["0", "1", "2"])
    assert ticks(ax, "y") == ([3.5, 12.5], ["0", "1"])


# --- matrices -------------------------------------------------------------------------------


def test_heatmap_draws_the_matrix_unturned_with_its_labels_and_scale():
    matrix = torch.arange(6.0).reshape(2, 3)
    ax = viz.heatmap(matrix, title="t", xlabel="key", ylabel="query", xticklabels="abc",
                     yticklabels="pq", vmin=-1.0, vmax=10.0).axes[0]
    image = ax.images[0]
    assert np.array_equal(np.asarray(image.get_array()), matrix.numpy())
    assert image.get_clim() == (-1.0, 10.0)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key", "query")
    assert ticks(ax, "x") == ([0, 1, 2], ["a", "b", "c"])
    assert ticks(ax, "y") == ([0, 1], ["p", "q"])
    written = {tuple(t.get_position()): t.get_text() for t in ax.texts}
    assert written == {(j, i): f"{matrix[i, j].item():.2f}" for i in range(2) for j in range(3)}


def test_heatmaps_share_one_colour_scale_over_all_panels():
    fig = viz.heatmaps({"a": [[float("-inf"), 1.0]], "b": [[0.5, 3.0]]}, title="t",
                       xlabel="x", ylabel="y")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.images[0].get_clim() for ax in panels] == [(0.5, 3.0), (0.5, 3.0)]


# --- curves and distributions ---------------------------------------------------------------


def test_plot_lines_draws_each_series_against_xs():
    xs = [1, 2, 4, 8]
    ys = {"measured": [1, 4, 9, 16], "fit": [2, 3, 4, 5]}
    ax = viz.plot_lines(xs, ys, title="t", xlabel="x", ylabel="y", dashed=["fit"],
                        logx=True).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["measured", "fit"]
    for line, values in zip(ax.lines, ys.values(), strict=True):
        assert list(line.get_xdata()) == xs and list(line.get_ydata()) == values
    assert ax.xaxis.get_transform().base == 2  # ticks at powers of two


def test_histograms_count_every_value_on_shared_bins():
    samples = {"a": np.array([0.0, 0.0, 1.0]), "b": torch.tensor([10.0, 10.0, 10.0, 9.0])}
    ax = viz.histograms(samples, title="t", xlabel="v", bins=5, density=False).axes[0]
    assert len(ax.containers) == 2
    edges = np.linspace(0.0, 10.0, 6)
    for bars, values in zip(ax.containers, samples.values(), strict=True):
        assert np.allclose([bar.get_x() for bar in bars], edges[:-1])
        assert sum(bar.get_height() for bar in bars) == len(values)  # counts, none dropped
    assert [bar.get_height() for bar in ax.containers[1]] == [0, 0, 0, 0, 4]


# --- position embeddings --------------------------------------------------------------------


def test_similarity_grid_folds_each_row_into_its_tile():
    sim = np.arange(36.0).reshape(6, 6)  # a 2 × 3 grid of positions
    ax = viz.similarity_grid(sim, (2, 3), title="t").axes[0]
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1)
    for row in range(2):
        for col in range(3):
            tile = mosaic[row * 3:row * 3 + 2, col * 4:col * 4 + 3]
            assert np.array_equal(tile.filled(np.nan), sim[row * 3 + col].reshape(2, 3))
    assert mosaic.mask[2, :].all() and mosaic.mask[:, [3, 7]].all()  # blank gaps
    assert ax.images[0].get_clim() == (0.0, 35.0)
    assert ticks(ax, "x") == ([1.0, 5.0, 9.0], ["0", "1", "2"])
    assert ticks(ax, "y") == ([0.5, 3.5], ["0", "1"])
    fixed = viz.similarity_grid(sim / 35, (2, 3), title="t", vmin=-1, vmax=1).axes[0]
    assert fixed.images[0].get_clim() == (-1.0, 1.0)
    with pytest.raises(ValueError, match=r"must be \(6, 6\)"):
        viz.similarity_grid(sim[1:, 1:], (2, 3), title="t")


# --- looking inside a trained model ---------------------------------------------------------


def test_heatmap_overlays_stretch_each_map_over_its_image():
    images = torch.randint(0, 256, (2, 3, 8, 12), dtype=torch.uint8)  # 8 high, 12 wide
    maps = torch.arange(12.0).reshape(2, 2, 3)  # one value per 4 × 4 patch
    fig = viz.heatmap_overlays(images, maps, ["a", "b"], title="t")
    top, bottom = fig.axes[:2], fig.axes[2:]  # images above, overlays below
    for i in range(2):
        shown = viz.to_display_image(images[i])
        assert np.array_equal(top[i].images[0].get_array(), shown)
        under, over = bottom[i].images
        assert np.array_equal(under.get_array(), shown)
        assert np.array_equal(np.asarray(over.get_array()), maps[i].numpy())
        assert list(over.get_extent()) == [-0.5, 11.5, 7.5, -0.5]  # covers the image
        assert over.get_interpolation() == "bilinear"  # smoothed


def test_layer_head_scatter_draws_blocks_from_one():
    table = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # 3 blocks, 2 heads
    ax = viz.layer_head_scatter(table, title="t", ylabel="y", reference=0.0).axes[0]
    for head, dots in enumerate(ax.collections):
        assert np.array_equal(dots.get_offsets(), [[1, table[0, head]], [2, table[1, head]],
                                                   [3, table[2, head]]])
    mean, reference = ax.lines
    assert list(mean.get_xdata()) == [1, 2, 3] and list(mean.get_ydata()) == [1.5, 3.5, 5.5]
    assert list(reference.get_ydata()) == [0.0, 0.0]  # a reference at 0 is drawn too
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "reference"
    assert list(ax.get_xticks()) == [1, 2, 3]
