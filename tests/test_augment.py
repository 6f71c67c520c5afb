"""vitlib.augment: batched, seeded augmentation of uint8 images."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitlib.augment import (
    MAX_ENHANCE,
    MAX_TRANSLATE,
    OPS,
    Augment,
    AugmentConfig,
    Uniforms,
    _apply_ops,
    _channel_stats,
    _rectangles,
    mixup_cutmix,
    normalize,
    random_crop,
    random_erasing,
    random_flip,
    sample_beta,
    trivial_augment,
)
from vitlib.data import CIFAR10_MEAN, CIFAR10_STD


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_batch(b: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=generator(seed))


EVERYTHING = AugmentConfig(num_ops=2, mixup_alpha=0.8, cutmix_alpha=1.0, erase_prob=0.5)


# --- the whole transform --------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("config", [AugmentConfig(), EVERYTHING,
                                    AugmentConfig(padding_mode="zeros", num_ops=1)])
def test_shapes_and_dtypes(batch, config):
    images, labels = uint8_batch(batch), torch.arange(batch) % 10
    out, targets = Augment(config, seed=0)(images, labels, num_classes=10)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if config.mixing:
        assert targets.shape == (batch, 10) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(batch))
    else:
        assert torch.equal(targets, labels)


def test_bfloat16_output_and_eval_transform():
    images = uint8_batch(4)
    augment = Augment(EVERYTHING, dtype=torch.bfloat16, seed=0)
    out, _ = augment(images, torch.arange(4), 10)
    assert out.dtype == torch.bfloat16
    evaluated = augment.eval_transform(images)
    assert evaluated.dtype == torch.bfloat16
    assert torch.allclose(evaluated.float(), normalize(images), atol=0.02)


def test_seeded_determinism():
    images, labels = uint8_batch(8), torch.arange(8) % 10
    run = lambda seed: Augment(EVERYTHING, seed=seed)(images, labels, 10)
    (a, ta), (b, tb), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)
    augment = Augment(EVERYTHING, seed=0)  # the generator moves on between calls
    assert not torch.equal(augment(images, labels, 10)[0], augment(images, labels, 10)[0])
    for fn in (lambda g: random_crop(images, 4, g), lambda g: random_flip(images, g),
               lambda g: trivial_augment(images.float() / 255, g)):
        assert torch.equal(fn(generator(3)), fn(generator(3)))
        assert not torch.equal(fn(generator(3)), fn(generator(4)))


def test_two_names_of_one_device_share_the_generator():
    # "cpu:0" is the CPU, but tensors on it report "cpu" (as tensors on "cuda" report "cuda:0"):
    # reseeding through either name must reseed the generator the batches use
    images, labels = uint8_batch(8), torch.arange(8) % 10
    augment = Augment(EVERYTHING, seed=0)
    assert augment.generator(torch.device("cpu", 0)) is augment.generator(images.device)
    first = augment(images, labels, 10)[0]
    augment.generator(torch.device("cpu", 0)).manual_seed(0)
    assert torch.equal(augment(images, labels, 10)[0], first)

def test_a_batch_draws_once_and_the_rest_is_one_graph():
    images, labels = uint8_batch(8), torch.arange(8) % 10
    augment = Augment(EVERYTHING, seed=0)
    n = augment.num_draws(images[:1], labels[:1], 10)
    assert n > 20  # crop, flip, 2 ops, mixing (Beta samples), erasing
    draws = torch.rand(8, n, generator=generator(5))
    # fullgraph=True: tracing fails at the first graph break (a generator inside would be one)
    traced = torch.compile(augment.apply, backend="eager", fullgraph=True)
    for got, want in zip(traced(images, labels, draws, 10), augment.apply(images, labels,
                                                                          draws, 10), strict=True):
        assert torch.equal(got, want)
    # __call__ = one draw of (B, n) numbers from the seeded generator, then apply
    want = augment.apply(images, labels, torch.rand(8, n, generator=generator(0)), 10)
    for got, expected in zip(Augment(EVERYTHING, seed=0)(images, labels, 10), want, strict=True):
        assert torch.equal(got, expected)


def test_uniforms_hand_out_columns_and_say_when_they_run_out():
    values = torch.arange(12.0).view(3, 4) / 12  # (B=3, K=4)
    u = Uniforms(values)
    assert torch.equal(u.take(3), values[:, 0])
    assert torch.equal(u.take(6), values[:, 1:3].T.reshape(-1))
    with pytest.raises(ValueError, match="whole columns of 3 numbers, not 4"):
        u.take(4)
    with pytest.raises(ValueError, match="only 4 columns"):
        u.take(6)
    flips = random_flip(uint8_batch(3), Uniforms(torch.tensor([[0.1], [0.9], [0.4]])))
    assert torch.equal(flips, torch.stack([uint8_batch(3)[0].flip(-1), uint8_batch(3)[1],
                                           uint8_batch(3)[2].flip(-1)]))
    betas = sample_beta(0.5, 4000, Uniforms(torch.rand(4000, 40, generator=generator(1))))
    assert abs(betas.mean().item() - 0.5) < 0.02 and abs(betas.var().item() - 0.125) < 0.01


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="uint8 batch"):
        Augment()(uint8_batch(2).float(), torch.arange(2))
    with pytest.raises(ValueError, match="num_classes"):
        Augment(AugmentConfig(mixup_alpha=1.0))(uint8_batch(2), torch.arange(2))
    with pytest.raises(ValueError, match="mix_prob is a fraction"):
        AugmentConfig(mix_prob=1.5)
    with pytest.raises(ValueError, match="padding_mode"):
        AugmentConfig(padding_mode="edge")
    with pytest.raises(ValueError, match="smaller than the image"):
        random_crop(uint8_batch(2, size=4), 4)


# --- crop and flip --------------------------------------------------------------------------

def test_crop_shifts_a_single_pixel_by_its_offset():
    images = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    images[:, :, 10, 20] = 255
    out = random_crop(images, 4, generator(0), padding_mode="zeros")
    shifts = set()
    for image in out:
        (rows, cols) = torch.where(image[0] == 255)
        assert len(rows) == 1 and image.sum() == 255  # moved, not copied or lost
        dy, dx = 10 - rows.item(), 20 - cols.item()
        assert -4 <= dy <= 4 and -4 <= dx <= 4
        shifts.add((dy, dx))
    assert len(shifts) > 20  # offsets really vary per image


def test_crop_offsets_reach_the_full_padding_both_ways():
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 8, 8] = 255
    # the smallest and largest draws: image 0 shifted by (-4, +4), image 1 by (+4, -4)
    draws = Uniforms(torch.tensor([[0.0, 0.999], [0.999, 0.0]]))
    out = random_crop(images, 4, draws, padding_mode="zeros")
    assert out[0, 0, 12, 4] == 255 and out[1, 0, 4, 12] == 255
    assert out.sum() == 2 * 255


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
@pytest.mark.parametrize("height, width", [(12, 12), (6, 14)])  # square or not
def test_crop_matches_padding_then_cropping(mode, height, width):
    images = torch.randint(0, 256, (32, 3, height, width), dtype=torch.uint8,
                           generator=generator(2))
    out = random_crop(images, 3, generator(1), padding_mode=mode)
    padded = F.pad(images.float(), (3, 3, 3, 3), mode="reflect" if mode == "reflect" else
                   "constant")
    for image, source in zip(out.float(), padded, strict=True):
        crops = [source[:, y : y + height, x : x + width] for y in range(7) for x in range(7)]
        assert any(torch.equal(image, crop) for crop in crops)


def test_flip():
    images = uint8_batch(64)
    assert torch.equal(random_flip(images, generator(), p=1.0), images.flip(-1))
    assert torch.equal(random_flip(images, generator(), p=0.0), images)
    out = random_flip(images, generator())
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert ((out == images).flatten(1).all(1) | flipped).all()
    assert 10 < flipped.sum() < 54


# --- TrivialAugment -------------------------------------------------------------------------

def test_trivial_augment_stays_in_range_and_changes_images():
    x = uint8_batch(32).float() / 255
    out = trivial_augment(x, generator(), num_ops=1)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert 20 < changed.sum() < 32  # about 1 in 14 drew the identity


def test_trivial_augment_draws_choose_the_op_its_strength_up_to_magnitude_and_its_sign():
    x = uint8_batch(3).float() / 255
    brightness = (OPS.index("brightness") + 0.5) / len(OPS)
    # per image: which op, its strength (a share of magnitude), its sign (below 0.5: negative)
    draws = torch.tensor([[brightness, 0.5, 0.25], [brightness, 0.5, 0.75], [0.999, 0.5, 0.75]])
    out = trivial_augment(x, Uniforms(draws), num_ops=1, magnitude=0.5)
    change = MAX_ENHANCE * 0.5 * 0.5
    assert torch.allclose(out[0], x[0] * (1 - change))  # darker
    assert torch.allclose(out[1], (x[1] * (1 + change)).clamp(0, 1))  # brighter
    last = ops_on(x[2:], OPS[-1], 0.25)[0]  # the last op can be drawn too
    assert torch.allclose(out[2], last) and not torch.allclose(last, x[2], atol=0.05)


def test_trivial_augment_takes_images_of_any_memory_layout():
    x = uint8_batch(8).float() / 255
    for layout in (x.transpose(2, 3), x.contiguous(memory_format=torch.channels_last)):
        expected = trivial_augment(layout.contiguous(), generator(2), num_ops=2)
        torch.testing.assert_close(trivial_augment(layout, generator(2), num_ops=2), expected,
                                   atol=1e-6, rtol=0)  # other layouts may take other kernels


def ops_on(x: torch.Tensor, name: str, strength: float, sign: float = 1.0) -> torch.Tensor:
    """Op ``name`` on every image of x at one strength."""
    b = len(x)
    return _apply_ops(x, torch.full((b,), OPS.index(name)), torch.full((b,), strength),
                      torch.full((b,), sign))


def test_ops_by_hand():
    x = uint8_batch(4).float() / 255
    assert torch.equal(ops_on(x, "identity", 1.0), x)
    for name in set(OPS) - {"autocontrast", "equalize"}:
        assert torch.allclose(ops_on(x, name, 0.0), x, atol=1e-5), name  # strength 0: no change
    sharper = ops_on(x, "sharpness", 1.0)
    smooth = x.clone()  # PIL's SMOOTH kernel, which leaves the 1-pixel border as it is
    smooth[..., 1:-1, 1:-1] = (F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[..., 1:-1, 1:-1]) / 13
    expected = (smooth + (1 + MAX_ENHANCE) * (x - smooth)).clamp(0, 1)
    assert torch.allclose(sharper, expected, atol=1e-6)
    border = torch.ones_like(x, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    assert torch.equal(sharper[border], x[border])
    brighter = ops_on(x, "brightness", 0.5, sign=-1.0)
    assert torch.allclose(brighter, x * (1 - MAX_ENHANCE * 0.5))
    solarized = ops_on(x, "solarize", 0.25)
    assert torch.allclose(solarized, torch.where(x >= 0.75, 1 - x, x))
    posterized = ops_on(x, "posterize", 1.0)  # 4 bits kept
    assert torch.allclose(posterized * 255, ((x * 255).round() // 16) * 16)
    dull = x * 0.5 + 0.25
    stretched = ops_on(dull, "autocontrast", 1.0)
    assert torch.allclose(stretched.amin((2, 3)), torch.zeros(4, 3), atol=1e-6)
    assert torch.allclose(stretched.amax((2, 3)), torch.ones(4, 3), atol=1e-6)
    equalized = ops_on(dull, "equalize", 1.0)
    assert equalized.amax() == 1 and (equalized.flatten(2).mean(2) - 0.5).abs().max() < 0.05


@pytest.mark.parametrize("name", ["brightness", "contrast", "color"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_enhance_ops_match_pil_on_a_coloured_and_a_dark_image(name, sign):
    """PIL's ImageEnhance: contrast moves away from each image's own mean luma, colour away
    from each pixel's luma (0.299 R + 0.587 G + 0.114 B), within PIL's rounding to uint8."""
    Image = pytest.importorskip("PIL.Image")
    ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
    images = uint8_batch(2).clone()
    images[0, 0] = 150 + images[0, 0] % 106  # reddish: red in [150, 255], blue in [0, 60]
    images[0, 2] = images[0, 2] % 61
    images[1] //= 4  # a dark image beside it
    enhancer = getattr(ImageEnhance, name.capitalize())
    ours = ops_on(images.float() / 255, name, 1.0, sign) * 255
    for image, got in zip(images, ours, strict=True):
        pil = enhancer(Image.fromarray(image.permute(1, 2, 0).numpy()))
        expected = torch.from_numpy(np.array(pil.enhance(1 + MAX_ENHANCE * sign)))
        assert (got - expected.permute(2, 0, 1).float()).abs().max() <= 2


def test_posterize_drops_the_nearest_whole_number_of_bits():
    """round(4 · strength) bits dropped: strengths are drawn below 1, and 4 bits are still
    reached (from strength 7/8 on)."""
    x = uint8_batch(2).float() / 255
    levels = (x * 255).round()
    for strength, dropped in [(0.1, 0), (0.4, 2), (0.9, 4)]:
        out = ops_on(x, "posterize", strength) * 255
        expected = torch.div(levels, 2**dropped, rounding_mode="floor") * 2**dropped
        assert torch.allclose(out, expected, atol=1e-3), strength


def test_autocontrast_and_equalize_treat_each_channel_by_itself():
    x = uint8_batch(2).float() / 255
    ranges = torch.tensor([[0.2, 0.6], [0.1, 0.9], [0.5, 0.7]])  # another range per channel
    bottom, top = ranges.T.view(2, 1, 3, 1, 1)
    x = bottom + x * (top - bottom)
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert torch.allclose(ops_on(x, "autocontrast", 1.0), (x - low) / (high - low), atol=1e-5)
    equalized = ops_on(x, "equalize", 1.0)
    assert (equalized.amin((2, 3)) == 0).all() and (equalized.amax((2, 3)) == 1).all()
    for source, image in zip(x.flatten(2).flatten(0, 1), equalized.flatten(2).flatten(0, 1),
                             strict=True):
        assert (image[source.argsort()].diff() >= 0).all()  # levels keep their order


def test_rotate_turns_by_strength_times_its_maximum_either_way():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 14:18, 24:28] = 1  # a dot 10 pixels right of the centre (15.5, 15.5)
    offsets = torch.arange(32.0) - 15.5
    angles = []
    for sign in (1.0, -1.0):
        out = ops_on(x, "rotate", 0.5, sign)[0, 0]  # 15 degrees
        dy = (out.sum(1) * offsets).sum().item() / out.sum().item()
        dx = (out.sum(0) * offsets).sum().item() / out.sum().item()
        assert math.isclose(math.hypot(dy, dx), 10, abs_tol=0.3)
        angles.append(math.degrees(math.atan2(dy, dx)))
    assert sorted(angles) == pytest.approx([-15, 15], abs=1)


def test_shear_x_slides_rows_and_shear_y_slides_columns():
    profile = torch.rand(32, generator=generator(6))
    same_rows = profile.view(1, 1, 32, 1).expand(1, 3, 32, 32).contiguous()  # rows constant
    same_cols = same_rows.transpose(2, 3).contiguous()
    middle = slice(12, 20)  # the middle columns (rows) stay inside the image under either shear
    for sign in (1.0, -1.0):
        sheared = ops_on(same_rows, "shear_x", 1.0, sign)  # each row slides along itself
        assert torch.allclose(sheared[..., middle], same_rows[..., middle], atol=1e-5)
        sheared = ops_on(same_cols, "shear_y", 1.0, sign)
        assert torch.allclose(sheared[..., middle, :], same_cols[..., middle, :], atol=1e-5)
    across = ops_on(same_rows, "shear_y", 1.0)[..., middle]
    assert (across - same_rows[..., middle]).abs().max() > 0.1


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sharpness_matches_pil(sign):
    """PIL's ImageEnhance.Sharpness, border included, within its rounding to uint8."""
    Image = pytest.importorskip("PIL.Image")
    ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
    image = uint8_batch(1)[0]
    pil = ImageEnhance.Sharpness(Image.fromarray(image.permute(1, 2, 0).numpy()))
    expected = torch.from_numpy(np.array(pil.enhance(1 + MAX_ENHANCE * sign))).permute(2, 0, 1)
    ours = ops_on(image[None].float() / 255, "sharpness", 1.0, sign)[0] * 255
    assert (ours - expected.float()).abs().max() <= 2


