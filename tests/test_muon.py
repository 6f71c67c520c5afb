"""Muon for the block matrices, AdamW for the rest: the orthogonalization, both update rules,
checkpoints, and the trainer's use of it."""

import copy
import math

import pytest
import torch
from torch import nn

from vitlib.cnn import create_model
from vitlib.model import ViT, ViTConfig
from vitlib.muon import RMS_MATCH, MuonAdamW, orthogonalize, orthogonalize_each
from vitlib.train import TrainConfig, make_optimizer


def random_matrices(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(64, 192), (192, 64), (48, 48), (3, 2, 32, 80)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_the_values_near_one(shape):
    g = random_matrices(*shape)
    o = orthogonalize(g)
    assert o.shape == g.shape and o.dtype == torch.float32  # float32 on a CPU
    values = torch.linalg.svdvals(o)
    assert values.min() > 0.6 and values.max() < 1.25  # the quintic's band, not exactly 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = (u @ vh).flatten(-2)  # the exact U Vᵀ
    assert torch.cosine_similarity(o.flatten(-2), polar, dim=-1).min() > 0.97
    # a gradient's scale does not matter, only its directions
    assert torch.allclose(orthogonalize(1e-4 * g), o, atol=1e-4)


def test_orthogonalize_treats_each_matrix_of_a_stack_alone():
    g = random_matrices(4, 32, 96)
    alone = torch.stack([orthogonalize(m) for m in g])
    assert torch.allclose(orthogonalize(g), alone, atol=1e-5)
    in_bf16 = orthogonalize(g, dtype=torch.bfloat16)  # what a GPU with native bfloat16 runs
    assert in_bf16.dtype == torch.bfloat16
    similarity = torch.cosine_similarity(in_bf16.float().flatten(1), orthogonalize(g).flatten(1))
    assert similarity.min() > 0.99
    with pytest.raises(ValueError, match=r"needs matrices \(\.\.\., m, n\), got shape \(5,\)"):
        orthogonalize(torch.ones(5))


def test_orthogonalize_each_batches_by_the_short_side_and_changes_no_result():
    # a ViT block's shapes (qkv, proj, fc1, fc2 at width 8), twice, then a square and a
    # bfloat16 matrix of short side 5: two batches, one per short side
    shapes = [(24, 8), (8, 8), (16, 8), (8, 16), (24, 8), (8, 16), (5, 5), (5, 12)]
    matrices = [random_matrices(*shape, seed=i) for i, shape in enumerate(shapes)]
    matrices[-1] = matrices[-1].bfloat16()
    results = orthogonalize_each(matrices)
    for m, result in zip(matrices, results, strict=True):
        assert result.shape == m.shape and result.dtype == m.dtype and result.is_contiguous()
        alone = orthogonalize(m.float()).to(m.dtype)  # no padding, no company
        assert torch.allclose(result.float(), alone.float(), atol=1e-5), m.shape
    with pytest.raises(ValueError, match=r"needs 2-D matrices, got shape \(2, 3, 4\) at index 1"):
        orthogonalize_each([torch.ones(3, 4), torch.ones(2, 3, 4)])


def step_both(params_a, opt_a, params_b, opt_b, steps: int, seed: int = 1) -> None:
    """Give both optimizers the same random gradients for ``steps`` steps."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for a, b in zip(params_a, params_b, strict=True):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()


def test_groups_without_muon_take_exactly_adamw_steps():
    ours = [random_matrices(8, 5).requires_grad_(), random_matrices(5, seed=1).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    groups = lambda ps: [{"params": ps[:1], "weight_decay": 0.05},  # noqa: E731
                         {"params": ps[1:], "weight_decay": 0.0, "lr": 3e-3}]
    step_both(ours, MuonAdamW(groups(ours), lr=1e-2),
              theirs, torch.optim.AdamW(groups(theirs), lr=1e-2), steps=6)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_a_parameter_without_a_gradient_keeps_its_own_adamw_step_count():
    ours = [random_matrices(4, 3).requires_grad_(), random_matrices(3, seed=1).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = MuonAdamW(ours, lr=1e-2, weight_decay=0.05)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.05)
    gen = torch.Generator().manual_seed(2)
    for step in range(4):
        for a, b in zip(ours, theirs, strict=True):
            g = torch.randn(a.shape, generator=gen)
            frozen = step == 1 and a.ndim == 1  # the bias sits out the second step
            a.grad, b.grad = (None, None) if frozen else (g.clone(), g.clone())
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this PyTorch has no optim.Muon")
def test_muon_groups_follow_pytorchs_muon_with_adamw_matched_steps():
    # PyTorch's Muon orthogonalizes in bfloat16; ours in float32 on a CPU: equal within that
    ours = [random_matrices(64, 192).requires_grad_(), random_matrices(192, 64).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    start = [p.detach().clone() for p in ours]
    step_both(ours, MuonAdamW([{"params": ours, "muon": True}], lr=1e-2, weight_decay=0.05),
              theirs, torch.optim.Muon(theirs, lr=1e-2, weight_decay=0.05,
                                       adjust_lr_fn="match_rms_adamw"), steps=5)
    for a, b, s in zip(ours, theirs, start, strict=True):
        assert (a - b).norm() < 0.015 * (b - s).norm()  # 0.8 % on torch 2.14


def test_a_muon_step_has_the_size_of_an_adamw_step():
    w = nn.Parameter(torch.zeros(96, 32))
    w.grad = random_matrices(96, 32)
    MuonAdamW([{"params": [w], "muon": True}], lr=1e-2).step()
    # first step: the direction is a multiple of the gradient (the momentum holds only it);
    # orthogonalized, the multiple drops out; then times lr·0.2·√96
    expected = -1e-2 * RMS_MATCH * math.sqrt(96) * orthogonalize(random_matrices(96, 32))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    rms = w.detach().pow(2).mean().sqrt().item()
    assert 0.6 * RMS_MATCH * 1e-2 < rms < 1.25 * RMS_MATCH * 1e-2


def test_ns_steps_sets_the_number_of_newton_schulz_iterations():
    w = nn.Parameter(torch.zeros(32, 48))
    w.grad = random_matrices(32, 48)
    MuonAdamW([{"params": [w], "muon": True}], lr=1e-2, ns_steps=2).step()
    expected = -1e-2 * RMS_MATCH * math.sqrt(48) * orthogonalize(random_matrices(32, 48), steps=2)
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_a_zero_gradient_leaves_the_weights_as_they_are():
    assert torch.equal(orthogonalize(torch.zeros(2, 4, 6)), torch.zeros(2, 4, 6))
    w = nn.Parameter(random_matrices(8, 12))
    start = w.detach().clone()
    w.grad = torch.zeros_like(w)
    MuonAdamW([{"params": [w], "muon": True}], lr=1e-2).step()
    assert torch.equal(w.detach(), start)


def test_step_evaluates_a_closure_with_gradients_and_returns_its_loss():
    w = nn.Parameter(random_matrices(8, 12))
    b = nn.Parameter(torch.ones(12))
    opt = MuonAdamW([{"params": [w], "muon": True}, {"params": [b]}], lr=1e-2)

    def closure():
        opt.zero_grad()
        loss = (w.sum(0) + b).pow(2).sum()
        loss.backward()
        return loss

    expected = closure().item()
    start = w.detach().clone(), b.detach().clone()
    loss = opt.step(closure)
    assert loss.item() == expected
    assert not torch.equal(w.detach(), start[0]) and not torch.equal(b.detach(), start[1])


def test_a_checkpointed_optimizer_continues_exactly():
    def make(params):
        return MuonAdamW([{"params": params[:2], "muon": True, "weight_decay": 0.1},
                          {"params": params[2:]}], lr=5e-3)

    def run(params, opt, grads):
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()

    shapes = [(16, 24), (24, 16), (16,)]
    grads = [[random_matrices(*s, seed=10 * step + i) for i, s in enumerate(shapes)]
             for step in range(5)]
    straight = [nn.Parameter(random_matrices(*s, seed=i)) for i, s in enumerate(shapes)]
    split = copy.deepcopy(straight)
    run(straight, make(straight), grads)
    first = make(split)
    run(split, first, grads[:3])
    again = make(split)
    again.load_state_dict(copy.deepcopy(first.state_dict()))
    run(split, again, grads[3:])
    for a, b in zip(straight, split, strict=True):
        assert torch.equal(a, b)


def test_bad_groups_and_settings_are_explained():
    with pytest.raises(ValueError, match=r"2-D weight matrices only.*shapes \[\(4,\)\].*"
                                         r"muon=False \(AdamW\)"):
        MuonAdamW([{"params": [nn.Parameter(torch.ones(4))], "muon": True}])
    with pytest.raises(ValueError, match="lr must be positive"):
        MuonAdamW([nn.Parameter(torch.ones(2, 2))], lr=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        MuonAdamW([nn.Parameter(torch.ones(2, 2))], momentum=1.0)


def test_the_trainer_gives_muon_the_block_matrices_only():
    model = ViT(ViTConfig(embed_dim=16, depth=2, num_heads=2, pool="cls"))
    opt = make_optimizer(model, TrainConfig(optimizer="muon", weight_decay=0.05,
                                            muon_lr_ratio=1.0))
    assert isinstance(opt, MuonAdamW)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    for name, param in model.named_parameters():
        in_block = name.startswith("blocks.") and name.endswith("weight") and param.ndim == 2
        assert (id(param) in muon) == in_block, name
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    assert muon < decay  # the block matrices keep their weight decay
    assert "patch_embed.proj.weight" in {n for n, p in model.named_parameters()
                                         if id(p) in decay - muon}
    assert {g["lr_scale"] for g in opt.param_groups} == {1.0}
    faster = make_optimizer(model, TrainConfig(optimizer="muon", muon_lr_ratio=2.0, lr=1e-3))
    assert {(g["muon"], g["lr_scale"], g["lr"]) for g in faster.param_groups} == {
        (True, 2.0, 2e-3), (False, 1.0, 1e-3)}
    default = make_optimizer(model, TrainConfig(optimizer="muon"))
    assert {(g["muon"], g["lr_scale"]) for g in default.param_groups} == {(True, 4.0),
                                                                           (False, 1.0)}
    assert isinstance(make_optimizer(model, TrainConfig()), torch.optim.AdamW)
    with pytest.raises(ValueError, match="steps a vitlib ViT's block matrices, got a ResNet"):
        make_optimizer(create_model("resnet_cifar_cpu"), TrainConfig(optimizer="muon"))
    with pytest.raises(ValueError, match="optimizer must be one of adamw, muon, got 'sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"muon_lr_ratio must be positive \(1 = the same lr"):
        TrainConfig(optimizer="muon", muon_lr_ratio=0)
