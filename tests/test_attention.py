import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlib import (
    MultiHeadSelfAttention,
    ViT,
    ViTConfig,
    mimetic_init_,
    scaled_dot_product_attention,
)
from vitlib.attention import use_flex_attention


def test_matches_pytorch_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 16).unbind(0)  # (B, H, N, d)
    out, attn = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 4, 7, 16) and attn.shape == (2, 4, 7, 7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 7))


def test_large_scores_do_not_overflow_float16():
    # q·k = 40·40·64 = 102,400 is past float16's largest number (65,504); q·k/√d is not
    q = k = torch.full((1, 3, 64), 40.0, dtype=torch.float16)
    v = torch.randn(1, 3, 64).half()
    out, attn = scaled_dot_product_attention(q, k, v)
    assert torch.equal(attn, torch.full_like(attn, 1 / 3))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_mask_matches_pytorch_and_blocks_future():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 5, 8).unbind(0)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    out, attn = scaled_dot_product_attention(q, k, v, causal)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.all(attn.masked_select(~causal) == 0)


def test_non_boolean_mask_is_refused():
    q = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, q, q, torch.ones(3, 3))


def test_gradcheck_float64():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    def attention(q, k, v):
        return scaled_dot_product_attention(q, k, v)[0]

    assert torch.autograd.gradcheck(attention, (q, k, v))


def test_fast_and_explicit_paths_agree():
    torch.manual_seed(3)
    mha = MultiHeadSelfAttention(48, 6).eval()
    x = torch.randn(2, 10, 48)
    fast, none = mha(x)
    slow, weights = mha(x, need_weights=True)
    assert none is None and weights.shape == (2, 6, 10, 10)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)


def test_attention_dropout_acts_in_training_only_on_both_paths():
    torch.manual_seed(3)
    dropping = MultiHeadSelfAttention(32, 4, attn_dropout=0.5)
    plain = MultiHeadSelfAttention(32, 4).eval()
    plain.load_state_dict(dropping.state_dict())
    x = torch.randn(2, 9, 32)
    expected = plain(x)[0]
    for need_weights in (False, True):
        dropping.eval()
        torch.testing.assert_close(dropping(x, need_weights=need_weights)[0], expected)
        dropping.train()
        first = dropping(x, need_weights=need_weights)[0]
        assert not torch.allclose(first, expected)
        assert not torch.allclose(first, dropping(x, need_weights=need_weights)[0])


def torch_copy(ours: MultiHeadSelfAttention) -> nn.MultiheadAttention:
    """PyTorch's attention module holding the weights of ``ours``, in eval mode."""
    ref = nn.MultiheadAttention(ours.qkv.in_features, ours.num_heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ref


def test_equals_nn_multihead_attention_with_copied_weights():
    torch.manual_seed(4)
    ours = MultiHeadSelfAttention(32, 4).eval()
    ref = torch_copy(ours)
    x = torch.randn(3, 9, 32)
    expected, expected_w = ref(x, x, x, need_weights=True, average_attn_weights=False)
    out, weights = ours(x, need_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, expected_w, atol=1e-6, rtol=1e-5)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match=r"not divisible by num_heads 5.*choose num_heads"):
        MultiHeadSelfAttention(48, 5)