def test_geometric_ops_are_per_image():
    x = uint8_batch(3).float() / 255
    shift = 4  # pixels
    strength = shift / (MAX_TRANSLATE * 32)
    op = torch.tensor([OPS.index("translate_x"), OPS.index("identity"), OPS.index("rotate")])
    out = _apply_ops(x, op, torch.tensor([strength, strength, 1.0]), torch.ones(3))
    assert torch.allclose(out[0, :, :, : 32 - shift], x[0, :, :, shift:], atol=1e-5)
    assert (out[0, :, :, 32 - shift :] == 0).all()  # filled with black
    assert torch.equal(out[1], x[1])
    assert not torch.allclose(out[2], x[2], atol=0.1)
    back = _apply_ops(x[:1], op[:1], torch.tensor([strength]), -torch.ones(1))  # the other way
    assert torch.allclose(back[0, :, :, shift:], x[0, :, :, : 32 - shift], atol=1e-5)
    assert (back[0, :, :, :shift] == 0).all()


# --- mixing ---------------------------------------------------------------------------------

def constant_images(b: int) -> torch.Tensor:
    """Image i is filled with the value i, so every pixel tells where it came from."""
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 16, 16).clone()


@pytest.mark.parametrize("which", ["mixup", "cutmix"])
def test_mixup_and_cutmix_targets(which):
    b, k = 10, 10
    images, labels = constant_images(b), torch.arange(b)  # partner of i: 9 - i, another class
    alphas = {"mixup_alpha": 0.8} if which == "mixup" else {"cutmix_alpha": 1.0}
    mixed, targets = mixup_cutmix(images, labels, k, generator=generator(), **alphas)
    assert torch.allclose(targets.sum(1), torch.ones(b))
    own = targets[torch.arange(b), labels]
    partner = targets[torch.arange(b), labels.flip(0)]
    assert torch.allclose(own + partner, torch.ones(b))  # only the two one-hots take part
    assert (own >= 0).all() and (partner >= 0).all()
    i = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
    if which == "mixup":
        w = own.view(b, 1, 1, 1)
        assert torch.allclose(mixed, w * i + (1 - w) * (b - 1 - i))
    else:
        from_partner = (mixed == b - 1 - i) & (mixed != i)
        assert ((mixed == i) | from_partner).all()  # each pixel is one image's or the other's
        assert torch.allclose(from_partner[:, 0].float().mean((1, 2)), partner)
        for mask in from_partner[:, 0]:  # what is pasted is one rectangle
            rows, cols = mask.any(1), mask.any(0)
            assert mask.sum() == rows.sum() * cols.sum()
    assert not torch.allclose(own, torch.ones(b))


