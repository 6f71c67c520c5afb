import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vitlib import count_parameters
from vitlib.cnn import (
    PRESETS,
    BasicBlock,
    CNNConfig,
    ResNet,
    create_model,
    flops_per_image,
    get_config,
    receptive_field,
)

SMALL = CNNConfig(widths=(8, 16), blocks=(1, 2), num_classes=5)


def hand_count(in_chans, widths, blocks, num_classes):
    """Parameters of the ResNet, written out: conv weights, 2 per BatchNorm channel, the head."""
    def conv_bn(c_in, c_out, k):
        return c_in * c_out * k * k + 2 * c_out

    total = conv_bn(in_chans, widths[0], 3)  # stem
    c_in = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(count):
            total += conv_bn(c_in, width, 3) + conv_bn(width, width, 3)
            if c_in != width or (stage > 0 and b == 0):
                total += conv_bn(c_in, width, 1)  # projection shortcut
            c_in = width
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize("config", [SMALL, CNNConfig(), CNNConfig(in_chans=1, num_classes=0),
                                    CNNConfig(widths=(8, 8, 8), blocks=(2, 1, 1))])
def test_shapes_and_parameter_count(config):
    model = ResNet(config).eval()
    x = torch.randn(2, config.in_chans, 32, 32)
    features = model.forward_features(x)
    cells = 32 // config.stride
    assert features.shape == (2, config.widths[-1], cells, cells)
    out_dim = config.num_classes or config.widths[-1]
    assert model(x).shape == (2, out_dim)
    assert model(torch.randn(1, config.in_chans, 48, 40)).shape == (1, out_dim)  # any size
    want = hand_count(config.in_chans, config.widths, config.blocks, config.num_classes)
    assert count_parameters(model) == want


def test_presets_match_their_vit_in_size():
    from vitlib import ViT
    from vitlib import get_config as vit_config

    for cnn_name, vit_name in [("resnet_cifar_cpu", "vit_cifar_cpu"),
                               ("resnet_cifar_tiny", "vit_cifar_tiny")]:
        cnn_params = count_parameters(create_model(cnn_name))
        vit_params = count_parameters(ViT(vit_config(vit_name)))
        assert 0.9 < cnn_params / vit_params < 1.1, (cnn_name, cnn_params, vit_params)
    assert set(PRESETS) == {"resnet_cifar_cpu", "resnet_cifar_tiny"}
    assert get_config("resnet_cifar_cpu", num_classes=100).num_classes == 100


@pytest.mark.parametrize("config", [SMALL, get_config("resnet_cifar_cpu")])
def test_flops_match_pytorch_counter(config):
    model = ResNet(config).eval()
    for size in (32, 24, 25):  # 25: odd sizes, where a stride-2 conv rounds up (25 -> 13 -> 7)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, size, size))
        assert flops_per_image(config, size) == counter.get_total_flops()


def test_receptive_field_matches_gradient():
    config = CNNConfig(widths=(4, 4, 4), blocks=(1, 1, 1), num_classes=0)
    torch.manual_seed(0)
    model = ResNet(config).double().eval()
    # the pixels reached by the gradient in any of 8 images: in one image alone, the ReLUs can
    # cut every path to the edge of the field (with 4 channels, about one image in seven)
    x = torch.randn(8, 3, 48, 48, dtype=torch.double, requires_grad=True)
    features = model.forward_features(x)  # (8, 4, 12, 12)
    features[:, :, 8, 8].sum().backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == receptive_field(config) == 25
    assert cols.max() - cols.min() + 1 == 25


@pytest.mark.parametrize("kwargs, words", [
    (dict(widths=(16, 32), blocks=(1,)), "same number of stages"),
    (dict(widths=(), blocks=()), "same number of stages"),
    (dict(widths=(16, 0), blocks=(1, 1)), "at least 1 channel"),
    (dict(widths=(16, 32), blocks=(1, 0)), "at least 1 channel"),
    (dict(num_classes=-1), "num_classes"),
    (dict(in_chans=0), "in_chans"),
])
def test_bad_config_says_what_to_do(kwargs, words):
    with pytest.raises(ValueError, match=words):
        CNNConfig(**kwargs)


def test_bad_input_and_unknown_preset():
    with pytest.raises(ValueError, match="unsqueeze"):
        ResNet(SMALL)(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"expected images shaped \(B, 3, H, W\)"):
        ResNet(SMALL)(torch.randn(2, 1, 32, 32))  # grey images for a colour model
    with pytest.raises(ValueError, match="resnet_cifar_cpu"):
        get_config("resnet50")
    assert CNNConfig(widths=[8, 16], blocks=[1, 1]) == CNNConfig(widths=(8, 16), blocks=(1, 1))


