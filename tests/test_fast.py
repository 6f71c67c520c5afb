"""The fast training step: same function as the plain one, within bf16 rounding."""

import copy

import pytest
import torch
import torch.nn.functional as F

import vitlib
from vitlib.attention import use_flex_attention
from vitlib.fast import (
    COMPILE_MODES,
    TrainStep,
    attention_backend,
    bf16_forward,
    synchronize,
    update_ema,
    widest_float,
)


def _model(seed: int = 0) -> vitlib.ViT:
    torch.manual_seed(seed)
    return vitlib.create_model("vit_cifar_cpu", embed_dim=32, depth=2, num_heads=2)


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _sgd_delta(precision: str, **options) -> tuple[torch.Tensor, float]:
    """Parameter change of one SGD step (lr 1: minus the gradient) and the loss."""
    model = _model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=1.0), 10,
                     precision=precision, compile_mode=None, **options)
    loss, _ = step(*_batch())
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before, loss.item()


def test_bf16_step_follows_the_fp32_gradient():
    exact, exact_loss = _sgd_delta("fp32")
    for precision in ("bf16", "autocast"):
        delta, loss = _sgd_delta(precision)
        assert loss == pytest.approx(exact_loss, rel=2e-2)
        assert F.cosine_similarity(delta, exact, dim=0) > 0.99
        assert (delta - exact).norm() / exact.norm() < 0.1


def test_bf16_forward_runs_in_bf16_and_keeps_fp32_weights():
    model = _model()
    images, _ = _batch()
    logits = bf16_forward(model, images)
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(logits.float(), model(images), atol=0.05, rtol=0.05)


def test_integer_labels_give_the_loss_of_one_hot_targets():
    images, labels = _batch()
    losses = []
    for targets in (labels, F.one_hot(labels, 10).float()):
        model = _model()
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10,
                         precision="fp32", compile_mode=None, label_smoothing=0.1)
        losses.append(step(images, targets)[0].item())
    model = _model()
    expected = F.cross_entropy(model(images), labels, label_smoothing=0.1).item()
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert losses[1] == pytest.approx(expected, rel=1e-5)


def test_step_counts_images_whose_top_class_is_the_targets():
    images, labels = _batch(32)
    model = _model()
    expected = (model(images).argmax(-1) == labels).sum().item()
    mixed = 0.6 * F.one_hot(labels, 10).float() + 0.4 * F.one_hot(labels.flip(0), 10).float()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10,
                     precision="fp32", compile_mode=None)
    assert step(images, mixed)[1].item() == expected  # the larger share counts


def test_gradient_clipping_limits_the_step():
    delta, _ = _sgd_delta("fp32", grad_clip=1e-3)
    assert delta.norm() == pytest.approx(1e-3, rel=1e-3)


def test_step_clears_gradients_and_moves_weights():
    model = _model()
    step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=1e-3), 10,
                     precision="bf16", compile_mode=None)
    first = model.head.weight.detach().clone()
    loss, correct = step(*_batch())
    assert torch.isfinite(loss) and not loss.requires_grad
    assert 0 <= correct.item() <= 8
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(first, model.head.weight)


def test_ema_is_a_weighted_average():
    model, ema = _model(0), _model(1)
    pairs = zip(ema.parameters(), model.parameters(), strict=True)
    expected = [0.9 * e.detach() + 0.1 * p.detach() for e, p in pairs]
    update_ema(ema, model, decay=0.9)
    for e, x in zip(ema.parameters(), expected, strict=True):
        torch.testing.assert_close(e, x)


def test_ema_copies_the_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    ema = copy.deepcopy(model)
    model(torch.randn(16, 3) * 5 + 2)  # moves the running statistics
    update_ema(ema, model, decay=0.9)
    assert not torch.equal(model[1].running_mean, torch.zeros(4))
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(e, b)


def test_bf16_forward_casts_buffers_too():
    model = vitlib.ViT(vitlib.ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=1,
                                        num_heads=2, num_classes=10, pos_embed="sincos"))
    assert model.pos_embed.dtype == torch.float32  # a fixed table: a buffer, not a parameter
    assert "pos_embed" in dict(model.named_buffers())
    logits = bf16_forward(model, torch.randn(2, 3, 16, 16))
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 10)


def test_bad_options_name_the_choices():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="fp32, autocast, bf16"):
        TrainStep(model, optimizer, 10, precision="fp16")
    with pytest.raises(ValueError, match="flash, efficient, cudnn, math"):
        TrainStep(model, optimizer, 10, attention="fastest")
    with pytest.raises(ValueError, match="default, reduce-overhead, max-autotune"):
        TrainStep(model, optimizer, 10, compile_mode="fastest")
    with pytest.raises(ValueError, match="flex.*CUDA only"):  # no FlexAttention backward here
        TrainStep(model, optimizer, 10, attention="flex")
    with pytest.raises(ValueError, match="flex.*needs a compile_mode"):
        TrainStep(model, optimizer, 10, attention="flex", compile_mode=None)
    dropping = vitlib.ViT(vitlib.ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=1,
                                           num_heads=2, num_classes=10, attn_dropout=0.1))
    with pytest.raises(ValueError, match="flex.*without dropout"):
        TrainStep(dropping, optimizer, 10, attention="flex")
    with pytest.raises(ValueError, match="flash"), attention_backend("triton"):
        pass


