"""Training augmentation for whole batches of uint8 images, on whatever device they are on.

Every function draws one set of random parameters per image from a ``torch.Generator`` on the
images' device and applies them with fixed-shape tensor operations: no Python loop over
images and no host-device synchronisation, so it keeps up with a GPU training step.
``Augment`` draws all of a batch's random numbers in one call and hands them out as
``Uniforms``; what remains is a pure function that ``torch.compile`` turns into one graph.

    uint8 (B, 3, H, W) -> random crop -> flip -> TrivialAugment-style ops -> mixup / cutmix
                       -> normalise -> random erasing -> float (B, 3, H, W) + targets
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import CIFAR10_MEAN, CIFAR10_STD

# The ops of TrivialAugment; all but autocontrast and equalize (which take no strength) are
# the identity at strength 0.
PIXEL_OPS = (
    "identity", "brightness", "contrast", "color", "sharpness", "posterize", "solarize",
    "autocontrast", "equalize",
)
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OPS = PIXEL_OPS + GEOMETRIC_OPS
MAX_ENHANCE = 0.9  # brightness, contrast, colour, sharpness: factor 1 ± 0.9 at full strength
MAX_POSTERIZE_BITS = 4  # bits dropped at full strength (8 -> 4 bits per channel)
MAX_ROTATE = 30.0  # degrees
MAX_SHEAR = 0.3  # shear factor
MAX_TRANSLATE = 0.45  # fraction of the image side (14 pixels on 32)
_GRAY = (0.299, 0.587, 0.114)  # luma weights of R, G, B


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # pad each side by this much, then crop back at a random offset; 0 = off
    padding_mode: str = "reflect"  # "reflect" (mirror the border) or "zeros" (black border)
    flip: bool = True  # mirror left-right with probability 1/2
    num_ops: int = 0  # TrivialAugment ops applied to each image, each chosen at random; 0 = off
    magnitude: float = 1.0  # top strength of those ops in (0, 1]; each draws one in [0, magnitude]
    mixup_alpha: float = 0.0  # mixup weight ~ Beta(α, α); 0 = off (0.8 is common)
    cutmix_alpha: float = 0.0  # cutmix kept area ~ Beta(α, α); 0 = off (1.0 is common)
    mix_prob: float = 1.0  # chance that an image is mixed with a partner, when mixing is on
    mix_switch_prob: float = 0.5  # with both on: chance of cutmix rather than mixup per image
    erase_prob: float = 0.0  # chance of erasing a random rectangle (to the mean colour); 0 = off

    def __post_init__(self) -> None:
        if self.padding_mode not in ("reflect", "zeros"):
            raise ValueError(
                f"padding_mode must be 'reflect' or 'zeros', got {self.padding_mode!r}"
            )
        for name in ("crop_padding", "num_ops", "mixup_alpha", "cutmix_alpha"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        for name in ("magnitude", "mix_prob", "mix_switch_prob", "erase_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a fraction in [0, 1], got {getattr(self, name)}")

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


# --- random numbers, one per image ----------------------------------------------------------

class Uniforms:
    """Uniform numbers in [0, 1) drawn ahead, (B, K), handed out a column (one per image) at a
    time. Every function here takes one in place of a ``torch.Generator``."""

    def __init__(self, values: Tensor) -> None:
        self.values, self.used = values, 0

    @property
    def device(self) -> torch.device:
        return self.values.device

    def take(self, n: int) -> Tensor:
        """The next ``n`` numbers as (n,); ``n`` is a multiple of the batch size B."""
        B, K = self.values.shape
        if n % B:
            raise ValueError(f"Uniforms hands out whole columns of {B} numbers, not {n}")
        if self.used + n // B > K:
            raise ValueError(f"only {K} columns of random numbers were drawn for this batch; "
                             "draw as many as the augmentation uses")
        out = self.values[:, self.used:self.used + n // B]  # (B, n / B)
        self.used += n // B
        return out.T.reshape(-1)


RandomSource = torch.Generator | Uniforms | None


def _check_generator(generator: RandomSource, device: torch.device) -> None:
    if generator is not None and generator.device.type != torch.device(device).type:
        raise ValueError(
            f"the generator is on {generator.device} but the images are on {device}; "
            "create it with torch.Generator(device=images.device).manual_seed(seed)"
        )


def _rand(n: int, device: torch.device, generator: RandomSource) -> Tensor:
    """(n,) uniform numbers in [0, 1) on ``device``."""
    _check_generator(generator, device)
    if isinstance(generator, Uniforms):
        return generator.take(n)
    return torch.rand(n, device=device, generator=generator)


def _randn(n: int, device: torch.device, generator: RandomSource) -> Tensor:
    """(n,) standard normal numbers on ``device``."""
    if isinstance(generator, Uniforms):  # the inverse of the normal CDF
        return torch.special.ndtri(generator.take(n).clamp(1e-7, 1 - 1e-7))
    _check_generator(generator, device)
    return torch.randn(n, device=device, generator=generator)


def _randint(high: Tensor | int, n: int, device: torch.device, generator: RandomSource) -> Tensor:
    """(n,) integers in [0, high), with one high per image or one for all."""
    if isinstance(high, int) and not isinstance(generator, Uniforms):
        _check_generator(generator, device)
        return torch.randint(high, (n,), device=device, generator=generator)
    return (_rand(n, device, generator) * high).long()


def sample_beta(
    alpha: float,
    n: int,
    generator: RandomSource = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n,) samples of Beta(α, α) drawn with ``generator`` (``torch.distributions`` cannot take
    one): the ratio G1 / (G1 + G2) of two Gamma(α) samples. ``device`` defaults to the
    generator's."""
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    g1, g2 = (_sample_gamma(alpha, n, device, generator) for _ in range(2))
    return g1 / (g1 + g2)


