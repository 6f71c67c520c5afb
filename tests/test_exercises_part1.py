"""Each exercise check of notebooks 00-03 passes a right answer and fails wrong ones with a hint."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlib import ViT, ViTConfig
from vitlib.exercises import ch00, ch01, ch02, ch03


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- 00: the article's example --------------------------------------------------------------


def shapes_right(B, S, p, D, K):
    N = (S // p) ** 2
    return [(B, N, 3 * p * p), (B, N, D), (B, N, D), (B, N, D), (B, D), (B, K)]


def shapes_without_pooling(B, S, p, D, K):
    shapes = shapes_right(B, S, p, D, K)
    shapes[4] = shapes[3]
    return shapes


def test_pipeline_shapes():
    assert passes(ch00.check_pipeline_shapes(shapes_right, quiet=True))
    assert fails_with_hint(ch00.check_pipeline_shapes(shapes_without_pooling, quiet=True))
    assert fails_with_hint(ch00.check_pipeline_shapes(lambda *a: shapes_right(*a)[:5], quiet=True))


def leak_right(model, images):
    with torch.no_grad():
        base = model(images)
        columns = []
        for j in range(len(images)):
            changed = images.clone()
            changed[j] = 0
            columns.append((model(changed) - base).abs().amax(dim=-1))
    return torch.stack(columns, dim=1)


def test_leak_matrix():
    assert passes(ch00.check_leak_matrix(leak_right, quiet=True))
    transposed = ch00.check_leak_matrix(lambda m, x: leak_right(m, x).T, quiet=True)
    assert fails_with_hint(transposed)


def vit_right(**kwargs):
    return ViT(ViTConfig(**kwargs))


def vit_without_positions(**kwargs):
    model = ViT(ViTConfig(**kwargs))
    nn.init.zeros_(model.pos_embed)
    return model


class SequenceFirstEncoder(nn.Module):
    """Positions included, but the encoder reads (B, N, D) as (N, B, D)."""

    def __init__(self, image_size, patch_size, embed_dim, num_heads, depth, num_classes):
        super().__init__()
        self.to_tokens = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image_size // patch_size) ** 2, embed_dim))
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, 2 * embed_dim, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        tokens = self.to_tokens(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(tokens).mean(dim=1))


class PerTokenMLP(nn.Module):
    """Patches and positions, but no attention: each token goes through an MLP alone."""

    def __init__(self, image_size, patch_size, embed_dim, num_heads, depth, num_classes):
        super().__init__()
        self.to_tokens = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image_size // patch_size) ** 2, embed_dim))
        self.mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        tokens = self.to_tokens(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.mlp(tokens).mean(dim=1))


def test_fixed_vit():
    assert passes(ch00.check_fixed_vit(vit_right, quiet=True))
    no_attention = ch00.check_fixed_vit(PerTokenMLP, quiet=True)
    assert fails_with_hint(no_attention) and "encoder blocks" in no_attention.message
    blind = ch00.check_fixed_vit(vit_without_positions, quiet=True)
    assert fails_with_hint(blind) and "where each patch was" in blind.message
    leaky = ch00.check_fixed_vit(SequenceFirstEncoder, quiet=True)
    assert fails_with_hint(leaky) and "mixed" in leaky.message


# --- 01: self-attention ---------------------------------------------------------------------


def attention_right(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    exps = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    attn = exps / exps.sum(dim=-1, keepdim=True)
    return attn @ v, attn


def attention_with_softmax(q, k, v):
    attn = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return attn @ v, attn


def attention_with_log_softmax(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    attn = torch.nn.functional.log_softmax(scores, dim=-1).exp()
    return attn @ v, attn


def attention_unscaled(q, k, v):
    scores = q @ k.transpose(-2, -1)
    exps = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    attn = exps / exps.sum(dim=-1, keepdim=True)
    return attn @ v, attn


def attention_wrong_axis(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    exps = (scores - scores.amax(dim=-2, keepdim=True)).exp()
    attn = exps / exps.sum(dim=-2, keepdim=True)
    return attn @ v, attn


def attention_exp_without_max(q, k, v):
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).exp()
    attn = scores / scores.sum(dim=-1, keepdim=True)
    return attn @ v, attn


@pytest.mark.parametrize(
    "wrong", [attention_with_softmax, attention_with_log_softmax, attention_unscaled,
              attention_wrong_axis, attention_exp_without_max]
)
def test_attention(wrong):
    assert passes(ch01.check_attention(attention_right, quiet=True))
    assert fails_with_hint(ch01.check_attention(wrong, quiet=True))


def test_attention_check_leaves_softmax_working():
    ch01.check_attention(attention_with_softmax, quiet=True)
    scores = torch.randn(2, 3)
    assert torch.allclose(scores.softmax(-1), torch.nn.functional.softmax(scores, -1))
    assert "without softmax" in ch01.check_attention(attention_with_softmax, quiet=True).message


def test_causal_mask():
    assert passes(ch01.check_causal_mask(lambda n: torch.ones(n, n).tril().bool(), quiet=True))
    above = ch01.check_causal_mask(lambda n: torch.ones(n, n).triu().bool(), quiet=True)
    assert fails_with_hint(above)
    as_float = ch01.check_causal_mask(lambda n: torch.ones(n, n).tril(), quiet=True)
    assert fails_with_hint(as_float) and "dtype" in as_float.message


def test_attention_entropy():
    right = ch01.check_attention_entropy(lambda a: -(a * a.clamp_min(1e-30).log()).sum(-1), True)
    assert passes(right)
    naive = ch01.check_attention_entropy(lambda a: -(a * a.log()).sum(-1), quiet=True)
    assert fails_with_hint(naive) and "NaN" in naive.message
    in_bits = ch01.check_attention_entropy(lambda a: -torch.special.xlogy(a, a).sum(-1) / 0.693,
                                           quiet=True)
    assert fails_with_hint(in_bits)


def test_a_crashing_answer_is_reported_not_raised():
    def broken(q, k, v):
        raise RuntimeError("not written yet")

    result = ch01.check_attention(broken, quiet=True)
    assert fails_with_hint(result) and "RuntimeError: not written yet" in result.message


# --- 02: multi-head attention ---------------------------------------------------------------


def test_split_heads():
    def right(x, h):
        B, N, D = x.shape
        return x.reshape(B, N, h, D // h).permute(0, 2, 1, 3)

    def wrong(x, h):
        B, N, D = x.shape
        return x.reshape(B, h, N, D // h)

    assert passes(ch02.check_split_heads(right, quiet=True))
    assert fails_with_hint(ch02.check_split_heads(wrong, quiet=True))


def test_merge_heads():
    def right(x):
        B, H, N, d = x.shape
        return x.transpose(1, 2).reshape(B, N, H * d)

    def wrong(x):
        B, H, N, d = x.shape
        return x.reshape(B, N, H * d)

    assert passes(ch02.check_merge_heads(right, quiet=True))
    assert fails_with_hint(ch02.check_merge_heads(wrong, quiet=True))


def test_attention_flops():
    assert passes(ch02.check_attention_flops(lambda n, d, h: 4 * n * n * d, quiet=True))
    multiply_adds = ch02.check_attention_flops(lambda n, d, h: 2 * n * n * d, quiet=True)
    assert fails_with_hint(multiply_adds)
    one_head = ch02.check_attention_flops(lambda n, d, h: 4 * n * n * (d // h), quiet=True)
    assert fails_with_hint(one_head)


# --- 03: patch embedding --------------------------------------------------------------------


def test_patchify():
    def right(images, p):
        return F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)

    def channels_last(images, p):
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p * C)

    assert passes(ch03.check_patchify(right, quiet=True))
    assert fails_with_hint(ch03.check_patchify(channels_last, quiet=True))


def test_num_tokens():
    assert passes(ch03.check_num_tokens(lambda h, w, p: (h // p) * (w // p), quiet=True))
    assert fails_with_hint(ch03.check_num_tokens(lambda h, w, p: h * w // p, quiet=True))
    square_only = ch03.check_num_tokens(lambda h, w, p: (h // p) ** 2, quiet=True)
    assert fails_with_hint(square_only)


def linear_from(conv, weight, bias=True):
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias:
            linear.bias.copy_(conv.bias)
    return linear


def test_conv_to_linear():
    right = ch03.check_conv_to_linear(lambda c: linear_from(c, c.weight.flatten(1)), quiet=True)
    assert passes(right)
    permuted = ch03.check_conv_to_linear(
        lambda c: linear_from(c, c.weight.permute(0, 2, 3, 1).flatten(1)), quiet=True
    )
    assert fails_with_hint(permuted)
    no_bias = ch03.check_conv_to_linear(
        lambda c: linear_from(c, c.weight.flatten(1), bias=False), quiet=True
    )
    assert fails_with_hint(no_bias)