def interior_error(model, x, shift):
    """Largest |f(shifted x) - shifted f(x)| over feature cells whose receptive field touches
    neither the border nor the wrapped-around strip, relative to the largest |f(x)|."""
    config = model.config
    cells = shift // config.stride
    margin = -(-receptive_field(config) // (2 * config.stride)) + 1  # cells, rounded up
    with torch.no_grad():
        moved = model.forward_features(torch.roll(x, (shift, shift), dims=(2, 3)))
        expected = torch.roll(model.forward_features(x), (cells, cells), dims=(2, 3))
    inner = slice(margin + cells, moved.shape[-1] - margin)
    diff = (moved - expected)[..., inner, inner].abs().max()
    return (diff / expected.abs().max()).item()


def test_conv_trunk_is_translation_equivariant_away_from_borders():
    torch.manual_seed(0)
    model = ResNet(SMALL).double().eval()
    for block in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(block, torch.nn.BatchNorm2d):
            block.running_mean.normal_()
            block.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 96, 96, dtype=torch.double)
    for shift in (2, 4, 8):  # multiples of the stride (2): the feature map moves by whole cells
        assert interior_error(model, x, shift) < 1e-10
    assert interior_error(model, x, 1) > 1e-2  # half a cell: no whole-cell move matches


def test_basic_block_shortcut():
    x = torch.randn(2, 8, 16, 16)
    same = BasicBlock(8, 8).eval()
    assert isinstance(same.shortcut, torch.nn.Identity) and same(x).shape == (2, 8, 16, 16)
    down = BasicBlock(8, 16, stride=2).eval()
    assert not isinstance(down.shortcut, torch.nn.Identity) and down(x).shape == (2, 16, 8, 8)
    assert (down(x) >= 0).all()  # the block ends with a ReLU
    wider = BasicBlock(8, 16).eval()  # same resolution, more channels: x needs a projection too
    assert not isinstance(wider.shortcut, torch.nn.Identity) and wider(x).shape == (2, 16, 16, 16)


def randomise_batchnorm(model):
    """Non-trivial BatchNorm statistics and affine parameters, so that each BN matters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    return model


def batchnorm_by_hand(x, bn):
    """Eval-mode BatchNorm: (x - running mean) / sqrt(running var + eps) · weight + bias."""
    def per_channel(t):
        return t[None, :, None, None]

    scale = per_channel(bn.weight) / per_channel(bn.running_var + bn.eps).sqrt()
    return (x - per_channel(bn.running_mean)) * scale + per_channel(bn.bias)


@pytest.mark.parametrize(("in_chans", "out_chans", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_basic_block_matches_its_formula(in_chans, out_chans, stride):
    # ReLU(x' + BN(conv(ReLU(BN(conv(x)))))), x' = x or BN(1×1 conv(x)), written out
    torch.manual_seed(0)
    block = randomise_batchnorm(BasicBlock(in_chans, out_chans, stride).double().eval())
    x = torch.randn(2, in_chans, 8, 8, dtype=torch.double)
    out = F.conv2d(x, block.conv1.weight, stride=stride, padding=1)
    out = F.relu(batchnorm_by_hand(out, block.bn1))
    out = batchnorm_by_hand(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    if stride == 1 and in_chans == out_chans:
        shortcut = x
    else:
        conv, bn = block.shortcut
        shortcut = batchnorm_by_hand(F.conv2d(x, conv.weight, stride=stride), bn)
    assert torch.allclose(block(x), F.relu(out + shortcut), atol=1e-10)


def test_stem_then_stages_then_average_pool_then_head():
    torch.manual_seed(0)
    model = randomise_batchnorm(ResNet(SMALL).double().eval())
    x = torch.randn(2, 3, 16, 16, dtype=torch.double)
    conv, bn = model.stem[0], model.stem[1]
    stem = F.relu(batchnorm_by_hand(F.conv2d(x, conv.weight, padding=1), bn))  # conv-BN-ReLU
    features = model.stages(stem)
    assert torch.allclose(model.forward_features(x), features, atol=1e-10)
    pooled = features.mean(dim=(2, 3))  # global average pool
    assert torch.allclose(model(x), pooled @ model.head.weight.T + model.head.bias, atol=1e-10)


def test_convolutions_start_with_he_init_over_the_fan_out():
    # He et al. (2015) for ReLU networks, fan-out mode: std = sqrt(2 / (out_chans · k · k))
    torch.manual_seed(0)
    convs = [m for m in ResNet(CNNConfig()).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 2 + 2  # stem, two per block, two projection shortcuts
    for conv in convs:
        out_chans, _, k, _ = conv.weight.shape
        want = (2 / (out_chans * k * k)) ** 0.5
        assert abs(conv.weight.std().item() / want - 1) < 0.15, (tuple(conv.weight.shape), want)


def test_gradients_reach_every_parameter_and_a_short_run_learns():
    torch.manual_seed(0)
    model = ResNet(SMALL)
    x = torch.randn(20, 3, 8, 8)
    y = torch.arange(20) % 5
    x = x + 2 * F.one_hot(y, 5).float()[:, :3, None, None]  # classes 0-2 tint one channel
    F.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_the_training_engine_trains_it_in_place():
    from vitlib import synthetic_cifar
    from vitlib.train import TrainConfig, train

    torch.manual_seed(0)
    model = ResNet(CNNConfig(widths=(8, 16), blocks=(1, 1)))
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(epochs=2, batch_size=16, warmup_epochs=0.5, val_size=0,
                         max_eval_samples=32, num_threads=1, out_dir=None, quiet=True)
    history = train(model, config, synthetic_cifar(n_train=64, n_test=32, seed=0))
    assert len(history.epochs) == 2 and history.epochs[-1]["step"] == 8
    assert 0.0 <= history.test_acc <= 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