def _sample_gamma(alpha: float, n: int, device: torch.device, generator, tries: int = 8) -> Tensor:
    """Marsaglia and Tsang's method with a fixed number of tries per sample (each is accepted
    with probability > 0.95, so all 8 fail less than once in 10^10), keeping the first
    accepted; for α < 1, Gamma(α) = Gamma(α + 1) · U^(1/α)."""
    shape = alpha + 1 if alpha < 1 else alpha
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    z = _randn(n * tries, device, generator).view(n, tries)
    u = _rand(n * tries, device, generator).view(n, tries)
    v = (1 + c * z) ** 3
    accept = (v > 0) & (u.log() < 0.5 * z**2 + d - d * v + d * v.clamp_min(1e-12).log())
    first = accept.int().argmax(dim=1, keepdim=True)  # first accepted try
    gamma = d * v.gather(1, first).squeeze(1).clamp_min(1e-12)
    if alpha < 1:
        gamma = gamma * _rand(n, device, generator).clamp_min(1e-12) ** (1 / alpha)
    return gamma.clamp_min(1e-30)


# --- geometry on uint8 ----------------------------------------------------------------------

def random_crop(
    images: Tensor,
    padding: int,
    generator: RandomSource = None,
    padding_mode: str = "reflect",
) -> Tensor:
    """Pad each image by ``padding`` on all sides and crop back to its size at a random offset:
    every image is shifted by (dy, dx) in [-padding, padding], borders reflected or zero.

    Done by index arithmetic and one gather, without building the padded batch.
    """
    if padding == 0:
        return images
    B, C, H, W = images.shape
    if padding_mode == "reflect" and padding >= min(H, W):
        raise ValueError(f"reflect padding {padding} must be smaller than the image ({H}×{W}); "
                         "use a smaller crop_padding or padding_mode='zeros'")
    dy, dx = _randint(2 * padding + 1, 2 * B, images.device, generator).view(2, B) - padding
    rows = torch.arange(H, device=images.device) + dy[:, None]  # (B, H) source row of each row
    cols = torch.arange(W, device=images.device) + dx[:, None]  # (B, W)
    if padding_mode == "reflect":
        rows = (H - 1) - ((H - 1) - rows.abs()).abs()  # mirror at 0 and H-1, edge not repeated
        cols = (W - 1) - ((W - 1) - cols.abs()).abs()
    else:
        inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
        rows, cols = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
    index = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
    out = images.reshape(B, C, H * W).gather(2, index).view(B, C, H, W)
    return out if padding_mode == "reflect" else out * inside[:, None]


