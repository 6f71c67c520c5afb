import math

import pytest
import torch
import torch.nn.functional as F

from vitlib import resize_pos_embed, sincos_1d, sincos_2d


def test_sincos_1d_formula():
    table = sincos_1d(torch.arange(5), 8)
    pos, i = 3, 2  # position 3, frequency index 2 of 4
    omega = 1 / 10000 ** (i / 4)
    assert table[pos, i].item() == pytest.approx(math.sin(pos * omega), abs=1e-6)
    assert table[pos, 4 + i].item() == pytest.approx(math.cos(pos * omega), abs=1e-6)


def test_sincos_1d_stays_on_the_positions_device():
    # "meta" stands in for a GPU: positions there must not meet CPU frequencies
    table = sincos_1d(torch.arange(5, device="meta"), 8)
    assert table.device.type == "meta" and table.shape == (5, 8)


def test_sincos_2d_rows_then_columns():
    table = sincos_2d(3, 4, 16)
    assert table.shape == (12, 16)
    rows, cols = sincos_1d(torch.arange(3), 8), sincos_1d(torch.arange(4), 8)
    torch.testing.assert_close(table[1 * 4 + 2], torch.cat([rows[1], cols[2]]))
    assert len({tuple(r.tolist()) for r in table}) == 12  # every position distinct


def test_sincos_2d_needs_dim_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_resize_keeps_prefix_and_identity():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 16, 8)
    same = resize_pos_embed(table, (4, 4), num_prefix_tokens=1)
    assert same is table
    bigger = resize_pos_embed(table, (6, 6), num_prefix_tokens=1)
    assert bigger.shape == (1, 37, 8)
    torch.testing.assert_close(bigger[:, 0], table[:, 0])
    # a constant table stays constant under bicubic interpolation
    const = torch.ones(1, 16, 8)
    torch.testing.assert_close(resize_pos_embed(const, (3, 3)), torch.ones(1, 9, 8))


def test_resize_to_a_non_square_grid_keeps_rows_and_columns_apart():
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    table = torch.stack([rows, cols], dim=-1).reshape(1, 16, 2)  # channel 0: row, 1: column
    out = resize_pos_embed(table, (8, 6)).reshape(8, 6, 2)  # 8 rows of 6, row-major
    row, col = out[..., 0], out[..., 1]
    torch.testing.assert_close(row, row[:, :1].expand(8, 6))  # the same along each row
    torch.testing.assert_close(col, col[:1].expand(8, 6))  # the same down each column
    assert (row[1:, 0] > row[:-1, 0]).all() and (col[0, 1:] > col[0, :-1]).all()
    image = table.reshape(1, 4, 4, 2).permute(0, 3, 1, 2)  # (1, 2, 4, 4)
    expected = F.interpolate(image, size=(8, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, expected[0].permute(1, 2, 0))


def test_resize_explains_non_square_grid():
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        resize_pos_embed(torch.randn(1, 17, 8), (5, 5))


def test_sincos_2d_uses_its_temperature_for_rows_and_columns():
    table = sincos_2d(2, 3, 8, temperature=100.0)
    row, col = 1, 2  # token 1·3 + 2; each axis gets 4 channels: 2 frequencies 1 and 1/100^(1/2)
    omega = torch.tensor([1.0, 0.1], dtype=torch.float64)
    expected = torch.cat([(row * omega).sin(), (row * omega).cos(),
                          (col * omega).sin(), (col * omega).cos()]).float()
    torch.testing.assert_close(table[row * 3 + col], expected)


def test_sincos_1d_needs_an_even_dim():
    with pytest.raises(ValueError, match="even dim, got 7"):
        sincos_1d(torch.arange(3), 7)


def test_resize_to_the_same_height_but_another_width():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 16, 8)
    wider = resize_pos_embed(table, (4, 6), num_prefix_tokens=1)
    assert wider.shape == (1, 1 + 24, 8)
    image = table[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(image, size=(4, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(wider[0, 1:], expected[0].permute(1, 2, 0).reshape(24, 8))
