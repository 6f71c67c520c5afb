"""Each exercise check of notebooks 04-06 passes a right answer and fails wrong ones with a hint."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlib import ViTConfig
from vitlib.exercises import ch04, ch05, ch06


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- 04: position embeddings ----------------------------------------------------------------


def sincos_right(positions, dim):
    omega = 1.0 / 10000 ** (torch.arange(dim // 2) / (dim / 2))
    angles = positions.float()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_interleaved(positions, dim):
    return sincos_right(positions, dim).view(-1, 2, dim // 2).transpose(1, 2).reshape(-1, dim)


def sincos_cos_first(positions, dim):
    return sincos_right(positions, dim).roll(dim // 2, dims=1)


def sincos_full_dim_exponent(positions, dim):
    omega = 1.0 / 10000 ** (torch.arange(dim // 2) / dim)
    angles = positions.float()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@pytest.mark.parametrize("wrong", [sincos_interleaved, sincos_cos_first, sincos_full_dim_exponent])
def test_sincos_1d(wrong):
    assert passes(ch04.check_sincos_1d(sincos_right, quiet=True))
    assert fails_with_hint(ch04.check_sincos_1d(wrong, quiet=True))


def equivariant_right(f, x):
    perm = torch.randperm(x.shape[1])
    return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)


def invariant_instead(f, x):
    perm = torch.randperm(x.shape[1])
    return torch.allclose(f(x[:, perm]), f(x), atol=1e-5)


def equivariant_loose(f, x):
    perm = torch.randperm(x.shape[1])
    return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-2)


def test_permutation_equivariance():
    assert passes(ch04.check_permutation_equivariance(equivariant_right, quiet=True))
    assert fails_with_hint(ch04.check_permutation_equivariance(invariant_instead, quiet=True))
    loose = ch04.check_permutation_equivariance(equivariant_loose, quiet=True)
    assert fails_with_hint(loose) and "tiny position embedding" in loose.message
    always = ch04.check_permutation_equivariance(lambda f, x: True, quiet=True)
    assert fails_with_hint(always) and "right answer is False" in always.message
    none = ch04.check_permutation_equivariance(lambda f, x: None, quiet=True)
    assert fails_with_hint(none) and "True or False" in none.message


def resized_right(shape, new_image_size, patch_size, num_prefix_tokens):
    grid = new_image_size // patch_size
    return (shape[0], num_prefix_tokens + grid * grid, shape[2])


def resized_without_prefix(shape, new_image_size, patch_size, num_prefix_tokens):
    return (shape[0], (new_image_size // patch_size) ** 2, shape[2])


def resized_linear(shape, new_image_size, patch_size, num_prefix_tokens):
    return (shape[0], num_prefix_tokens + new_image_size // patch_size, shape[2])


def test_equivariance_cases_are_labelled_right():
    x = torch.randn(2, 16, 16)
    with torch.no_grad():
        for what, f, want in ch04._equivariance_cases(dim=16, tokens=16):
            perm = torch.roll(torch.arange(16), 3)  # every token moves
            assert torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5) == want, what
            assert f(x).dtype == torch.float32, what


def equivariant_default_tolerance(f, x):
    perm = torch.randperm(x.shape[1])
    return torch.allclose(f(x[:, perm]), f(x)[:, perm])


def equivariant_permutation_matrix(f, x):
    P = torch.eye(x.shape[1])[torch.randperm(x.shape[1])]  # float32, as x is
    return torch.allclose(f(P @ x), P @ f(x), atol=1e-5)


def equivariant_exact(f, x):
    perm = torch.randperm(x.shape[1])
    return torch.equal(f(x[:, perm]), f(x)[:, perm])


def test_permutation_equivariance_right_answers_never_fail():
    # in float32, attention's rounding alone fails torch.allclose's default tolerance about half
    # of the time; the check's equivariant functions move by one last bit at most
    for _ in range(30):
        for right in (equivariant_default_tolerance, equivariant_permutation_matrix):
            result = ch04.check_permutation_equivariance(right, quiet=True)
            assert passes(result), (right.__name__, result.message)


def test_permutation_equivariance_refuses_exact_comparison():
    result = ch04.check_permutation_equivariance(equivariant_exact, quiet=True)
    assert fails_with_hint(result) and "softmax over the tokens" in result.message


def resized_float_grid(shape, new_image_size, patch_size, num_prefix_tokens):
    return (shape[0], num_prefix_tokens + (new_image_size / patch_size) ** 2, shape[2])


@pytest.mark.parametrize("wrong", [resized_without_prefix, resized_linear])
def test_resized_shape(wrong):
    assert passes(ch04.check_resized_shape(resized_right, quiet=True))
    assert fails_with_hint(ch04.check_resized_shape(wrong, quiet=True))


def test_resized_shape_wants_ints():
    result = ch04.check_resized_shape(resized_float_grid, quiet=True)
    assert fails_with_hint(result) and "should be an int" in result.message
    tensors = ch04.check_resized_shape(lambda *args: (torch.zeros(2), torch.zeros(2), 1), True)
    assert fails_with_hint(tensors) and "should be an int, got a tensor" in tensors.message


# --- 05: the encoder block ------------------------------------------------------------------


def layer_norm_right(x, weight, bias, eps):
    dims = tuple(range(-weight.ndim, 0))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_unbiased(x, weight, bias, eps):
    dims = tuple(range(-weight.ndim, 0))
    mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_eps_outside(x, weight, bias, eps):
    dims = tuple(range(-weight.ndim, 0))
    mean = x.mean(dims, keepdim=True)
    std = x.std(dims, unbiased=False, keepdim=True)
    return (x - mean) / (std + eps) * weight + bias


def layer_norm_last_dim_only(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_var(x, weight, bias, eps):
    dims = tuple(range(-weight.ndim, 0))
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_one_pass_variance(x, weight, bias, eps):
    dims = tuple(range(-weight.ndim, 0))
    mean = x.mean(dims, keepdim=True)
    var = (x * x).mean(dims, keepdim=True) - mean * mean  # E[x²] - E[x]²
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_functional(x, weight, bias, eps):
    return F.layer_norm(x, weight.shape, weight, bias, eps)


def layer_norm_torch(x, weight, bias, eps):
    return torch.layer_norm(x, weight.shape, weight, bias, eps)


def layer_norm_module(x, weight, bias, eps):
    norm = nn.LayerNorm(weight.shape, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    return norm(x)


@pytest.mark.parametrize("right", [layer_norm_right, layer_norm_var])
def test_layer_norm_right(right):
    assert passes(ch05.check_layer_norm(right, quiet=True))


@pytest.mark.parametrize(
    "wrong", [layer_norm_unbiased, layer_norm_eps_outside, layer_norm_last_dim_only,
              layer_norm_one_pass_variance]
)
def test_layer_norm(wrong):
    assert fails_with_hint(ch05.check_layer_norm(wrong, quiet=True))


layer_norm_taken_beforehand = F.layer_norm


def layer_norm_early_reference(x, weight, bias, eps):
    return layer_norm_taken_beforehand(x, weight.shape, weight, bias, eps)


@pytest.mark.parametrize("library", [layer_norm_functional, layer_norm_torch, layer_norm_module,
                                     layer_norm_early_reference])
def test_layer_norm_refuses_the_library(library):
    result = ch05.check_layer_norm(library, quiet=True)
    assert fails_with_hint(result) and "layer_norm is not allowed" in result.message
    x, weight, bias = torch.randn(2, 4), torch.ones(4), torch.zeros(4)
    assert torch.allclose(library(x, weight, bias, 1e-5), layer_norm_right(x, weight, bias, 1e-5),
                          atol=1e-5)  # restored after the check


def block_parameters_right(dim, mlp_hidden, qkv_bias):
    norms = 2 * 2 * dim
    attention = dim * 3 * dim + (3 * dim if qkv_bias else 0) + dim * dim + dim
    mlp = dim * mlp_hidden + mlp_hidden + mlp_hidden * dim + dim
    return norms + attention + mlp


def test_block_parameters():
    assert passes(ch05.check_block_parameters(block_parameters_right, quiet=True))
    no_norms = ch05.check_block_parameters(lambda d, h, b: block_parameters_right(d, h, b) - 4 * d,
                                           quiet=True)
    assert fails_with_hint(no_norms) and "too few" in no_norms.message
    always_bias = ch05.check_block_parameters(
        lambda d, h, b: block_parameters_right(d, h, True), quiet=True)
    assert fails_with_hint(always_bias) and "too many" in always_bias.message
    as_float = ch05.check_block_parameters(lambda d, h, b: float(block_parameters_right(d, h, b)),
                                           quiet=True)
    assert fails_with_hint(as_float) and "int" in as_float.message


def pre_norm_right(x, norm1, attn, norm2, mlp):
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def post_norm(x, norm1, attn, norm2, mlp):
    x = norm1(x + attn(x))
    return norm2(x + mlp(x))


def no_residual(x, norm1, attn, norm2, mlp):
    return mlp(norm2(attn(norm1(x))))


def norms_swapped(x, norm1, attn, norm2, mlp):
    x = x + attn(norm2(x))
    return x + mlp(norm1(x))


@pytest.mark.parametrize("wrong", [post_norm, no_residual, norms_swapped])
def test_residual_block(wrong):
    assert passes(ch05.check_residual_block(pre_norm_right, quiet=True))
    assert fails_with_hint(ch05.check_residual_block(wrong, quiet=True))


# --- 06: the whole model --------------------------------------------------------------------


def vit_size_right(c: ViTConfig):
    tokens = (c.image_size // c.patch_size) ** 2 + (c.pool == "cls")
    D, hidden = c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    block = block_parameters_right(D, hidden, c.qkv_bias)
    params = c.in_chans * c.patch_size**2 * D + D  # patch projection
    params += D if c.pool == "cls" else 0  # class token
    params += tokens * D if c.pos_embed == "learned" else 0  # position table
    params += c.depth * block + 2 * D  # blocks, final LayerNorm
    params += D * c.num_classes + c.num_classes  # head (none when num_classes = 0)
    return tokens, params


def vit_size_sincos_counted(c: ViTConfig):
    tokens, params = vit_size_right(c)
    return tokens, params + (tokens * c.embed_dim if c.pos_embed == "sincos" else 0)


def vit_size_no_cls(c: ViTConfig):
    tokens, params = vit_size_right(c)
    return (c.image_size // c.patch_size) ** 2, params


def vit_size_three_channels(c: ViTConfig):
    tokens, params = vit_size_right(c)
    return tokens, params + (3 - c.in_chans) * c.patch_size**2 * c.embed_dim


def vit_size_whole_mlp_ratio(c: ViTConfig):
    tokens, params = vit_size_right(c)
    D = c.embed_dim
    return tokens, params + c.depth * (2 * D + 1) * (D * int(c.mlp_ratio) - int(D * c.mlp_ratio))


def vit_size_float_tokens(c: ViTConfig):
    tokens, params = vit_size_right(c)
    return float(tokens), params


@pytest.mark.parametrize("wrong", [vit_size_sincos_counted, vit_size_no_cls,
                                   vit_size_three_channels, vit_size_whole_mlp_ratio])
def test_vit_size(wrong):
    assert passes(ch06.check_vit_size(vit_size_right, quiet=True))
    assert fails_with_hint(ch06.check_vit_size(wrong, quiet=True))
    single = ch06.check_vit_size(lambda c: vit_size_right(c)[1], quiet=True)
    assert fails_with_hint(single) and "pair" in single.message


def test_vit_size_wants_ints():
    as_float = ch06.check_vit_size(vit_size_float_tokens, quiet=True)
    assert fails_with_hint(as_float) and "number of tokens should be an int" in as_float.message
    tensors = ch06.check_vit_size(lambda c: (torch.zeros(2), torch.zeros(2)), quiet=True)
    assert fails_with_hint(tensors) and "should be an int, got a tensor" in tensors.message


def pool_right(tokens, kind):
    return tokens[:, 0] if kind == "cls" else tokens.mean(dim=1)


def pool_last_token(tokens, kind):
    return tokens[:, -1] if kind == "cls" else tokens.mean(dim=1)


def pool_channels(tokens, kind):
    return tokens[:, 0] if kind == "cls" else tokens.mean(dim=-1)


@pytest.mark.parametrize("wrong", [pool_last_token, pool_channels])
def test_pooling(wrong):
    assert passes(ch06.check_pooling(pool_right, quiet=True))
    assert fails_with_hint(ch06.check_pooling(wrong, quiet=True))


def flops_growth_right(c: ViTConfig):
    def flops(patch_size):
        n = (c.image_size // patch_size) ** 2
        t, d, h = n + (c.pool == "cls"), c.embed_dim, int(c.embed_dim * c.mlp_ratio)
        per_block = 2 * t * d * (4 * d + 2 * h) + 4 * t * t * d
        return 2 * n * c.in_chans * patch_size**2 * d + c.depth * per_block
    return flops(c.patch_size // 2) / flops(c.patch_size)


def test_flops_growth():
    assert passes(ch06.check_flops_growth(flops_growth_right, quiet=True))
    for guess in (4.0, 16.0, math.nan):
        assert fails_with_hint(ch06.check_flops_growth(lambda c, g=guess: g, quiet=True))