def test_mixup_draws_a_weight_for_each_image():
    b, alpha = 2000, 0.8
    images, labels = constant_images(b), torch.arange(b) % 2  # partner b - 1 - i: other class
    _, targets = mixup_cutmix(images, labels, 2, mixup_alpha=alpha, generator=generator(5))
    own = targets[torch.arange(b), labels]
    assert abs(own.mean().item() - 0.5) < 0.03
    assert abs(own.var().item() * 4 * (2 * alpha + 1) - 1) < 0.15  # Beta(α, α)'s variance


def test_mixing_and_the_choice_of_cutmix_are_drawn_for_each_image():
    b = 2000
    images, labels = constant_images(b), torch.arange(b) % 2
    mixed, _ = mixup_cutmix(images, labels, 2, 0.8, 1.0, prob=0.5, switch_prob=0.3,
                            generator=generator(7))
    i = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
    kept = (mixed == i).flatten(1).all(1)
    one_or_other = ((mixed == i) | (mixed == b - 1 - i)).flatten(1).all(1)
    assert abs(kept.float().mean().item() - 0.5) < 0.05
    assert abs((one_or_other & ~kept).float().mean().item() - 0.5 * 0.3) < 0.04  # cutmix
    assert abs((~one_or_other).float().mean().item() - 0.5 * 0.7) < 0.05  # mixup