def random_flip(images: Tensor, generator: RandomSource = None, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability p."""
    flip = _rand(len(images), images.device, generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


# --- TrivialAugment on floats in [0, 1] -----------------------------------------------------

def trivial_augment(
    images: Tensor,
    generator: RandomSource = None,
    num_ops: int = 1,
    magnitude: float = 1.0,
) -> Tensor:
    """TrivialAugment: ``num_ops`` times, each image gets one op from ``OPS`` chosen at random,
    at a random strength in [0, magnitude] (and a random sign for signed ops).

    images: float (B, C, H, W) in [0, 1], returned in their dtype (half precision is computed
    in float32). Each op is computed for the whole batch and kept where an image chose it; the
    geometric ones share one ``grid_sample``.
    """
    B, device, dtype = len(images), images.device, images.dtype
    for _ in range(num_ops):
        op = _randint(len(OPS), B, device, generator)  # (B,)
        strength = _rand(B, device, generator) * magnitude
        sign = torch.where(_rand(B, device, generator) < 0.5, -1.0, 1.0)
        images = _apply_ops(images, op, strength, sign)
    return images.to(dtype)


def _apply_ops(images: Tensor, op: Tensor, strength: Tensor, sign: Tensor) -> Tensor:
    """Image i gets op ``OPS[op[i]]`` at ``strength[i]`` with ``sign[i]``: all (B,)."""
    one_hot = F.one_hot(op, len(OPS)).T.bool()  # (ops, B)
    chosen = {name: one_hot[i][:, None, None, None] for i, name in enumerate(OPS)}  # views
    amount = sign * strength * one_hot[len(PIXEL_OPS):]  # (5, B) signed, 0 where not chosen
    s = strength[:, None, None, None]  # (B, 1, 1, 1)
    factor = 1 + MAX_ENHANCE * s * sign[:, None, None, None]
    gray = _grayscale(images)  # (B, 1, H, W)
    degenerate = {
        "brightness": torch.zeros_like(gray),
        "contrast": gray.mean(dim=(2, 3), keepdim=True),
        "color": gray,
        "sharpness": _smooth(images),
    }
    for name, base in degenerate.items():  # PIL's ImageEnhance: move away from a base image
        images = torch.where(chosen[name], (base + factor * (images - base)).clamp(0, 1), images)
    step = 2 ** (MAX_POSTERIZE_BITS * s).round()  # keep 8 - log2(step) bits
    posterized = torch.floor((images * 255).round() / step) * step / 255
    images = torch.where(chosen["posterize"], posterized, images)
    solarized = torch.where(images >= 1 - s, 1 - images, images)  # invert the bright pixels
    images = torch.where(chosen["solarize"] & (s > 0), solarized, images)
    images = torch.where(chosen["autocontrast"], _autocontrast(images), images)
    images = torch.where(chosen["equalize"], _equalize(images), images)
    return _affine(
        images,
        angle=math.radians(MAX_ROTATE) * amount[0],
        shear=(MAX_SHEAR * amount[1], MAX_SHEAR * amount[2]),
        translate=(MAX_TRANSLATE * amount[3], MAX_TRANSLATE * amount[4]),
        keep=(op < len(PIXEL_OPS))[:, None, None, None],
    )


def _grayscale(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma (Python-number weights: no copy to the device)."""
    r, g, b = images.split(1, dim=1)
    return _GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b


def _smooth(images: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3×3, centre weight 5, neighbours 1), as used by its sharpness op:
    like PIL's, it leaves the 1-pixel border as it is, so sharpness does not change it."""
    box = 9 * F.avg_pool2d(images, kernel_size=3, stride=1)  # sum over each 3×3 neighbourhood
    smoothed = images.clone()
    smoothed[..., 1:-1, 1:-1] = (box + 4 * images[..., 1:-1, 1:-1]) / 13
    return smoothed


def _autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel of each image to span [0, 1]."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    return torch.where(high > low, (images - low) / (high - low).clamp_min(1e-6), images)


def _equalize(images: Tensor) -> Tensor:
    """Histogram equalisation of each channel of each image over 256 levels."""
    B, C, H, W = images.shape
    levels = (images * 255).round().long().reshape(B, C, H * W)  # any memory layout
    hist = torch.zeros(B, C, 256, device=images.device).scatter_add_(
        2, levels, torch.ones_like(levels, dtype=torch.float32))
    cdf = hist.cumsum(dim=2)  # (B, C, 256)
    cdf_min = cdf.masked_fill(hist == 0, H * W).amin(dim=2, keepdim=True)  # first used level
    lut = (cdf - cdf_min) / (H * W - cdf_min).clamp_min(1)  # level -> [0, 1]
    out = lut.gather(2, levels).view(B, C, H, W).to(images.dtype)
    return torch.where(cdf_min.view(B, C, 1, 1) < H * W, out, images)  # one level: unchanged


def _affine(
    images: Tensor, angle: Tensor, shear: tuple[Tensor, Tensor],
    translate: tuple[Tensor, Tensor], keep: Tensor,
) -> Tensor:
    """Rotate, shear and translate each image by its own amounts (fractions of the image
    side), filling with black; images where ``keep`` is True are returned unchanged."""
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([  # (B, 2, 3): output coordinates -> input coordinates, in [-1, 1]
        torch.stack([cos - sin * shear[1], cos * shear[0] - sin, 2 * translate[0]], dim=1),
        torch.stack([sin + cos * shear[1], sin * shear[0] + cos, 2 * translate[1]], dim=1),
    ], dim=1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return torch.where(keep, images, moved)


# --- mixing and erasing ---------------------------------------------------------------------

def mixup_cutmix(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    generator: RandomSource = None,
) -> tuple[Tensor, Tensor]:
    """Mix each image with its partner in the reversed batch, by mixup (a weighted average) or
    cutmix (a pasted rectangle), and mix their one-hot labels by the same weight.

    images: float (B, C, H, W); labels: int64 (B,). Each image is mixed with probability
    ``prob``; with both alphas > 0 it uses cutmix with probability ``switch_prob``.
    Returns (mixed images, soft targets (B, num_classes) whose rows sum to 1).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mixup_cutmix needs mixup_alpha > 0 or cutmix_alpha > 0")
    B, _, H, W = images.shape
    device = images.device
    partner, partner_labels = images.flip(0), labels.flip(0)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = _rand(B, device, generator) < switch_prob
    else:
        use_cutmix = torch.full((B,), cutmix_alpha > 0, device=device)
    weight = torch.ones(B, device=device)  # share of the image itself
    if mixup_alpha > 0:
        weight = torch.where(use_cutmix, weight, sample_beta(mixup_alpha, B, generator, device))
    if cutmix_alpha > 0:
        weight = torch.where(use_cutmix, sample_beta(cutmix_alpha, B, generator, device), weight)
    weight = torch.where(_rand(B, device, generator) < prob, weight, 1.0)

    box = _random_boxes((1 - weight).sqrt(), H, W, generator)  # (B, 1, H, W)
    area = box.float().mean(dim=(1, 2, 3))
    weight = torch.where(use_cutmix, 1 - area, weight)  # the area actually pasted
    w = weight.to(images.dtype)[:, None, None, None]
    mixed = torch.where(
        use_cutmix[:, None, None, None],
        torch.where(box, partner, images),
        w * images + (1 - w) * partner,
    )
    targets = (weight[:, None] * F.one_hot(labels, num_classes)
               + (1 - weight[:, None]) * F.one_hot(partner_labels, num_classes))
    return mixed, targets


def _random_boxes(side: Tensor, H: int, W: int, generator) -> Tensor:
    """(B, 1, H, W) masks of boxes of sides ``side`` × (H, W), centred at random pixels and
    clipped to the image (cutmix's boxes)."""
    B, device = len(side), side.device
    cy, cx = _randint(H, B, device, generator), _randint(W, B, device, generator)
    half_h, half_w = (side * H / 2).round().long(), (side * W / 2).round().long()
    return _rectangles(cy - half_h, cx - half_w, 2 * half_h, 2 * half_w, H, W)


def _rectangles(top: Tensor, left: Tensor, height: Tensor, width: Tensor, H: int, W: int) -> Tensor:
    """(B, 1, H, W) boolean masks, True inside each image's rectangle (all arguments (B,))."""
    rows = torch.arange(H, device=top.device)
    cols = torch.arange(W, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def random_erasing(
    images: Tensor,
    prob: float = 0.5,
    generator: RandomSource = None,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> Tensor:
    """With probability ``prob`` per image, set a random rectangle to ``value`` (0 is the
    mean colour after normalising). Its area is a fraction ``scale`` of the image and its
    height/width ratio lies in ``ratio``."""
    B, _, H, W = images.shape
    device = images.device
    area = H * W * (scale[0] + (scale[1] - scale[0]) * _rand(B, device, generator))  # (B,)
    log_ratio = math.log(ratio[0]) + math.log(ratio[1] / ratio[0]) * _rand(B, device, generator)
    height = (area * log_ratio.exp()).sqrt().round().long().clamp(1, H)
    width = (area / log_ratio.exp()).sqrt().round().long().clamp(1, W)
    top = _randint(H - height + 1, B, device, generator)
    left = _randint(W - width + 1, B, device, generator)
    erase = _rectangles(top, left, height, width, H, W)  # (B, 1, H, W)
    erase = erase & (_rand(B, device, generator) < prob)[:, None, None, None]
    return images.masked_fill(erase, value)


# --- normalising ----------------------------------------------------------------------------

def normalize(
    images: Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(x - mean) / std per channel, as ``dtype``, for uint8 images (0..255) or floats in
    [0, 1]. Keeps the memory format (channels_last stays channels_last)."""
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    # a compiled graph holds the statistics as constants: there the cache is bypassed (torch
    # .compile would skip it anyway, with a warning)
    stats = _channel_stats.__wrapped__ if torch.compiler.is_compiling() else _channel_stats
    mean_t, std_t = stats(tuple(mean), tuple(std), scale, images.device)
    return ((images.float() - mean_t) / std_t).to(dtype)


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple, std: tuple, scale: float, device: torch.device):
    """Mean and std as (1, C, 1, 1) tensors on the device, made once (not at every step)."""
    as_tensor = lambda values: torch.tensor(values, device=device).view(1, -1, 1, 1) * scale
    # ordinary tensors even when first asked for under inference_mode: cached inference tensors
    # would break every later normalize that autograd records
    with torch.inference_mode(False):
        return as_tensor(mean), as_tensor(std)


# --- all together ---------------------------------------------------------------------------

class Augment:
    """The training transform of an ``AugmentConfig``: uint8 images (B, 3, H, W) and int64
    labels (B,) -> normalised ``dtype`` images and targets, on the images' device.

    Targets are the labels when no mixing is on, else soft targets (B, num_classes).
    With a ``seed``, one generator per device makes the random choices reproducible.
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        compile: bool = False,
    ) -> None:
        self.config = config or AugmentConfig()
        self.mean, self.std, self.dtype, self.seed = mean, std, dtype, seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._num_draws: int | None = None  # random numbers per image, counted on first use
        # the pure part as one graph: elementwise ops fused, launches cut from ~100 to a few
        self._apply = torch.compile(self.apply, fullgraph=True) if compile else self.apply

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator for ``device`` (None without a seed: torch's global one).
        Two names of one device ("cuda" and "cuda:0") give the same generator."""
        if self.seed is None:
            return None
        if device not in self._generators:
            actual = torch.empty(0, device=device).device  # the name its tensors report
            if actual not in self._generators:
                self._generators[actual] = torch.Generator(actual).manual_seed(self.seed)
            self._generators[device] = self._generators[actual]
        return self._generators[device]

    def __call__(
        self, images: Tensor, labels: Tensor, num_classes: int | None = None
    ) -> tuple[Tensor, Tensor]:
        c = self.config
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"Augment expects a uint8 batch (B, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}; pass the Split's uint8 images, before normalising"
            )
        if c.mixing and num_classes is None:
            raise ValueError("mixup/cutmix need num_classes to build soft targets; pass it")
        if self._num_draws is None:
            self._num_draws = self.num_draws(images[:1], labels[:1], num_classes)
        g = self.generator(images.device)
        _check_generator(g, images.device)
        draws = torch.rand(len(images), self._num_draws, device=images.device, generator=g)
        return self._apply(images, labels, draws, num_classes)

    def num_draws(self, images: Tensor, labels: Tensor, num_classes: int | None = None) -> int:
        """How many random numbers per image ``apply`` uses on batches shaped like this."""
        probe = Uniforms(torch.full((len(images), 4096), 0.5, device=images.device))
        self._augment(images, labels, probe, num_classes)
        return probe.used

    def apply(
        self, images: Tensor, labels: Tensor, draws: Tensor, num_classes: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The augmentation of a batch given its random numbers ``draws``, (B, num_draws)
        uniform in [0, 1): a pure function (what ``compile=True`` compiles)."""
        return self._augment(images, labels, Uniforms(draws), num_classes)

    def _augment(
        self, images: Tensor, labels: Tensor, g: Uniforms, num_classes: int | None
    ) -> tuple[Tensor, Tensor]:
        c = self.config
        images = random_crop(images, c.crop_padding, g, c.padding_mode)
        if c.flip:
            images = random_flip(images, g)
        if c.num_ops > 0 or c.mixing:
            x = images.float() / 255  # (B, C, H, W) in [0, 1]
            if c.num_ops > 0:
                x = trivial_augment(x, g, c.num_ops, c.magnitude)
            if c.mixing:
                x, labels = mixup_cutmix(x, labels, num_classes, c.mixup_alpha, c.cutmix_alpha,
                                         c.mix_prob, c.mix_switch_prob, g)
            out = normalize(x, self.mean, self.std, self.dtype)
        else:
            out = normalize(images, self.mean, self.std, self.dtype)
        if c.erase_prob > 0:
            out = random_erasing(out, c.erase_prob, g)
        return out, labels

    def eval_transform(self, images: Tensor) -> Tensor:
        """Normalise only, for evaluation."""
        return normalize(images, self.mean, self.std, self.dtype)