def test_forced_attention_kernel_gives_the_same_loss():
    images, labels = _batch()
    losses = []
    for backend in ("math", None):
        model = _model()
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10,
                         precision="fp32", compile_mode=None, attention=backend)
        losses.append(step(images, labels)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bf16_step_leaves_the_fp32_weights_unrounded():
    model = _model()  # a step at lr 0 must not round the master weights to bf16
    reference = copy.deepcopy(model)
    TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10, compile_mode=None)(
        *_batch())
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_timings_wait_for_the_device_that_ran_the_work(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    for name in ("cpu", "cuda", "mps"):
        synchronize(torch.device(name))
    assert waited == ["cuda", "mps"]


def _sdpa_kernels_allowed() -> set[str]:
    allowed = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
    }
    return {name for name, on in allowed.items() if on}


def test_attention_backend_allows_only_the_named_sdpa_kernel():
    before = _sdpa_kernels_allowed()
    for name in ("flash", "efficient", "cudnn", "math"):
        with attention_backend(name):
            assert _sdpa_kernels_allowed() == {name}
        assert _sdpa_kernels_allowed() == before
    with attention_backend(None):
        assert _sdpa_kernels_allowed() == before


def test_named_kernel_overrides_an_outer_flex_attention_and_none_keeps_it(monkeypatch):
    import torch.nn.attention.flex_attention as flex_module

    calls = []

    def flex(q, k, v, *args, **kwargs):  # FlexAttention's numbers, without compiling it here
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q, k, v)

    monkeypatch.setattr(flex_module, "flex_attention", flex)
    model, (images, _) = _model(), _batch(2)
    with torch.no_grad():
        with attention_backend("flex"):
            model(images)
        assert len(calls) == 2  # one per block
        with use_flex_attention(), attention_backend("math"):
            model(images)
        assert len(calls) == 2
        with use_flex_attention(), attention_backend(None):  # None keeps the outer choice
            model(images)
        assert len(calls) == 4


def test_each_precision_runs_the_head_in_its_dtype():
    expected = {"fp32": torch.float32, "autocast": torch.bfloat16, "bf16": torch.bfloat16}
    seen = []
    for precision in expected:
        model = _model()
        model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10,
                  precision=precision, compile_mode=None)(*_batch())
    assert seen == list(expected.values())


def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(monkeypatch):
    compiled, marks = [], []

    def compile(fn, mode=None, **kwargs):
        compiled.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode in (None, *COMPILE_MODES):
        compiled.clear()
        marks.clear()
        model = _model()
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10,
                         precision="fp32", compile_mode=mode)
        step(*_batch(2))
        step(*_batch(2))
        assert compiled == ([] if mode is None else [mode])
        # PyTorch's "reduce-overhead" and "max-autotune" replay CUDA graphs
        assert len(marks) == (2 if mode in ("reduce-overhead", "max-autotune") else 0), mode


def test_bf16_forward_leaves_integer_buffers_integer():
    class Gather(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)
            self.register_buffer("index", torch.tensor([2, 0]))

        def forward(self, x):
            return self.linear(x)[:, self.index]

    model = Gather()
    x = torch.randn(5, 4)
    out = bf16_forward(model, x)
    assert out.dtype == torch.bfloat16 and model.index.dtype == torch.long
    torch.testing.assert_close(out.float(), model.linear(x)[:, [2, 0]], atol=0.05, rtol=0.05)


def test_flex_attention_is_refused_off_cuda_on_any_device():
    model = _model().to("meta")  # "meta" stands in for another accelerator (Apple's MPS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="flex.*CUDA only"):
        TrainStep(model, optimizer, 10, attention="flex")


def test_widest_float_is_float32_only_where_float64_is_missing():
    assert widest_float(torch.device("cpu")) == torch.float64
    assert widest_float(torch.device("cuda")) == torch.float64
    assert widest_float(torch.device("mps")) == torch.float32  # Apple's GPUs have no float64


def test_integer_labels_mean_the_configured_number_of_classes():
    images, _ = _batch(4)
    labels = torch.tensor([0, 1, 1, 0])  # the batch holds none of classes 2..9
    model = _model()
    expected = F.cross_entropy(model(images), labels).item()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), 10,
                     precision="fp32", compile_mode=None)
    assert step(images, labels)[0].item() == pytest.approx(expected, rel=1e-5)


def test_timings_wait_for_the_named_gpu(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    synchronize(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]