def test_cutmix_boxes_follow_the_sides_of_images_that_are_not_square():
    b, H, W = 64, 16, 64
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, H, W)
    labels = torch.arange(b) % 2
    beta_draws = torch.rand(b, 32, generator=generator(2))
    # mixed, and the box centred in the image, where it is never clipped
    draws = torch.cat([beta_draws, torch.zeros(b, 1), torch.full((b, 2), 0.5)], dim=1)
    mixed, _ = mixup_cutmix(images, labels, 2, cutmix_alpha=1.0, generator=Uniforms(draws))
    side = (1 - sample_beta(1.0, b, Uniforms(beta_draws))).sqrt()
    pasted = mixed[:, 0] != images[:, 0]
    assert torch.equal(pasted.any(2).sum(1), 2 * (side * H / 2).round().long())  # rows
    assert torch.equal(pasted.any(1).sum(1), 2 * (side * W / 2).round().long())  # columns
    mixed, _ = mixup_cutmix(images, labels, 2, cutmix_alpha=1.0, generator=generator(8))
    pasted = (mixed[:, 0] != images[:, 0]).any(0)  # somewhere in the batch
    assert pasted[:, 0].any() and pasted[:, -1].any() and pasted[0].any() and pasted[-1].any()


def test_rectangles_cover_exactly_their_rows_and_columns():
    mask = _rectangles(torch.tensor([1, 5]), torch.tensor([2, 0]), torch.tensor([3, 3]),
                       torch.tensor([4, 8]), 8, 8)
    expected = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    expected[0, 0, 1:4, 2:6] = True  # top 1, left 2, height 3, width 4
    expected[1, 0, 5:8, 0:8] = True  # clipped to the image
    assert torch.equal(mask, expected)


