"""Each exercise check of notebooks 00-03 passes a right answer and fails wrong ones with a hint."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlib
from vitlib import ViT, ViTConfig
from vitlib.exercises import ch00, ch01, ch02, ch03
from vitlib.exercises.checking import forbidden


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


def shapes_float_count(B, S, p, D, K):
    N = (S / p) ** 2  # 64.0: a float is not a size
    return [(B, N, 3 * p * p), (B, N, D), (B, N, D), (B, N, D), (B, D), (B, K)]


def shapes_with_class_token(B, S, p, D, K):
    shapes = shapes_right(B, S, p, D, K)
    shapes[2] = shapes[3] = (B, (S // p) ** 2 + 1, D)
    return shapes


def test_pipeline_shapes():
    assert passes(ch00.check_pipeline_shapes(shapes_right, quiet=True))
    assert fails_with_hint(ch00.check_pipeline_shapes(shapes_without_pooling, quiet=True))
    assert fails_with_hint(ch00.check_pipeline_shapes(lambda *a: shapes_right(*a)[:5], quiet=True))
    assert fails_with_hint(ch00.check_pipeline_shapes(shapes_with_class_token, quiet=True))
    as_float = ch00.check_pipeline_shapes(shapes_float_count, quiet=True)
    assert fails_with_hint(as_float) and "should be an int" in as_float.message
    number = ch00.check_pipeline_shapes(lambda *a: 7, quiet=True)
    assert fails_with_hint(number) and "list of 6 shapes" in number.message


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


class SmallViT(nn.Module):
    """The notebook's answer, with switches for the mistakes below."""

    def __init__(self, image_size, patch_size, embed_dim, num_heads, depth, num_classes,
                 final_norm=True, learned=True, positions_after=False):
        super().__init__()
        self.patch_embed = vitlib.PatchEmbed(patch_size, 3, embed_dim)
        table = 0.02 * torch.randn(1, (image_size // patch_size) ** 2, embed_dim)
        if learned:
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table)
        self.blocks = nn.Sequential(*[vitlib.EncoderBlock(embed_dim, num_heads, 2 * embed_dim)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim) if final_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes)
        self.positions_after = positions_after

    def forward(self, images):
        tokens = self.patch_embed(images)
        if self.positions_after:  # the encoder sees a bag of patches
            return self.head(self.norm(self.blocks(tokens) + self.pos_embed).mean(dim=1))
        return self.head(self.norm(self.blocks(tokens + self.pos_embed)).mean(dim=1))


class EncoderLayerViT(nn.Module):
    """A right answer with nn.TransformerEncoder (batch first, pre-norm, a final norm)."""

    def __init__(self, image_size, patch_size, embed_dim, num_heads, depth, num_classes):
        super().__init__()
        self.to_tokens = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image_size // patch_size) ** 2, embed_dim))
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, 2 * embed_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        tokens = self.to_tokens(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(tokens).mean(dim=1))


class EmbeddingPositionsViT(SmallViT):
    """A right answer whose position table is an nn.Embedding."""

    def __init__(self, **sizes):
        super().__init__(**sizes)
        del self.pos_embed
        num_patches = (sizes["image_size"] // sizes["patch_size"]) ** 2
        self.positions = nn.Embedding(num_patches, sizes["embed_dim"])
        nn.init.trunc_normal_(self.positions.weight, std=0.02)

    def forward(self, images):
        tokens = self.patch_embed(images) + self.positions.weight[None]
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


class FixedSizesViT(SmallViT):
    """Right for the first sizes only: 32-pixel images, patches of 4, D = 32, 10 classes."""

    def __init__(self, image_size, patch_size, embed_dim, num_heads, depth, num_classes):
        super().__init__(32, 4, 32, 4, depth, 10)


class NaNViT(SmallViT):
    """Keeps images apart and moves with the patches, but every score is NaN."""

    def forward(self, images):
        return super().forward(images) * float("nan")


@pytest.mark.parametrize("right", [vit_right, SmallViT, EncoderLayerViT, EmbeddingPositionsViT])
def test_fixed_vit_right(right):
    assert passes(ch00.check_fixed_vit(right, quiet=True))


def test_fixed_vit():
    no_attention = ch00.check_fixed_vit(PerTokenMLP, quiet=True)
    assert fails_with_hint(no_attention) and "encoder blocks" in no_attention.message
    blind = ch00.check_fixed_vit(vit_without_positions, quiet=True)
    assert fails_with_hint(blind) and "where each patch was" in blind.message
    leaky = ch00.check_fixed_vit(SequenceFirstEncoder, quiet=True)
    assert fails_with_hint(leaky) and "mixed" in leaky.message
    no_final_norm = ch00.check_fixed_vit(lambda **k: SmallViT(**k, final_norm=False), True)
    assert fails_with_hint(no_final_norm) and "LayerNorm" in no_final_norm.message
    buffer = ch00.check_fixed_vit(lambda **k: SmallViT(**k, learned=False), quiet=True)
    assert fails_with_hint(buffer) and "trainable position table" in buffer.message
    after = ch00.check_fixed_vit(lambda **k: SmallViT(**k, positions_after=True), quiet=True)
    assert fails_with_hint(after) and "where each patch was" in after.message
    fixed = ch00.check_fixed_vit(FixedSizesViT, quiet=True)
    assert fails_with_hint(fixed) and "image_size=16" in fixed.message
    nan = ch00.check_fixed_vit(NaNViT, quiet=True)
    assert fails_with_hint(nan) and "NaN" in nan.message
    not_a_model = ch00.check_fixed_vit(lambda **k: None, quiet=True)
    assert fails_with_hint(not_a_model) and "nn.Module" in not_a_model.message


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


def attention_fused(q, k, v):
    n = k.shape[-2]
    attn = F.scaled_dot_product_attention(q, k, torch.eye(n).expand(*k.shape[:-1], n))
    return F.scaled_dot_product_attention(q, k, v), attn


def attention_private_softmax(q, k, v):
    attn = torch._softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1, False)
    return attn @ v, attn


def attention_logsumexp(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    attn = (scores - scores.logsumexp(dim=-1, keepdim=True)).exp()
    return attn @ v, attn


def attention_scales_q_in_place(q, k, v):
    q /= math.sqrt(q.shape[-1])  # changes the caller's q: the check passes a copy
    scores = q @ k.transpose(-2, -1)
    exps = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    attn = exps / exps.sum(dim=-1, keepdim=True)
    return attn @ v, attn


@pytest.mark.parametrize("right", [attention_right, attention_logsumexp,
                                   attention_scales_q_in_place])
def test_attention_right(right):
    assert passes(ch01.check_attention(right, quiet=True))


@pytest.mark.parametrize(
    "wrong", [attention_with_softmax, attention_with_log_softmax, attention_unscaled,
              attention_wrong_axis, attention_exp_without_max, attention_fused,
              attention_private_softmax]
)
def test_attention(wrong):
    assert fails_with_hint(ch01.check_attention(wrong, quiet=True))


def test_attention_check_leaves_softmax_working():
    ch01.check_attention(attention_with_softmax, quiet=True)
    ch01.check_attention(attention_fused, quiet=True)
    scores = torch.randn(2, 3)
    assert torch.allclose(scores.softmax(-1), torch.nn.functional.softmax(scores, -1))
    assert torch.allclose(torch._softmax(scores, -1, False), scores.softmax(-1))
    q = torch.randn(1, 2, 4)
    assert torch.allclose(F.scaled_dot_product_attention(q, q, q), attention_right(q, q, q)[0],
                          atol=1e-6)
    assert "without softmax" in ch01.check_attention(attention_with_softmax, quiet=True).message
    fused = ch01.check_attention(attention_fused, quiet=True)
    assert "scaled_dot_product_attention is not allowed" in fused.message


def test_forbidden_sees_calls_through_earlier_references():
    exp, softmax = torch.exp, F.softmax  # a builtin and a Python function, taken beforehand
    for name, call in (("torch.exp", lambda: exp(torch.zeros(1))),
                       ("torch.nn.functional.softmax", lambda: softmax(torch.zeros(2), -1))):
        with pytest.raises(RuntimeError, match=f"{name} is not allowed"):
            with forbidden("do it by hand", (torch, "exp"), (F, "softmax")):
                call()
    with forbidden("do it by hand", (torch, "exp"), (F, "softmax")):
        torch.zeros(2).sum()  # other calls are fine


early_softmax = F.softmax


def attention_with_early_softmax(q, k, v):
    attn = early_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return attn @ v, attn


def test_attention_sees_softmax_taken_beforehand():
    result = ch01.check_attention(attention_with_early_softmax, quiet=True)
    assert fails_with_hint(result) and "softmax is not allowed" in result.message


def test_forbidden_names_the_function_and_restores_it():
    with forbidden("do it by hand", (torch, "exp"), (torch.Tensor, "exp")):
        with pytest.raises(RuntimeError, match=r"torch\.exp is not allowed .*do it by hand"):
            torch.exp(torch.zeros(1))
        with pytest.raises(RuntimeError, match=r"Tensor\.exp is not allowed"):
            torch.zeros(1).exp()
    assert torch.exp(torch.zeros(1)).item() == 1.0 and torch.zeros(1).exp().item() == 1.0


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
    as_float = ch02.check_attention_flops(lambda n, d, h: 4.0 * n * n * d, quiet=True)
    assert fails_with_hint(as_float) and "should be an int, got" in as_float.message
    array = ch02.check_attention_flops(lambda n, d, h: torch.zeros(3), quiet=True)
    assert fails_with_hint(array) and "should be an int, got a tensor" in array.message


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
    as_float = ch03.check_num_tokens(lambda h, w, p: (h / p) * (w / p), quiet=True)
    assert fails_with_hint(as_float) and "should be an int" in as_float.message
    as_bool = ch03.check_num_tokens(lambda h, w, p: True, quiet=True)
    assert fails_with_hint(as_bool) and "should be an int" in as_bool.message


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
