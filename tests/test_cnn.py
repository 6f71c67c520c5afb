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
    for size in (32, 24):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, size, size))
        assert flops_per_image(config, size) == counter.get_total_flops()


def test_receptive_field_matches_gradient():
    config = CNNConfig(widths=(4, 4, 4), blocks=(1, 1, 1), num_classes=0)
    model = ResNet(config).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.double, requires_grad=True)
    features = model.forward_features(x)  # (1, 4, 16, 16)
    features[0, :, 8, 8].sum().backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == receptive_field(config) == 25


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