def test_cutmix_pastes_a_box_of_the_drawn_area():
    b, size = 64, 64
    beta_draws = torch.rand(b, 32, generator=generator(2))  # two Gamma(1) samples of 16 draws
    # then: mixed (0 < prob), and the box centred in the image, where it is never clipped
    draws = torch.cat([beta_draws, torch.zeros(b, 1), torch.full((b, 2), 0.5)], dim=1)
    uniforms = Uniforms(draws)
    images, labels = torch.zeros(b, 1, size, size), torch.arange(b) % 2
    _, targets = mixup_cutmix(images, labels, 2, cutmix_alpha=1.0, generator=uniforms)
    assert uniforms.used == draws.shape[1]
    kept = sample_beta(1.0, b, Uniforms(beta_draws))  # the drawn share of the image itself
    half = ((1 - kept).sqrt() * size / 2).round()  # the box: side sqrt(1 - kept) of the image
    own = targets[torch.arange(b), labels]
    torch.testing.assert_close(own, 1 - (2 * half / size) ** 2)
    assert (own - kept).abs().max() < 2.1 / size  # within the rounding of the side
    assert (own < 0.9).any() and (own > 0.1).any()


def test_mix_probability_zero_keeps_images_and_one_hot_labels():
    images, labels = constant_images(6), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, targets = mixup_cutmix(images, labels, 6, 1.0, 1.0, prob=0.0, generator=generator())
    assert torch.equal(mixed, images) and torch.equal(targets, torch.eye(6))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_samples(alpha):
    x = sample_beta(alpha, 200_000, generator())
    assert (x >= 0).all() and (x <= 1).all()
    assert abs(x.mean() - 0.5) < 0.005
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(x.var() / variance - 1) < 0.03


