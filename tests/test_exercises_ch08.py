"""Each exercise check of notebook 08 passes a right answer and fails wrong ones with a hint."""

import math

import pytest
import torch
import torch.nn.functional as F

from vitlib.exercises import ch08


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- learning rate --------------------------------------------------------------------------


def lr_right(step, total_steps, warmup_steps, peak_lr, min_lr_ratio):
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * (step + 1) / total_steps))
    return peak_lr * warmup * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def lr_warmup_from_zero(step, total_steps, warmup_steps, peak_lr, min_lr_ratio):
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * (step + 1) / total_steps))
    return peak_lr * warmup * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def lr_cosine_to_zero(step, total_steps, warmup_steps, peak_lr, min_lr_ratio):
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return peak_lr * warmup * 0.5 * (1 + math.cos(math.pi * (step + 1) / total_steps))


def lr_last_step_above_the_floor(step, total_steps, warmup_steps, peak_lr, min_lr_ratio):
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return peak_lr * warmup * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def lr_as_tensor(step, total_steps, warmup_steps, peak_lr, min_lr_ratio):
    return torch.tensor(lr_right(step, total_steps, warmup_steps, peak_lr, min_lr_ratio))


@pytest.mark.parametrize("wrong", [lr_warmup_from_zero, lr_cosine_to_zero,
                                   lr_last_step_above_the_floor, lr_as_tensor])
def test_learning_rate(wrong):
    assert passes(ch08.check_learning_rate(lr_right, quiet=True))
    assert fails_with_hint(ch08.check_learning_rate(wrong, quiet=True))


def test_learning_rate_without_warmup_must_not_divide_by_zero():
    def divides(step, total_steps, warmup_steps, peak_lr, min_lr_ratio):
        warmup = min(1.0, (step + 1) / warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * (step + 1) / total_steps))
        return peak_lr * warmup * (min_lr_ratio + (1 - min_lr_ratio) * cosine)

    result = ch08.check_learning_rate(divides, quiet=True)
    assert fails_with_hint(result) and "ZeroDivisionError" in result.message


# --- label-smoothed cross-entropy -----------------------------------------------------------


def smoothed_right(logits, labels, smoothing):
    logp = logits.log_softmax(dim=-1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(dim=-1)).mean()


def smoothed_over_other_classes(logits, labels, smoothing):
    logp = logits.log_softmax(dim=-1)
    k = logits.shape[1]
    target = torch.full_like(logp, smoothing / (k - 1))
    target.scatter_(1, labels[:, None], 1 - smoothing)
    return -(target * logp).sum(dim=-1).mean()


def smoothed_naive_log(logits, labels, smoothing):
    logp = logits.softmax(dim=-1).log()
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(dim=-1)).mean()


def smoothed_summed(logits, labels, smoothing):
    return smoothed_right(logits, labels, smoothing) * len(labels)


def smoothed_detached(logits, labels, smoothing):
    return smoothed_right(logits.detach(), labels, smoothing)


def smoothed_per_image(logits, labels, smoothing):
    logp = logits.log_softmax(dim=-1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    return (1 - smoothing) * nll - smoothing * logp.mean(dim=-1)


@pytest.mark.parametrize("wrong", [smoothed_over_other_classes, smoothed_naive_log,
                                   smoothed_summed, smoothed_detached, smoothed_per_image])
def test_smoothed_cross_entropy(wrong):
    assert passes(ch08.check_smoothed_cross_entropy(smoothed_right, quiet=True))
    assert fails_with_hint(ch08.check_smoothed_cross_entropy(wrong, quiet=True))


def smoothed_from_float32_targets(logits, labels, smoothing):
    k = logits.shape[-1]
    targets = F.one_hot(labels, k).float() * (1 - smoothing) + smoothing / k  # float32
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def test_smoothed_cross_entropy_takes_targets_built_in_float32():
    # the loss reaches the hundreds for large logits: float32 targets round it by about 1e-5
    for _ in range(20):
        result = ch08.check_smoothed_cross_entropy(smoothed_from_float32_targets, quiet=True)
        assert passes(result), result.message


def test_smoothed_cross_entropy_says_when_the_gradient_is_missing():
    result = ch08.check_smoothed_cross_entropy(smoothed_detached, quiet=True)
    assert "no gradient" in result.message


# --- weight decay groups --------------------------------------------------------------------


def split_right(model):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or name.split(".")[-1] in ("pos_embed", "cls_token")
        (no_decay if skip else decay).append(name)
    return decay, no_decay


def split_by_name_only(model):  # "weight" decays: LayerNorm and BatchNorm weights too
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if name.endswith("weight") else no_decay).append(name)
    return decay, no_decay


def split_decays_pos_embed(model):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(name)
    return decay, no_decay


def split_keeps_frozen(model):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        skip = param.ndim < 2 or name.split(".")[-1] in ("pos_embed", "cls_token")
        (no_decay if skip else decay).append(name)
    return decay, no_decay


def split_parameters_not_names(model):
    decay, no_decay = split_right(model)
    params = dict(model.named_parameters())
    return [params[n] for n in decay], [params[n] for n in no_decay]


@pytest.mark.parametrize("wrong", [split_by_name_only, split_decays_pos_embed, split_keeps_frozen,
                                   split_parameters_not_names])
def test_decay_split(wrong):
    assert passes(ch08.check_decay_split(split_right, quiet=True))
    assert fails_with_hint(ch08.check_decay_split(wrong, quiet=True))


# --- accuracy -------------------------------------------------------------------------------


def accuracy_right(logits, labels):
    return (logits.argmax(dim=1) == labels).float().mean().item()


def accuracy_wrong_axis(logits, labels):
    return (logits.argmax(dim=0)[: len(labels)] == labels[: logits.shape[1]]).float().mean().item()


def accuracy_percent(logits, labels):
    return 100 * accuracy_right(logits, labels)


def accuracy_count(logits, labels):
    return (logits.argmax(dim=1) == labels).sum().item()


def accuracy_per_image(logits, labels):
    return (logits.argmax(dim=1) == labels).float()


@pytest.mark.parametrize("wrong", [accuracy_wrong_axis, accuracy_percent, accuracy_count,
                                   accuracy_per_image])
def test_accuracy(wrong):
    assert passes(ch08.check_accuracy(accuracy_right, quiet=True))
    assert passes(ch08.check_accuracy(lambda x, y: (x.argmax(1) == y).float().mean(), quiet=True))
    assert fails_with_hint(ch08.check_accuracy(wrong, quiet=True))


def test_accuracy_points_out_percentages():
    assert "percentage" in ch08.check_accuracy(accuracy_percent, quiet=True).message