def _products(attn: MultiHeadSelfAttention) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per head W_Q,h W_K,hᵀ (dim, dim), and W_V W_O (dim, dim), in float64."""
    dim, k = attn.proj.in_features, attn.head_dim
    w = attn.qkv.weight.detach().double()
    q, key, v = w[:dim].T, w[dim:2 * dim].T, w[2 * dim:].T  # each (dim, dim): x @ W
    qk = [q[:, h * k:(h + 1) * k] @ key[:, h * k:(h + 1) * k].T for h in range(attn.num_heads)]
    return qk, v @ attn.proj.weight.detach().double().T


def test_mimetic_init_gives_the_pattern_of_trained_attention():
    torch.manual_seed(0)
    dim, heads = 128, 4
    attn = MultiHeadSelfAttention(dim, heads)
    random_qk, random_vo = _products(attn)
    mimetic_init_(attn, qk=(0.7, 0.7), vo=(0.4, 0.4))
    qk, vo = _products(attn)
    # V·O = a·Z − b·I with Z of entries N(0, 1/dim): remove −b·I, what is left looks like a·Z
    noise = vo + 0.4 * torch.eye(dim, dtype=torch.float64)
    assert abs(noise.diagonal().mean()) < 0.05
    assert noise.std() * dim**0.5 == pytest.approx(0.4, rel=0.1)
    assert abs(random_vo.diagonal().mean()) < 0.05  # the default init has no such pattern
    for h, product in enumerate(qk):
        # rank head_dim, leaning to the identity: the best such approximation of a·Z + b·I
        assert torch.linalg.matrix_rank(product) == dim // heads
        assert product.trace() / (dim // heads) > 0.35  # half of b at least
        assert abs(random_qk[h].trace()) / (dim // heads) < 0.1
    assert not torch.allclose(qk[0], qk[1])  # each head draws its own Z
    assert attn.qkv.bias.abs().max() == 0 and attn.proj.bias.abs().max() == 0


def test_mimetic_init_products_are_the_best_approximations_of_their_targets():
    dim, heads, k = 32, 4, 8
    attn = MultiHeadSelfAttention(dim, heads)
    torch.manual_seed(5)
    mimetic_init_(attn, qk=(0.7, 0.6), vo=(0.4, 0.3))
    qk, vo = _products(attn)
    torch.manual_seed(5)  # the same draws: one Z per head, then one for V·O
    z = [torch.randn(dim, dim, dtype=torch.float64) / dim**0.5 for _ in range(heads + 1)]
    eye = torch.eye(dim, dtype=torch.float64)
    for h, product in enumerate(qk):  # rank-k truncated SVD of a·Z + b·I, not symmetric
        u, s, vh = torch.linalg.svd(0.7 * z[h] + 0.6 * eye)
        expected = u[:, :k] @ torch.diag(s[:k]) @ vh[:k]
        torch.testing.assert_close(product, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vo, 0.4 * z[heads] - 0.3 * eye, atol=1e-5, rtol=1e-5)


def test_mimetic_init_makes_tokens_attend_to_themselves():
    images = torch.randn(4, 3, 16, 16)
    share = {}
    for init in ("random", "mimetic"):
        torch.manual_seed(0)
        config = ViTConfig(image_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                           attn_init=init)
        weights = ViT(config).eval().attention_maps(images)[0]  # (B, H, T, T)
        share[init] = weights.diagonal(dim1=-2, dim2=-1).mean().item()  # weight on itself
    tokens = config.num_tokens
    assert share["random"] == pytest.approx(1 / tokens, rel=0.2)  # about uniform
    assert share["mimetic"] > 4 / tokens


def test_unknown_attention_init_is_refused():
    with pytest.raises(ValueError, match="attn_init must be 'random' or 'mimetic'"):
        ViTConfig(attn_init="identity")


@pytest.fixture
def flex_calls(monkeypatch):
    """Calls of FlexAttention, counted (dynamo traces the counting wrapper into its graph)."""
    import torch.nn.attention.flex_attention as module

    calls, flex = [], module.flex_attention
    monkeypatch.setattr(module, "flex_attention", lambda *a: calls.append(1) or flex(*a))
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_gives_the_numbers_of_sdpa(flex_calls):
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                          num_classes=3)).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # FlexAttention has no backward pass on a CPU
        expected = model(images)
        assert not flex_calls
        with use_flex_attention():
            flexed = model(images)
        assert len(flex_calls) == 2  # one per block
    torch.testing.assert_close(flexed, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_an_sdpa_kernel_inside_the_flex_switch_wins(flex_calls):
    from vitlib.fast import attention_backend

    attn = MultiHeadSelfAttention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), attention_backend("flex"):
        with attention_backend("math"):
            attn(x)
        assert not flex_calls
        attn(x)
        assert flex_calls


def test_a_compiled_model_follows_the_attention_kernel_switch(flex_calls):
    """The switch is read while tracing: a compiled forward is traced again when it flips."""
    attn = MultiHeadSelfAttention(16, 2).eval()
    compiled = torch.compile(attn, backend="eager")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = compiled(x)[0]
        assert not flex_calls
        with use_flex_attention():
            flexed = compiled(x)[0]
        assert flex_calls
        traced = len(flex_calls)
        torch.testing.assert_close(compiled(x)[0], plain)
        assert len(flex_calls) == traced  # off again: the first graph, no FlexAttention
    torch.testing.assert_close(flexed, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attention_dropout_in_training_is_not_skipped_by_the_flex_switch(flex_calls):
    attn = MultiHeadSelfAttention(16, 2, attn_dropout=0.5).train()
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), use_flex_attention():
        first = attn(x)[0]
        assert not torch.allclose(first, attn(x)[0])  # dropout is drawn anew
        assert not flex_calls  # FlexAttention has no dropout: SDPA runs instead
        attn.eval()
        attn(x)
        assert flex_calls


def test_scores_are_scaled_by_the_query_key_width_not_the_value_width():
    torch.manual_seed(6)
    q, k = torch.randn(2, 5, 4, dtype=torch.float64).unbind(0)  # d = 4: scale 1/2
    v = torch.randn(5, 16, dtype=torch.float64)  # dv = 16
    out, attn = scaled_dot_product_attention(q, k, v)
    expected = torch.exp(q @ k.T / 2)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(attn, expected)
    torch.testing.assert_close(out, expected @ v)


def test_qkv_bias_can_be_switched_off():
    torch.manual_seed(7)
    attn = MultiHeadSelfAttention(16, 2, qkv_bias=False).eval()
    assert attn.qkv.bias is None
    # zero tokens give zero queries, keys and values: only the output bias is left
    out = attn(torch.zeros(1, 3, 16))[0]
    torch.testing.assert_close(out, attn.proj.bias.detach().expand(1, 3, 16))


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_dropout_drops_attention_weights_not_output_features(need_weights):
    torch.manual_seed(8)
    heads, head_dim, tokens = 2, 8, 6
    attn = MultiHeadSelfAttention(heads * head_dim, heads, attn_dropout=0.5).train()
    with torch.no_grad():  # output projection = identity, so the heads' outputs show directly
        attn.proj.weight.copy_(torch.eye(heads * head_dim))
        attn.proj.bias.zero_()
    # identical tokens: every weight is 1/6 and every value row is the same v
    x = torch.randn(1, 1, heads * head_dim).expand(32, tokens, -1)
    v = attn.qkv(x[:1, :1])[0, 0, 2 * heads * head_dim:].detach().view(heads, head_dim)
    with torch.no_grad():
        out = attn(x, need_weights=need_weights)[0].view(32, tokens, heads, head_dim)
    # dropping weights (kept ones ×2) gives (kept/6)·2·v: each head's output is a multiple of
    # its v by 0, 1/3, ..., 2; dropping output features would zero single entries instead
    ratio = out / v
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))
    thirds = 3 * ratio[..., 0]
    torch.testing.assert_close(thirds, thirds.round(), atol=1e-4, rtol=0)
    assert (thirds < 5.5).any()  # some weights were dropped


def test_projection_dropout_acts_on_the_projected_output():
    torch.manual_seed(9)
    attn = MultiHeadSelfAttention(16, 2, proj_dropout=0.5)
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        expected = attn.eval()(x)[0]
        out = attn.train()(x)[0]
    # each output entry is dropped or kept and doubled
    zeros = out == 0
    assert 0.3 < zeros.float().mean() < 0.7
    torch.testing.assert_close(out[~zeros], 2 * expected[~zeros])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_mask_holds_on_every_attention_path():
    torch.manual_seed(10)
    ours = MultiHeadSelfAttention(16, 2).eval()
    ref = torch_copy(ours)
    x = torch.randn(2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()  # True: may attend
    with torch.no_grad():
        expected = ref(x, x, x, attn_mask=~causal, need_weights=False)[0]  # True: may not
        torch.testing.assert_close(ours(x, causal)[0], expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours(x, causal, need_weights=True)[0], expected,
                                   atol=1e-6, rtol=1e-5)
        with use_flex_attention():
            torch.testing.assert_close(ours(x, causal)[0], expected, atol=1e-6, rtol=1e-5)