def test_functions_keep_a_half_precision_batch_half_precision():
    x = (uint8_batch(6).float() / 255).to(torch.bfloat16)
    assert trivial_augment(x, generator(), num_ops=2).dtype == torch.bfloat16
    for alphas in ({"mixup_alpha": 0.8}, {"cutmix_alpha": 1.0}):
        mixed, targets = mixup_cutmix(x, torch.arange(6), 6, generator=generator(), **alphas)
        assert mixed.dtype == torch.bfloat16 and targets.dtype == torch.float32
    assert random_erasing(x, 1.0, generator()).dtype == torch.bfloat16
    assert random_crop(x, 4, generator()).dtype == random_flip(x, generator()).dtype == x.dtype


def test_no_function_changes_its_input():
    images = uint8_batch(8)
    x = images.float() / 255
    originals = images.clone(), x.clone()
    random_crop(images, 4, generator(), "zeros")
    random_flip(images, generator())
    trivial_augment(x, generator(), num_ops=3)
    mixup_cutmix(x, torch.arange(8), 8, 0.8, 1.0, generator=generator())
    random_erasing(x, 1.0, generator())
    normalize(x)
    Augment(EVERYTHING, seed=0)(images, torch.arange(8), 10)
    assert torch.equal(images, originals[0]) and torch.equal(x, originals[1])


# --- erasing and normalising ----------------------------------------------------------------

def test_erasing_changes_one_rectangle():
    images = torch.rand(32, 3, 32, 32, generator=generator()) + 1  # never 0
    out = random_erasing(images, prob=1.0, generator=generator())
    erased = out == 0
    assert (erased.all(1) == erased.any(1)).all()  # all channels together
    assert torch.equal(out[~erased], images[~erased])
    for mask in erased[:, 0]:
        rows, cols = mask.any(1), mask.any(0)
        assert 0 < mask.sum() == rows.sum() * cols.sum()
        area = mask.float().mean()
        assert 0.01 < area < 0.45
    assert torch.equal(random_erasing(images, prob=0.0, generator=generator()), images)


def test_erasing_fills_with_the_value_asked_for():
    images = torch.rand(8, 3, 16, 16, generator=generator())
    out = random_erasing(images, prob=1.0, generator=generator(), value=-1.0)
    erased = out != images
    assert erased.flatten(1).any(1).all()
    assert (out[erased] == -1).all()


def test_erasing_can_reach_every_corner():
    images = torch.ones(4, 1, 32, 32)
    # area and ratio draws of 0.5: a 13×13 rectangle; then its top and left, then "erase"
    extremes = [(0.0, 0.0), (0.0, 0.999), (0.999, 0.0), (0.999, 0.999)]
    draws = torch.tensor([[0.5, 0.5, top, left, 0.0] for top, left in extremes])
    out = random_erasing(images, prob=1.0, generator=Uniforms(draws))
    erased = out[:, 0] == 0
    assert (erased.flatten(1).sum(1) == 13 * 13).all()
    assert erased[0, 0, 0] and erased[1, 0, -1] and erased[2, -1, 0] and erased[3, -1, -1]


def test_augment_erases_with_the_configured_probability():
    config = AugmentConfig(crop_padding=0, flip=False, erase_prob=0.25)
    images, labels = uint8_batch(64, size=16), torch.arange(64) % 10
    augment = Augment(config)
    draws = torch.rand(64, augment.num_draws(images[:1], labels[:1]), generator=generator(3))
    out, _ = augment.apply(images, labels, draws)
    expected = random_erasing(normalize(images), 0.25, Uniforms(draws))
    assert torch.equal(out, expected)
    erased = (out != normalize(images)).flatten(1).any(1)
    assert 5 < erased.sum() < 30  # about a quarter of 64


def test_augment_mixes_without_trivial_augment():
    config = AugmentConfig(crop_padding=0, flip=False, mixup_alpha=0.8)
    images, labels = uint8_batch(8), torch.arange(8)
    out, targets = Augment(config, seed=0)(images, labels, 10)
    assert targets.shape == (8, 10)
    w = targets[torch.arange(8), labels].view(8, 1, 1, 1)  # each image's own share
    assert not torch.allclose(w, torch.ones(8, 1, 1, 1))
    x = images.float() / 255
    assert torch.allclose(out, normalize(w * x + (1 - w) * x.flip(0)), atol=1e-4)


def test_augment_passes_its_settings_to_every_step():
    config = AugmentConfig(crop_padding=2, padding_mode="zeros", num_ops=1, magnitude=0.3,
                           mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.5,
                           mix_switch_prob=0.3, erase_prob=0.5)
    images, labels = uint8_batch(16, size=16), torch.arange(16) % 10
    augment = Augment(config)
    draws = torch.rand(16, augment.num_draws(images[:1], labels[:1], 10), generator=generator(4))
    out, targets = augment.apply(images, labels, draws, 10)
    u = Uniforms(draws)  # the steps in their documented order, on the same numbers
    x = random_flip(random_crop(images, 2, u, padding_mode="zeros"), u).float() / 255
    x = trivial_augment(x, u, num_ops=1, magnitude=0.3)
    x, expected_targets = mixup_cutmix(x, labels, 10, 0.8, 1.0, prob=0.5, switch_prob=0.3,
                                       generator=u)
    assert torch.equal(out, random_erasing(normalize(x), 0.5, u))
    assert torch.equal(targets, expected_targets)


@pytest.mark.parametrize("setting", [{"crop_padding": -1}, {"num_ops": -1},
                                     {"mixup_alpha": -0.5}, {"cutmix_alpha": -1.0}])
def test_config_rejects_negative_settings(setting):
    with pytest.raises(ValueError, match="must be >= 0"):
        AugmentConfig(**setting)


def test_normalize():
    images = uint8_batch(4)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert torch.allclose(normalize(images), expected, atol=1e-5)
    assert torch.allclose(normalize(images.float() / 255), expected, atol=1e-5)
    assert normalize(images, dtype=torch.bfloat16).dtype == torch.bfloat16
    last = normalize(images.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(last, expected, atol=1e-5)
    assert math.isclose(normalize(images, (0.5,) * 3, (0.5,) * 3)[0, 0, 0, 0].item(),
                        images[0, 0, 0, 0].item() / 127.5 - 1, abs_tol=1e-6)


def test_normalize_first_called_in_inference_mode_still_backpropagates():
    """The cached statistics are ordinary tensors, even when made under torch.inference_mode:
    a later normalize that autograd records can use them."""
    _channel_stats.cache_clear()
    x = uint8_batch(2).float() / 255
    with torch.inference_mode():
        normalize(x)
    x.requires_grad_(True)
    normalize(x).sum().backward()
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(x.grad, (1 / std).expand_as(x))


def test_normalize_compiles_without_warnings(monkeypatch):
    """Compiled, normalize builds its statistics in the graph: no cached call for torch.compile
    to warn about (its warnings go through warn_once, recorded here)."""
    said = []
    monkeypatch.setattr(torch._dynamo.utils, "warn_once", lambda msg, *a, **k: said.append(msg))
    torch._dynamo.reset()
    images = uint8_batch(4)
    compiled = torch.compile(normalize, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(images), normalize(images))
    assert not [msg for msg in said if "lru_cache" in msg], said
